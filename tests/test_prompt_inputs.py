"""What goes into a prompt besides the argument, through the real ``gencli`` command against
the fake OpenAI upstream: the editor (``generate -e`` and ``/edit`` in chat, with a script
as $EDITOR), templates (``gencli templates edit/list/show``, ``-t NAME``, ``-p KEY VALUE``,
YAML and TOML), and fragments (``-f PATH|URL|-``: files, stdin, and pages from a local
file server on 127.0.0.1, behind the address guard of the server's image downloads)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
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
                "other": {"provider": "openai", "model": "echo", "base_url": url},
            }
        )
    )
    return clean_env(
        tmp_path,
        OPENAI_API_KEY=FAKE_KEY,
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_DATA_HOME=str(tmp_path / "data"),
    )


def gencli(args, env, cwd, input=None) -> subprocess.CompletedProcess:
    return run_gencli(args, env, cwd, input=input, timeout=30)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def sent(fake) -> dict:
    body = fake.last().body
    messages = body["messages"]
    return {
        "system": next((m["content"] for m in messages if m["role"] == "system"), None),
        "prompt": messages[-1]["content"],
        "body": body,
    }


# -- the editor -----------------------------------------------------------------------------

EDITOR = """#!{python}
import sys
from pathlib import Path
path = Path(sys.argv[-1])
Path({seen!r}).write_text(path.read_text())
path.write_text(Path({text!r}).read_text())
sys.exit({code})
"""


def editor(tmp_path: Path, text: str, code: int = 0) -> tuple[str, Path]:
    """A script for $EDITOR: records what the buffer held, then leaves ``text`` in it."""
    (tmp_path / "editor-text").write_text(text)
    seen = tmp_path / "editor-seen"
    script = tmp_path / "fake-editor"
    script.write_text(
        EDITOR.format(python=sys.executable, seen=str(seen), text=str(tmp_path / "editor-text"), code=code)
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), seen


def test_generate_e_sends_what_the_editor_leaves(env, workdir, tmp_path, openai_fake):
    script, seen = editor(tmp_path, "Why is the sea salty?\n")
    env = {**env, "EDITOR": script}
    assert ok(gencli(["generate", "-e"], env, workdir)) == "You said: Why is the sea salty?\n"
    assert sent(openai_fake)["prompt"] == "Why is the sea salty?"
    assert seen.read_text() == ""
    ok(gencli(["generate", "-e", "start from this"], env, workdir))  # the buffer starts with PROMPT
    assert seen.read_text() == "start from this"


def test_visual_comes_before_editor_and_takes_arguments(env, workdir, tmp_path, openai_fake):
    script, _ = editor(tmp_path, "from visual")
    env = {**env, "VISUAL": f"{script} --wait", "EDITOR": "/nonexistent/editor"}
    ok(gencli(["generate", "-e"], env, workdir))
    assert sent(openai_fake)["prompt"] == "from visual"


def test_an_empty_buffer_aborts_with_exit_1(env, workdir, tmp_path, openai_fake):
    mark = openai_fake.mark()
    script, _ = editor(tmp_path, "  \n\n")
    p = gencli(["generate", "-e"], {**env, "EDITOR": script}, workdir)
    assert "buffer was empty; nothing was sent" in one_line_error(p, 1)
    script, _ = editor(tmp_path, "text", code=3)
    p = gencli(["generate", "-e"], {**env, "EDITOR": script}, workdir)
    assert "exited with status 3" in one_line_error(p, 1)
    p = gencli(["generate", "-e"], {**env, "EDITOR": str(tmp_path / "no-such-editor")}, workdir)
    assert "cannot run the editor" in one_line_error(p, 1)
    assert openai_fake.since(mark) == []


def test_chat_edit(env, workdir, tmp_path, openai_fake):
    script, seen = editor(tmp_path, "written in the editor")
    p = gencli(["chat"], {**env, "EDITOR": script}, workdir, input=b"hello\n/edit draft\n")
    assert ok(p) == "You said: hello\nYou said: written in the editor\n"
    assert seen.read_text() == "draft"
    script, _ = editor(tmp_path, "")
    p = gencli(["chat"], {**env, "EDITOR": script}, workdir, input=b"/edit\nafter\n")
    assert p.returncode == 1  # a failed command in a piped chat
    assert p.stdout.decode() == "You said: after\n"
    assert "buffer was empty" in p.stderr.decode()


# -- templates ----------------------------------------------------------------------------


def templates_dir(tmp_path: Path) -> Path:
    return tmp_path / "config" / "gencli" / "templates"


REVIEW = """\
system: You review $language code.
prompt: |
  Review this $language code:

  $input
defaults:
  language: Python
model: other
options:
  temperature: 0.25
