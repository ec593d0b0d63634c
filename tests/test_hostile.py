"""``gencli serve`` under hostile input (issue 9): one test (or a few) per attack class,
each against the real server process, which runs under an address-space limit so that a
broken bound fails the test rather than the machine. Every test asserts the bound (status,
time to answer, peak RSS growth read from /proc) and that a normal request still works.

Classes: error-path amplification, decompression (context), image fan-out, the transport
before auth (header size/count, slow headers and bodies, idle sockets, the connection
limit, pipelining, chunked bodies, framing, 100-continue, HEAD, a client that stops
reading), DNS rebinding (Host), secrets in upstream errors. (Exposure: test_server_guard;
wrong types: test_wrong_types; flags: test_serve_flags; request options: the engine's.)
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httptools
import httpx
import pytest
from aiohttp import web

from gencli.server.api.ollama import OLLAMA_VERSION
from tests.fakes.threaded import ThreadedServer
from tests.server_fixture import ServeProcess, models_json

MB = 1024 * 1024
MEMORY_MB = 1024  # the server's address-space limit in these tests
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24
ENV = {"MALLOC_ARENA_MAX": "2"}  # keeps the address space of a few threads small and predictable

ARGS = [
    "--max-body-mb",
    "4",
    "--header-timeout",
    "1",
    "--body-timeout",
    "1",
    "--keep-alive",
    "3",
    "--max-connections",
    "64",
    "--max-images",
    "4",
    "--max-images-mb",
    "8",
    "--image-memory-mb",
    "12",
    "--image-fetches",
    "2",
    "--allow-private-images",
    "--allowed-hosts",
    "my.lan, *.corp.example",
]


class Images(ThreadedServer):
    """Image URLs on 127.0.0.1: ``/png/<MB>`` serves that many MB of PNG-looking bytes (slowly
    with ``?slow=1``, with a Content-Length with ``?declare=1``)."""

    thread_name = "fake-images"

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.whole: list[tuple[float, float]] = []  # (start, end) of each download sent in full

    def peak(self, since: float = 0.0) -> int:
        """The most whole downloads in progress at once (started after ``since``)."""
        edges = sorted([(s, 1) for s, e in self.whole if s >= since] + [(e, -1) for s, e in self.whole if s >= since])
        peak = now = 0
        for _, step in edges:
            now += step
            peak = max(peak, now)
        return peak

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/png/{mb}", self.png)
        return app

    async def png(self, request: web.Request) -> web.StreamResponse:
        import asyncio

        self.hits += 1
        start = time.monotonic()
        size = int(float(request.match_info["mb"]) * MB)
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        if request.query.get("declare"):
            resp.content_length = size
        await resp.prepare(request)
        await resp.write(PNG)
        sent = len(PNG)
        block = b"\0" * 65536
        while sent < size:
            n = min(len(block), size - sent)
            await resp.write(block[:n])
            sent += n
            if request.query.get("slow"):
                await asyncio.sleep(0.02)
        await resp.write_eof()
        self.whole.append((start, time.monotonic()))
        return resp

    def url(self, mb: float, **query) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://127.0.0.1:{self.port}/png/{mb}" + (f"?{q}" if q else "")


@pytest.fixture(scope="module")
def images():
    s = Images().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hostile(openai_fake, tmp_path_factory):
    models = models_json(openai_fake.base_url)
    for name in ("tokens-400000", "giant-line", "long-answer"):  # the fake upstream's models of the same names
        models[name] = {**models["echo"], "model": name, "capabilities": ["completion"]}
    s = ServeProcess(tmp_path_factory.mktemp("hostile"), models, args=ARGS, env=ENV, memory_mb=MEMORY_MB)
    yield s
    s.stop()


# -- helpers ---------------------------------------------------------------------------------


def connect(server: ServeProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


class _Responses:
    def __init__(self) -> None:
        self.done: list[tuple[int, dict, bytes]] = []
        self._headers: dict = {}
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []


def read_responses(sock: socket.socket, n: int = 1, head: bool = False) -> list[tuple[int, dict, bytes]]:
    """Read ``n`` HTTP responses (status, headers, body) from ``sock``, or as many as come before
    it closes."""
    r = _Responses()
    if head:
        r.parser.set_dangerous_leniencies(lenient_keep_alive=True)
    while len(r.done) < n:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        r.parser.feed_data(data)
    return r.done


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds`` (and what it sent before)."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def works(server: ServeProcess) -> None:
    r = httpx.post(server.url + "/api/generate", json={"model": "echo", "prompt": "still here"}, timeout=30)
    assert r.status_code == 200 and r.json()["response"] == "You said: still here"


def growth_mb(server: ServeProcess) -> float:
    """Peak RSS since the last reset_peak(), above the RSS at that time, in MB."""
    return (server.status("VmHWM") - server.base_rss) / 1024


def start_watch(server: ServeProcess) -> None:
    server.reset_peak()
    server.base_rss = server.status("VmRSS")


def post_raw(server: ServeProcess, path: str, body: bytes, timeout: float = 30) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=timeout)
    return r, time.monotonic() - t


# -- 2. error-path amplification ---------------------------------------------------------------


def test_a_body_of_tiny_values_is_refused_before_it_is_parsed(hostile):
    """4 MB of ``{}`` would parse into ~150 MB of Python objects: the values are counted first
    (one per 16 bytes of --max-body-mb at most), without parsing."""
    works(hostile)
    start_watch(hostile)
    n = (4 * MB - 100) // 3
    for body in (
        b'{"model": "echo", "prompt": "hi", "x": [' + b"{}," * n + b"{}]}",
        b'{"model": "echo", "prompt": "hi", "x": {' + b'"k":1,' * (n // 2) + b'"a":1}}',
    ):
        r, took = post_raw(hostile, "/api/generate", body)
        assert r.status_code == 413, r.text[:300]
        assert "more than 262144 JSON values" in r.json()["error"], r.json()
        assert took < 5, took
    r, _ = post_raw(hostile, "/v1/chat/completions", b'{"model": "echo", "x": [' + b"[]," * n + b"[]]}")
    assert r.status_code == 413 and "JSON values" in r.json()["error"]["message"]
    assert growth_mb(hostile) < 40
    # commas and brackets inside strings are not values: a CSV of a million numbers is a prompt
    csv = ",".join(["1"] * 1_000_000)
    r = httpx.post(hostile.url + "/api/generate", json={"model": "echo", "prompt": csv}, timeout=30)
    assert r.status_code == 200 and r.json()["response"] == "You said: " + csv
    works(hostile)


def test_a_nan_deep_in_a_large_body_is_named_in_linear_time(hostile):
    works(hostile)
    start_watch(hostile)
    # 1.2 MB of small tokens before the bad value (600,000: past the scan budget), in 200,000
    # values (under the server's limit of 262,144 values for its 4 MB bodies)
    keys = ",".join(['"s":1'] * 200_000)
    body = ('{"model": "echo", "prompt": "hi", "x": {' + keys + '}, "options": {"temperature": NaN}}').encode()
    r, took = post_raw(hostile, "/api/generate", body)
    assert r.status_code == 400
    # past the scan budget the offset is named instead of the field: either way, one short line
    message = r.json()["error"]
    assert "NaN" in message and ("options.temperature" in message or "byte" in message), message
    assert len(r.content) < 500
    assert took < 5, took
    assert growth_mb(hostile) < 60
    small = b'{"model": "echo", "options": {"stop": ["a", "b"], "temperature": NaN}, "prompt": "x"}'
    r, _ = post_raw(hostile, "/api/generate", small)
    assert r.status_code == 400 and "options.temperature is NaN" in r.json()["error"]
    works(hostile)


def test_a_megabyte_key_is_never_echoed(hostile):
    start_watch(hostile)
    key = "k" * (3 * MB)
    for body in ('{"' + key + '\\ud800": 1}', '{"model": "echo", "options": {"' + key + '": [Infinity]}}'):
        r, took = post_raw(hostile, "/api/generate", body.encode())
        assert r.status_code == 400
        assert len(r.content) < 500, r.content[:300]
        assert took < 5
    # the same on the OpenAI route, in its error shape
    r, _ = post_raw(hostile, "/v1/chat/completions", ('{"model": "echo", "' + key + '": -Infinity}').encode())
    assert r.status_code == 400 and len(r.content) < 700 and r.json()["error"]["message"]
    # a model name of a megabyte: the message is cut
    r = httpx.post(hostile.url + "/api/generate", json={"model": "m" * MB, "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and len(r.content) < 1200
    assert growth_mb(hostile) < 80
    works(hostile)


def test_a_template_that_repeats_the_prompt_is_refused_before_it_grows(hostile, openai_fake):
    """Ollama's template field: 200,000 copies of a 1 MB prompt would be 200 GB; the rendered
    prompt is bounded (a few copies of the values) and checked before each copy."""
    start_watch(hostile)
    mark = openai_fake.mark()
    body = json.dumps({"model": "echo", "prompt": "p" * MB, "template": "{{.Prompt}}" * 200_000}).encode()
    r, took = post_raw(hostile, "/api/generate", body)
    assert r.status_code == 400 and "template repeats" in r.json()["error"]
    assert took < 5 and growth_mb(hostile) < 60
    assert openai_fake.since(mark) == []
    # keep_alive, logprobs and top_logprobs are checked by type and range
    for extra in ({"keep_alive": "9" * 400}, {"keep_alive": [1] * 1000}, {"top_logprobs": 10**18}, {"logprobs": "yes"}):
        r = httpx.post(hostile.url + "/api/generate", json={"model": "echo", "prompt": "x", **extra}, timeout=30)
        assert r.status_code == 400 and len(r.content) < 500, (extra, r.text[:200])
    works(hostile)


# -- 3. decompression -----------------------------------------------------------------------------


def _context(payload_json: bytes) -> list[int]:
    payload = zlib.compress(payload_json, 9)
    blob = b"gc\x01" + struct.pack(">II", zlib.crc32(payload), len(payload)) + payload
    blob += b"\0" * (-len(blob) % 3)
    return [int.from_bytes(blob[i : i + 3], "big") for i in range(0, len(blob), 3)]


def test_a_context_bomb_is_refused_before_it_inflates(hostile):
    start_watch(hostile)
    bomb = _context(b'[["user", "' + b"a" * (256 * MB) + b'"]]')  # 256 MB of conversation in ~250 KB
    body = json.dumps({"model": "echo", "prompt": "more", "context": bomb}).encode()
    assert len(body) < 4 * MB
    r, took = post_raw(hostile, "/api/generate", body)
    assert r.status_code == 400
    assert "larger than 4 MB" in r.json()["error"] and "context" in r.json()["error"]
    assert took < 5
    assert growth_mb(hostile) < 60
    # a context array longer than any conversation under the limit: refused before decoding
    # (before parsing, too: 1,500,000 numbers are more values than a 4 MB body may hold)
    long = b'{"model": "echo", "prompt": "x", "context": [' + b",".join([b"1"] * 1_500_000) + b"]}"
    r, _ = post_raw(hostile, "/api/generate", long)
    assert r.status_code == 413 and "JSON values" in r.json()["error"]
    # a real context under the limit still works
    first = httpx.post(hostile.url + "/api/generate", json={"model": "echo", "prompt": "one"}, timeout=30).json()
    again = httpx.post(
        hostile.url + "/api/generate", json={"model": "echo", "prompt": "two", "context": first["context"]}, timeout=30
    )
    assert again.status_code == 200
    works(hostile)


# -- 4. image fan-out -------------------------------------------------------------------------------


def _chat_with_images(urls: list[str]) -> dict:
    return {"model": "echo", "stream": False, "messages": [{"role": "user", "content": "look", "images": urls}]}


def test_image_count_and_bytes_per_request_are_bounded(hostile, images, openai_fake):
    mark = openai_fake.mark()
    start_watch(hostile)
    # 40 URLs of 19 MB in a 2 KB request: refused by count before any download
    hits = images.hits
    r = httpx.post(hostile.url + "/api/chat", json=_chat_with_images([images.url(19)] * 40), timeout=30)
    assert r.status_code == 400 and "too many images: 40" in r.json()["error"] and "--max-images" in r.json()["error"]
    r = httpx.post(
        hostile.url + "/api/generate",
        json={"model": "echo", "prompt": "x", "images": [images.url(19)] * 40},
        timeout=30,
    )
    assert r.status_code == 400 and "too many images" in r.json()["error"]
    assert images.hits == hits
    # 4 URLs of 3 MB: the third passes the 8 MB a request, and the download stops there
    t = time.monotonic()
    r = httpx.post(hostile.url + "/api/chat", json=_chat_with_images([images.url(3)] * 4), timeout=60)
    assert r.status_code == 413 and "8 MB a request" in r.json()["error"], r.text
    assert time.monotonic() - t < 15
    assert images.hits - hits == 3
    # a declared Content-Length over what is left is refused from the header
    r = httpx.post(
        hostile.url + "/v1/chat/completions",
        timeout=60,
        json={
            "model": "echo",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": images.url(9, declare=1)}}]}
            ],
        },
    )
    assert r.status_code == 413 and "--max-images-mb" in r.json()["error"]["message"]
    assert openai_fake.since(mark) == []  # nothing went upstream
    assert growth_mb(hostile) < 120
    # under the limits, images work
    r = httpx.post(hostile.url + "/api/chat", json=_chat_with_images([images.url(0.5)] * 2), timeout=60)
    assert r.status_code == 200
    works(hostile)


def test_image_fetches_and_bytes_in_flight_are_bounded_process_wide(hostile, images):
    """--image-fetches 2 and --image-memory-mb 12: six requests of 2 x 2.5 MB at once download at
    most 2 images at a time, and past 12 MB held the others get 503 (retry later)."""
    since = time.monotonic()
    start_watch(hostile)
    results: list[httpx.Response] = []

    def one() -> None:
        results.append(
            httpx.post(hostile.url + "/api/chat", timeout=120, json=_chat_with_images([images.url(2.5, slow=1)] * 2))
        )

    threads = [threading.Thread(target=one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    statuses = sorted(r.status_code for r in results)
    assert images.peak(since) <= 2
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    busy = [r for r in results if r.status_code == 503]
    assert all("--image-memory-mb" in r.json()["error"] and r.headers.get("retry-after") for r in busy)
    assert growth_mb(hostile) < 150
    # the budget is given back when requests end
    r = httpx.post(hostile.url + "/api/chat", json=_chat_with_images([images.url(3)] * 2), timeout=60)
    assert r.status_code == 200
    works(hostile)


# -- 5. transport, before auth ----------------------------------------------------------------------


def test_an_endless_header_is_431_at_the_limit(hostile):
    start_watch(hostile)
    sock = connect(hostile)
    sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
    sent = 0
    stop = threading.Event()

    def pour() -> None:
        nonlocal sent
        block = b"a" * 65536
        try:
            while not stop.is_set() and sent < 128 * MB:
                sock.sendall(block)
                sent += len(block)
        except OSError:
            pass

    t0 = time.monotonic()
    th = threading.Thread(target=pour)
    th.start()
    got = read_responses(sock)
    stop.set()
    th.join(10)
    sock.close()
    assert got and got[0][0] == 431 and b"64 KB" in got[0][2]
    assert time.monotonic() - t0 < 5
    assert growth_mb(hostile) < 40
    works(hostile)


def test_too_many_headers_is_431(hostile):
    sock = connect(hostile)
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n")
    got = read_responses(sock)
    assert got[0][0] == 431 and b"too many request headers" in got[0][2]
    sock = connect(hostile)
    fewer = b"".join(b"X-H%d: v\r\n" % i for i in range(99))  # 100 with Host: the limit
    sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n" + fewer + b"\r\n")
    assert read_responses(sock)[0][0] == 200


def test_slow_headers_get_408_and_a_silent_socket_is_closed(hostile):
    # one header byte every 0.2 s: the 1 s deadline runs from connect to the end of the headers
    sock = connect(hostile)
    t0 = time.monotonic()
    got = b""
    try:
        for ch in b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"z" * 40:
            sock.sendall(bytes([ch]))
            time.sleep(0.2)
            if time.monotonic() - t0 > 6:
                break
    except OSError:
        pass
    closed, got = closed_within(sock, 5)
    assert closed and b" 408 " in got.split(b"\r\n", 1)[0], got[:200]
    assert time.monotonic() - t0 < 6
    # a connection that never sends a byte is closed at the deadline, without a reply
    sock = connect(hostile)
    t0 = time.monotonic()
    closed, got = closed_within(sock, 5)
    assert closed and got == b"" and time.monotonic() - t0 < 4
    works(hostile)


def test_a_stalled_body_gets_408(hostile):
    sock = connect(hostile)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model": '
    )
    t0 = time.monotonic()
    closed, got = closed_within(sock, 6)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"--body-timeout" in got and time.monotonic() - t0 < 5
    # a body dripping a byte every 0.3 s keeps going (the timeout is on pauses, not on the total)
    body = b'{"model": "echo", "prompt": "drip"}'
    sock = connect(hostile)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 4):
        sock.sendall(body[i : i + 4])
        time.sleep(0.3)
    got = read_responses(sock)
    assert got[0][0] == 200 and json.loads(got[0][2])["response"] == "You said: drip"
    works(hostile)


def test_idle_sockets_cannot_lock_clients_out(hostile):
    """--max-connections 64: 300 silent sockets evict one another, and real clients still get in."""
    start_watch(hostile)
    socks = []
    for _ in range(300):
        try:
            socks.append(connect(hostile, timeout=5))
        except OSError:
            break
    t0 = time.monotonic()
    works(hostile)
    assert time.monotonic() - t0 < 5
    for s in socks:
        s.close()
    assert growth_mb(hostile) < 40


def test_connections_past_the_limit_with_requests_in_progress_get_503(hostile):
    busy = []
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    )
    body = json.dumps({"model": "slow", "prompt": "x", "stream": True}).encode()  # 200 tokens, 100 ms each
    try:
        for _ in range(64):
            s = connect(hostile)
            s.sendall(request % (len(body), body))
            busy.append(s)
        for s in busy[:3]:  # every stream is running (its first line arrived)
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
        extra = connect(hostile)
        got = read_responses(extra)
        assert got and got[0][0] == 503 and b"--max-connections" in got[0][2]
        extra.close()
    finally:
        for s in busy:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the streams' connections close; new clients get in again
        try:
            works(hostile)
            break
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_open_file_limit_is_raised_to_the_hard_limit(hostile):
    for line in Path(f"/proc/{hostile.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            assert soft == hard


def test_pipelined_requests_are_answered_in_order(hostile):
    body = json.dumps({"model": "echo", "prompt": "second"}).encode()
    sock = connect(hostile)
    sock.sendall(
        b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n" % (len(body), body)
    )
    got = read_responses(sock, 4)
    assert [g[0] for g in got] == [200, 200, 200, 404]
    assert json.loads(got[0][2]) == {"version": OLLAMA_VERSION}
    assert json.loads(got[1][2])["response"] == "You said: second"
    assert "models" in json.loads(got[2][2])


def test_pipelined_heads_are_capped_per_request_not_per_read(hostile):
    """One read holding a request with a 63 KB body, a request whose head is just under the
    64 KB cap and one with 100 headers: all three are answered. Then a head one byte over the
    cap, and one header too many, pipelined behind a good request: that one is answered, the
    bad one gets 431."""
    body = json.dumps({"model": "echo", "prompt": "p" * (63 * 1024)}).encode()
    first = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    start = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Pad: "
    big = start + b"a" * (64 * 1024 - len(start) - 2 - 100) + b"\r\n\r\n"
    many = (
        b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(99)) + b"\r\n"
    )
    sock = connect(hostile)
    sock.sendall(first + big + many)
    got = read_responses(sock, 3)
    assert [g[0] for g in got] == [200, 200, 200]
    assert json.loads(got[0][2])["response"].startswith("You said: ppp")
    for bad, words in (
        (start + b"a" * (64 * 1024) + b"\r\n\r\n", b"64 KB"),
        (many.replace(b"\r\n\r\n", b"\r\nX-Last: v\r\n\r\n"), b"too many"),
    ):
        sock = connect(hostile)
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n" + bad)
        got = read_responses(sock, 2)
        assert [g[0] for g in got] == [200, 431] and words in got[1][2]
    works(hostile)


def test_thousands_of_pipelined_requests_are_all_answered_in_order(hostile):
    """3000 pipelined requests (GETs, POSTs with a Content-Length body, a chunked POST) sent
    in one stream while the replies are read: every one answered, in order."""
    requests, expected = [], []
    for i in range(3000):
        if i % 3 == 0:
            body = json.dumps({"model": "echo", "prompt": f"n{i}"}).encode()
            head = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body)
            requests.append(head + body)
            expected.append((200, f"You said: n{i}"))
        elif i % 100 == 1:
            body = json.dumps({"model": "echo", "prompt": f"c{i}"}).encode()
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            requests.append(
                b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
            )
            expected.append((200, f"You said: c{i}"))
        else:
            requests.append(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            expected.append((200, None))
    sock = connect(hostile, timeout=60)
    sender = threading.Thread(target=sock.sendall, args=(b"".join(requests),))
    sender.start()
    got = read_responses(sock, len(requests))
    sender.join(30)
    sock.close()
    assert len(got) == len(requests)
    for (status, _, body), (want_status, text) in zip(got, expected, strict=True):
        assert status == want_status
        if text is not None:
            assert json.loads(body)["response"] == text
        else:
            assert json.loads(body) == {"version": OLLAMA_VERSION}


def test_pipelined_megabytes_sent_without_reading_are_bounded(hostile):
    """48 connections each pipeline 4 MB of small requests and never read a response: the
    server stops reading while answers wait (it neither queues the requests of a whole read
    nor piles up their answers), drops each client after --body-timeout, and keeps serving."""
    start_watch(hostile)
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    blob = request * (4 * MB // len(request))
    socks = []
    for _ in range(48):
        sock = connect(hostile)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        socks.append([sock, 0])
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # send what the server takes, never reading
        for entry in socks:
            sock, sent = entry
            if sent < len(blob):
                try:
                    entry[1] += sock.send(blob[sent : sent + 65536])
                except BlockingIOError:
                    pass
                except OSError:  # dropped by the server
                    entry[1] = len(blob)
        time.sleep(0.01)
    assert growth_mb(hostile) < 60
    for sock, _ in socks:
        sock.close()
    works(hostile)


def test_a_chunked_body_in_tiny_chunks_is_collected_in_linear_time(hostile):
    start_watch(hostile)
    payload = json.dumps({"model": "echo", "prompt": "p" * 300_000}).encode()
    chunked = b"".join(b"1\r\n" + payload[i : i + 1] + b"\r\n" for i in range(len(payload))) + b"0\r\n\r\n"
    sock = connect(hostile, timeout=60)
    t0 = time.monotonic()
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    got = read_responses(sock)
    assert got[0][0] == 200 and json.loads(got[0][2])["response"].startswith("You said: ppp")
    assert time.monotonic() - t0 < 15  # byte-by-byte concatenation would take minutes
    assert growth_mb(hostile) < 60


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", 400),
        (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9999999999999999999999\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_bad_framing_is_400_and_the_server_keeps_serving(hostile, request_bytes, status):
    sock = connect(hostile)
    sock.sendall(request_bytes)
    got = read_responses(sock)
    assert got and got[0][0] == status and json.loads(got[0][2])["error"]
    closed, _ = closed_within(sock, 3)
    assert closed
    works(hostile)


def test_expect_100_continue(hostile, openai_fake):
    body = json.dumps({"model": "echo", "prompt": "after continue"}).encode()
    sock = connect(hostile)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(body)
    got = read_responses(sock)
    assert got[0][0] == 200 and json.loads(got[0][2])["response"] == "You said: after continue"
    # a body over the limit is refused without a 100, so the client never sends it
    mark = openai_fake.mark()
    sock = connect(hostile)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (64 * MB)
    )
    got = read_responses(sock)
    assert got[0][0] == 413 and got[0][1].get("connection") == "close"
    assert openai_fake.since(mark) == []


def test_head_has_headers_and_no_body(hostile):
    sock = connect(hostile)
    sock.sendall(
        b"HEAD /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    data = b""
    deadline = time.monotonic() + 5
    while data.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    assert b"content-length: " in head.lower() and int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
    assert rest.startswith(b"HTTP/1.1 200")  # the HEAD reply had no body: the next reply follows at once


def test_a_client_that_stops_reading_is_dropped(hostile, openai_fake):
    """A streamed answer far larger than the socket buffers (400000 tokens, ~45 MB), never
    read: once the server's writes have waited --body-timeout (1 s) for the client, it drops
    the connection and leaves the upstream (the client still never read a byte)."""
    start_watch(hostile)
    before = len(openai_fake.disconnect_times)
    sock = socket.create_connection(("127.0.0.1", hostile.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": "tokens-400000", "prompt": "x", "stream": True}).encode()
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.monotonic() + 30
    while len(openai_fake.disconnect_times) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(openai_fake.disconnect_times) > before
    assert growth_mb(hostile) < 80
    # what the kernels still hold for the client drains to it (a window wider than a tiny
    # buffer allows, so it drains at once), then the connection ends before the answer does
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
    closed, got = closed_within(sock, 60)
    assert closed
    assert b'"done":true' not in got[-500:]  # it did not get the whole answer
    sock.close()
    works(hostile)


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions"])
def test_an_endless_upstream_event_is_a_clear_error_and_the_server_keeps_serving(hostile, openai_fake, path):
    """The upstream streams one SSE data line that never ends (96 MB without a newline): the
    server stops reading it at 8 MB, closes the upstream, keeps the partial answer and ends
    the client's stream with the error."""
    start_watch(hostile)
    before = len(openai_fake.disconnect_times)
    body: dict = {"model": "giant-line", "stream": True}
    if path == "/api/generate":
        body["prompt"] = "x"
    else:
        body["messages"] = [{"role": "user", "content": "x"}]
    r = httpx.post(hostile.url + path, json=body, timeout=60)
    assert r.status_code == 200
    if path == "/api/generate":
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert "".join(line.get("response", "") for line in lines[:-1]) == "Partial answer "
        error = lines[-1]["error"]
    else:
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" or "error" in json.loads(events[-1])
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert text == "Partial answer "
        error = next(c["error"]["message"] for c in chunks if "error" in c)
    assert "the upstream sent an event larger than 8 MB" in error
    deadline = time.monotonic() + 20
    while len(openai_fake.disconnect_times) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(openai_fake.disconnect_times) > before  # the upstream was left before its 96 MB
    assert growth_mb(hostile) < 80
    works(hostile)


