"""gencli serve's guard rails, against the real server as a subprocess: API key,
browser origins (CORS), the body cap, the exposure rule, the access log and a
graceful SIGTERM. The unit tests at the end check the decision functions directly
(addresses are checked by decision, never by connecting to them)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from gencli.server.guard import is_loopback_host
from tests.conftest import GENCLI, clean_env
from tests.fakes.openai_upstream import FAKE_KEY
from tests.helpers import wait_until
from tests.server_fixture import KEY_VAR, ServeProcess

SERVER_KEY = "gk-server-secret-7f3a9c"
PROMPT_MARKER = "PROMPT-MARKER-a91b"


class Server(ServeProcess):
    """``gencli serve`` (the shared fixture's process) with helpers to read its output."""

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.stderr()

    def log_lines(self, *needles: str, timeout: float = 3) -> list[str]:
        """Access-log lines containing every needle; waits briefly since the line follows the response."""
        return wait_until(
            lambda: [ln for ln in self.stderr().splitlines() if all(n in ln for n in needles)], timeout, 0.05
        )


@pytest.fixture(scope="module")
def models_file(openai_fake, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.json"
    base = {"provider": "openai-compatible", "base_url": openai_fake.base_url, "api_key_env": KEY_VAR}
    path.write_text(json.dumps({"echo": {**base, "model": "echo"}, "slow": {**base, "model": "slow-100-15"}}))
    return path


@pytest.fixture(scope="module")
def keyed(models_file, tmp_path_factory):
    """A server that requires SERVER_KEY, allows one more origin through GENCLI_ORIGINS, caps bodies at 1 MB."""
    tmp = tmp_path_factory.mktemp("keyed")
    server = Server(
        tmp,
        models_file,
        ["--max-body-mb", "1"],
        env={"GENCLI_API_KEY": SERVER_KEY, "GENCLI_ORIGINS": "https://env.example.org"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_server(models_file, tmp_path_factory):
    """A server without an API key, with one more origin allowed by --allowed-origins."""
    tmp = tmp_path_factory.mktemp("open")
    server = Server(tmp, models_file, ["--allowed-origins", "https://flag.example.com"])
    yield server
    server.stop()


AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}


# -- API key ---------------------------------------------------------------------------------


def test_without_key_routes_answer_401_but_root_answers(keyed, openai_fake):
    mark = openai_fake.mark()
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=keyed.url).list()
    assert err.value.status_code == 401
    r = httpx.get(keyed.url + "/api/tags")
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(keyed.url + "/api/generate", json={"model": "echo", "prompt": "hi"})
    assert r.status_code == 401
    assert openai_fake.since(mark) == []  # nothing reached the upstream
    r = httpx.get(keyed.url + "/")
    assert r.status_code == 200 and "Ollama is running" in r.text
    assert httpx.head(keyed.url + "/").status_code == 200


def test_wrong_key_is_401_and_v1_uses_openai_error_shape(keyed):
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=keyed.url, headers={"Authorization": "Bearer nope"}).list()
    assert err.value.status_code == 401
    r = httpx.get(keyed.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
    assert "nope" not in r.text
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_right_key_works_with_the_official_clients(keyed):
    client = ollama.Client(host=keyed.url, headers=AUTH)
    assert "echo:latest" in [m.model for m in client.list().models]
    out = client.generate(model="echo", prompt="hello there")
    assert out.response == "You said: hello there" and out.done
    oai = openai.OpenAI(base_url=keyed.url + "/v1", api_key=SERVER_KEY, max_retries=0)
    assert "echo" in [m.id for m in oai.models.list().data]
    # the scheme is case-insensitive, as RFC 7235 says
    assert httpx.get(keyed.url + "/api/version", headers={"Authorization": f"bearer {SERVER_KEY}"}).status_code == 200


# -- origins and CORS ------------------------------------------------------------------------


def _cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def test_disallowed_origin_is_403_without_cors_and_spends_nothing(keyed, openai_fake):
    mark = openai_fake.mark()
    for headers in (
        {"Origin": "https://evil.example"},
        {**AUTH, "Origin": "https://evil.example"},
        {**AUTH, "Origin": "http://localhost.evil.example"},
        {**AUTH, "Origin": "null"},
    ):
        r = httpx.post(keyed.url + "/api/generate", json={"model": "echo", "prompt": "hi"}, headers=headers)
        assert r.status_code == 403, headers
        assert "origin" in r.json()["error"]
        assert _cors_headers(r) == {}
    r = httpx.options(
        keyed.url + "/api/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 403 and _cors_headers(r) == {}
    assert openai_fake.since(mark) == []


def test_localhost_origins_get_cors_headers(keyed):
    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "https://localhost", "http://[::1]:5173"):
        r = httpx.post(
            keyed.url + "/api/generate", json={"model": "echo", "prompt": "hi"}, headers={**AUTH, "Origin": origin}
        )
        assert r.status_code == 200, origin
        assert r.headers["access-control-allow-origin"] == origin
        assert "origin" in r.headers["vary"].lower()
    # an allowed origin without the key still gets 401, with CORS headers so the page can read it
    r = httpx.get(keyed.url + "/api/tags", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_preflight_from_allowed_origin(keyed):
    r = httpx.options(
        keyed.url + "/api/chat",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 204  # browsers send no credentials on a preflight
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_origins_added_by_env_and_by_flag(keyed, open_server):
    r = httpx.get(keyed.url + "/api/tags", headers={**AUTH, "Origin": "https://env.example.org"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://env.example.org"
    r = httpx.get(open_server.url + "/api/tags", headers={"Origin": "https://flag.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://flag.example.com"
    # each server allows only its own additions
    assert httpx.get(open_server.url + "/api/tags", headers={"Origin": "https://env.example.org"}).status_code == 403
    assert httpx.get(keyed.url + "/api/tags", headers={**AUTH, "Origin": "https://flag.example.com"}).status_code == 403


def test_requests_without_origin_or_key_pass_on_an_open_server(open_server):
    client = ollama.Client(host=open_server.url)
    assert "echo:latest" in [m.model for m in client.list().models]
    r = httpx.get(open_server.url + "/api/tags")
    assert r.status_code == 200 and _cors_headers(r) == {}


# -- body cap --------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(keyed, openai_fake):
    mark = openai_fake.mark()
    client = ollama.Client(host=keyed.url, headers=AUTH)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="echo", prompt="x" * (1024 * 1024 + 10))
    assert err.value.status_code == 413
    assert "limit" in str(err.value)

    def chunks():
        for _ in range(20):
            yield b"y" * 65536

    r = httpx.post(keyed.url + "/api/generate", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    oai = openai.OpenAI(base_url=keyed.url + "/v1", api_key=SERVER_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err2:
        oai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "z" * (1024 * 1024 + 10)}])
    assert err2.value.status_code == 413
    assert openai_fake.since(mark) == []
    # just under the limit still works, on the same server
    out = client.generate(model="echo", prompt="w" * (1024 * 1024 - 200))
    assert out.done and len(out.response) > 1000


# -- access log ------------------------------------------------------------------------------


def test_access_log_lines_have_no_prompt_and_no_keys(keyed):
    client = ollama.Client(host=keyed.url, headers=AUTH)
    client.generate(model="echo", prompt=f"say {PROMPT_MARKER} please")
    list(client.generate(model="echo", prompt=f"again {PROMPT_MARKER}", stream=True))
    httpx.get(keyed.url + "/api/ps")  # no key: 401
    ok = keyed.log_lines("POST", "/api/generate", "status=200", "model=echo")
    assert len(ok) >= 2
    assert any(" tokens=" in ln and "tokens=-" not in ln for ln in ok)
    assert all("ms" in ln for ln in ok)
    assert keyed.log_lines("GET", "/api/ps", "status=401")
    err = keyed.stderr()
    assert PROMPT_MARKER not in err and SERVER_KEY not in err and FAKE_KEY not in err


# -- exposure and SIGTERM --------------------------------------------------------------------


def _serve_exit(tmp_path, models_file, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENCLI, "serve", "--port", "0", "--models", str(models_file), *args],
        env=clean_env(tmp_path, **(env or {})),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_binding_all_interfaces_without_key_refuses_to_start(models_file, tmp_path):
    r = _serve_exit(tmp_path, models_file, "--host", "0.0.0.0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "0.0.0.0" in lines[0] and "GENCLI_API_KEY" in lines[0] and "--insecure-no-auth" in lines[0]
    assert "listening" not in r.stderr


def test_binding_all_interfaces_with_the_opt_out_warns(models_file, tmp_path):
    server = Server(tmp_path, models_file, ["--insecure-no-auth"], host="0.0.0.0")
    try:
        out = server.output()
        assert "--insecure-no-auth" in out and "without an API key" in out and "0.0.0.0" in out
        assert httpx.get(server.url + "/api/version").status_code == 200
    finally:
        assert server.stop() == 0


def test_binding_all_interfaces_with_a_key_starts(models_file, tmp_path):
    server = Server(tmp_path, models_file, host="0.0.0.0", env={"GENCLI_API_KEY": SERVER_KEY})
    try:
        assert "without an API key" not in server.output()
        assert httpx.get(server.url + "/api/version").status_code == 401
        # a non-loopback bind skips the Host check: the key guards it
        r = httpx.get(server.url + "/api/version", headers={**AUTH, "Host": "rebound.example"})
        assert r.status_code == 200
    finally:
        assert server.stop() == 0


def test_loopback_bind_does_not_warn(open_server):
    assert "without an API key" not in open_server.output()


def test_sigterm_lets_an_inflight_stream_finish(models_file, tmp_path):
    server = Server(tmp_path, models_file)
    with httpx.Client(timeout=10) as client:
        with client.stream(
            "POST", server.url + "/api/generate", json={"model": "slow", "prompt": "hi", "stream": True}
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = json.loads(next(lines))
            server.proc.send_signal(signal.SIGTERM)
            # the server stops accepting new connections while the stream goes on
            deadline = time.monotonic() + 1.0
            refused = False
            while time.monotonic() < deadline and not refused:
                try:
                    httpx.get(server.url + "/", timeout=0.2)
                    time.sleep(0.02)
                except httpx.TransportError:
                    refused = True
            rest = [json.loads(line) for line in lines if line]
    objs = [first, *rest]
    assert refused
    assert objs[-1]["done"] is True
    assert "".join(o["response"] for o in objs).split() == [f"tok{i}" for i in range(15)]
    assert server.proc.wait(15) == 0


# -- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "fe80::1", "myhost.example"])
def test_non_loopback_hosts(host):
    assert not is_loopback_host(host)
