"""gencli serve's errors and cancellation: statuses before streaming, the final error
line after it, upstream failures, client disconnects, and start-up failures."""

from __future__ import annotations

import json
import socket
import time

import httpx
import ollama
import pytest

from tests.conftest import clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.helpers import post, wait_until
from tests.server_fixture import KEY_VAR, ServeProcess, models_json


@pytest.fixture(scope="module")
def blackhole():
    """A socket that accepts connections (the kernel completes the handshake) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def server(openai_fake, blackhole, tmp_path_factory):
    models = models_json(openai_fake.base_url)
    models["blackhole"] = {
        "provider": "openai-compatible",
        "model": "echo",
        "api_key_env": KEY_VAR,
        "base_url": f"http://127.0.0.1:{blackhole}/v1",
        "timeout": 0.5,
    }
    s = ServeProcess(tmp_path_factory.mktemp("serve-errors"), models)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


# -- request errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"", 400, "empty"),
        ({"prompt": "x"}, 400, "model is required"),
        ({"model": 5, "prompt": "x"}, 400, "model must be a string"),
        ({"model": "echo", "prompt": ["x"]}, 400, "prompt must be a string"),
        ({"model": "echo", "prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
        ({"model": "echo", "prompt": "x", "options": [1]}, 400, "options must be an object"),
        ({"model": "echo", "prompt": "x", "options": {"temperature": 9}}, 400, "options.temperature"),
        ({"model": "echo", "prompt": "x", "context": [1, 2, 3]}, 400, "context"),
        ({"model": "echo", "prompt": "x", "images": ["!!notbase64!!"]}, 400, "image 1"),
        ({"model": "echo", "prompt": "x", "format": "yaml"}, 400, "format"),
        ({"model": "echo", "prompt": "x", "think": "maybe"}, 400, "think"),
        ({"model": "no-such-model", "prompt": "x"}, 404, "model 'no-such-model' not found"),
        ({"model": "needs-key", "prompt": "x"}, 400, "GENCLI_TEST_UNSET_KEY"),
    ],
)
def test_generate_request_errors(server, body, status, needle):
    r = post(server, "/api/generate", body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"]


def test_chat_request_errors(server):
    r = post(server, "/api/chat", {"model": "echo", "messages": "hi"})
    assert r.status_code == 400 and "messages must be an array" in r.json()["error"]
    r = post(server, "/api/chat", {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "messages[0].role" in r.json()["error"]
    r = post(server, "/api/chat", {"model": "echo", "messages": [{"role": "user", "content": 3}]})
    assert r.status_code == 400 and "messages[0].content" in r.json()["error"]


def test_client_sees_status(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="x")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        list(client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}], stream=True))
    assert e.value.status_code == 404


def test_unknown_route_and_wrong_method(server):
    r = httpx.get(server.url + "/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/api/generate")
    assert r.status_code == 405 and "POST" in r.headers["allow"] and "error" in r.json()
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# -- upstream errors -----------------------------------------------------------------------


def test_upstream_rejects_key(client, server):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="bad-key", prompt="x")
    assert e.value.status_code == 502
    assert KEY_VAR in e.value.error and "rejected the API key" in e.value.error
    assert FAKE_KEY not in e.value.error and FAKE_KEY not in server.stderr()


def test_upstream_rate_limit(server):
    r = post(server, "/api/generate", {"model": "limited", "prompt": "x", "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert "rate limiting" in r.json()["error"]


@pytest.mark.parametrize("model, status", [("broken", 502), ("gone", 502), ("unreachable", 502)])
def test_upstream_failures(server, model, status):
    for stream in (False, True):
        r = post(server, "/api/generate", {"model": model, "prompt": "x", "stream": stream})
        assert r.status_code == status, r.text
        assert r.json()["error"].startswith(f"{model}:")


def test_upstream_timeout_before_answer(server):
    """An upstream that accepts the connection and never answers: 504 within the model's timeout."""
    for stream in (False, True):
        started = time.monotonic()
        r = post(server, "/api/generate", {"model": "blackhole", "prompt": "x", "stream": stream})
        assert r.status_code == 504, r.text
        assert "did not answer in time" in r.json()["error"]
        assert time.monotonic() - started < 5


def test_error_line_after_streaming_started(server, client):
    """The sluggish upstream sends a token, then nothing for longer than the 0.5 s timeout:
    the status is already 200, so the last line is the error."""
    r = post(server, "/api/generate", {"model": "sluggish", "prompt": "x", "stream": True})
    assert r.status_code == 200
    lines = r.text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])
    objs = [json.loads(line) for line in lines[:-1]]
    assert objs[0]["response"] == "tok0 " and objs[0]["done"] is False
    assert "read timeout" in objs[-1]["error"] and set(objs[-1]) == {"error"}
    with pytest.raises(ollama.ResponseError) as e:
        list(client.generate(model="sluggish", prompt="x", stream=True))
    assert "read timeout" in e.value.error


