"""The log of prompts and answers: one SQLite database in the XDG data directory
($XDG_DATA_HOME/gencli/logs.db, else ~/.local/share/gencli/logs.db).

Every answered turn of ``gencli generate`` and ``gencli chat`` is one row of ``responses``:
when, the model, the prompt, the system prompt, the answer, the reasoning, the options
(JSON), the tokens in, out and of reasoning (as the upstream reported them), the cost
(only when models.json gives the model's prices), the duration and the conversation.
``responses_fts`` (SQLite FTS5, kept by triggers) indexes prompt, system and answer for
``gencli logs -q``.

The schema's version is SQLite's ``user_version``; :data:`MIGRATIONS` brings an older
database up to date, each step in one transaction. A database from a newer gencli is
left alone. ``gencli logs off`` writes the file ``logs-off`` next to the database.

Only ``gencli logs`` and the turns that write the log import this module (sqlite3 costs
start-up time); a turn calls :func:`record`, which never raises: a locked or damaged
database is one warning on stderr (once per process), and the answer, already printed
and kept in its conversation, is not lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.cli.state import data_dir, logs_off_file
from gencli.core.errors import GencliError

DB_NAME = "logs.db"
BUSY_MS = 2000  # how long a write waits for another gencli holding the database

# Each step takes the database from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    # 1: the responses
    """
    CREATE TABLE responses (
        id INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        system TEXT,
        answer TEXT NOT NULL,
        reasoning TEXT,
        options TEXT NOT NULL DEFAULT '{}',
        prompt_tokens INTEGER,
        answer_tokens INTEGER,
        duration_ms INTEGER,
        conversation TEXT,
        conversation_id TEXT
    );
    CREATE INDEX responses_created ON responses (created);
    """,
    # 2: full-text search over prompt, system and answer (rows logged before it are indexed)
    """
    CREATE VIRTUAL TABLE responses_fts USING fts5(
        prompt, system, answer, content='responses', content_rowid='id'
    );
    CREATE TRIGGER responses_ai AFTER INSERT ON responses BEGIN
        INSERT INTO responses_fts (rowid, prompt, system, answer)
        VALUES (new.id, new.prompt, new.system, new.answer);
    END;
    CREATE TRIGGER responses_ad AFTER DELETE ON responses BEGIN
        INSERT INTO responses_fts (responses_fts, rowid, prompt, system, answer)
        VALUES ('delete', old.id, old.prompt, old.system, old.answer);
    END;
    INSERT INTO responses_fts (responses_fts) VALUES ('rebuild');
    """,
    # 3: usage: reasoning tokens, the cost from models.json's prices, the command, the template
    """
    ALTER TABLE responses ADD COLUMN reasoning_tokens INTEGER;
    ALTER TABLE responses ADD COLUMN cost REAL;
    ALTER TABLE responses ADD COLUMN command TEXT;
    ALTER TABLE responses ADD COLUMN template TEXT;
    CREATE INDEX responses_conversation ON responses (conversation_id, created);
    """,
)
VERSION = len(MIGRATIONS)


class LogError(GencliError):
    """The log database cannot be opened, read or written."""

    exit_code = 1


def db_path() -> Path:
    return data_dir() / DB_NAME


def is_off() -> bool:
    return logs_off_file().exists()


def turn_off() -> None:
    try:
        data_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        logs_off_file().write_text("gencli logs on removes this file and logging starts again\n")
    except OSError as exc:
        raise LogError(f"cannot write {logs_off_file()} ({exc.strerror or exc})") from None


def turn_on() -> None:
    try:
        logs_off_file().unlink(missing_ok=True)
    except OSError as exc:
        raise LogError(f"cannot remove {logs_off_file()} ({exc.strerror or exc})") from None


def _problem(path: Path, exc: Exception) -> LogError:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return LogError(f"the log {path} is locked by another program (database is locked)")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return LogError(f"the log {path} is damaged ({text}); move it away and gencli starts a new one")
    return LogError(f"the log {path} cannot be used ({text})")


def connect(path: Path | None = None, create: bool = True) -> sqlite3.Connection:
    """The database, migrated to :data:`VERSION` (created when ``create``)."""
    path = path or db_path()
    if not create and not path.exists():
        raise FileNotFoundError(path)
    try:
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # private: it holds every prompt (SQLite gives its journal the database's mode)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise _problem(path, exc) from None
    try:
        migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring the schema up to :data:`VERSION`; returns the version found."""
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > VERSION:
            raise LogError(
                f"the log {path} was written by a newer gencli (schema version {found}, this one knows "
                f"{VERSION}); upgrade gencli to use it"
            )
        for version in range(found, VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated it meanwhile
                if db.execute("PRAGMA user_version").fetchone()[0] != version:
                    db.execute("ROLLBACK")
                    continue
                for statement in _statements(MIGRATIONS[version]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return int(found)
    except sqlite3.Error as exc:
        raise _problem(path, exc) from None


def _statements(script: str) -> Iterator[str]:
    """A migration's statements (a trigger's body holds ';' too: sqlite3.complete_statement decides)."""
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                yield current.strip()
            current = ""
    if current.strip():
        yield current.strip()


@dataclass(slots=True)
class Entry:
    """One logged turn."""

    model: str
    prompt: str
    answer: str
    system: str | None = None
    reasoning: str | None = None
    options: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    answer_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None
    duration_ms: int | None = None
    conversation: str | None = None
    conversation_id: str | None = None
    command: str | None = None
    template: str | None = None


_warned = False


def record(entry: Entry) -> bool:
    """Write one turn (unless the log is off); never raises. A problem is one warning per process."""
    global _warned
    try:
        if is_off():
            return False
        with closing(connect()) as db:
            db.execute(
                "INSERT INTO responses (created, model, prompt, system, answer, reasoning, options, "
                "prompt_tokens, answer_tokens, reasoning_tokens, cost, duration_ms, conversation, conversation_id, "
                "command, template) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    entry.model,
                    entry.prompt,
                    entry.system,
                    entry.answer,
                    entry.reasoning or None,
                    json.dumps(entry.options or {}, ensure_ascii=False, separators=(",", ":")),
                    entry.prompt_tokens,
                    entry.answer_tokens,
                    entry.reasoning_tokens,
                    entry.cost,
                    entry.duration_ms,
                    entry.conversation,
                    entry.conversation_id,
                    entry.command,
                    entry.template,
                ),
            )
        return True
    except (GencliError, sqlite3.Error, OSError) as exc:
        if not _warned:
            _warned = True
            from gencli.cli.pipes import warning

            message = exc.message if isinstance(exc, GencliError) else str(_problem(db_path(), exc))
            warning(f"{message}; this answer is not logged (gencli logs off stops logging)")
        return False


# -- reading ------------------------------------------------------------------------

COLUMNS = (
    "id",
    "created",
    "model",
    "prompt",
    "system",
    "answer",
    "reasoning",
    "options",
    "prompt_tokens",
    "answer_tokens",
    "reasoning_tokens",
    "cost",
    "duration_ms",
    "conversation",
    "conversation_id",
    "command",
    "template",
)


def fts_query(text: str) -> str:
    """-q TEXT as an FTS5 query: each word must appear (a word is quoted, so punctuation is literal)."""
    words = text.split()
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def latest(
    db: sqlite3.Connection,
    limit: int | None = 3,
    model: str | None = None,
    query: str | None = None,
    conversation: str | None = None,
    conversation_id: str | None = None,
    since: float | None = None,
) -> list[dict[str, Any]]:
    """The latest turns that match, the newest first (``limit`` None: all of them)."""
    where: list[str] = []
    args: list[Any] = []
    columns = ", ".join(f"r.{c}" for c in COLUMNS)
    source = "responses r"
    order = "r.created DESC, r.id DESC"
    if query:
        source = "responses_fts JOIN responses r ON r.id = responses_fts.rowid"
        where.append("responses_fts MATCH ?")
        args.append(fts_query(query))
    if model:
        where.append("r.model = ?")
        args.append(model)
    if conversation:
        where.append("r.conversation = ?")
        args.append(conversation)
    if conversation_id:
        where.append("r.conversation_id = ?")
        args.append(conversation_id)
    if since is not None:
        where.append("r.created >= ?")
        args.append(since)
    sql = f"SELECT {columns} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    try:
        rows = db.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise _problem(db_path(), exc) from None
    out = []
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        try:
            item["options"] = json.loads(item["options"] or "{}")
        except ValueError:
            item["options"] = {}
        out.append(item)
    return out


def usage(db: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Tokens and cost summed by model (turns logged at or after ``since``), the most used first.
    ``cost`` is the sum of the costs known; ``priced`` counts the turns that had one."""
    sql = (
        "SELECT model, COUNT(*), SUM(prompt_tokens), SUM(answer_tokens), SUM(reasoning_tokens), SUM(cost), "
        "COUNT(cost) FROM responses"
    )
    args: list[Any] = []
    if since is not None:
        sql += " WHERE created >= ?"
        args.append(since)
    sql += " GROUP BY model ORDER BY COUNT(*) DESC, model"
    keys = ("model", "turns", "prompt_tokens", "answer_tokens", "reasoning_tokens", "cost", "priced")
    try:
        found = db.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise _problem(db_path(), exc) from None
    return [dict(zip(keys, row, strict=True)) for row in found]
