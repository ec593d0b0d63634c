"""The log of prompts and answers (a real SQLite file in the XDG data directory), through the
real ``gencli`` command against the fake OpenAI upstream: what ``generate`` and ``chat``
write, ``gencli logs`` and its options (``-n``, ``--json``, ``-m``, ``-q`` full-text search,
``--conversation``, ``-c``, ``--usage``, ``--since``), ``logs path``/``off``/``on``, ``--no-log``,
the schema's migration from an older version, and a locked or damaged database (one
warning; the answer is printed and its conversation kept). Also ``-u/--usage`` and the
optional prices of models.json."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.helpers import one_line_error


@pytest.fixture
def env(tmp_path, workdir, openai_fake) -> dict[str, str]:
    url = openai_fake.base_url
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "default": "echo",
                "echo": {"provider": "openai", "model": "echo", "base_url": url},
                "priced": {
                    "provider": "openai",
                    "model": "echo",
                    "base_url": url,
                    "prices": {"input": 1.5, "output": 6},
                },
                "reason": {"provider": "openrouter", "model": "reason-openrouter", "base_url": url},
            }
        )
    )
    return clean_env(
        tmp_path,
        OPENAI_API_KEY=FAKE_KEY,
        OPENROUTER_API_KEY=FAKE_KEY,
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_DATA_HOME=str(tmp_path / "data"),
    )


def db_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gencli" / "logs.db"


def gencli(args, env, cwd, input=None) -> subprocess.CompletedProcess:
    return run_gencli(args, env, cwd, input=input, timeout=30)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def rows(tmp_path: Path) -> list[dict]:
    with sqlite3.connect(db_file(tmp_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM responses ORDER BY id")]


def logged(env, cwd, *args: str) -> list[dict]:
    return json.loads(ok(gencli(["logs", "--json", *args], env, cwd)))


# -- what is written -----------------------------------------------------------------------


def test_generate_writes_the_log_to_the_xdg_data_directory(env, workdir, tmp_path):
    assert ok(gencli(["generate", "-s", "Be brief.", "--temperature", "0.5", "why is the sky blue"], env, workdir))
    assert ok(gencli(["logs", "path"], env, workdir)).strip() == str(db_file(tmp_path))
    (row,) = rows(tmp_path)
    assert row["model"] == "echo"
    assert row["prompt"] == "why is the sky blue"
    assert row["system"] == "Be brief."
    assert row["answer"] == "You said: why is the sky blue"
    assert json.loads(row["options"]) == {"temperature": 0.5}
    assert row["prompt_tokens"] > 0 and row["answer_tokens"] == 7  # the fake counts words
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0
    assert row["conversation"] == "last" and row["conversation_id"]
    assert row["command"] == "generate"
    assert row["cost"] is None  # no prices in models.json: nothing invented
    assert db_file(tmp_path).stat().st_mode & 0o777 == 0o600  # it holds every prompt
    assert db_file(tmp_path).parent.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(db_file(tmp_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3


def test_reasoning_and_its_tokens_are_logged(env, workdir, tmp_path):
    p = gencli(["generate", "--usage", "-m", "reason", "think first"], env, workdir)
    assert ok(p) == "The answer is 42.\n"
    (row,) = rows(tmp_path)
    assert row["reasoning"] == "Let me think about this."
    assert row["answer"] == "The answer is 42."
    # the fake reports completion_tokens_details.reasoning_tokens as OpenRouter does (words of reasoning)
    assert (row["answer_tokens"], row["reasoning_tokens"]) == (9, 5)
    assert p.stderr.decode().splitlines()[-1] == f"usage: {row['prompt_tokens']} in, 9 out, 5 reasoning tokens"
    (summary,) = logged(env, workdir, "--usage")
    assert (summary["answer_tokens"], summary["reasoning_tokens"]) == (9, 5)


def test_no_log_and_logs_off(env, workdir, tmp_path):
    ok(gencli(["generate", "--no-log", "one"], env, workdir))
    assert not db_file(tmp_path).exists()
    p = gencli(["logs", "off"], env, workdir)
    assert p.returncode == 0 and "logging is off" in p.stderr.decode()
    ok(gencli(["generate", "two"], env, workdir))
    ok(gencli(["chat"], env, workdir, input=b"three\n"))
    assert not db_file(tmp_path).exists()
    ok(gencli(["logs", "on"], env, workdir))
    ok(gencli(["generate", "four"], env, workdir))
    assert [r["prompt"] for r in rows(tmp_path)] == ["four"]


def test_chat_turns_are_logged_in_one_conversation(env, workdir, tmp_path):
    ok(gencli(["chat", "--conversation", "trip"], env, workdir, input=b"first\nsecond\n"))
    got = rows(tmp_path)
    assert [r["prompt"] for r in got] == ["first", "second"]
    assert {r["command"] for r in got} == {"chat"}
    assert {r["conversation"] for r in got} == {"trip"}
    assert len({r["conversation_id"] for r in got}) == 1


# -- gencli logs ---------------------------------------------------------------------------


def test_logs_lists_the_latest_oldest_first(env, workdir):
    for word in ("alpha", "bravo", "charlie", "delta"):
        ok(gencli(["generate", word], env, workdir))
    text = ok(gencli(["logs"], env, workdir))  # the latest 3
    assert "alpha" not in text
    assert text.index("> bravo") < text.index("> charlie") < text.index("> delta")
    assert "You said: delta" in text and "echo" in text
    assert [r["prompt"] for r in logged(env, workdir, "-n", "2")] == ["charlie", "delta"]
    assert len(logged(env, workdir, "-n", "0")) == 4


def test_logs_by_model_and_full_text_search(env, workdir):
    ok(gencli(["generate", "the sky is blue"], env, workdir))
    ok(gencli(["generate", "-m", "priced", "grass is green"], env, workdir))
    ok(gencli(["generate", "-s", "talk about oceans", "hello"], env, workdir))
    assert [r["prompt"] for r in logged(env, workdir, "-m", "priced")] == ["grass is green"]
    assert [r["prompt"] for r in logged(env, workdir, "-q", "blue")] == ["the sky is blue"]
    assert [r["prompt"] for r in logged(env, workdir, "-q", "oceans")] == ["hello"]  # the system prompt
    assert [r["prompt"] for r in logged(env, workdir, "-q", "said grass")] == ["grass is green"]  # every word
    assert logged(env, workdir, "-q", "zebra") == []
    assert logged(env, workdir, "-q", 'quote" AND ( ') == []  # words, not FTS5 syntax: no error
    p = gencli(["logs", "-q", "zebra"], env, workdir)
    assert p.returncode == 0 and p.stdout == b"" and "no logged prompt matches" in p.stderr.decode()


def test_logs_of_a_conversation_and_of_the_last_one(env, workdir):
    ok(gencli(["generate", "--conversation", "work", "w1"], env, workdir))
    ok(gencli(["generate", "unrelated"], env, workdir))  # a new 'last' conversation
    ok(gencli(["generate", "-c", "more of it"], env, workdir))  # continues it
    ok(gencli(["generate", "--conversation", "work", "w2"], env, workdir))
    assert [r["prompt"] for r in logged(env, workdir, "--conversation", "work")] == ["w1", "w2"]
    assert [r["prompt"] for r in logged(env, workdir, "-c")] == ["w1", "w2"]  # work was used last
    ok(gencli(["generate", "fresh start"], env, workdir))  # 'last' again, a new conversation
    assert [r["prompt"] for r in logged(env, workdir, "-c")] == ["fresh start"]
    assert [r["prompt"] for r in logged(env, workdir, "--conversation", "last")] == ["fresh start"]


def test_logs_errors_are_one_line_with_exit_2(env, workdir):
    assert "unknown action" in one_line_error(gencli(["logs", "nope"], env, workdir), 2)
    assert "--since" in one_line_error(gencli(["logs", "--since", "yesterday-ish"], env, workdir), 2)
    p = gencli(["logs", "-c", "--conversation", "x"], env, workdir)
    assert "use one" in one_line_error(p, 2)


def test_logs_before_anything_was_logged(env, workdir, tmp_path):
    p = gencli(["logs"], env, workdir)
    assert p.returncode == 0 and "nothing logged yet" in p.stderr.decode()
    assert ok(gencli(["logs", "--json"], env, workdir)) == "[]\n"
    assert not db_file(tmp_path).exists()


# -- usage and prices ---------------------------------------------------------------------


def test_usage_flag_prints_tokens_and_the_cost_when_priced(env, workdir):
    p = gencli(["generate", "-u", "-m", "echo", "count these words"], env, workdir)
    assert ok(p) == "You said: count these words\n"
    line = p.stderr.decode().strip()
    assert line.startswith("usage: ") and " in, 5 out tokens" in line and "$" not in line
    p = gencli(["generate", "-u", "-m", "priced", "count these words"], env, workdir)
    prompt_tokens = int(p.stderr.decode().split("usage: ")[1].split(" in")[0])
    cost = (prompt_tokens * 1.5 + 5 * 6) / 1e6
    assert p.stderr.decode().strip().endswith(f"${cost:.6f}")


def test_logs_usage_sums_by_model_over_a_period(env, workdir, tmp_path):
    ok(gencli(["generate", "-m", "priced", "a b"], env, workdir))
    ok(gencli(["generate", "-m", "priced", "c d e"], env, workdir))
    ok(gencli(["generate", "-m", "echo", "f"], env, workdir))
    got = rows(tmp_path)
    summary = {r["model"]: r for r in logged(env, workdir, "--usage", "--since", "1h")}
    assert summary["priced"]["turns"] == 2
    assert summary["priced"]["answer_tokens"] == sum(r["answer_tokens"] for r in got if r["model"] == "priced")
    assert summary["priced"]["cost"] == pytest.approx(sum(r["cost"] for r in got if r["model"] == "priced"))
    assert summary["echo"]["cost"] is None and summary["echo"]["turns"] == 1
    table = ok(gencli(["logs", "--usage"], env, workdir))
    assert table.splitlines()[0].split() == ["MODEL", "TURNS", "IN", "OUT", "REASONING", "COST"]
    assert any(line.startswith("priced") and "$" in line for line in table.splitlines())
    assert any(line.startswith("echo") and line.rstrip().endswith("-") for line in table.splitlines())
    with sqlite3.connect(db_file(tmp_path)) as db:  # move the first two back by two days
        db.execute("UPDATE responses SET created = created - 172800 WHERE model = 'priced'")
    assert [r["model"] for r in logged(env, workdir, "--usage", "--since", "1d")] == ["echo"]
    assert len(logged(env, workdir, "--usage", "--since", "3d")) == 2


def test_a_bad_price_in_models_json_is_refused(env, workdir):
    path = workdir / "models.json"
    models = json.loads(path.read_text())
    models["priced"]["prices"] = {"input": "cheap"}
    path.write_text(json.dumps(models))
    assert "price 'input'" in one_line_error(gencli(["generate", "x"], env, workdir), 1)
    models["priced"]["prices"] = {"cached": 1}
    path.write_text(json.dumps(models))
    assert "unknown price 'cached'" in one_line_error(gencli(["models"], env, workdir), 1)


def test_models_json_lists_prices(env, workdir):
    data = json.loads(ok(gencli(["models", "--json"], env, workdir)))
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["priced"]["prices"] == {"input": 1.5, "output": 6.0}
    assert "prices" not in by_name["echo"]


# -- the schema, and a database that cannot be used ---------------------------------------------


def test_an_older_schema_is_migrated_and_its_rows_kept(env, workdir, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from gencli.cli.logdb import MIGRATIONS

    path = db_file(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:  # version 1: no full-text index, no usage columns
        db.executescript(MIGRATIONS[0])
        db.execute(
            "INSERT INTO responses (created, model, prompt, answer) VALUES (?, 'old', 'an old question', 'an answer')",
            (time.time() - 60,),
        )
        db.execute("PRAGMA user_version = 1")
    ok(gencli(["generate", "a new question"], env, workdir))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert [r["prompt"] for r in logged(env, workdir, "-q", "question")] == ["an old question", "a new question"]
    assert [r["model"] for r in logged(env, workdir, "--usage")] == ["echo", "old"]


def test_a_newer_schema_is_left_alone(env, workdir, tmp_path):
    path = db_file(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    p = gencli(["generate", "hello"], env, workdir)
    assert ok(p) == "You said: hello\n"
    assert "newer gencli" in p.stderr.decode()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
    assert "newer gencli" in one_line_error(gencli(["logs"], env, workdir), 1)


def test_a_damaged_database_warns_once_and_the_answer_is_kept(env, workdir, tmp_path):
    path = db_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    p = gencli(["generate", "--conversation", "kept", "hello"], env, workdir)
    assert ok(p) == "You said: hello\n"
    warnings = p.stderr.decode().strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("gencli: warning: ") and "damaged" in warnings[0]
    assert "not logged" in warnings[0]
    p = gencli(["generate", "--conversation", "kept", "what did I say?"], env, workdir)
    assert ok(p) == "You said: what did I say?\n"  # the conversation went on
    p = gencli(["chat"], env, workdir, input=b"one\ntwo\n")  # one warning for the whole session
    assert ok(p) == "You said: one\nYou said: two\n"
    assert len(p.stderr.decode().strip().splitlines()) == 1
    assert "damaged" in one_line_error(gencli(["logs"], env, workdir), 1)


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_locked_database_warns_and_the_answer_is_kept(env, workdir, tmp_path):
    ok(gencli(["generate", "first"], env, workdir))  # the database exists
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db_file(tmp_path))], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == b"locked\n"
        p = gencli(["generate", "second"], env, workdir)
        assert ok(p) == "You said: second\n"
        (warning,) = p.stderr.decode().strip().splitlines()
        assert "locked" in warning and "not logged" in warning
    finally:
        locker.communicate(b"", timeout=10)
    ok(gencli(["generate", "third"], env, workdir))
    assert [r["prompt"] for r in rows(tmp_path)] == ["first", "third"]


def imported(p: subprocess.CompletedProcess) -> set[str]:
    lines = p.stderr.decode().splitlines()
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}


def test_the_log_is_imported_only_by_what_writes_or_reads_it(env, workdir):
    """sqlite3 costs start-up time: commands that do not touch the log never import it."""
    env = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    for args in (["--help"], ["models"], ["conversations"], ["generate", "--no-log", "hi"], ["templates"]):
        p = gencli(args, env, workdir)
        assert p.returncode == 0, p.stderr.decode()[-500:]
        got = imported(p)
        assert "gencli.cli.app" in got  # the profile really lists gencli's imports
        assert not {"sqlite3", "gencli.cli.logdb"} & got, args
    p = gencli(["logs", "off"], env, workdir)  # the marker file, no database
    assert p.returncode == 0
    p = gencli(["generate", "hi"], env, workdir)
    assert p.returncode == 0 and "sqlite3" not in imported(p)  # off: the log is not opened
    gencli(["logs", "on"], env, workdir)
    p = gencli(["generate", "hi"], env, workdir)
    assert p.returncode == 0 and {"sqlite3", "gencli.cli.logdb"} <= imported(p)
