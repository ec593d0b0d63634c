"""gencli's HTTP/1.1 server (gencli.server.http11 and runner) with small ASGI test apps, on
127.0.0.1 in a thread: the protocol's own guarantees whatever the app does (an app that
raises or sends nothing, streamed replies, client disconnects, request-body flow control,
lifespan). The bounds under attack are tested against ``gencli serve`` in test_hostile.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from gencli.server.asgi import Served
from gencli.server.http11 import Limits
from gencli.server.runner import STARTUP_FAILED, serve
from tests.helpers import wait_until


class Running:
    """``runner.serve`` on an ephemeral port in a thread; ``stop()`` sends it the SIGTERM path."""

    def __init__(self, app, limits: Limits | None = None, grace: float = 2.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.code: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        ready = threading.Event()

        async def main():
            self.loop = asyncio.get_running_loop()
            self._stop = self.loop.create_future()
            orig = self.loop.add_signal_handler

            def add_signal_handler(sig, callback, *args):  # signals only reach the main thread
                self._stop.add_done_callback(lambda _: callback(*args))

            self.loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign]
            ready.set()
            try:
                return await serve(self.sock, app, limits or Limits(), grace)
            finally:
                self.loop.add_signal_handler = orig  # type: ignore[method-assign]

        def run():
            self.code = asyncio.run(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def stop(self) -> int | None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
            self.thread.join(10)
        return self.code


async def lifespan_ok(receive, send):
    while True:
        msg = await receive()
        await send({"type": msg["type"] + ".complete"})
        if msg["type"] == "lifespan.shutdown":
            return


def make_app(events: list):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan_ok(receive, send)
        path = scope["path"]
        if path.endswith("/raise"):
            raise ValueError("secret internals /etc/passwd")
        if path == "/nothing":
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for i in range(5):
                await send({"type": "http.response.body", "body": b"line %d\n" % i, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/hold":  # answers only when the client leaves
            msg = await receive()
            while msg["type"] != "http.disconnect":
                msg = await receive()
            events.append("disconnect")
            return
        if path == "/slowread":  # takes the body slowly, counting bytes
            total = 0
            more = True
            while more:
                msg = await receive()
                total += len(msg.get("body", b""))
                more = msg.get("more_body", False)
                await asyncio.sleep(0.01)
            body = json.dumps({"total": total}).encode()
        else:
            chunks = []
            more = True
            while more:
                msg = await receive()
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
            body = json.dumps(
                {
                    "path": path,
                    "query": scope["query_string"].decode(),
                    "method": scope["method"],
                    "body": len(b"".join(chunks)),
                }
            ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def server():
    events: list = []
    s = Running(make_app(events))
    s.events = events
    yield s
    s.stop()


def test_an_app_that_raises_gets_a_json_500_without_internals(server, capfd):
    r = httpx.get(server.url + "/raise")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "internal server error; see the server log"}
    assert "secret internals" not in r.text
    r = httpx.post(server.url + "/v1/raise")  # the transport knows HTTP, not the APIs: its own shape
    assert r.status_code == 500 and r.json() == {"error": "internal server error; see the server log"}
    r = httpx.get(server.url + "/nothing")
    assert r.status_code == 500 and "no response" in r.json()["error"]
    assert "ValueError" in capfd.readouterr().err  # the traceback is in the server log
    assert httpx.get(server.url + "/ok?a=1").json() == {"path": "/ok", "query": "a=1", "method": "GET", "body": 0}


def test_the_apps_error_shapes_come_from_the_app(capfd):
    """A Served app (what gencli.server.app.build makes) gives the server its error bodies:
    OpenAI's under /v1, Anthropic's under /v1/messages, Ollama's elsewhere."""
    inner = make_app([])
    s = Running(Served(inner, inner, None, lambda: None))
    try:
        message = "internal server error; see the server log"
        r = httpx.post(s.url + "/v1/raise")
        assert r.status_code == 500
        assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        r = httpx.post(s.url + "/v1/messages/raise")
        assert r.json() == {"type": "error", "error": {"type": "api_error", "message": message}}
        assert httpx.get(s.url + "/raise").json() == {"error": message}
    finally:
        s.stop()
    capfd.readouterr()


def test_streamed_reply_is_chunked_and_keeps_the_connection(server):
    with httpx.Client(base_url=server.url) as client:
        r = client.get("/stream")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text == "".join(f"line {i}\n" for i in range(5))
        assert client.get("/x%20y").json()["path"] == "/x y"  # percent-decoded, same connection


def test_client_disconnect_reaches_the_app(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    sock.close()
    wait_until(lambda: "disconnect" in server.events, 5)
    assert server.events == ["disconnect"]


def test_a_large_body_read_slowly_is_not_buffered_whole(server):
    """The app takes the body 10 ms a message; reading pauses past 256 KB buffered, so a
    32 MB upload proceeds at the app's pace and arrives whole."""
    body = b"z" * (32 * 1024 * 1024)
    r = httpx.post(server.url + "/slowread", content=body, timeout=60)
    assert r.json() == {"total": len(body)}


def test_http10_is_answered_and_closed(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head and b"transfer-encoding" not in head
    assert body == b"".join(b"line %d\n" % i for i in range(5))


def test_graceful_stop_lets_a_request_finish_and_refuses_new_ones():
    release = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan_ok(receive, send)
        if scope["path"] == "/wait":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    s = Running(app, grace=5)
    result: list = []
    t = threading.Thread(target=lambda: result.append(httpx.get(s.url + "/wait", timeout=10)))
    t.start()
    time.sleep(0.3)
    stopper = threading.Thread(target=s.stop)
    stopper.start()
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/other", timeout=2)
    s.loop.call_soon_threadsafe(release.set)
    t.join(10)
    stopper.join(10)
    assert result[0].status_code == 200 and result[0].text == "ok"
    assert s.code == 0


def test_a_failed_startup_is_reported():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    s = Running(app)
    s.thread.join(5)
    assert s.code == STARTUP_FAILED
