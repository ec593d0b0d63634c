"""Conversations kept between runs (the XDG state directory): `generate -c` continues the
last one, `--conversation NAME` keeps named ones, `gencli conversations` lists and deletes
them. Also `-x/--extract` and `--extract-last`, and `gencli models --json`'s capabilities
and context lengths. The real `gencli` command against the fake OpenAI upstream."""

from __future__ import annotations

import json
import os
import stat

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
                "other": {"provider": "openai", "model": "echo", "base_url": url},
                "reason": {"provider": "openrouter", "model": "reason-openrouter", "base_url": url},
                "mid": {"provider": "openrouter", "model": "error-midstream", "base_url": url},
                "big": {
                    "provider": "openai-compatible",
                    "model": "x",
                    "base_url": url,
                    "options": {"num_ctx": 4096},
                    "capabilities": ["completion", "vision", "tools"],
                },
            }
        )
    )
    return clean_env(
        tmp_path, OPENAI_API_KEY=FAKE_KEY, OPENROUTER_API_KEY=FAKE_KEY, XDG_STATE_HOME=str(tmp_path / "state")
    )


def gencli(args, env, cwd, input=None):
    return run_gencli(args, env, cwd, input=input, timeout=30)


def sent(fake) -> list[str]:
    return [m["content"] for m in fake.last().body["messages"]]


# -- -c / --continue and --conversation ------------------------------------------------------


def test_continue_the_last_conversation(env, workdir, openai_fake, tmp_path):
    assert gencli(["generate", "my name is Ada"], env, workdir).returncode == 0
    p = gencli(["generate", "-c", "what is my name?"], env, workdir)
    assert p.returncode == 0, p.stderr
    assert sent(openai_fake) == ["my name is Ada", "You said: my name is Ada", "what is my name?"]
    p = gencli(["generate", "--continue", "and again?"], env, workdir)
    assert len(sent(openai_fake)) == 5
    # without -c a run starts afresh (and becomes the last one)
    assert gencli(["generate", "new topic"], env, workdir).returncode == 0
    assert sent(openai_fake) == ["new topic"]
    gencli(["generate", "-c", "more"], env, workdir)
    assert sent(openai_fake) == ["new topic", "You said: new topic", "more"]
    # kept privately, as a file --context reads too
    folder = tmp_path / "state" / "gencli" / "conversations"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    last = folder / "last.json"
    data = json.loads(last.read_text())
    assert data["model"] == "echo" and data["turns"] == 2 and data["context"][0] == 6775553
    p = gencli(["generate", "--context", str(last), "via --context"], env, workdir)
    assert p.returncode == 0, p.stderr
    assert sent(openai_fake)[:2] == ["new topic", "You said: new topic"]


def test_continue_with_nothing_kept_starts_a_conversation(env, workdir, openai_fake):
    p = gencli(["generate", "-c", "hello"], env, workdir)
    assert p.returncode == 0, p.stderr
    assert sent(openai_fake) == ["hello"]


def test_named_conversations(env, workdir, openai_fake):
    gencli(["generate", "--conversation", "work", "we use Postgres"], env, workdir)
    gencli(["generate", "--conversation", "home", "the cat is Tom"], env, workdir)
    gencli(["generate", "unrelated"], env, workdir)
    p = gencli(["generate", "--conversation", "work", "which database?"], env, workdir)
    assert p.returncode == 0, p.stderr
    assert sent(openai_fake) == ["we use Postgres", "You said: we use Postgres", "which database?"]
    # -c continues the one used most recently, named or not
    gencli(["generate", "-c", "sure?"], env, workdir)
    assert sent(openai_fake)[0] == "we use Postgres" and len(sent(openai_fake)) == 5
    # another model can carry on a conversation
    p = gencli(["generate", "-m", "other", "--conversation", "home", "the cat's name?"], env, workdir)
    assert sent(openai_fake)[0] == "the cat is Tom"


def test_conversations_lists_and_deletes(env, workdir):
    p = gencli(["conversations"], env, workdir)
    assert p.returncode == 0 and "no conversations yet" in p.stdout.decode()
    gencli(["generate", "--conversation", "work", "one"], env, workdir)
    gencli(["generate", "--conversation", "work", "two"], env, workdir)
    gencli(["generate", "-m", "other", "three"], env, workdir)
    p = gencli(["conversations"], env, workdir)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "TURNS", "LAST", "USED"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows["last"][1:4] == ["*", "other", "1"]  # the most recent first, marked
    assert rows["work"][1:3] == ["echo", "2"]
    data = json.loads(gencli(["conversations", "--json"], env, workdir).stdout)
    assert [(c["name"], c["model"], c["turns"]) for c in data["conversations"]] == [
        ("last", "other", 1),
        ("work", "echo", 2),
    ]
    assert all(isinstance(c["last_used"], float) for c in data["conversations"])
    p = gencli(["conversations", "--delete", "work"], env, workdir)
    assert p.returncode == 0 and "deleted" in p.stdout.decode()
    names = [c["name"] for c in json.loads(gencli(["conversations", "--json"], env, workdir).stdout)["conversations"]]
    assert names == ["last"]
    text = one_line_error(gencli(["conversations", "--delete", "wrok"], env, workdir), 2)
    assert "'wrok'" in text


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--conversation", "../etc", "x"], "conversation name"),
        (["--conversation", "a b", "x"], "conversation name"),
        (["--context", "c.json", "-c", "x"], "cannot be combined"),
        (["--context", "c.json", "--conversation", "n", "x"], "cannot be combined"),
    ],
)
def test_bad_conversation_flags_are_usage_errors(env, workdir, openai_fake, args, needle):
    before = openai_fake.mark()
    assert needle in one_line_error(gencli(["generate", *args], env, workdir), 2)
    assert openai_fake.since(before) == []


