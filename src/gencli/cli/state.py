"""What the CLI keeps between runs, in the XDG state directory
($XDG_STATE_HOME/gencli, else ~/.local/state/gencli):

- ``conversations/NAME.json``: one conversation each, a context file (the ``context``
  array /api/generate returns, which holds the whole conversation) with what
  ``gencli conversations`` lists: ``{"model", "turns", "context", "id"}`` (``id`` names
  this conversation in the log, ``gencli logs -c``; a new one starts with a new id); the file's
  modification time is when it was last used. Any of
  them works with ``--context FILE`` too. ``last`` is the unnamed one: every
  ``generate``/``chat`` without ``-c``, ``--conversation`` or ``--context`` starts it afresh.
  ``-c`` continues the conversation used most recently, named or not.
- ``chat_history``: the prompt lines typed in ``gencli chat`` (readline's history file).

The directory is created private (0700); files are replaced atomically, so two runs
never leave a half-written conversation.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gencli.core.errors import GencliError, UsageError

LAST = "last"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StateError(GencliError):
    """The state directory cannot be read or written."""

    exit_code = 1


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "gencli"


def data_dir() -> Path:
    """The XDG data directory ($XDG_DATA_HOME/gencli, else ~/.local/share/gencli): the log (gencli.cli.logdb)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "gencli"


def logs_off_file() -> Path:
    """Present after ``gencli logs off``: turns write no log (checked without importing sqlite3)."""
    return data_dir() / "logs-off"


def conversations_dir() -> Path:
    return state_dir() / "conversations"


def history_file() -> Path:
    return state_dir() / "chat_history"


def make_private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"cannot create {path} ({exc.strerror or exc}); set XDG_STATE_HOME to a writable directory"
        ) from None
    return path


def check_name(name: str, flag: str = "--conversation") -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"{flag} {name!r}: a conversation name is 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return name


@dataclass(slots=True)
class Conversation:
    name: str
    model: str
    turns: int
    updated: float  # last used: the file's modification time, seconds since the epoch
    context: list[int]
    id: str | None = None  # the conversation's id in the log (files from before it have none)

    @property
    def path(self) -> Path:
        return conversations_dir() / f"{self.name}.json"


def _read(path: Path, used: float) -> Conversation | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # gone, or damaged: listed by nothing and replaced by the next save
    if not isinstance(data, dict) or not isinstance(data.get("context"), list):
        return None
    turns = data.get("turns")
    model = data.get("model")
    ident = data.get("id")
    return Conversation(
        name=path.stem,
        model=model if isinstance(model, str) else "",
        turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else 0,
        updated=used,
        context=data["context"],
        id=ident if isinstance(ident, str) else None,
    )


def load(name: str) -> Conversation | None:
    path = conversations_dir() / f"{name}.json"
    try:
        used = path.stat().st_mtime
    except OSError:
        return None
    return _read(path, used)


def _by_use() -> list[tuple[float, Path]]:
    """The conversation files, the most recently used (written) first."""
    try:
        entries = [
            (p.stat().st_mtime, p) for p in conversations_dir().iterdir() if p.suffix == ".json" and _NAME.match(p.stem)
        ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise StateError(f"cannot read {conversations_dir()} ({exc.strerror or exc})") from None
    entries.sort(key=lambda e: (e[0], e[1].stem), reverse=True)
    return entries


def listing() -> list[Conversation]:
    """Every kept conversation, the most recently used first."""
    return [c for c in (_read(path, used) for used, path in _by_use()) if c is not None]


def latest() -> Conversation | None:
    """The conversation used most recently (what ``-c`` continues); reads only that one."""
    for used, path in _by_use():
        conv = _read(path, used)
        if conv is not None:
            return conv
    return None


def new_id() -> str:
    """A new conversation's id: unique enough for one person's log, sortable by time."""
    return f"{time.time_ns():x}-{os.urandom(3).hex()}"


def save(name: str, model: str, context: list[int], turns: int, ident: str | None = None) -> Conversation:
    conv = Conversation(name, model, turns, time.time(), context, ident)
    folder = make_private_dir(conversations_dir())
    kept: dict[str, object] = {"model": model, "turns": turns, "context": context}
    if ident:
        kept["id"] = ident
    body = json.dumps(kept, separators=(",", ":")) + "\n"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, conv.path)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise StateError(f"cannot save the conversation in {folder} ({exc.strerror or exc})") from None
    return conv


def delete(name: str) -> bool:
    """Remove a conversation; False when there is none of that name."""
    try:
        (conversations_dir() / f"{name}.json").unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"cannot delete the conversation {name!r} ({exc.strerror or exc})") from None
    return True
