"""Reliability: retries with backoff, timeouts and upstream faults, through the engine
(both loops), the ``gencli`` command and ``gencli serve``. Every fault is a mode of the
fake upstreams (tests/fakes/openai_upstream.py, gemini_upstream.py); connection refused
is a closed port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gencli.core.events import Done
from gencli.core.request import GenerateRequest
from gencli.core.retry import MAX_WAIT, Retrier, RetryPolicy, retryable
from gencli.transports.server import ServerTransport
from tests.conftest import GENCLI, clean_env, run_gencli
from tests.fakes import gemini_upstream
from tests.fakes.openai_upstream import FAKE_KEY, FakeOpenAI
from tests.helpers import RUNNERS, execute, free_port, ndjson, post, run_sync, text_of, wait_until
from tests.server_fixture import KEY_VAR, ServeProcess


def tag(mode: str) -> str:
    """A fault mode with a fresh attempt counter in the shared fake."""
    return f"{mode}@{uuid.uuid4().hex[:8]}"


def entry(base_url: str, model: str, **kw) -> dict:
    return {"provider": "openai-compatible", "model": model, "base_url": base_url, "api_key_env": KEY_VAR, **kw}


def registry(tmp_path, models: dict) -> Registry:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(models))
    return Registry.load(path=str(path), env={KEY_VAR: FAKE_KEY, "GEMINI_API_KEY": gemini_upstream.FAKE_KEY})


# -- the policy --------------------------------------------------------------------------


def test_policy_backoff_is_exponential_with_full_jitter():
    err = UpstreamError("m: returned HTTP 503", upstream_status=503)
    top = RetryPolicy(retries=5, rand=lambda: 0.999999)
    assert [round(top.decide(err, n, 0), 3) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert top.decide(err, 6, 0) is None  # retries used up
    assert RetryPolicy(retries=5, rand=lambda: 0.0).decide(err, 3, 0) == 0.0
    waits = {RetryPolicy(retries=3).decide(err, 3, 0) for _ in range(50)}
    assert len(waits) > 40 and all(0 <= w <= 2.0 for w in waits)  # jittered across [0, 2]
    assert RetryPolicy(retries=5, rand=lambda: 0.999, budget=10).decide(err, 5, 5.0) is None  # over budget


def test_policy_honours_and_caps_retry_after():
    policy = RetryPolicy(retries=2, rand=lambda: 0.5)
    assert policy.decide(UpstreamRateLimited("m", 429, retry_after=1.5), 1, 0) == 1.5
    assert policy.decide(UpstreamRateLimited("m", 429, retry_after=MAX_WAIT + 0.1), 1, 0) is None
    assert policy.decide(UpstreamError("m", 503, retry_after=0.25), 1, 0) == 0.25


@pytest.mark.parametrize(
    "exc, retry",
    [
        (UpstreamUnreachable("m: cannot reach 127.0.0.1:9 (refused)"), True),
        (UpstreamError("m", 408), True),
        (UpstreamError("m", 500), True),
        (UpstreamError("m", 599), True),
        (UpstreamRateLimited("m", 429), True),
        (UpstreamError("m", 400, status=400), False),
        (UpstreamError("m", 404), False),
        (UpstreamError("m: malformed stream event"), False),
        (UpstreamAuthError("m", 401), False),
        (UpstreamTimeout("m: did not answer in time"), False),
        (ValueError("x"), False),
    ],
)
def test_what_is_retried(exc, retry):
    assert retryable(exc) is retry
    assert (RetryPolicy(retries=1).decide(exc, 1, 0) is not None) is retry


def test_final_error_says_what_was_tried():
    clock = iter([0.0, 0.1, 1.5, 4.2, 4.2])  # start, three failures, the final error
    r = Retrier(RetryPolicy(retries=2, rand=lambda: 0), "gpt-4o-mini", clock=lambda: next(clock))
    err = UpstreamError("gpt-4o-mini: OpenAI returned HTTP 503: overloaded", upstream_status=503)
    assert r.failed(err) == 0.0 and r.failed(err) == 0.0 and r.failed(err) is None
    final = r.error(err)
    assert type(final) is UpstreamError and final.status == 502 and final.upstream_status == 503
    assert str(final) == (
        "gpt-4o-mini: upstream returned 503 three times over 4.2 s (last: OpenAI returned HTTP 503: overloaded)"
    )
    once = Retrier(RetryPolicy(retries=0), "m")
    assert once.failed(err) is None and once.error(err) is err  # one attempt: the error as it was


# -- the engine, both loops ----------------------------------------------------------------


@pytest.mark.parametrize("loop", RUNNERS)
@pytest.mark.parametrize("stream", [True, False])
def test_503_burst_is_retried_then_succeeds(tmp_path, openai_fake, loop, stream):
    model = tag("burst503-2")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model)})
    waits: list = []
    events = RUNNERS[loop](reg, "m", stream, waits)
    assert text_of(events) == "You said: hello there" and type(events[-1]) is Done
    assert openai_fake.attempts[model] == 3
    # full-jitter backoff: up to 0.5 s before the second attempt, up to 1 s before the third
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0


@pytest.mark.parametrize("loop", RUNNERS)
def test_503_burst_longer_than_the_retries_fails_saying_so(tmp_path, openai_fake, loop):
    model = tag("burst503-9")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model, retries=2)})
    with pytest.raises(UpstreamError) as info:
        RUNNERS[loop](reg, "m")
    msg = str(info.value)
    assert msg.startswith("m: upstream returned 503 three times over ") and " s (last: " in msg
    assert "currently overloaded" in msg  # the upstream's own message is kept
    assert info.value.status == 502 and openai_fake.attempts[model] == 3


@pytest.mark.parametrize("loop", RUNNERS)
@pytest.mark.parametrize("mode, wait", [("retry-after-1", 1.0), ("retry-after-ms-400", 0.4)])
def test_429_waits_as_long_as_retry_after_says(tmp_path, openai_fake, loop, mode, wait):
    model = tag(mode)
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model)})
    waits: list = []
    events = RUNNERS[loop](reg, "m", True, waits)
    assert text_of(events) == "You said: hello there"
    assert openai_fake.attempts[model] == 2
    assert waits == [pytest.approx(wait)]  # what the upstream asked for, handed to the loop's sleep


@pytest.mark.parametrize("loop", RUNNERS)
def test_retry_after_beyond_the_cap_fails_at_once(tmp_path, openai_fake, loop):
    model = tag("retry-after-30-9")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model)})
    waits: list = []
    with pytest.raises(UpstreamRateLimited) as info:
        RUNNERS[loop](reg, "m", True, waits)
    assert waits == []  # fails at once: no wait
    assert openai_fake.attempts[model] == 1
    assert info.value.retry_after == 30 and info.value.status == 429
    assert "Rate limit reached" in str(info.value)


def test_gemini_retry_info_is_honoured(tmp_path, gemini_fake):
    reg = registry(
        tmp_path,
        {
            "frac": {
                "provider": "google",
                "model": "gemini-error-429-frac",
                "base_url": gemini_fake.base_url,
                "retries": 1,
            },
            "long": {"provider": "google", "model": "gemini-error-429", "base_url": gemini_fake.base_url},
        },
    )
    waits: list = []
    with pytest.raises(UpstreamRateLimited) as info:
        run_sync(reg, "frac", waits=waits)
    assert waits == [1.5]  # waited the 1.5 s of RetryInfo.retryDelay once
    assert "upstream returned 429 twice" in str(info.value) and "exceeded your current quota" in str(info.value)
    waits.clear()
    with pytest.raises(UpstreamRateLimited) as info:
        run_sync(reg, "long", waits=waits)  # 12 s is over the cap: no wait
    assert waits == [] and info.value.retry_after == 12.0
    assert "upstream returned" not in str(info.value)


@pytest.mark.parametrize("loop", RUNNERS)
def test_connection_refused_is_retried_then_reported(tmp_path, loop):
    reg = registry(tmp_path, {"m": entry(f"http://127.0.0.1:{free_port()}/v1", "echo", retries=2)})
    waits: list = []
    with pytest.raises(UpstreamUnreachable) as info:
        RUNNERS[loop](reg, "m", True, waits)
    assert len(waits) == 2  # two backoffs, handed to the loop's sleep
    assert str(info.value).startswith("m: the connection failed three times over ")
    assert "cannot reach 127.0.0.1:" in str(info.value) and info.value.status == 502


@pytest.mark.parametrize("loop", RUNNERS)
def test_connection_reset_before_output_is_retried(tmp_path, openai_fake, loop):
    model = tag("reset-1")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model)})
    assert text_of(RUNNERS[loop](reg, "m")) == "You said: hello there"
    assert openai_fake.attempts[model] == 2


@pytest.mark.parametrize("loop", RUNNERS)
def test_close_midstream_is_not_retried_and_keeps_the_partial_text(tmp_path, openai_fake, loop):
    model = tag("close-midstream")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model)})
    seen: list = []

    async def consume_async() -> None:
        plan = engine.prepare(GenerateRequest(model="m", prompt="x"), reg)
        transport = ServerTransport()
        try:
            async for ev in engine.aexecute(plan, transport):
                seen.append(ev)
        finally:
            await transport.close()

    def consume_sync() -> None:
        execute(engine.prepare(GenerateRequest(model="m", prompt="x"), reg), seen)

    with pytest.raises(UpstreamUnreachable, match="failed mid-response"):
        consume_sync() if loop == "sync" else asyncio.run(consume_async())
    assert text_of(seen) == "Partial answer so far "
    assert openai_fake.attempts[model] == 1


@pytest.mark.parametrize("loop", RUNNERS)
def test_hang_times_out_without_retrying(tmp_path, openai_fake, loop):
    model = tag("hang")
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, model, timeout=0.4)})
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        RUNNERS[loop](reg, "m")
    assert 0.35 <= time.monotonic() - t0 < 3
    assert info.value.status == 504 and "did not answer in time" in str(info.value)
    assert openai_fake.attempts[model] == 1


@pytest.mark.parametrize("loop", RUNNERS)
@pytest.mark.parametrize("stream", [True, False])
def test_garbage_is_a_clear_error(tmp_path, openai_fake, loop, stream):
    reg = registry(tmp_path, {"m": entry(openai_fake.base_url, "garbage")})
    with pytest.raises(UpstreamError) as info:
        RUNNERS[loop](reg, "m", stream)
    assert "\n" not in str(info.value) and info.value.status == 502
    assert ("malformed stream event" if stream else "not JSON") in str(info.value)


# -- the gencli command ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(openai_fake, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    url = openai_fake.base_url
    models = {
        "refused": entry(f"http://127.0.0.1:{free_port()}/v1", "echo"),
        "midstream": entry(url, "close-midstream"),
        "garbage": entry(url, "garbage"),
        "drip": entry(url, "slow-300-4"),
        "hang": entry(url, "hang"),
        "hang-fast": entry(url, "hang", timeout=0.3),
    }
    (d / "models.json").write_text(json.dumps(models))
    (d / "work").mkdir()
    return clean_env(d, **{KEY_VAR: FAKE_KEY, "GENCLI_MODELS": str(d / "models.json")}), d / "work"


def add_model(env_cwd, name: str, spec: dict) -> None:
    path = env_cwd[0]["GENCLI_MODELS"]
    with open(path) as f:
        models = json.load(f)
    models[name] = spec
    with open(path, "w") as f:
        json.dump(models, f)


def one_error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gencli: error: "), stderr
    assert "Traceback" not in stderr.decode()
    return lines[0]


@pytest.mark.parametrize("stream", [True, False])
def test_cli_close_midstream_prints_the_partial_answer_and_exits_1(cli_env, stream):
    env, cwd = cli_env
    r = run_gencli(["generate", "-m", "midstream", "hi", *([] if stream else ["--no-stream"])], env, cwd)
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "the connection to 127.0.0.1:" in line and "failed mid-response" in line
    if stream:  # output began: not retried, the partial answer is on stdout
        assert line.startswith("gencli: error: midstream: the connection to")
        assert r.stdout.decode().startswith("Partial answer so far")
    else:  # nothing was output yet: retried like any connection failure
        assert line.startswith("gencli: error: midstream: the connection failed three times over")


def test_cli_connection_refused(cli_env):
    env, cwd = cli_env
    r = run_gencli(["generate", "-m", "refused", "--retries", "1", "hi"], env, cwd)
    assert r.returncode == 1 and r.stdout == b""
    line = one_error_line(r.stderr)
    assert "refused: the connection failed twice over" in line and "cannot reach 127.0.0.1:" in line


def test_cli_timeout_flag_fires_on_a_hang(cli_env, openai_fake):
    env, cwd = cli_env
    before = sum(v for k, v in openai_fake.attempts.items() if k == "hang")
    t0 = time.monotonic()
    r = run_gencli(["generate", "-m", "hang", "--timeout", "0.5", "hi"], env, cwd)
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 10
    assert "did not answer in time" in one_error_line(r.stderr)
    assert openai_fake.attempts["hang"] == before + 1  # a timeout is not retried
    r = run_gencli(["generate", "-m", "hang-fast", "hi"], env, cwd)  # models.json "timeout": 0.3
    assert r.returncode == 1 and "did not answer in time" in one_error_line(r.stderr)


@pytest.mark.parametrize("stream", [True, False])
def test_cli_garbage(cli_env, stream):
    env, cwd = cli_env
    r = run_gencli(["generate", "-m", "garbage", "hi", *([] if stream else ["--no-stream"])], env, cwd)
    assert r.returncode == 1
    assert "garbage: " in one_error_line(r.stderr)


def test_cli_retries_flag_and_models_json_retries(cli_env, openai_fake):
    env, cwd = cli_env
    model = tag("burst503-2")
    add_model(cli_env, "burst", entry(openai_fake.base_url, model))
    r = run_gencli(["generate", "-m", "burst", "hi"], env, cwd)
    assert r.returncode == 0 and r.stdout.decode().strip() == "You said: hi"
    assert openai_fake.attempts[model] == 3
    model = tag("burst503-1")
    add_model(cli_env, "burst0", entry(openai_fake.base_url, model, retries=0))
    r = run_gencli(["generate", "-m", "burst0", "hi"], env, cwd)
    assert r.returncode == 1 and "HTTP 503" in one_error_line(r.stderr)
    assert openai_fake.attempts[model] == 1
    r = run_gencli(["generate", "-m", "burst0", "--retries", "1", "hi"], env, cwd)  # the flag wins
    assert r.returncode == 0 and openai_fake.attempts[model] == 2


def test_cli_429_with_retry_after_waits_then_succeeds(cli_env, openai_fake):
    env, cwd = cli_env
    model = tag("retry-after-1")
    add_model(cli_env, "limited", entry(openai_fake.base_url, model))
    t0 = time.monotonic()
    r = run_gencli(["generate", "-m", "limited", "hi"], env, cwd)
    assert r.returncode == 0 and r.stdout.decode().strip() == "You said: hi"
    assert time.monotonic() - t0 >= 1.0 and openai_fake.attempts[model] == 2


def test_cli_drip_streams_without_buffering(cli_env):
    """One token every 300 ms: the first reaches stdout (a pipe) long before the last."""
    env, cwd = cli_env
    proc = subprocess.Popen(
        [GENCLI, "generate", "-m", "drip", "hi"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = os.read(proc.stdout.fileno(), 100)
        t_first = time.monotonic()
        rest = proc.stdout.read()
        t_last = time.monotonic()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert first.startswith(b"tok0") and b"tok3" not in first
    assert (first + rest).decode().split() == ["tok0", "tok1", "tok2", "tok3"]
    assert t_last - t_first >= 0.6


# -- gencli serve --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drop_fake():
    """A fake of its own for the disconnect test, so its connection count is only that stream's."""
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(openai_fake, drop_fake, tmp_path_factory):
    url = openai_fake.base_url
    models = {
        "midstream": entry(url, "close-midstream"),
        "garbage": entry(url, "garbage"),
        "hang": entry(url, "hang"),
        "drip": entry(url, "slow-250-4"),
        "limited": entry(url, tag("retry-after-1")),
        "capped": entry(url, tag("retry-after-30-99")),
        "burst": entry(url, tag("burst503-9")),
        "burst-ok": entry(url, tag("burst503-1")),
        "refused": entry(f"http://127.0.0.1:{free_port()}/v1", "echo"),
        "long": entry(drop_fake.base_url, "slow-20-500"),
    }
    s = ServeProcess(tmp_path_factory.mktemp("serve-rel"), models, args=["--timeout", "1", "--retries", "1"])
    s.models = models
    yield s
    s.stop()


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_serve_close_midstream_ends_with_an_error_line_keeping_the_text(server, path):
    body = {"model": "midstream", "stream": True}
    body.update({"prompt": "x"} if path == "/api/generate" else {"messages": [{"role": "user", "content": "x"}]})
    r = post(server, path, body)
    assert r.status_code == 200
    lines = ndjson(r)
    text = "".join(line.get("response") or (line.get("message") or {}).get("content", "") for line in lines[:-1])
    assert text == "Partial answer so far "
    assert set(lines[-1]) == {"error"} and "failed mid-response" in lines[-1]["error"]
    body["stream"] = False
    r = post(server, path, body)
    assert r.status_code == 502 and "failed mid-response" in r.json()["error"]


