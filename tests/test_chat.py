"""`gencli chat` as a person uses it, in a real terminal (tmux): type, see the streamed
answer, Ctrl-C mid-answer and carry on, /set and /show, /save then /load in a new session,
history recall with the Up key across sessions, Ctrl-D. And piped, as a script uses it:
each line a turn, only answers on stdout. The upstream is the fake OpenAI-compatible
server; what it received is checked too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import GENCLI, clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.tmux import Pane, needs_tmux


def models(url: str) -> dict:
    def m(model: str, **kw) -> dict:
        return {
            "provider": "openai-compatible",
            "model": model,
            "base_url": url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            **kw,
        }

    return {
        "default": "m",
        "m": m("echo"),
        "slow": m("slow-100-300"),
        "broken": m("error-500"),
        "reason": m("reason-deepseek", capabilities=["completion", "thinking"]),
        "mid": m("error-midstream"),
    }


@pytest.fixture
def home(tmp_path, openai_fake) -> Path:
    """A working directory with models.json; HOME and XDG_STATE_HOME under tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "models.json").write_text(json.dumps(models(openai_fake.base_url)))
    return work


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return clean_env(tmp_path, FAKE_UPSTREAM_KEY=FAKE_KEY, XDG_STATE_HOME=str(tmp_path / "state"))


@pytest.fixture
def chat(home, env):
    """Start `gencli chat ARGS` in a tmux pane; the panes are closed after the test."""
    panes: list[Pane] = []

    def start(*args: str, rows: int = 40) -> Pane:
        pane = Pane(home, [GENCLI, "chat", *args], dict(env, TERM="xterm-256color"), rows=rows)
        panes.append(pane)
        pane.wait_for(">>> ")
        return pane

    yield start
    for pane in panes:
        pane.close()


def say(pane: Pane, text: str, expect: str, prompts: int) -> str:
    """Type a line and wait for ``expect`` and the next prompt (``prompts`` in all)."""
    pane.keys("-l", text)
    pane.keys("Enter")
    pane.wait_for(expect)
    return pane.wait_for(">>> ", count=prompts)


def last_error(screen: str) -> str:
    return [line for line in screen.splitlines() if line.startswith("gencli: error:")][-1]


def bodies(fake, before: int) -> list[dict]:
    return [r.body for r in fake.since(before) if r.path == "/v1/chat/completions"]


# -- the terminal -------------------------------------------------------------------------


@needs_tmux
def test_a_conversation_at_the_prompt(chat, openai_fake):
    before = openai_fake.mark()
    pane = chat("-m", "m")
    screen = pane.screen()
    assert "gencli chat with m" in screen and "/help" in screen
    screen = say(pane, "my name is **Ada**", "You said: my name is Ada", 2)
    assert "**" not in screen.split("You said:")[1]  # the answer is rendered Markdown, not raw
    say(pane, "what is my name?", "You said: what is my name?", 3)
    sent = bodies(openai_fake, before)
    assert sent[-1]["messages"] == [
        {"role": "user", "content": "my name is **Ada**"},
        {"role": "assistant", "content": "You said: my name is **Ada**"},
        {"role": "user", "content": "what is my name?"},
    ]
    pane.keys("C-d")
    assert pane.wait_exit(timeout=10) == 0
    assert "Traceback" not in pane.screen()


@needs_tmux
def test_reasoning_panel_then_answer(chat):
    pane = chat("-m", "reason")
    screen = say(pane, "why?", "Here it is: 42.", 2)
    assert screen.count("Hmm, the user wants an answer.") == 1
    assert "reasoning" in screen
    assert screen.index("Hmm, the user wants") < screen.index("Here it is: 42.")


@needs_tmux
def test_ctrl_c_stops_the_answer_and_the_session_goes_on(chat, openai_fake):
    pane = chat("-m", "slow")
    pane.keys("-l", "count")
    pane.keys("Enter")
    pane.wait_for("tok3")
    pane.keys("C-c")
    screen = pane.wait_for(">>> ", count=2)
    assert "(interrupted)" in screen and "tok299" not in screen
    assert screen.count("tok0") == 1, screen  # the live area was replaced, not left behind
    assert pane.status() is None  # still running
    before = openai_fake.mark()
    say(pane, "/model m", "model: m", 3)
    say(pane, "still there?", "You said: still there?", 4)
    # the interrupted turn is not part of the conversation
    assert bodies(openai_fake, before)[-1]["messages"] == [{"role": "user", "content": "still there?"}]
    # Ctrl-C at the prompt does not leave either
    pane.keys("-l", "half typed")
    pane.keys("C-c")
    pane.wait_for("Ctrl-D or /bye to leave")
    pane.keys("-l", "/bye")
    pane.keys("Enter")
    assert pane.wait_exit(timeout=10) == 0
    assert "Traceback" not in pane.screen() and "KeyboardInterrupt" not in pane.screen()