"""


def test_templates_edit_list_show_and_use(env, workdir, tmp_path, openai_fake):
    script, seen = editor(tmp_path, REVIEW)
    p = gencli(["templates", "edit", "review"], {**env, "EDITOR": script}, workdir)
    assert p.returncode == 0, p.stderr.decode()
    assert "# gencli template 'review'" in seen.read_text()  # a new one starts from a commented skeleton
    assert (templates_dir(tmp_path) / "review.yaml").read_text() == REVIEW
    assert ok(gencli(["templates", "list"], env, workdir)).startswith("review  system: You review $language code.")
    assert ok(gencli(["templates", "show", "review"], env, workdir)) == REVIEW
    assert ok(gencli(["templates", "path"], env, workdir)).strip() == str(templates_dir(tmp_path))

    ok(gencli(["generate", "-t", "review"], env, workdir, input=b"print(1)\n"))
    got = sent(openai_fake)
    assert got["system"] == "You review Python code."
    assert got["prompt"] == "Review this Python code:\n\nprint(1)\n"
    assert got["body"]["temperature"] == 0.25
    ok(gencli(["generate", "-t", "review", "-p", "language", "Go", "--temperature", "1", "x := 1"], env, workdir))
    got = sent(openai_fake)
    assert got["prompt"] == "Review this Go code:\n\nx := 1" and got["system"] == "You review Go code."
    assert got["body"]["temperature"] == 1  # a flag wins over the template
    ok(gencli(["generate", "-t", "review", "-s", "mine", "y"], env, workdir))
    assert sent(openai_fake)["system"] == "mine"


def test_template_model_and_toml(env, workdir, tmp_path, openai_fake):
    folder = templates_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "fr.toml").write_text('system = "Answer in French."\nmodel = "other"\n')
    p = gencli(["generate", "-v", "-t", "fr", "hello"], env, workdir)
    ok(p)
    assert sent(openai_fake)["system"] == "Answer in French."
    assert sent(openai_fake)["prompt"] == "hello"  # no prompt in the template: the input as it is
    ok(gencli(["chat", "-t", "fr"], env, workdir, input=b"bonjour\n"))
    assert sent(openai_fake)["system"] == "Answer in French."
    (folder / "wrap.toml").write_text('prompt = "Summarise this:"\n')
    ok(gencli(["generate", "-t", "wrap", "the text"], env, workdir))
    assert sent(openai_fake)["prompt"] == "Summarise this:\n\nthe text"  # no $input: appended


def test_template_errors(env, workdir, tmp_path, openai_fake):
    folder = templates_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "need.yaml").write_text("prompt: Translate $input into $lang\n")
    mark = openai_fake.mark()
    p = gencli(["generate", "-t", "need", "hi"], env, workdir)
    assert "needs the parameter 'lang': give it with -p lang VALUE" in one_line_error(p, 2)
    assert "no template 'nope'" in one_line_error(gencli(["generate", "-t", "nope", "x"], env, workdir), 2)
    p = gencli(["generate", "-t", "need", "-p", "colour", "red", "-p", "lang", "fr", "x"], env, workdir)
    assert "has no $colour" in one_line_error(p, 2)
    assert "name the template with -t" in one_line_error(gencli(["generate", "-p", "a", "b", "x"], env, workdir), 2)
    (folder / "bad.yaml").write_text("system: [unclosed\n")
    assert "not valid YAML" in one_line_error(gencli(["generate", "-t", "bad", "x"], env, workdir), 2)
    (folder / "odd.yaml").write_text("sytem: typo\n")
    assert "unknown field 'sytem'" in one_line_error(gencli(["generate", "-t", "odd", "x"], env, workdir), 2)
    (folder / "opt.yaml").write_text("system: s\noptions:\n  temperature: 9\n")
    assert "temperature" in one_line_error(gencli(["generate", "-t", "opt", "x"], env, workdir), 2)
    assert openai_fake.since(mark) == []


def test_templates_edit_left_empty_saves_nothing(env, workdir, tmp_path):
    script, _ = editor(tmp_path, "")
    p = gencli(["templates", "edit", "blank"], {**env, "EDITOR": script}, workdir)
    assert "left empty; nothing was saved" in one_line_error(p, 1)
    assert not (templates_dir(tmp_path) / "blank.yaml").exists()
    p = gencli(["templates"], env, workdir)
    assert p.returncode == 0 and "no templates yet" in p.stderr.decode()
    assert "template name 'x/y'" in one_line_error(gencli(["templates", "show", "x/y"], env, workdir), 2)


# -- fragments --------------------------------------------------------------------------------


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/notes.txt")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def files(tmp_path):
    """A file server on 127.0.0.1 over a folder of text, binary and huge files."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "notes.txt").write_text("the notes say: bring an umbrella\n")
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (root / "huge.txt").write_text("x" * (1024 * 1024 + 10))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_file_and_stdin_fragments_come_before_the_prompt(env, workdir, openai_fake):
    (workdir / "a.txt").write_text("first file\n")
    (workdir / "b.md").write_text("second file")
    ok(gencli(["generate", "-f", "a.txt", "-f", "b.md", "what do they say?"], env, workdir))
    assert sent(openai_fake)["prompt"] == "first file\n\nsecond file\n\nwhat do they say?"
    ok(gencli(["generate", "-f", "-", "-f", "a.txt", "summarise"], env, workdir, input=b"from stdin\n"))
    assert sent(openai_fake)["prompt"] == "from stdin\n\nfirst file\n\nsummarise"
    ok(gencli(["generate", "-f", "a.txt"], env, workdir))  # a fragment alone is a prompt
    assert sent(openai_fake)["prompt"] == "first file"