def test_serve_close_midstream_openai_v1(server):
    r = post(
        server,
        "/v1/chat/completions",
        {"model": "midstream", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200
    assert "Partial " in r.text and "failed mid-response" in r.text


def test_serve_hang_is_a_504_after_the_serve_timeout(server, openai_fake):
    before = openai_fake.attempts.get("hang", 0)
    t0 = time.monotonic()
    r = post(server, "/api/generate", {"model": "hang", "prompt": "x"})
    assert r.status_code == 504 and "did not answer in time" in r.json()["error"]
    assert 0.9 <= time.monotonic() - t0 < 8  # serve --timeout 1
    assert openai_fake.attempts["hang"] == before + 1


@pytest.mark.parametrize("stream", [True, False])
def test_serve_garbage_is_a_502(server, stream):
    r = post(server, "/api/generate", {"model": "garbage", "prompt": "x", "stream": stream})
    assert r.status_code == 502
    assert "OpenAI-compatible server" in r.json()["error"]


def test_serve_unreachable_is_a_502_after_retrying(server):
    r = post(server, "/api/generate", {"model": "refused", "prompt": "x"})
    assert r.status_code == 502
    assert r.json()["error"].startswith("refused: the connection failed twice over")  # serve --retries 1


def test_serve_503_burst(server, openai_fake):
    r = post(server, "/api/generate", {"model": "burst-ok", "prompt": "x"})
    assert r.status_code == 200 and r.json()["response"] == "You said: x"
    r = post(server, "/api/generate", {"model": "burst", "prompt": "x", "stream": True})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err.startswith("burst: upstream returned 503 twice over") and "currently overloaded" in err
    assert openai_fake.attempts[server.models["burst"]["model"]] == 2


def test_serve_429_waits_for_retry_after_or_passes_it_on(server):
    t0 = time.monotonic()
    r = post(server, "/api/generate", {"model": "limited", "prompt": "x"})
    assert r.status_code == 200 and r.json()["response"] == "You said: x"
    assert time.monotonic() - t0 >= 1.0
    t0 = time.monotonic()
    r = post(server, "/v1/chat/completions", {"model": "capped", "messages": [{"role": "user", "content": "x"}]})
    assert time.monotonic() - t0 < 3
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert "Rate limit reached" in r.json()["error"]["message"]


def test_serve_drip_streams_without_buffering(server):
    stamps: list[float] = []
    texts: list[str] = []
    with httpx.stream(
        "POST", server.url + "/api/generate", json={"model": "drip", "prompt": "x", "stream": True}, timeout=30
    ) as r:
        for line in r.iter_lines():
            if line.strip():
                stamps.append(time.monotonic())
                texts.append(json.loads(line).get("response", ""))
    assert "".join(texts).split() == ["tok0", "tok1", "tok2", "tok3"]
    assert stamps[-1] - stamps[0] >= 0.6  # each token came as it was made, not at the end


def test_serve_client_disconnect_cancels_the_upstream_within_100ms(server, drop_fake):
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"model": "long", "prompt": "x", "stream": True}).encode()
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    got = b""
    while got.count(b'"response"') < 3:  # a few tokens have arrived: the stream is under way
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    assert drop_fake.open_connections == 1 and drop_fake.disconnects == 0
    t_close = time.monotonic()
    sock.close()
    wait_until(lambda: not drop_fake.open_connections and drop_fake.disconnects, 5, 0.005)
    assert drop_fake.disconnects == 1 and drop_fake.open_connections == 0
    assert drop_fake.disconnect_times[0] - t_close < 0.1
    assert len(drop_fake.requests) == 1  # not retried
    r = post(server, "/api/generate", {"model": "drip", "prompt": "x"})  # and the server keeps serving
    assert r.status_code == 200
