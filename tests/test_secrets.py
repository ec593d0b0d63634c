"""Secrets: recognisable fake keys are set, then every output gencli makes is searched for
them — the CLI's stdout/stderr on success and on every error path, ``gencli models``,
and ``gencli serve``'s responses, error bodies and log. Keys in models.json are refused."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import clean_env, run_gencli
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.helpers import free_port
from tests.server_fixture import ServeProcess

OPENAI = "sk-test-SECRET-openai-4f9a2c7e1b"
OPENROUTER = "sk-or-v1-SECRET-openrouter-8d3e90"
GEMINI = "AIzaSy-SECRET-gemini-key-5c1d2e3f"
ANTHROPIC = "sk-ant-api03-SECRET-anthropic-6e2f"
COMPAT = "plain-SECRET-compat-key-99ab"  # not key-shaped: only an exact match can find it
GENCLI = "gencli-SECRET-server-key-77aa"
CLIENT_WRONG = "client-SECRET-wrong-key-31"  # a wrong key a client sends to gencli serve
KEYS = {
    "OPENAI_API_KEY": OPENAI,
    "OPENROUTER_API_KEY": OPENROUTER,
    "GEMINI_API_KEY": GEMINI,
    "ANTHROPIC_API_KEY": ANTHROPIC,
    "COMPAT_KEY": COMPAT,
}
NEEDLES = [OPENAI, OPENROUTER, GEMINI, ANTHROPIC, COMPAT, GENCLI, CLIENT_WRONG, "SECRET"]


def assert_clean(text: str | bytes, where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for needle in NEEDLES:
        assert needle not in text, f"{where} shows a key ({needle!r}): {text[:2000]}"


@pytest.fixture(scope="module")
def fakes():
    strict = FakeOpenAI(api_key=OPENAI).start()  # rejects every key but OPENAI's (masking it, as OpenAI does)
    lax = FakeOpenAI(api_key=None).start()  # accepts any key
    gemini = FakeGemini(api_key=GEMINI).start()
    claude = FakeAnthropic(api_key=ANTHROPIC).start()
    yield strict, lax, gemini, claude
    assert sorted(models((strict, lax, gemini, claude))) == sorted(NAMES)
    for f in (strict, lax, gemini, claude):
        f.stop()


def models(fakes) -> dict:
    strict, lax, gemini, claude = fakes
    down = f"http://127.0.0.1:{free_port()}"

    def oa(model, url=strict.base_url, provider="openai", **kw):
        return {"provider": provider, "model": model, "base_url": url, **kw}

    def gm(model, url=gemini.base_url):
        return {"provider": "google", "model": model, "base_url": url}

    return {
        "oa": oa("echo"),
        "oa-401": oa("echo", provider="openrouter"),  # the OpenRouter key, refused by the strict fake
        "oa-500": oa("error-500"),
        "oa-429": oa("error-429"),
        "oa-mid": oa("error-midstream"),
        "oa-echo-auth": oa("echo-auth", retries=0),  # an upstream that repeats the Authorization header
        "oa-down": oa("echo", url=down + "/v1", retries=0),
        "compat-401": oa("echo", provider="openai-compatible", api_key_env="COMPAT_KEY"),
        "compat-echo-auth": oa(
            "echo-auth", url=lax.base_url, provider="openai-compatible", api_key_env="COMPAT_KEY", retries=0
        ),
        "gm": gm("gemini-echo"),
        "gm-badkey": gm("gemini-error-400-key"),
        "gm-429": gm("gemini-error-429"),
        "gm-down": gm("gemini-echo", url=down),
        "cl": {"provider": "anthropic", "model": "claude-echo", "base_url": claude.base_url},
        "cl-401": {
            "provider": "anthropic",
            "model": "claude-echo",
            "base_url": claude.base_url,
            "api_key_env": "COMPAT_KEY",
        },
        "cl-mid": {"provider": "anthropic", "model": "claude-error-midstream", "base_url": claude.base_url},
    }


OK_MODELS = {"oa", "gm", "cl"}


@pytest.fixture(scope="module")
def cli(fakes, tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets-cli")
    (d / "models.json").write_text(json.dumps(models(fakes)))
    (d / "work").mkdir()
    return clean_env(d, GENCLI_MODELS=str(d / "models.json"), **KEYS), d / "work"


NAMES = [
    "oa",
    "oa-401",
    "oa-500",
    "oa-429",
    "oa-mid",
    "oa-echo-auth",
    "oa-down",
    "compat-401",
    "compat-echo-auth",
    "gm",
    "gm-badkey",
    "gm-429",
    "gm-down",
    "cl",
    "cl-401",
    "cl-mid",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flags", [[], ["--no-stream", "--json", "-v"]])
def test_cli_outputs_never_show_a_key(cli, name, flags):
    env, cwd = cli
    r = run_gencli(["generate", "-m", name, "hello", "--retries", "0", *flags], env, cwd)
    assert (r.returncode == 0) is (name in OK_MODELS), r.stderr
    if name not in OK_MODELS:
        lines = r.stderr.decode().strip().splitlines()
        assert lines and lines[-1].startswith("gencli: error: ") and "Traceback" not in r.stderr.decode()
    assert_clean(r.stdout, f"stdout of {name}")
    assert_clean(r.stderr, f"stderr of {name}")


def test_echoed_keys_are_redacted_in_the_message(cli):
    """The upstream repeats the key: gencli says what happened without it."""
    env, cwd = cli
    for name in ("oa-echo-auth", "compat-echo-auth"):
        r = run_gencli(["generate", "-m", name, "hello"], env, cwd)
        assert r.returncode == 1
        err = r.stderr.decode()
        assert "internal error while handling Bearer [redacted]" in err, err
        assert_clean(err, name)


def test_bad_key_error_names_the_variable_not_the_key(cli):
    env, cwd = cli
    for name, var in (("oa-401", "OPENROUTER_API_KEY"), ("compat-401", "COMPAT_KEY"), ("gm-badkey", "GEMINI_API_KEY")):
        r = run_gencli(["generate", "-m", name, "hello"], env, cwd)
        assert r.returncode == 1 and var in r.stderr.decode() and "rejected the API key" in r.stderr.decode()
        assert_clean(r.stderr, name)


def test_models_listing_never_shows_a_key(cli):
    env, cwd = cli
    for args in (["models"], ["models", "--json"]):
        r = run_gencli(args, env, cwd)
        assert r.returncode == 0 and b"oa-401" in r.stdout
        assert_clean(r.stdout + r.stderr, " ".join(args))


@pytest.mark.parametrize("field", ["api_key", "apiKey", "key", "token"])
def test_a_key_in_models_json_is_refused(tmp_path, workdir, field):
    (workdir / "models.json").write_text(
        json.dumps({"mine": {"provider": "openai", "model": "gpt-4o-mini", field: OPENAI}})
    )
    r = run_gencli(["generate", "-m", "mine", "hi"], clean_env(tmp_path, **KEYS), workdir)
    assert r.returncode == 1 and r.stdout == b""
    err = r.stderr.decode()
    assert err.startswith("gencli: error: ") and len(err.strip().splitlines()) == 1 and "'mine'" in err
    if field == "api_key":
        assert "environment variable or .env" in err and "api_key_env" in err
    assert_clean(err, "the models.json error")
    r = run_gencli(["models"], clean_env(tmp_path, **KEYS), workdir)
    assert r.returncode == 1
    assert_clean(r.stdout + r.stderr, "gencli models with a key in models.json")


def test_api_key_env_names_the_variable_instead(tmp_path, workdir, fakes):
    strict = fakes[0]
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "mine": {
                    "provider": "openai-compatible",
                    "model": "echo",
                    "base_url": strict.base_url,
                    "api_key_env": "MY_TEAM_KEY",
                }
            }
        )
    )
    r = run_gencli(["generate", "-m", "mine", "hi"], clean_env(tmp_path, MY_TEAM_KEY=OPENAI), workdir)
    assert r.returncode == 0 and r.stdout.decode().strip() == "You said: hi"
    assert strict.last().headers["authorization"] == f"Bearer {OPENAI}"


# -- gencli serve -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(fakes, tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("secrets-serve"), models(fakes), env={**KEYS, "GENCLI_API_KEY": GENCLI})
    yield s
    s.stop()


def test_server_outputs_never_show_a_key(server, fakes):
    auth = {"Authorization": f"Bearer {GENCLI}"}
    seen: list[tuple[str, httpx.Response]] = []
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:

        def keep(where: str, r: httpx.Response) -> None:
            seen.append((where, r))

        for name in models(fakes):
            for stream in (False, True):
                keep(
                    f"generate {name} {stream}",
                    c.post("/api/generate", json={"model": name, "prompt": "hi", "stream": stream}),
                )
            keep(
                f"chat {name}",
                c.post(
                    "/api/chat", json={"model": name, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                ),
            )
            keep(
                f"v1 {name}",
                c.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}),
            )
            keep(f"show {name}", c.post("/api/show", json={"model": name}))
            for stream in (False, True):
                keep(
                    f"responses {name} {stream}",
                    c.post("/v1/responses", json={"model": name, "input": "hi", "stream": stream}),
                )
                keep(
                    f"messages {name} {stream}",
                    c.post(
                        "/v1/messages",
                        json={
                            "model": name,
                            "max_tokens": 50,
                            "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    ),
                )
            keep(
                f"count {name}",
                c.post(
                    "/v1/messages/count_tokens", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}
                ),
            )
        for path in ("/api/tags", "/api/ps", "/v1/models", "/api/version"):
            keep(path, c.get(path))
        keep("unknown model", c.post("/api/generate", json={"model": "nope", "prompt": "hi"}))
        keep("bad json", c.post("/api/generate", content=b"{not json"))
    for headers in (
        {"Authorization": f"Bearer {CLIENT_WRONG}"},
        {"Authorization": CLIENT_WRONG},
        {},
        {"x-api-key": CLIENT_WRONG},
    ):
        r = httpx.get(server.url + "/api/tags", headers=headers, timeout=10)
        assert r.status_code == 401
        seen.append((f"unauthorised {headers}", r))
    statuses = {where: r.status_code for where, r in seen}
    assert statuses["generate oa False"] == 200 and statuses["generate oa-500 False"] == 502
    assert statuses["generate oa-401 False"] == 502 and statuses["generate gm-down False"] == 502
    assert "rejected the API key" in next(r for w, r in seen if w == "generate oa-401 False").text
    assert statuses["show oa"] == 200 and statuses["/api/ps"] == 200
    assert statuses["messages cl False"] == 200 and statuses["count cl"] == 200
    assert statuses["messages cl-401 False"] == 502 and statuses["responses cl-401 True"] == 502
    assert "rejected the API key" in next(r for w, r in seen if w == "messages cl-401 False").text
    assert "oa:latest" in [m["name"] for m in next(r for w, r in seen if w == "/api/ps").json()["models"]]
    for where, r in seen:
        assert_clean(r.text, where)
        assert_clean("\n".join(f"{k}: {v}" for k, v in r.headers.items()), f"headers of {where}")
    server.stop()  # flushes the access log
    log = server.stderr() + server.out_path.read_text(errors="replace")
    assert "POST /api/generate" in log  # the access log was written
    assert_clean(log, "the server log")


DOTENV_ONLY = "plain-SECRET-dotenv-only-5150"  # a key in .env, not in the environment


def test_a_key_only_in_dotenv_is_scrubbed(fakes, tmp_path):
    """An upstream repeats the prompt, which quotes a key set only in ``.env``: neither the CLI
    nor the server shows it (the scrubbed keys come from the settings: environment and .env)."""
    _, lax, _, _ = fakes
    models_file = tmp_path / "models.json"
    models_file.write_text(
        json.dumps(
            {
                "dot": {
                    "provider": "openai-compatible",
                    "model": "error-400-echo",
                    "base_url": lax.base_url,
                    "api_key_env": "COMPAT_KEY",
                    "retries": 0,
                }
            }
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(f"OTHER_API_KEY={DOTENV_ONLY}\n")
    prompt = f"my settings say {DOTENV_ONLY}, what now"
    r = run_gencli(
        ["generate", "-m", "dot", prompt], clean_env(tmp_path, GENCLI_MODELS=str(models_file), COMPAT_KEY=COMPAT), work
    )
    assert r.returncode == 1 and b"Invalid prompt: my settings say [redacted]" in r.stderr, r.stderr
    assert DOTENV_ONLY.encode() not in r.stderr + r.stdout

    s = ServeProcess(
        tmp_path / "serve", models_file, env={"COMPAT_KEY": COMPAT}, dotenv=f"OTHER_API_KEY={DOTENV_ONLY}\n"
    )
    try:
        reply = httpx.post(s.url + "/api/generate", json={"model": "dot", "prompt": prompt}, timeout=30)
        assert reply.status_code == 400 and "Invalid prompt: my settings say [redacted]" in reply.json()["error"]
        assert DOTENV_ONLY not in reply.text
    finally:
        s.stop()
    assert DOTENV_ONLY not in s.stderr()
