"""Work kept off the server's event loop, and resources handed back when the server goes
quiet, checked on the real ``gencli serve`` process:

- the access log: a stderr nobody reads does not stop the server (lines wait in a bounded
  queue, then are dropped and counted);
- once no upstream request has been in progress for 2 s, the idle upstream connections are
  closed (and the heap trimmed; the resident memory after 500 streams: tests/test_load.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import GENCLI, clean_env
from tests.fakes.openai_upstream import FAKE_KEY
from tests.server_fixture import KEY_VAR, ServeProcess
from tests.test_httpclient import InThread, RawServer, openai_answer


def _models(base_url: str) -> dict:
    return {
        name: {"provider": "openai-compatible", "model": model, "base_url": base_url, "api_key_env": KEY_VAR}
        for name, model in (("echo", "echo"), ("slow", "slow-20-100"))
    }


def test_a_stderr_nobody_reads_never_stops_the_server(tmp_path, openai_fake):
    models = tmp_path / "models.json"
    models.write_text(json.dumps(_models(openai_fake.base_url)))
    proc = subprocess.Popen(
        [GENCLI, "serve", "--port", "0", "--models", str(models)],
        env=clean_env(tmp_path, **{KEY_VAR: FAKE_KEY}),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = ""
        while not url:  # read the start-up lines, then nothing more for a while
            line = proc.stderr.readline().decode()
            assert line, "gencli serve exited"
            if "listening on http://" in line:
                url = "http://127.0.0.1:" + line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1]
        for _ in range(100):
            try:
                httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)

        # ~800 lines fill a pipe; a batch of at most 5000 is stuck in the write; 5000 more
        # wait for stderr; the rest are dropped and counted
        assert _pipelined_gets(url, "/api/version", connections=4, each=3000) == 12000
        r = httpx.post(url + "/api/generate", json={"model": "echo", "prompt": "still serving"}, timeout=30)
        assert r.status_code == 200 and r.json()["response"] == "You said: still serving", r.text

        got: list[bytes] = []

        def read() -> None:
            while data := os.read(proc.stderr.fileno(), 1 << 16):
                got.append(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()  # stderr is read again: the waiting lines and the count come out
        time.sleep(1)
        httpx.get(url + "/api/version", timeout=5)  # one more line, written after the count
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    reader.join(15)
    text = b"".join(got).decode()
    lines = text.splitlines()
    dropped = [ln for ln in lines if "access-log lines dropped" in ln]
    assert len(dropped) == 1 and "stderr was not being read" in dropped[0], lines[-5:]
    count = int(dropped[0].split("gencli serve: ", 1)[1].split()[0])
    logged = [ln for ln in lines if " GET /api/version " in ln and " status=200 " in ln]
    assert count > 0 and len(logged) + count >= 12000, (count, len(logged))
    after = lines[lines.index(dropped[0]) + 1 :]  # once stderr is read again, lines are written as before
    assert any(" GET /api/version model=- status=200 " in ln for ln in after), after


def _pipelined_gets(url: str, path: str, connections: int, each: int) -> int:
    """``each`` pipelined GETs on each of ``connections`` connections; the number of 200s."""
    port = int(url.rsplit(":", 1)[1])
    counts: list[int] = []

    def one() -> None:
        ok = 0
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            batch = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() * 50
            for _ in range(each // 50):
                sock.sendall(batch)
                seen = b""
                while seen.count(b"HTTP/1.1 ") < 50:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    seen += data
                ok += seen.count(b"HTTP/1.1 200 ")
        counts.append(ok)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return sum(counts)


def test_idle_upstream_connections_close_when_the_server_goes_quiet(tmp_path):
    with InThread(RawServer(openai_answer)) as up:
        models = {"m": {"provider": "openai-compatible", "model": "x", "base_url": up.url + "/v1"}}
        s = ServeProcess(tmp_path, models)
        try:

            def one(_):
                return httpx.post(s.url + "/api/generate", json={"model": "m", "prompt": "hi"}, timeout=30)

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(one, range(8)))
            assert all(r.status_code == 200 and r.json()["response"] == "over TLS" for r in answers)
            opened = up.connections
            assert opened >= 2 and up.closed_by_client == 0  # kept alive for reuse while busy
            deadline = time.monotonic() + 15
            while up.closed_by_client < opened and time.monotonic() < deadline:
                time.sleep(0.1)
            assert up.closed_by_client == opened  # all closed once quiet (2 s, checked each second)
            assert one(0).status_code == 200  # and a new request opens a new one
            assert up.connections == opened + 1
        finally:
            s.stop()