def test_upstream_error_event_in_stream(server, client):
    r = post(server, "/api/generate", {"model": "midstream", "prompt": "x", "stream": True})
    if r.status_code == 200:  # the partial text came in an earlier read than the error event
        assert "crashed" in json.loads(r.text.splitlines()[-1])["error"]
    else:
        assert r.status_code == 502 and "crashed" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as e:
        list(client.generate(model="midstream", prompt="x", stream=True))
    assert "crashed" in e.value.error


# -- cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", {"model": "slow", "prompt": "go", "stream": True}),
        ("/api/chat", {"model": "slow", "messages": [{"role": "user", "content": "go"}], "stream": True}),
        ("/v1/chat/completions", {"model": "slow", "messages": [{"role": "user", "content": "go"}], "stream": True}),
    ],
)
def test_client_disconnect_closes_upstream(server, openai_fake, path, body):
    """The slow model sends 200 tokens 100 ms apart (20 s); dropping the client after two
    lines must close the upstream connection within a fraction of that."""
    before = openai_fake.disconnects
    mark = openai_fake.mark()
    with httpx.stream("POST", server.url + path, json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line)  # SSE separates events by blank lines
        got = [next(lines), next(lines)]
        assert all(got)
        open_during = openai_fake.open_connections
        assert open_during >= 1
        started = time.monotonic()
    # leaving the block closed our connection to the server
    assert wait_until(lambda: openai_fake.disconnects > before), "the upstream stream was not cancelled"
    assert time.monotonic() - started < 2.0
    assert wait_until(lambda: openai_fake.open_connections <= open_during - 1)
    assert len(openai_fake.since(mark)) == 1
    # the server is fine afterwards
    assert (
        post(server, "/api/generate", {"model": "echo", "prompt": "still ok"}).json()["response"]
        == "You said: still ok"
    )


# -- start-up failures ----------------------------------------------------------------------


def test_port_in_use(tmp_path, workdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_gencli(["serve", "--port", str(port)], clean_env(tmp_path), workdir, timeout=30)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and "already in use" in err and str(port) in err


def test_bad_models_json(tmp_path, workdir):
    bad = tmp_path / "models.json"
    bad.write_text('{"x": {"provider": "nowhere", "model": "m"}}')
    r = run_gencli(["serve", "--port", "0", "--models", str(bad)], clean_env(tmp_path), workdir, timeout=30)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and "unknown provider 'nowhere'" in err
    bad.write_text("{broken")
    r = run_gencli(["serve", "--port", "0", "--models", str(bad)], clean_env(tmp_path), workdir, timeout=30)
    assert r.returncode == 1 and "invalid JSON" in r.stderr.decode()


def test_startup_line_lists_ready_models(server):
    text = server.stderr()
    line = next(ln for ln in text.splitlines() if ln.startswith("ready models:"))
    assert "echo" in line and "needs-key" not in line
    assert f"listening on http://127.0.0.1:{server.port}" in text


# -- the thread bridge for in-process runs (the local model) -----------------------------------


class _CountingRun:
    """An in-process run (gencli.providers.base.LocalRun): a blocking iterator of event batches."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0):
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.produced = 0
        self.closed = False

    async def ready(self) -> None:
        pass

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed or self.produced >= self.n:
            raise StopIteration
        if self.produced == self.fail_at:
            raise ValueError("model crashed")
        time.sleep(self.delay)
        self.produced += 1
        return [self.produced - 1]

    def close(self) -> None:
        self.closed = True

    def cancel(self) -> None:  # the bridge's, on the event loop: never waits
        self.closed = True


def test_in_thread_bridge():
    import asyncio

    from gencli.engine.bridge import in_thread

    async def collect(run, limit=None):
        out = []
        agen = in_thread(run)
        try:
            async for events in agen:
                out.extend(events)
                if limit is not None and len(out) >= limit:
                    break
        finally:
            await agen.aclose()
        return out

    assert asyncio.run(collect(_CountingRun(5))) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="model crashed"):
        asyncio.run(collect(_CountingRun(5, fail_at=2)))
    slow = _CountingRun(1000, delay=0.005)
    assert asyncio.run(collect(slow, limit=3)) == [0, 1, 2]
    assert wait_until(lambda: slow.closed, 2.0) and slow.produced < 50  # the thread stopped early