def test_bad_file_fragments_are_refused_before_sending(env, workdir, openai_fake):
    (workdir / "bin.dat").write_bytes(b"abc\x00\x01\x02")
    (workdir / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (workdir / "big.txt").write_text("y" * (1024 * 1024 + 1))
    mark = openai_fake.mark()
    assert "is binary" in one_line_error(gencli(["generate", "-f", "bin.dat", "x"], env, workdir), 2)
    assert "not utf-8 text" in one_line_error(gencli(["generate", "-f", "latin1.txt", "x"], env, workdir), 2)
    p = gencli(["generate", "-f", "big.txt", "x"], env, workdir)
    assert "a fragment is at most 1024 KB" in one_line_error(p, 2)
    assert "no such file" in one_line_error(gencli(["generate", "-f", "missing.txt", "x"], env, workdir), 2)
    p = gencli(["generate", "-f", "-", "-"], env, workdir, input=b"x")
    assert "both read stdin" in one_line_error(p, 2)
    assert openai_fake.since(mark) == []


def test_url_fragments_from_a_local_server_when_private_addresses_are_allowed(env, workdir, files, openai_fake):
    ok(gencli(["generate", "--allow-private-fragments", "-f", f"{files}/notes.txt", "what now?"], env, workdir))
    assert sent(openai_fake)["prompt"] == "the notes say: bring an umbrella\n\nwhat now?"
    env = {**env, "GENCLI_ALLOW_PRIVATE_FRAGMENTS": "1"}
    ok(gencli(["generate", "-f", f"{files}/moved", "and now?"], env, workdir))  # a redirect, followed
    assert sent(openai_fake)["prompt"] == "the notes say: bring an umbrella\n\nand now?"
    ok(gencli(["chat", "-f", f"{files}/notes.txt"], env, workdir, input=b"one\ntwo\n"))  # the first message
    prompts = [m["content"] for m in openai_fake.last().body["messages"] if m["role"] == "user"]
    assert prompts == ["the notes say: bring an umbrella\n\none", "two"]


def test_url_fragments_refused(env, workdir, files, openai_fake):
    mark = openai_fake.mark()
    # the guard's decision, before any connection: loopback is not a public address
    p = gencli(["generate", "-f", f"{files}/notes.txt", "x"], env, workdir)
    msg = one_line_error(p, 2)
    assert "127.0.0.1 is a loopback address" in msg and "--allow-private-fragments" in msg
    port = files.rsplit(":", 1)[1]
    p = gencli(["generate", "-f", f"http://localhost:{port}/notes.txt", "x"], env, workdir)
    assert "resolves to" in one_line_error(p, 2) and "loopback" in p.stderr.decode()
    p = gencli(["generate", "-f", "http://[::ffff:10.0.0.1]/x", "x"], env, workdir)
    assert "private" in one_line_error(p, 2)
    env = {**env, "GENCLI_ALLOW_PRIVATE_FRAGMENTS": "1"}
    p = gencli(["generate", "-f", f"{files}/picture.png", "x"], env, workdir)
    assert "image/png, not text" in one_line_error(p, 2)
    p = gencli(["generate", "-f", f"{files}/huge.txt", "x"], env, workdir)
    assert "a fragment is at most 1024 KB" in one_line_error(p, 2)
    p = gencli(["generate", "-f", f"{files}/missing.txt", "x"], env, workdir)
    assert "HTTP 404" in one_line_error(p, 2)
    assert openai_fake.since(mark) == []


# -- shell completion of the new names -----------------------------------------------------------


def test_completion_of_templates_and_log_actions(env, workdir, tmp_path):
    from tests.test_completions import offered

    folder = templates_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "review.yaml").write_text("system: s\n")
    (folder / "recipe.toml").write_text('system = "s"\n')
    (folder / "other.yaml").write_text("system: s\n")
    assert offered("gencli generate -t re", env, workdir) == ["recipe", "review"]
    assert offered("gencli chat --template o", env, workdir) == ["other"]
    assert offered("gencli templates show rev", env, workdir) == ["review"]
    assert offered("gencli templates e", env, workdir) == ["edit"]
    assert offered("gencli logs o", env, workdir) == ["off", "on"]
    assert {"logs", "templates"} <= set(offered("gencli ", env, workdir))
    assert offered("gencli generate --no-l", env, workdir) == ["--no-log"]


def test_templates_edit_of_an_existing_one_reports_a_mistake_and_keeps_the_file(env, workdir, tmp_path):
    folder = templates_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "fr.toml").write_text('system = "Answer in French."\n')
    script, seen = editor(tmp_path, 'sytem = "typo"\n')
    p = gencli(["templates", "edit", "fr"], {**env, "EDITOR": script}, workdir)
    assert "unknown field 'sytem'" in one_line_error(p, 2)
    assert seen.read_text() == 'system = "Answer in French."\n'  # the editor had the file itself
    assert (folder / "fr.toml").read_text() == 'sytem = "typo"\n'  # kept, to edit again