@needs_tmux
def test_set_and_show(chat, openai_fake):
    pane = chat("-m", "m")
    say(pane, "/set system Answer like a pirate.", "system prompt set", 2)
    say(pane, "/set temperature 0.25", "temperature: 0.25", 3)
    say(pane, "/set top_p 0.5", "top_p: 0.5", 4)
    say(pane, "/set stop END 'two words'", "stop:", 5)
    say(pane, "/set think off", "think: off", 6)
    error = last_error(say(pane, "/set temperature 7", "gencli: error:", 7))
    assert "temperature" in error and "from 0 to 2" in error
    before = openai_fake.mark()
    say(pane, "ahoy", "You said: ahoy", 8)
    body = bodies(openai_fake, before)[-1]
    assert body["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert body["temperature"] == 0.25 and body["top_p"] == 0.5 and body["stop"] == ["END", "two words"]
    screen = say(pane, "/show", "tokens", 9)
    show = screen[screen.rindex("/show") :]
    assert "model         m (openai-compatible: echo)" in show
    assert "Answer like a pirate." in show and "think         off" in show
    assert "temperature=0.25" in show and "top_p=0.5" in show
    assert "1 turn," in show and "tokens        " in show
    say(pane, "/unset temperature", "temperature: unset", 10)
    before = openai_fake.mark()
    say(pane, "again", "You said: again", 11)
    assert "temperature" not in bodies(openai_fake, before)[-1]
    screen = say(pane, "/help", "/bye", 12)
    assert "/save FILE" in screen and "/load FILE" in screen and "/set think on|off" in screen


@needs_tmux
def test_save_then_load_in_a_new_session(chat, home, openai_fake):
    pane = chat("-m", "m")
    say(pane, "remember the word kiwi", "You said: remember the word kiwi", 2)
    say(pane, "/save conv.json", "saved the conversation to conv.json", 3)
    pane.keys("-l", "/bye")
    pane.keys("Enter")
    assert pane.wait_exit(timeout=10) == 0
    assert isinstance(json.loads((home / "conv.json").read_text()), list)  # the --context file format

    pane = chat("-m", "m")
    say(pane, "/load conv.json", "loaded 1 turn", 2)
    before = openai_fake.mark()
    say(pane, "which word?", "You said: which word?", 3)
    assert bodies(openai_fake, before)[-1]["messages"][:2] == [
        {"role": "user", "content": "remember the word kiwi"},
        {"role": "assistant", "content": "You said: remember the word kiwi"},
    ]
    assert "missing.json" in last_error(say(pane, "/load missing.json", "gencli: error:", 4))
    (home / "bad.json").write_text("[1, 2, 3]")
    assert "context" in last_error(say(pane, "/load bad.json", "gencli: error:", 5))
    say(pane, "/clear", "cleared", 6)
    before = openai_fake.mark()
    say(pane, "fresh", "You said: fresh", 7)
    assert bodies(openai_fake, before)[-1]["messages"] == [{"role": "user", "content": "fresh"}]


@needs_tmux
def test_history_is_recalled_with_up_in_the_next_session(chat, tmp_path):
    pane = chat("-m", "m")
    say(pane, "the first question", "You said: the first question", 2)
    pane.keys("C-d")
    assert pane.wait_exit(timeout=10) == 0
    assert "the first question" in (tmp_path / "state" / "gencli" / "chat_history").read_text()

    pane = chat("-m", "m")
    pane.keys("Up")
    pane.wait_for(">>> the first question")
    pane.keys("Enter")
    pane.wait_for("You said: the first question")


@needs_tmux
def test_tab_completes_commands_and_model_names(chat):
    pane = chat("-m", "m")
    pane.keys("-l", "/mo")
    pane.keys("Tab")
    pane.wait_for(">>> /model")  # (the screen capture drops the trailing space)
    pane.keys("-l", "sl")
    pane.keys("Tab")
    pane.wait_for(">>> /model slow")
    pane.keys("Enter")
    pane.wait_for("model: slow")


@needs_tmux
def test_several_lines_between_triple_quotes(chat, openai_fake):
    pane = chat("-m", "m")
    before = openai_fake.mark()
    pane.keys("-l", '"""first line')
    pane.keys("Enter")
    pane.wait_for("... ")
    pane.keys("-l", "second line")
    pane.keys("Enter")
    pane.keys("-l", 'third"""')
    pane.keys("Enter")
    pane.wait_for("You said: first line")
    pane.wait_for(">>> ", count=2)
    assert bodies(openai_fake, before)[-1]["messages"] == [
        {"role": "user", "content": "first line\nsecond line\nthird"}
    ]


@needs_tmux
def test_a_failed_request_is_one_line_and_the_session_goes_on(chat):
    pane = chat("-m", "broken")
    screen = say(pane, "hello", "gencli: error:", 2)
    errors = [line for line in screen.splitlines() if "gencli: error:" in line]
    assert len(errors) == 1 and "500" in errors[0]
    screen = say(pane, "/model mid", "model: mid", 3)
    screen = say(pane, "go", "gencli: error:", 4)
    assert "Partial answer" in screen  # what arrived before the failure stays
    say(pane, "/model nope", "not found", 5)
    say(pane, "/model m", "model: m", 6)
    say(pane, "works now", "You said: works now", 7)
    assert "Traceback" not in pane.screen()


def test_unknown_model_fails_before_the_prompt(home, env):
    p = run_gencli(["chat", "-m", "nope"], env, home)
    assert p.returncode == 2
    assert p.stderr.decode().startswith("gencli: error: model 'nope' not found")
    assert p.stdout == b""


# -- piped ---------------------------------------------------------------------------------


def test_piped_each_line_is_a_turn_and_only_answers_are_printed(home, env, openai_fake):
    before = openai_fake.mark()
    script = b"my name is Ada\n\n/set temperature 0.5\n/show\nwhat is my name?\n"
    p = run_gencli(["chat", "-m", "m"], env, home, input=script)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"You said: my name is Ada\nYou said: what is my name?\n"
    assert b"temperature: 0.5" in p.stderr and b"model         m" in p.stderr  # commands answer on stderr
    sent = bodies(openai_fake, before)
    assert len(sent) == 2 and sent[1]["temperature"] == 0.5 and len(sent[1]["messages"]) == 3


def test_piped_triple_quotes_and_bye(home, env, openai_fake):
    before = openai_fake.mark()
    p = run_gencli(["chat", "-m", "m"], env, home, input=b'"""\nline one\nline two\n"""\n/bye\nnever sent\n')
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"You said: line one\nline two\n"
    assert [b["messages"][-1]["content"] for b in bodies(openai_fake, before)] == ["line one\nline two"]


def test_piped_failures_are_one_line_each_and_exit_1(home, env):
    p = run_gencli(["chat", "-m", "broken"], env, home, input=b"one\n/model m\ntwo\n/nonsense\n")
    assert p.returncode == 1
    assert p.stdout == b"You said: two\n"
    errors = [line for line in p.stderr.decode().splitlines() if line.startswith("gencli: error:")]
    assert len(errors) == 2 and "500" in errors[0] and "/nonsense" in errors[1]
    assert "Traceback" not in p.stderr.decode()


def test_piped_non_utf8_line_is_refused(home, env):
    p = run_gencli(["chat", "-m", "m"], env, home, input=b"caf\xe9\n")
    assert p.returncode == 2 and b"stdin line 1 is not UTF-8" in p.stderr


def test_piped_chat_then_generate_continues_it(home, env, openai_fake):
    p = run_gencli(["chat", "-m", "m"], env, home, input=b"the code word is mango\n")
    assert p.returncode == 0, p.stderr
    before = openai_fake.mark()
    p = run_gencli(["generate", "-c", "which code word?"], env, home)
    assert p.returncode == 0, p.stderr
    assert [m["content"] for m in bodies(openai_fake, before)[-1]["messages"]] == [
        "the code word is mango",
        "You said: the code word is mango",
        "which code word?",
    ]
    # and chat -c carries on from generate
    before = openai_fake.mark()
    p = run_gencli(["chat", "-c"], env, home, input=b"and again?\n")
    assert p.returncode == 0, p.stderr
    assert len(bodies(openai_fake, before)[-1]["messages"]) == 5


def test_piped_chat_never_imports_rich(home, env):
    p = run_gencli(["chat", "-m", "m"], dict(env, PYTHONPROFILEIMPORTTIME="1"), home, input=b"hi\n")
    assert p.returncode == 0, p.stderr
    imported = {
        line.split("|")[-1].strip() for line in p.stderr.decode().splitlines() if line.startswith("import time:")
    }
    assert "gencli.engine" in imported
    assert not {m for m in imported if m.split(".")[0] in ("rich", "pygments", "markdown_it", "readline")}


@needs_tmux
def test_edit_at_the_prompt_opens_the_editor_on_the_terminal(chat, env, tmp_path, openai_fake):
    """/edit runs $EDITOR on the terminal (a script here), sends what it leaves, and the
    session goes on at the prompt."""
    script = tmp_path / "fake-editor"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n"
        "p = Path(sys.argv[-1])\np.write_text(p.read_text() + ' and more from the editor')\n"
    )
    script.chmod(0o755)
    env["EDITOR"] = str(script)
    before = openai_fake.mark()
    pane = chat("-m", "m")
    say(pane, "/edit a draft", "You said: a draft and more from the editor", 2)
    assert bodies(openai_fake, before)[-1]["messages"][-1]["content"] == "a draft and more from the editor"
    pane.keys("C-d")
    assert pane.wait_exit(timeout=10) == 0