def test_a_damaged_kept_conversation_names_the_way_out(tmp_path, env, workdir, openai_fake):
    gencli(["generate", "--conversation", "n", "hi"], env, workdir)
    path = tmp_path / "state" / "gencli" / "conversations" / "n.json"
    data = json.loads(path.read_text())
    data["context"][-1] ^= 0xFF
    path.write_text(json.dumps(data))
    before = openai_fake.mark()
    for args in (["--conversation", "n"], ["-c"]):
        text = one_line_error(gencli(["generate", *args, "again"], env, workdir), 2)
        assert "'n'" in text and "gencli conversations --delete n" in text
    assert openai_fake.since(before) == []


def test_failed_or_interrupted_turns_are_not_kept(env, workdir, openai_fake):
    gencli(["generate", "keep this"], env, workdir)
    assert gencli(["generate", "-m", "mid", "-c", "this fails"], env, workdir).returncode == 1
    gencli(["generate", "-c", "next"], env, workdir)
    assert sent(openai_fake) == ["keep this", "You said: keep this", "next"]


def test_unwritable_state_warns_but_keeps_the_answer(tmp_path, env, workdir):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory should be")
    p = gencli(["generate", "hello"], dict(env, XDG_STATE_HOME=str(blocker)), workdir)
    assert p.returncode == 0
    assert p.stdout == b"You said: hello\n"
    err = p.stderr.decode()
    assert err.startswith("gencli: warning: ") and err.count("\n") == 1 and "XDG_STATE_HOME" in err
    # a named conversation that cannot be kept is an error (the answer is still printed)
    p = gencli(["generate", "--conversation", "n", "hello"], dict(env, XDG_STATE_HOME=str(blocker)), workdir)
    assert p.returncode == 1 and p.stdout == b"You said: hello\n"
    one_line_error(p, 1)


# -- -x / --extract ---------------------------------------------------------------------------

ANSWER = (
    "Try this:\n\n```bash\nls -la | head\n```\n\nor, in Python:\n\n~~~python\nimport os\nprint(os.listdir())\n~~~\n"
)


def test_extract_prints_the_first_code_block(env, workdir):
    p = gencli(["generate", "-x", ANSWER], env, workdir)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"ls -la | head\n"  # 'You said: ' is outside the block


def test_extract_last(env, workdir):
    p = gencli(["generate", "--extract-last", ANSWER], env, workdir)
    assert p.stdout == b"import os\nprint(os.listdir())\n"


def test_extract_without_a_block_prints_the_answer(env, workdir):
    p = gencli(["generate", "-x", "just words"], env, workdir)
    assert p.stdout == b"You said: just words\n"


def test_extract_keeps_reasoning_on_stderr(env, workdir):
    p = gencli(["generate", "-x", "-m", "reason", "q"], env, workdir)
    assert p.stdout == b"The answer is 42.\n" and b"Let me think about this." in p.stderr


def test_extract_and_json_are_a_usage_error(env, workdir):
    assert "--json" in one_line_error(gencli(["generate", "-x", "--json", "q"], env, workdir), 2)


def test_extract_after_a_failure_prints_what_arrived(env, workdir):
    p = gencli(["generate", "-x", "-m", "mid", "q"], env, workdir)
    assert p.returncode == 1 and p.stdout.startswith(b"Partial answer")


# -- gencli models --json ---------------------------------------------------------------------


def test_models_json_has_capabilities_and_context_length(env, workdir):
    p = gencli(["models", "--json"], env, workdir)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)["models"]}
    assert rows["big"]["context_length"] == 4096  # options.num_ctx
    assert rows["big"]["capabilities"] == ["completion", "vision", "tools"]
    assert rows["echo"]["context_length"] == 128000  # the provider's usual window
    assert rows["reason"]["context_length"] == 131072
    assert rows["gemini-2.5-flash"]["context_length"] == 1048576
    assert rows["smollm2"]["context_length"] == 2048  # the window it is loaded with (its GGUF allows 8192)
    assert rows["claude-sonnet-5-5"]["context_length"] == 1000000
    assert all(isinstance(r["capabilities"], list) and r["capabilities"] for r in rows.values())
