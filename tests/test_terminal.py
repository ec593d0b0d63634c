"""What a person sees when `gencli generate` runs in a terminal.

The real `gencli` command runs in a tmux pane (a real pseudo-terminal with a real
terminal emulator) against the fake OpenAI-compatible upstream; the assertions are on
the pane's screen and scroll-back as tmux renders them, and on the exit status tmux
records. Ctrl-C is a real Ctrl-C typed into the pane.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import GENCLI, clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.tmux import Pane, needs_tmux

pytestmark = needs_tmux

SGR = re.compile(r"\x1b\[([0-9;]*)m")


@pytest.fixture
def term(tmp_path, openai_fake):
    """Start gencli in a pane: term(args, model=..., **env) -> Pane. models.json names model 'm'."""
    panes: list[Pane] = []

    def start(args: list[str], model: str = "reason-deepseek", rows: int = 40, **extra_env: str) -> Pane:
        work = tmp_path / f"work{len(panes)}"
        work.mkdir()
        (work / "models.json").write_text(
            json.dumps(
                {
                    "m": {
                        "provider": "openai-compatible",
                        "model": model,
                        "base_url": openai_fake.base_url,
                        "api_key_env": "FAKE_UPSTREAM_KEY",
                    }
                }
            )
        )
        env = clean_env(tmp_path, FAKE_UPSTREAM_KEY=FAKE_KEY, TERM="xterm-256color", **extra_env)
        pane = Pane(work, [GENCLI, "generate", "-m", "m", *args], env, rows=rows)
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.close()


def test_reasoning_then_markdown_answer(term):
    pane = term(["Tell me **something** with `code`."], model="reason-deepseek")
    assert pane.wait_exit() == 0
    screen = pane.screen()
    assert screen.count("Hmm, the user wants an answer.") == 1, screen
    assert "reasoning" in screen  # the panel's title
    assert screen.count("Here it is: 42.") == 1, screen
    assert screen.index("Hmm, the user wants") < screen.index("Here it is: 42.")
    assert "Traceback" not in screen
    assert "thinking…" not in screen and "waiting for the model" not in screen  # the spinner is transient


def test_markdown_is_rendered_not_raw(term):
    prompt = "Some **bold words** and `inline code` here.\n\n# A Heading\n\n- first item\n- second item\n"
    pane = term([prompt], model="echo")
    assert pane.wait_exit() == 0
    screen = pane.screen()
    assert "bold words" in screen and "inline code" in screen, screen
    assert "**" not in screen and "`" not in screen and "# A Heading" not in screen, screen
    assert "A Heading" in screen
    assert "• first item" in screen and "• second item" in screen, screen
    # NO_COLOR (set by clean_env): attributes such as bold are fine, colours are not.
    colours = [
        p
        for p in SGR.findall(pane.screen(escapes=True))
        if re.search(r"(^|;)(3[0-7]|38|4[0-7]|48|9[0-7]|10[0-7])(;|$)", p)
    ]
    assert colours == [], colours[:5]
    # Bold is still shown as bold.
    assert re.search(r"\x1b\[(?:[0-9;]*;)?1(?:;[0-9;]*)?mbold words", pane.screen(escapes=True))


def test_colour_without_no_color(term):
    pane = term(["Some `inline code` here."], model="echo", NO_COLOR="")
    assert pane.wait_exit() == 0
    raw = pane.screen(escapes=True)
    assert any(re.search(r"(^|;)(3[0-7]|38|9[0-7])(;|$)", p) for p in SGR.findall(raw)), raw


def test_hide_reasoning(term):
    pane = term(["--hide-reasoning", "question"])
    assert pane.wait_exit() == 0
    screen = pane.screen()
    assert "Here it is: 42." in screen
    assert "Hmm" not in screen and "the user wants" not in screen, screen


def test_long_answer_has_no_duplicates_or_artefacts(term):
    paras = [f"Paragraph {i:02d} has **some** words in it." for i in range(60)]
    code = "```\n" + "\n".join(f"line_{i:02d} = {i}" for i in range(30)) + "\n```"
    prompt = "\n\n".join(paras[:30] + [code] + paras[30:])
    pane = term([prompt], model="echo", rows=12)
    assert pane.wait_exit() == 0
    screen = pane.screen()
    for i in range(60):
        assert screen.count(f"Paragraph {i:02d} has some words in it.") == 1, (i, screen)
    for i in range(30):
        assert screen.count(f"line_{i:02d} = {i}") == 1, (i, screen)
    assert "**" not in screen and "```" not in screen
    order = [screen.index(f"Paragraph {i:02d}") for i in range(60)]
    assert order == sorted(order)
    assert (
        screen.index("Paragraph 29") < screen.index("line_00") < screen.index("line_29") < screen.index("Paragraph 30")
    )


def test_ctrl_c_keeps_partial_answer(term):
    pane = term(["count"], model="slow-100-300")
    pane.wait_for("tok3")
    pane.keys("C-c")
    assert pane.wait_exit(timeout=10) == 130
    screen = pane.screen()
    assert "tok0 tok1 tok2 tok3" in screen, screen
    assert screen.count("tok0") == 1 and screen.count("tok3") == 1, screen  # the live area was replaced, not left
    assert "tok299" not in screen
    assert "(interrupted)" in screen
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen


def test_midstream_error_keeps_partial_answer(term):
    pane = term(["go"], model="error-midstream")
    assert pane.wait_exit() == 1
    screen = pane.screen()
    assert "Partial answer" in screen, screen
    assert "gencli: error:" in screen
    assert screen.index("Partial answer") < screen.index("gencli: error:")
    assert "Traceback" not in screen


def test_piped_run_never_imports_rich(tmp_path, workdir, openai_fake):
    """The plain path stays light: no Rich (nor httpx's optional CLI client, which pulls it in)."""
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "m": {
                    "provider": "openai-compatible",
                    "model": "reason-deepseek",
                    "base_url": openai_fake.base_url,
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                }
            }
        )
    )
    env = clean_env(tmp_path, FAKE_UPSTREAM_KEY=FAKE_KEY, PYTHONPROFILEIMPORTTIME="1")
    out = run_gencli(["generate", "-m", "m", "hi"], env, workdir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"Here it is: 42.\n"
    imported = {
        line.split("|")[-1].strip() for line in out.stderr.decode().splitlines() if line.startswith("import time:")
    }
    assert "gencli.engine" in imported  # the profile really lists gencli's imports
    heavy = {m for m in imported if m.split(".")[0] in ("rich", "pygments", "asyncio", "markdown_it")}
    assert not heavy, sorted(heavy)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_block_splitter(chunk):
    """Completed blocks end at blank lines outside fences, however the text is cut into deltas."""
    from gencli.cli.render_rich import BlockSplitter

    text = (
        "# Title\n\nA paragraph\non two lines.\n\n```python\ndef f():\n\n    return 1\n```\n\n"
        "~~~~\n```\n\nnot closed by ```\n~~~~\n\n- a\n- b\n\ntail without end"
    )
    s = BlockSplitter()
    blocks: list[str] = []
    for i in range(0, len(text), chunk):
        blocks += s.feed(text[i : i + chunk])
    assert blocks == [
        "# Title",
        "A paragraph\non two lines.",
        "```python\ndef f():\n\n    return 1\n```",
        "~~~~\n```\n\nnot closed by ```\n~~~~",
        "- a\n- b",
    ]
    assert s.pending == "tail without end"
