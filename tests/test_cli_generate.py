"""The real ``gencli`` command (a subprocess) against the fake OpenAI upstream:
prompt sources, output streams, flags reaching the upstream body, errors and exit
codes, the registry lookup order, and ``gencli models``."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from gencli import __version__
from tests.conftest import GENCLI, ROOT, clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.helpers import one_line_error
from tests.test_openai_provider import png_bytes

STAT_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def models_for(url: str) -> dict:
    def oa(model, **kw):
        return {"provider": "openai", "model": model, "base_url": url, **kw}

    def orr(model, **kw):
        return {"provider": "openrouter", "model": model, "base_url": url, **kw}

    return {
        "default": "echo",
        "echo": oa("echo", capabilities=["completion", "vision"]),
        "or-echo": orr("echo"),
        "reason": orr("reason-openrouter", capabilities=["completion", "thinking"]),
        "json": oa("json"),
        "mid": orr("error-midstream"),
        "e401": oa("error-401"),
        "e500": oa("error-500"),
        "slow": oa("slow-5-40"),
    }


@pytest.fixture
def env(tmp_path, workdir, openai_fake) -> dict[str, str]:
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    return clean_env(tmp_path, OPENAI_API_KEY=FAKE_KEY, OPENROUTER_API_KEY=FAKE_KEY)


def gencli(args: list[str], env: dict, cwd: Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    return run_gencli(args, env, cwd, input=input, timeout=30)


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode()


def err(p: subprocess.CompletedProcess) -> str:
    return p.stderr.decode()


def last_user(fake) -> str:
    return fake.last().body["messages"][-1]["content"]


# -- prompt sources ----------------------------------------------------------------


def test_argument_prompt(env, workdir, openai_fake):
    p = gencli(["generate", "hello there"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: hello there\n"
    assert err(p) == ""
    assert last_user(openai_fake) == "hello there"
    assert openai_fake.last().headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_stdin_prompt(env, workdir, openai_fake):
    p = gencli(["generate"], env, workdir, input=b"line one\n  line two\n")
    assert p.returncode == 0, err(p)
    assert last_user(openai_fake) == "line one\n  line two\n"
    assert out(p) == "You said: line one\n  line two\n"


def test_argument_then_blank_line_then_stdin(env, workdir, openai_fake):
    p = gencli(["generate", "Summarise:"], env, workdir, input=b"notes\n\tindented\n")
    assert p.returncode == 0, err(p)
    assert last_user(openai_fake) == "Summarise:\n\nnotes\n\tindented\n"


def test_dash_reads_stdin(env, workdir, openai_fake):
    p = gencli(["generate", "-"], env, workdir, input="héllo ✓".encode())
    assert p.returncode == 0, err(p)
    assert last_user(openai_fake) == "héllo ✓"
    assert out(p) == "You said: héllo ✓\n"


def test_non_utf8_stdin_is_a_usage_error(env, workdir, openai_fake):
    before = openai_fake.mark()
    p = gencli(["generate"], env, workdir, input=b"caf\xe9\n")
    text = one_line_error(p, 2)
    assert "UTF-8" in text and "offset 3" in text
    assert openai_fake.since(before) == []


def test_no_prompt_is_a_usage_error(env, workdir):
    p = gencli(["generate"], env, workdir)
    one_line_error(p, 2)


# -- output forms ------------------------------------------------------------------


def test_no_stream(env, workdir, openai_fake):
    p = gencli(["generate", "--no-stream", "calm"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: calm\n"
    body = openai_fake.last().body
    assert "stream" not in body


def test_json_stream_is_ndjson(env, workdir):
    p = gencli(["generate", "--json", "one two"], env, workdir)
    assert p.returncode == 0, err(p)
    lines = [json.loads(line) for line in out(p).splitlines()]
    assert len(lines) >= 3
    assert all(line["done"] is False and line["model"] == "echo" for line in lines[:-1])
    assert "".join(line["response"] for line in lines[:-1]) == "You said: one two"
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert final["context"] and all(type(i) is int for i in final["context"])
    for key in STAT_KEYS:
        assert type(final[key]) is int, key
    assert final["prompt_eval_count"] == 2 and final["eval_count"] == 4


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_prints_what_api_generate_returns(env, workdir, openai_fake, tmp_path, stream):
    """The CLI's --json and the server's /api/generate share Ollama's reply objects: the same
    lines, keys in the same order, the same values but for times."""
    import httpx

    from tests.server_fixture import ServeProcess

    times = {"created_at", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}
    serve = ServeProcess(
        tmp_path / "serve",
        models_for(openai_fake.base_url),
        env={"OPENAI_API_KEY": FAKE_KEY, "OPENROUTER_API_KEY": FAKE_KEY},
    )
    try:
        p = gencli(["generate", "--json", "-m", "reason", "q", *([] if stream else ["--no-stream"])], env, workdir)
        assert p.returncode == 0, err(p)
        r = httpx.post(
            serve.url + "/api/generate", json={"model": "reason", "prompt": "q", "stream": stream}, timeout=30
        )
        assert r.status_code == 200
    finally:
        serve.stop()
    printed = [json.loads(line) for line in out(p).splitlines()]
    served = [json.loads(line) for line in r.text.splitlines()]
    assert len(printed) == len(served) and (len(printed) > 2 if stream else len(printed) == 1)
    for a, b in zip(printed, served, strict=True):
        assert list(a) == list(b)
        assert {k: v for k, v in a.items() if k not in times} == {k: v for k, v in b.items() if k not in times}
    assert printed[-1]["done"] is True and printed[-1]["context"] and printed[-1]["reasoning"]


def test_json_no_stream_is_one_object(env, workdir):
    p = gencli(["generate", "--json", "--no-stream", "-m", "reason", "q"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p).count("\n") == 1
    obj = json.loads(out(p))
    assert obj["done"] is True and obj["response"] == "The answer is 42."
    assert obj["thinking"] == "Let me think about this."
    assert all(type(obj[k]) is int for k in STAT_KEYS)


def test_json_stream_carries_thinking(env, workdir):
    p = gencli(["generate", "--json", "-m", "reason", "q"], env, workdir)
    lines = [json.loads(line) for line in out(p).splitlines()]
    assert "".join(line.get("thinking", "") for line in lines[:-1]) == "Let me think about this."
    assert "".join(line["response"] for line in lines) == "The answer is 42."


def test_verbose_stats_on_stderr(env, workdir):
    p = gencli(["generate", "-v", "a b c"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: a b c\n"
    e = err(p)
    assert "total duration:" in e and "eval duration:" in e
    assert "prompt eval count:    3 token(s)" in e and "eval count:           5 token(s)" in e


def test_reasoning_on_stderr_answer_alone_on_stdout(env, workdir):
    p = gencli(["generate", "-m", "reason", "why?"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "The answer is 42.\n"
    assert "Let me think about this." in err(p)
    assert b"\x1b" not in p.stdout and b"\x1b" not in p.stderr


def test_reasoning_without_no_color_still_has_no_escape_codes_when_piped(env, workdir):
    env = {k: v for k, v in env.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    p = gencli(["generate", "-m", "reason", "why?"], env, workdir)
    assert p.returncode == 0, err(p)
    assert b"\x1b" not in p.stdout and b"\x1b" not in p.stderr


def test_hide_reasoning(env, workdir):
    p = gencli(["generate", "--hide-reasoning", "-m", "reason", "why?"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "The answer is 42.\n"
    assert err(p) == ""


def test_context_file_continues_the_conversation(env, workdir, openai_fake):
    conv = workdir / "conv.json"
    p1 = gencli(["generate", "--context", str(conv), "my name is Ada"], env, workdir)
    assert p1.returncode == 0, err(p1)
    assert isinstance(json.loads(conv.read_text()), list)
    p2 = gencli(["generate", "--context", str(conv), "what is my name?"], env, workdir)
    assert p2.returncode == 0, err(p2)
    assert openai_fake.last().body["messages"] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]


def test_bad_context_file_is_a_usage_error(env, workdir):
    (workdir / "conv.json").write_text("[1, 2, 3]")
    p = gencli(["generate", "--context", "conv.json", "x"], env, workdir)
    assert "context" in one_line_error(p, 2)


def test_context_file_in_a_missing_directory_is_refused_before_the_call(env, workdir, openai_fake):
    before = openai_fake.mark()
    p = gencli(["generate", "--context", "no/such/dir/conv.json", "x"], env, workdir)
    assert "does not exist" in one_line_error(p, 2)
    assert openai_fake.since(before) == []


def test_context_file_that_cannot_be_written_is_one_line_exit_1(env, workdir):
    (workdir / "conv.json.tmp").mkdir()  # the temporary file cannot be created
    p = gencli(["generate", "--context", "conv.json", "keep me"], env, workdir)
    assert "cannot save the conversation" in one_line_error(p, 1)
    assert out(p) == "You said: keep me\n"  # the answer is not lost


# -- flags reaching the upstream ---------------------------------------------------


def test_format_json(env, workdir, openai_fake):
    p = gencli(["generate", "--format", "json", "-m", "json", "hi"], env, workdir)
    assert p.returncode == 0, err(p)
    assert json.loads(out(p)) == {"you_said": "hi", "ok": True}
    assert openai_fake.last().body["response_format"] == {"type": "json_object"}


def test_format_schema_file(env, workdir, openai_fake):
    schema = {"type": "object", "properties": {"you_said": {"type": "string"}}}
    (workdir / "schema.json").write_text(json.dumps(schema))
    p = gencli(["generate", "--format", "schema.json", "-m", "json", "hi"], env, workdir)
    assert p.returncode == 0, err(p)
    assert openai_fake.last().body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_format_missing_file_is_a_usage_error(env, workdir):
    p = gencli(["generate", "--format", "nope.json", "hi"], env, workdir)
    assert "nope.json" in one_line_error(p, 2)


def test_sampling_flags_reach_openai(env, workdir, openai_fake):
    p = gencli(
        [
            "generate",
            "--stop",
            "END",
            "--stop",
            "HALT",
            "--seed",
            "42",
            "--temperature",
            "0.3",
            "--top-p",
            "0.8",
            "--num-predict",
            "7",
            "x",
        ],
        env,
        workdir,
    )
    assert p.returncode == 0, err(p)
    body = openai_fake.last().body
    assert body["stop"] == ["END", "HALT"] and body["seed"] == 42
    assert body["temperature"] == 0.3 and body["top_p"] == 0.8
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


def test_max_tokens_and_top_k_reach_openrouter(env, workdir, openai_fake):
    p = gencli(["generate", "-m", "or-echo", "--max-tokens", "3", "--top-k", "20", "a b c d"], env, workdir)
    assert p.returncode == 0, err(p)
    body = openai_fake.last().body
    assert body["max_tokens"] == 3 and body["top_k"] == 20 and "max_completion_tokens" not in body
    assert out(p) == "You said: a \n"  # the fake cut the answer at 3 tokens


def test_out_of_range_flag_is_exit_2(env, workdir, openai_fake):
    before = openai_fake.mark()
    p = gencli(["generate", "--temperature", "3", "x"], env, workdir)
    assert p.returncode == 2 and "Traceback" not in err(p)
    assert openai_fake.since(before) == []


def test_image_file(env, workdir, openai_fake):
    (workdir / "dot.png").write_bytes(png_bytes())
    p = gencli(["generate", "-i", "dot.png", "what is it?"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: what is it? [1 image]\n"
    b64 = base64.b64encode(png_bytes()).decode()
    assert openai_fake.last().body["messages"][-1]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
    ]


def test_image_url_is_fetched_by_the_cli(env, workdir, openai_fake, tmp_path):
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    (site / "dot.png").write_bytes(png_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        p = gencli(["generate", "-i", f"{base}/dot.png", "what is it?"], env, workdir)
        assert p.returncode == 0, err(p)
        b64 = base64.b64encode(png_bytes()).decode()
        parts = openai_fake.last().body["messages"][-1]["content"]
        assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
        before = openai_fake.mark()
        p = gencli(["generate", "-i", f"{base}/missing.png", "x"], env, workdir)
        assert "HTTP 404" in one_line_error(p, 2)
        assert openai_fake.since(before) == []
    finally:
        server.shutdown()


def test_non_image_file_is_refused(env, workdir, openai_fake):
    (workdir / "notes.txt").write_text("just text")
    before = openai_fake.mark()
    p = gencli(["generate", "-i", "notes.txt", "x"], env, workdir)
    assert "not an image" in one_line_error(p, 2)
    p = gencli(["generate", "-i", "missing.png", "x"], env, workdir)
    assert "missing.png" in one_line_error(p, 2)
    assert openai_fake.since(before) == []


# -- errors ------------------------------------------------------------------------


def test_unknown_model_lists_close_names(env, workdir):
    p = gencli(["generate", "-m", "ech", "x"], env, workdir)
    text = one_line_error(p, 2)
    assert "'ech'" in text and "echo" in text and "gencli models" in text


def test_missing_key_names_the_variable(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    before = openai_fake.mark()
    p = gencli(["generate", "x"], clean_env(tmp_path), workdir)
    assert "OPENAI_API_KEY" in one_line_error(p, 1)
    assert openai_fake.since(before) == []


def test_dotenv_in_workdir_supplies_the_key(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    (workdir / ".env").write_text(f'# keys\nexport OPENAI_API_KEY="{FAKE_KEY}"\n')
    p = gencli(["generate", "from dotenv"], clean_env(tmp_path), workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: from dotenv\n"


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"broken": {"provider": "openai"}}', "'broken'"),
        ('{"broken": {"provider": "openai", "model": "x", "api_key": "sk-oops"}}', "'broken'"),
        ('{"broken": {"provider": "nope", "model": "x"}}', "nope"),
        ('{"a": {"provider": "openai", "model": "x"},\n "b": }', "line 2"),
    ],
)
def test_malformed_models_json(tmp_path, workdir, content, needle):
    (workdir / "models.json").write_text(content)
    p = gencli(["generate", "x"], clean_env(tmp_path, OPENAI_API_KEY=FAKE_KEY), workdir)
    text = one_line_error(p, 1)
    assert "models.json" in text and needle in text
    assert "sk-oops" not in text


@pytest.mark.parametrize("model,needle", [("e401", "OPENAI_API_KEY"), ("e500", "HTTP 500")])
def test_upstream_errors_are_one_line_exit_1(env, workdir, model, needle):
    p = gencli(["generate", "-m", model, "x"], env, workdir)
    text = one_line_error(p, 1)
    assert needle in text and FAKE_KEY not in text
    assert out(p) == ""


def test_wrong_key_never_printed(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    p = gencli(["generate", "x"], clean_env(tmp_path, OPENAI_API_KEY="sk-WRONG-secret-777"), workdir)
    text = one_line_error(p, 1)
    assert "OPENAI_API_KEY" in text and "WRONG" not in text and "777" not in text


def test_midstream_error_keeps_the_partial_answer(env, workdir):
    p = gencli(["generate", "-m", "mid", "x"], env, workdir)
    text = one_line_error(p, 1)
    assert "Upstream provider crashed" in text
    assert out(p).startswith("Partial answer")


def test_an_endless_upstream_event_is_a_clear_error_and_keeps_the_partial_answer(env, workdir, openai_fake):
    """The upstream streams one data line that never ends (96 MB): gencli stops at 8 MB."""
    models = models_for(openai_fake.base_url)
    models["giant"] = {"provider": "openai", "model": "giant-line", "base_url": openai_fake.base_url}
    (workdir / "models.json").write_text(json.dumps(models))
    p = gencli(["generate", "-m", "giant", "x"], env, workdir)
    assert "the upstream sent an event larger than 8 MB" in one_line_error(p, 1)
    assert out(p).startswith("Partial answer")


def test_broken_pipe_is_quiet(env, workdir, tmp_path):
    status = tmp_path / "status"
    script = f"'{GENCLI}' generate -m slow x | head -c 5; echo ${{PIPESTATUS[0]}} > '{status}'"
    p = subprocess.run(
        ["bash", "-c", script], env=env, cwd=workdir, capture_output=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert p.stdout == b"tok0 "
    assert p.stderr == b""
    assert status.read_text().strip() == "0"  # a quiet, successful end


# -- base URLs from the environment --------------------------------------------------


def test_openai_base_url_env_with_builtin_model(tmp_path, workdir, openai_fake):
    env = clean_env(tmp_path, OPENAI_API_KEY=FAKE_KEY, OPENAI_BASE_URL=openai_fake.base_url)
    p = gencli(["generate", "-m", "gpt-4o-mini", "builtin"], env, workdir)
    assert p.returncode == 0, err(p)
    assert out(p) == "You said: builtin\n"
    assert openai_fake.last().body["model"] == "gpt-4o-mini"


def test_openrouter_api_url_env_with_builtin_model(tmp_path, workdir, openai_fake):
    env = clean_env(tmp_path, OPENROUTER_API_KEY=FAKE_KEY, OPENROUTER_API_URL=openai_fake.base_url)
    p = gencli(["generate", "-m", "deepseek-r1", "r1"], env, workdir)
    assert p.returncode == 0, err(p)
    assert openai_fake.last().body["model"] == "deepseek/deepseek-r1-0528:free"
    assert openai_fake.last().headers["x-title"] == "gencli"


# -- gencli models, --version, registry lookup -----------------------------------------


def test_models_table(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    p = gencli(["models"], clean_env(tmp_path, OPENAI_API_KEY=FAKE_KEY), workdir)
    assert p.returncode == 0, err(p)
    rows = {line.split()[0]: line for line in out(p).splitlines()[1:] if line.strip()}
    assert rows["echo"].split()[1] == "*" and rows["echo"].rstrip().endswith("ready")
    assert rows["reason"].rstrip().endswith("set OPENROUTER_API_KEY")
    assert rows["gemini-2.5-flash"].rstrip().endswith("set GEMINI_API_KEY")
    assert str(workdir / "models.json") in out(p)


def test_models_json(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(json.dumps(models_for(openai_fake.base_url)))
    p = gencli(["models", "--json"], clean_env(tmp_path, OPENROUTER_API_KEY=FAKE_KEY), workdir)
    assert p.returncode == 0, err(p)
    data = json.loads(out(p))
    rows = {r["name"]: r for r in data["models"]}
    assert data["default"] == "echo" and [r["name"] for r in data["models"] if r["default"]] == ["echo"]
    assert rows["echo"]["ready"] is False and rows["echo"]["missing"] == "OPENAI_API_KEY"
    assert rows["reason"]["ready"] is True and rows["reason"]["missing"] is None
    assert rows["reason"]["provider"] == "openrouter" and rows["reason"]["model"] == "reason-openrouter"
    assert data["source"] == str(workdir / "models.json")


def test_version(tmp_path, workdir):
    p = gencli(["--version"], clean_env(tmp_path), workdir)
    assert p.returncode == 0
    assert out(p).strip() == f"gencli {__version__}"


def _source(tmp_path: Path, workdir: Path, args: list[str] = (), **env: str) -> tuple[str, set[str]]:
    p = gencli(["models", "--json", *args], clean_env(tmp_path, **env), workdir)
    assert p.returncode == 0, err(p)
    data = json.loads(out(p))
    return data["source"], {r["name"] for r in data["models"]}


def test_registry_lookup_order(tmp_path, workdir):
    def write(path: Path, name: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({name: {"provider": "openai", "model": "x"}}))
        return path

    source, names = _source(tmp_path, workdir)
    assert source == "built-in models" and "gpt-4o-mini" in names
    xdg = write(tmp_path / "config" / "gencli" / "models.json", "from-xdg")
    source, names = _source(tmp_path, workdir)
    assert source == str(xdg) and "from-xdg" in names and "gpt-4o-mini" in names  # laid over the built-ins
    local = write(workdir / "models.json", "from-cwd")
    source, names = _source(tmp_path, workdir)
    assert source == str(local) and "from-cwd" in names and "from-xdg" not in names
    envfile = write(tmp_path / "env-models.json", "from-env")
    source, names = _source(tmp_path, workdir, GENCLI_MODELS=str(envfile))
    assert source == str(envfile) and "from-env" in names and "from-cwd" not in names
    flag = write(tmp_path / "flag-models.json", "from-flag")
    source, names = _source(tmp_path, workdir, ["--models", str(flag)], GENCLI_MODELS=str(envfile))
    assert source == str(flag) and "from-flag" in names and "from-env" not in names


def test_null_entry_removes_a_builtin(tmp_path, workdir):
    (workdir / "models.json").write_text('{"gpt-4o": null}')
    _, names = _source(tmp_path, workdir)
    assert "gpt-4o" not in names and "gpt-4o-mini" in names


def test_root_models_json_matches_the_builtins():
    root = ROOT / "models.json"
    builtin = ROOT / "src" / "gencli" / "models.json"
    assert json.loads(root.read_text()) == json.loads(builtin.read_text())


def test_help_groups_options_in_panels(tmp_path, workdir):
    env = clean_env(tmp_path, COLUMNS="120")
    p = gencli(["generate", "--help"], env, workdir)
    assert p.returncode == 0, err(p)
    text = out(p)
    panels = [text.index(f"╭─ {title} ") for title in ("Model", "Sampling", "Output", "Conversation", "Network")]
    assert panels == sorted(panels)
    assert panels[1] < text.index("--temperature") < text.index("--seed") < panels[2]
    assert panels[2] < text.index("--extract-last") < panels[3] < text.index("--continue") < panels[4]
    assert panels[4] < text.index("--retries")
    assert "\x1b" not in text  # piped help is plain text
    root = out(gencli(["--help"], env, workdir))
    for word in (
        "--install-completion",
        "--show-completion",
        "--version",
        "generate",
        "chat",
        "conversations",
        "embed",
        "models",
        "serve",
    ):
        assert word in root, word
    serve = out(gencli(["serve", "--help"], env, workdir))
    for flag in (
        "--host",
        "--port",
        "--workers",
        "--allowed-origins",
        "--max-body-mb",
        "--grace",
        "--allow-private-images",
        "--timeout",
        "--retries",
        "--models",
    ):
        assert flag in serve, flag


def test_no_command_shows_the_help(tmp_path, workdir):
    p = gencli([], clean_env(tmp_path), workdir)
    shown = out(p) + err(p)
    assert p.returncode == 2 and "Usage: gencli" in shown and "generate" in shown