def test_an_endless_answer_is_stopped_at_the_answer_cap(hostile, openai_fake):
    """The upstream streams 96 M characters of answer (in 64 KB deltas, under the body and
    event caps): the server stops gathering it at 32 M characters with a clear error, leaves
    the upstream and keeps serving."""
    start_watch(hostile)
    before = len(openai_fake.disconnect_times)
    with httpx.stream(
        "POST",
        hostile.url + "/api/chat",
        json={"model": "long-answer", "messages": [{"role": "user", "content": "x"}]},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        size, last = 0, {}
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
                size += len(last.get("message", {}).get("content", ""))
    assert "the upstream sent an answer longer than 32 M characters" in last["error"]
    assert 31 * MB < size <= 32 * MB  # what came before the cap was streamed
    deadline = time.monotonic() + 20
    while len(openai_fake.disconnect_times) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(openai_fake.disconnect_times) > before
    works(hostile)


def test_the_answer_up_to_the_cap_is_kept_when_one_read_crosses_it(tmp_path):
    """Many deltas arrive in one read and the cap falls among them: the deltas before the
    cap still go out, and the cap's error comes after them (not instead of them)."""
    from gencli import engine
    from gencli.config.registry import Registry
    from gencli.core.errors import UpstreamError
    from gencli.core.events import TextDelta
    from gencli.core.request import GenerateRequest

    path = tmp_path / "models.json"
    path.write_text(
        json.dumps({"m": {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9"}})
    )
    plan = engine.prepare(GenerateRequest(model="m", prompt="x", stream=True), Registry.load(path=str(path), env={}))
    run = engine.Run(plan)
    batch = [TextDelta("y" * MB) for _ in range(40)]  # one read holding 40 M characters
    out = run.feed(batch)
    assert sum(len(e.text) for e in out) == engine.MAX_ANSWER  # 32 deltas, every one before the cap
    with pytest.raises(UpstreamError, match="longer than 32 M characters"):
        run.feed([TextDelta("z")])
    with pytest.raises(UpstreamError, match="longer than 32 M characters"):
        run.done()


# -- 6. DNS rebinding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, ok",
    [
        ("localhost", True),
        ("localhost:11434", True),
        ("app.localhost:8080", True),
        ("127.0.0.1", True),
        ("127.0.0.5:1", True),
        ("[::1]:11434", True),
        ("[::1]", True),
        ("my.lan", True),
        ("my.lan:1234", True),
        ("a.corp.example", True),
        ("rebind.attacker.example", False),
        ("evil.example:11434", False),
        ("localhost.attacker.example", False),
        ("10.0.0.1", False),
        ("corp.example", False),
        ("[::2]", False),
    ],
)
def test_host_allowlist_on_a_loopback_bind(hostile, host, ok):
    for method, path in (("GET", "/api/tags"), ("POST", "/api/show"), ("GET", "/api/ps"), ("GET", "/")):
        r = httpx.request(method, hostile.url + path, headers={"Host": host}, json={"model": "echo"}, timeout=10)
        if ok:
            assert r.status_code == 200, (host, path, r.text)
        else:
            assert r.status_code == 403, (host, path, r.text)
            assert "host not allowed" in r.json()["error"] and "--allowed-hosts" in r.json()["error"]
    r = httpx.post(
        hostile.url + "/v1/chat/completions",
        headers={"Host": host},
        timeout=10,
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == (200 if ok else 403)
    if not ok:
        assert r.json()["error"]["code"] == "host_not_allowed"


# -- 8. secrets in upstream errors ----------------------------------------------------------------------

ECHO_KEY = "Plainkey0123456789abcdefXYZ"  # not key-shaped: only the configured key can be recognised


class EchoingUpstream(ThreadedServer):
    """An upstream whose errors echo the credentials it got, in the ways real ones do."""

    thread_name = "fake-echo"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        mode = (await request.json())["model"]
        if mode == "cut":  # the key straddles the old 200-character cut
            return web.Response(status=500, text="x" * 190 + " bad key " + key + " end")
        if mode == "basic":
            basic = base64.b64encode(f"user:{key}".encode()).decode()
            return web.Response(status=502, text=f"upstream said: Authorization: Basic {basic} refused")
        if mode == "forms":
            from urllib.parse import quote

            text = (
                f"{key.upper()} | {key.lower()} | {quote(key + '/+')} | {base64.b64encode(key.encode()).decode()}"
                f" | https://x.example/v1?key={key}&q=1 | SK-PROJ-AbCdEf0123456789"
            )
            return web.json_response({"error": {"message": text}}, status=400)
        return web.json_response({"error": {"message": f"rejected {auth}"}}, status=429, headers={"Retry-After": "0"})


def test_upstream_errors_never_show_a_key(openai_fake, tmp_path_factory):
    upstream = EchoingUpstream().start()
    base = f"http://127.0.0.1:{upstream.port}/v1"
    models = {
        m: {"provider": "openai-compatible", "model": m, "base_url": base, "api_key_env": "ECHO_KEY"}
        for m in ("cut", "basic", "forms", "plain")
    }
    server = ServeProcess(
        tmp_path_factory.mktemp("echo"), models, env={"ECHO_KEY": ECHO_KEY, **ENV, "GENCLI_RETRIES": "0"}
    )
    try:
        for model in models:
            for route, body in (
                ("/api/generate", {"model": model, "prompt": "x"}),
                ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]}),
            ):
                r = httpx.post(server.url + route, json=body, timeout=30)
                assert r.status_code >= 400
                text = r.text
                assert "[redacted]" in text, text
                low = text.lower()
                fragments = {ECHO_KEY[i : i + 8].lower() for i in range(len(ECHO_KEY) - 7)}
                assert not [f for f in fragments if f in low], text
                assert "sk-proj-abcdef" not in low
        log = server.stderr().lower()
        assert ECHO_KEY.lower()[:10] not in log
    finally:
        server.stop()
        upstream.stop()


@pytest.mark.parametrize(
    "body, limit, over",
    [
        (b'{"a": [1, 2, 3]}', 4, False),  # { and [, and two commas
        (b'{"a": [1, 2, 3, 4]}', 4, True),
        (b'{"p": "a,b,c,d,[{"}', 1, False),  # inside a string: not values
        (b'{"p": "a\\",b,c,d,[{"}', 1, False),  # an escaped quote does not end the string
        (b'{"p": "a\\\\", "q": [1, 2]}', 3, True),  # an escaped backslash does: "q" is outside
        (b"[" + b'"s",' * 100 + b'"s"]', 50, True),  # more strings than two per allowed value
    ],
)
def test_json_values_are_counted_outside_strings(body, limit, over):
    from gencli.server.asgi import json_values_over

    assert json_values_over(body, limit) is over


# -- request bodies held at once ----------------------------------------------------------------


def test_request_bodies_held_at_once_are_bounded_per_worker(openai_fake, tmp_path_factory):
    """--body-memory-mb 5 with 2 MB bodies: of three bodies sent at once, the one that would
    pass 5 MB gets 503 with Retry-After and gives its bytes back at once, so the other two
    (4 MB) are answered; afterwards the budget is whole again."""
    args = ["--max-body-mb", "2", "--body-memory-mb", "5"]
    models = models_json(openai_fake.base_url)
    server = ServeProcess(tmp_path_factory.mktemp("bodies"), models, args=args, env=ENV, memory_mb=MEMORY_MB)
    try:
        prompt = "x" * (2 * MB - 100)
        body = json.dumps({"model": "echo", "prompt": prompt}).encode()
        assert len(body) <= 2 * MB
        head = (
            f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        socks = [connect(server, timeout=30) for _ in range(3)]

        def send(sock: socket.socket, data: bytes) -> None:
            try:
                sock.sendall(data)
            except OSError:  # the refused one may be closed before all of it is sent
                pass

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: send(s, head + body[:-1024]), socks))  # 3 x 2 MB: more than 5 MB
            list(pool.map(lambda s: send(s, body[-1024:]), socks))
            answers = list(pool.map(lambda s: read_responses(s, 1), socks))
        statuses = sorted(a[0][0] for a in answers)
        assert statuses == [200, 200, 503], statuses
        status, headers, content = next(a[0] for a in answers if a[0][0] == 503)
        assert headers.get("retry-after") == "1"
        assert "--body-memory-mb" in json.loads(content)["error"]
        for _, _, content in (a[0] for a in answers if a[0][0] == 200):
            assert json.loads(content)["response"] == "You said: " + prompt
        for sock in socks:
            sock.close()
        # the budget is whole again: two bodies at once pass
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            codes = list(
                pool.map(
                    lambda _: httpx.post(server.url + "/api/generate", content=body, timeout=30).status_code, range(2)
                )
            )
        assert codes == [200, 200]
        works(server)
    finally:
        server.stop()
