"""gencli's HTTP/1.1 server: asyncio (uvloop) and httptools' llhttp parser in front of the ASGI app.

The server is a trust boundary, so every resource a connection can make it spend is
bounded from the first byte, before the app (and its API key check) sees a request:

- header bytes (request line included) and header count: 431 past either (``Limits``);
- time: a deadline from connect (or, on a kept-alive connection, from the first byte of
  the next request) to the end of the headers (408, or a silent close when nothing came);
  an idle timeout while a request body arrives (408) and while a response waits for the
  client to read it (close); an idle timeout between kept-alive requests (close);
- connections: at most ``max_connections``; a new one past the limit first closes the
  oldest connection that has no request in progress (kept-alive idle or still sending its
  headers), else it is answered 503 and closed;
- memory: a request body is buffered only up to ``BODY_HIGH`` before reading pauses (the
  app takes it with ``receive()``, joined once: linear), pipelined requests are answered
  in order and reading pauses while one waits, and writes wait for the socket to drain.

HTTP/1.1 features: keep-alive, pipelining, chunked request bodies, HEAD, ``Expect:
100-continue`` (sent when the app first asks for the body), chunked responses when the app
gives no Content-Length, ``http.disconnect`` to the app when the client leaves, and the
writes made during one event-loop iteration sent as one (a reply's head and body, or
several streamed lines, in one system call). HTTP/1.0 requests are answered and closed.

Graceful shutdown (:meth:`ServerState.shutdown`): stop accepting, close connections with
no request in progress, let in-flight requests finish within the grace period, then cancel
what is left.

The transport knows HTTP, not the APIs served over it: the JSON bodies of its own refusals
(400, 408, 431, 500, 503) come from the ``errors`` function the server is given (the app's
error shapes, :func:`gencli.server.asgi.error_reply`; by default ``{"error": message}``).

A connection's parsing is in one :class:`Phase` at a time; the transitions that exist are
the table ``NEXT`` (checked on every move)::

    IDLE --first byte--> HEAD --head done, Content-Length--> BODY -----end-----> IDLE
                          |---head done, chunked-----------> CHUNKED --end-----> IDLE
                          '---head done, no body: the request is complete----> IDLE
    any phase --the connection's last request done, a refusal, an upgrade, a lingering close--> CLOSING

One timer per connection (:class:`Timer`) says which deadline is armed.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import http
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from gencli.config.servesettings import field_default

if TYPE_CHECKING:
    from gencli.server.asgi import ASGIApp, Message, RequestLog, Scope

BODY_HIGH = 256 * 1024  # request body bytes buffered before reading from the socket pauses
FLUSH_HIGH = 256 * 1024  # pending write bytes sent at once instead of at the next loop iteration
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and drops unsent bytes
LINGER = 2.0  # seconds an unread request body is drained after the response before closing

ASGI = {"version": "3.0", "spec_version": "2.3"}
DISCONNECT = {"type": "http.disconnect"}

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_METHODS: dict[bytes, str] = {}
_NO_BODY = frozenset({204, 304})
_OWS = (b" ", b"\t")


class Phase(enum.IntEnum):
    """Where a connection's parser is (see ``NEXT`` for the moves between phases). An IntEnum,
    and the code below uses the module aliases (``_HEAD``, ...): on Python 3.11 a plain Enum
    member costs ~0.2 us to look up and to hash, several times per request."""

    IDLE = 0  # between requests: no byte of the next one parsed yet
    HEAD = 1  # inside a request's head (request line and headers); its bytes are counted
    BODY = 2  # inside a Content-Length body (``body_left`` bytes to come)
    CHUNKED = 3  # inside a chunked body: it ends at its last chunk (a CRLF CRLF), never counted
    CLOSING = 4  # nothing more is parsed (the connection's last request, a refusal, an upgrade)


_P = Phase
NEXT: dict[Phase, frozenset[Phase]] = {
    _P.IDLE: frozenset({_P.HEAD, _P.CLOSING}),
    _P.HEAD: frozenset({_P.BODY, _P.CHUNKED, _P.IDLE, _P.CLOSING}),
    _P.BODY: frozenset({_P.IDLE, _P.CLOSING}),
    _P.CHUNKED: frozenset({_P.IDLE, _P.CLOSING}),
    _P.CLOSING: frozenset({_P.CLOSING}),
}


class Timer(enum.IntEnum):
    """What the connection's one timer is armed for (aliases below, as for Phase)."""

    NONE = 0
    HEADERS = 1  # from connect, or a kept-alive request's first byte, to the end of its head (408)
    KEEPALIVE = 2  # idle between requests (close)
    BODY = 3  # a pause in the request body (408)
    LINGER = 4  # draining what the client still sends after a refusal (then reset)


_IDLE, _HEAD, _BODY, _CHUNKED, _CLOSING = Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.CHUNKED, Phase.CLOSING
_T_NONE, _T_HEADERS, _T_KEEPALIVE, _T_BODY, _T_LINGER = (
    Timer.NONE,
    Timer.HEADERS,
    Timer.KEEPALIVE,
    Timer.BODY,
    Timer.LINGER,
)


@dataclass(slots=True)
class Limits:
    """The transport's bounds (``gencli serve`` flags; see README "Security"): fields of
    ServeConfig by the same names (``ServeConfig.limits()``), their defaults from the one table
    gencli.config.servesettings.SERVE."""

    max_connections: int = int(field_default("max_connections"))
    max_header_bytes: int = int(field_default("max_header_bytes"))
    max_headers: int = int(field_default("max_headers"))
    header_timeout: float = field_default("header_timeout")
    body_timeout: float = field_default("body_timeout")
    keep_alive: float = field_default("keep_alive")


class _Date:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = b"date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode() + b"\r\n"
        return self.value


_date = _Date()


ErrorBody = Callable[[str, int, str], bytes]  # (request path, status, message) -> a JSON error body


def plain_error(path: str, status: int, message: str) -> bytes:
    """The transport's own error body when the server is given no ``errors``: ``{"error": message}``."""
    import orjson

    return orjson.dumps({"error": message})


def error_response(
    status: int, message: str, path: str = "", head: bool = False, errors: ErrorBody = plain_error
) -> bytes:
    """A whole ``Connection: close`` JSON error reply (the transport's own refusals), its body
    made by ``errors`` for the request's path ("" before a path is known)."""
    body = errors(path, status, message)
    return b"".join(
        (
            _STATUS.get(status, b"HTTP/1.1 %d \r\n" % status),
            _date.header(),
            b"content-type: application/json; charset=utf-8\r\nconnection: close\r\n",
            b"content-length: %d\r\n\r\n" % len(body),
            b"" if head else body,
        )
    )


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ServerState:
    """What the connections of one server share: the app, the limits, the live connections."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Limits,
        loop: asyncio.AbstractEventLoop | None = None,
        log: RequestLog | None = None,
        errors: ErrorBody = plain_error,
    ) -> None:
        self.app = app
        self.limits = limits
        self.log = log  # an access log with .request(scope, status, seconds), or None
        self.errors = errors  # the JSON bodies of the transport's own refusals
        self.active = 0  # requests in progress
        self.served = 0  # requests answered
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        # connections with no request in progress, oldest first (the ones a new connection may evict)
        self.idle: dict[HttpConnection, None] = {}
        self.draining = False
        self._empty: asyncio.Future[None] | None = None

    def protocol(self) -> HttpConnection:
        return HttpConnection(self)

    def admit(self, conn: HttpConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            if not self.idle:
                return False
            oldest = next(iter(self.idle))
            oldest.close()
        self.connections.add(conn)
        self.idle[conn] = None
        return True

    def gone(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        self.idle.pop(conn, None)
        if self._empty is not None and not self.connections and not self._empty.done():
            self._empty.set_result(None)

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests on open connections, wait up to ``grace`` seconds for the
        requests in progress, then cancel them. (Close the listening socket first.)"""
        self.draining = True
        for conn in list(self.connections):
            if conn.cycle is None:
                conn.close()
        if self.connections:
            self._empty = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._empty), grace)
            except TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)


class Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` of that request."""

    __slots__ = (
        "conn",
        "scope",
        "keep_alive",
        "expect_100",
        "head",
        "body",
        "buffered",
        "complete",
        "delivered",
        "waiter",
        "disconnected",
        "started",
        "finished",
        "chunked",
        "task",
        "status",
        "begun",
        "on_gone",
    )

    def __init__(self, conn: HttpConnection, scope: Scope, keep_alive: bool, expect_100: bool, head: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.head = head
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole request body was parsed
        self.delivered = False  # ... and handed to the app
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.started = False  # response head sent
        self.finished = False  # response complete
        self.chunked = False
        self.task: asyncio.Task[None] | None = None
        self.status = 0
        self.begun = time.perf_counter()
        self.on_gone: Callable[[], None] | None = None
        scope["extensions"] = {"gencli.on_disconnect": self.watch}

    def watch(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once if the client leaves before the response is complete (the
        ASGI extension ``gencli.on_disconnect``: no task waiting on ``receive()``); None stops it."""
        self.on_gone = callback
        if callback is not None and self.disconnected and not self.finished:
            self.conn.loop.call_soon(self._gone_now)

    def gone(self) -> None:
        """The client left (or its request broke off): the app sees http.disconnect."""
        self.disconnected = True
        self.wake()
        if self.on_gone is not None and not self.finished:
            self._gone_now()

    def _gone_now(self) -> None:
        callback, self.on_gone = self.on_gone, None
        if callback is not None and not self.finished:
            callback()

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def receive(self) -> Message:
        if self.disconnected or self.finished:
            return DISCONNECT
        if not self.body and not self.complete or self.delivered:
            if self.expect_100 and not self.started and not self.complete:
                self.expect_100 = False
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            while (
                not self.disconnected and not self.finished and (self.delivered or not self.body and not self.complete)
            ):
                self.waiter = self.conn.loop.create_future()
                await self.waiter
            if self.disconnected or self.finished:
                return DISCONNECT
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.complete:
            self.delivered = True
        else:
            self.conn.body_taken(self)
        return {"type": "http.request", "body": data, "more_body": not self.complete}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.finished:
                return
            more = message.get("more_body", False)
            if not self.disconnected:
                body = message.get("body", b"")
                if self.head:
                    pass
                elif self.chunked:
                    if body:
                        conn.write(b"".join((b"%x\r\n" % len(body), body, b"\r\n" if more else b"\r\n0\r\n\r\n")))
                    elif not more:
                        conn.write(b"0\r\n\r\n")
                elif body:
                    conn.write(body)
            if not more:
                self.finished = True
                conn.flush()  # the reply is complete: out now, not at the next loop iteration
                self.wake()
            elif conn.write_paused and not self.disconnected:
                await conn.drain()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = message["status"]
            if self.disconnected:
                return
            conn.write(self._head(self.status, message.get("headers", ())))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _head(self, status: int, headers: Any) -> bytes:
        length = False
        parts = [_STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status, _date.header()]
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                length = True
            elif lname == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue
            elif lname == b"transfer-encoding":
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
        if self.keep_alive and (self.conn.state.draining or not self.complete):
            self.keep_alive = False  # an unread body, or shutting down: this is the last reply
        if not length and status not in _NO_BODY and status >= 200 and not self.head:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends when the connection closes
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module docstring for its bounds).

    Timers are lazy: one ``call_at`` handle per connection, re-armed when it fires early,
    so a busy kept-alive connection schedules no timer per request."""

    __slots__ = (
        "state",
        "loop",
        "limits",
        "transport",
        "parser",
        "timer",
        "timer_kind",
        "deadline",
        "phase",
        "cycle",
        "queue",
        "parsing",
        "url",
        "headers",
        "header_size",
        "fed",
        "body_left",
        "chunked",
        "host",
        "tail",
        "held",
        "expect_100",
        "read_paused",
        "write_paused",
        "drainers",
        "out",
        "out_size",
        "closed",
        "failure",
        "server",
        "client",
        "body_seen",
        "write_stall",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.limits = state.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = _T_NONE
        self.deadline = 0.0
        self.phase = _IDLE
        self.cycle: Cycle | None = None  # the request being answered
        self.queue: collections.deque[Cycle] = collections.deque()  # pipelined requests, in order
        self.parsing: Cycle | None = None  # the request whose body is being parsed
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_size = 0
        self.fed = 0  # bytes of the current request's head received so far (bounded)
        self.body_left = 0  # bytes still to come of the current request's Content-Length body
        self.chunked = False  # the head being parsed names a Transfer-Encoding
        self.host = False  # ... and a Host
        self.tail = b""  # the last bytes of a read that ended inside a head or a chunked body
        self.held = b""  # bytes received but not parsed: they follow a request waiting in the queue
        self.expect_100 = False
        self.read_paused = False
        self.write_paused = False
        self.drainers: list[asyncio.Future[None]] = []
        self.out: list[bytes] = []
        self.out_size = 0
        self.closed = False  # nothing more is written or parsed
        self.failure: tuple[int, str] | None = None  # a refusal to send once the current reply is done
        self.server: tuple[Any, ...] | None = None
        self.client: tuple[Any, ...] | None = None
        self.body_seen = 0.0
        self.write_stall: asyncio.TimerHandle | None = None

    def _move(self, phase: Phase) -> None:
        """Go to ``phase``: only along the table ``NEXT`` (anything else is a bug here)."""
        if phase not in NEXT[self.phase]:
            raise RuntimeError(f"http11: no move from {self.phase.name.lower()} to {phase.name.lower()}")
        self.phase = phase

    def _error(self, status: int, message: str, path: str = "", head: bool = False) -> bytes:
        return error_response(status, message, path, head, self.state.errors)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.state.draining or not self.state.admit(self):
            self.closed = True
            transport.write(
                self._error(503, "the server is at its connection limit (--max-connections); retry shortly")
            )
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self.server = tuple(sock[:2]) if isinstance(sock, tuple) else None
        self._arm(_T_HEADERS, self.limits.header_timeout)  # from connect to the end of the first head

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.state.gone(self)
        self.timer_kind = _T_NONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.write_stall is not None:
            self.write_stall.cancel()
            self.write_stall = None
        for cycle in (self.cycle, *self.queue):
            if cycle is not None:
                cycle.gone()
        self.queue.clear()
        self._wake_drainers()

    def eof_received(self) -> bool | None:
        # The client closed its side. Almost always it left (a half-close that still waits for
        # a reply is rare), so, as uvicorn and aiohttp do, the connection closes: the request
        # in progress sees http.disconnect and its upstream call is cancelled.
        return False

    def data_received(self, data: bytes) -> None:
        if self.closed or self.phase is _CLOSING:
            return  # a lingering close drains and drops what still comes
        self._parse(data)
        if self.closed:
            return
        phase = self.phase
        if phase is _HEAD:
            if self.timer_kind is not _T_HEADERS:  # a kept-alive connection's next request began
                self._arm(_T_HEADERS, self.limits.header_timeout)
        elif phase is _BODY or phase is _CHUNKED:
            parsing = self.parsing
            if parsing is not None and not parsing.complete and self.timer_kind is not _T_BODY:
                self._arm(_T_BODY, self.limits.body_timeout)

    def _parse(self, data: bytes) -> None:
        """Feed ``data`` to the parser one piece at a time: a Content-Length body's bytes, else
        up to the end of the next head (``CRLF CRLF``, which also ends a chunked body). So the
        bytes of every head are counted exactly, also when one read holds many pipelined
        requests, and at most one request completes per piece: once one waits in the queue,
        the rest is held, unparsed, until the queue drains (reading is paused meanwhile).
        A ``CRLF CRLF`` split across reads is found too (``tail``: the last bytes of the read
        before, while it ended inside a head or a chunked body), so the piece ends with it."""
        if self.queue:
            self.held += data  # pragma: no cover - reading is paused while a request waits
            return
        limit = self.limits.max_header_bytes
        view = memoryview(data)
        pos, n = 0, len(data)
        while pos < n:
            if self.queue:
                self.held = bytes(view[pos:])
                return
            phase = self.phase
            if phase is _BODY and self.body_left > 0:
                end = min(n, pos + self.body_left)
                self.tail = b""
            else:
                end = -1
                tail = self.tail
                if tail:  # the read before ended inside a head: its CRLF CRLF may end here
                    self.tail = b""
                    joined = tail + data[:3]
                    at = joined.find(b"\r\n\r\n")
                    if at >= 0:
                        end = at + 4 - len(tail)
                if end < 0:
                    end = data.find(b"\r\n\r\n", pos)
                    if end < 0:
                        end = n
                        self.tail = (tail + data[max(pos, n - 3) :])[-3:]  # this piece's bytes only
                    else:
                        end += 4
                if phase is _IDLE or phase is _HEAD:  # the piece is (the rest of) one head
                    self.fed += end - pos
                    if self.fed > limit:
                        # feed only what the limit allows: a huge head is never buffered whole
                        self._feed(view[pos : end - (self.fed - limit) + 1])
                        if not (self.closed or self.phase is _CLOSING):
                            self._refuse(
                                431, f"request headers are larger than the server's limit of {limit // 1024} KB"
                            )
                        return
            self._feed(view[pos:end] if pos or end < n else data)
            if self.closed or self.phase is _CLOSING:
                return
            pos = end

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # an Upgrade request (WebSocket, h2c): answered as plain HTTP, then the connection closes
            self._move(_CLOSING)
            for cycle in (self.cycle, *self.queue):
                if cycle is not None:
                    cycle.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._refuse(cause.status, cause.message)
            else:  # pragma: no cover - our callbacks raise only _Reject
                self._refuse(400, "bad request")
        except httptools.HttpParserError as exc:
            reason = str(exc.args[0] if exc.args else exc)[:100]
            self._refuse(400, f"malformed HTTP request ({reason})")

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.write_stall is None:
            self.write_stall = self.loop.call_later(self.limits.body_timeout, self._write_stalled)
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_stall is not None:
            self.write_stall.cancel()
            self.write_stall = None
        self._wake_drainers()
        if self.closed:
            return
        if self.cycle is None and (self.queue or self.held):
            self._next()
        else:
            self._update_reading()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._move(_HEAD)
        self.url = []
        self.headers = []
        self.header_size = 0
        self.expect_100 = False
        self.body_left = 0
        self.chunked = False
        self.host = False

    def on_url(self, piece: bytes) -> None:
        self.url.append(piece)
        self.header_size += len(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self.limits.max_headers:
            raise _Reject(431, f"too many request headers (the server's limit is {self.limits.max_headers})")
        name = name.lower()
        if value.endswith(_OWS):  # llhttp keeps trailing whitespace: not part of the value (RFC 9110 5.5)
            value = value.rstrip(b" \t")
        self.header_size += len(name) + len(value) + 4
        if self.phase is not _HEAD:  # a chunked body's trailer fields: counted, bounded and dropped
            if self.header_size > self.limits.max_header_bytes:
                raise _Reject(431, "the request's trailer fields are larger than the server's header limit")
            headers.append((name, b""))
            return
        headers.append((name, value))
        if name == b"content-length":  # llhttp checks it (digits; no second, different one; not with chunked)
            self.body_left = int(value) if value.isdigit() else 0
        elif name == b"host":
            if self.host:
                raise _Reject(400, "the request has two Host headers (RFC 9112 3.2); send one")
            self.host = True
        elif name == b"transfer-encoding":
            self.chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True

    def on_headers_complete(self) -> None:
        limit = self.limits.max_header_bytes
        if self.header_size > limit:
            raise _Reject(431, f"request headers are larger than the server's limit of {limit // 1024} KB")
        self.fed = 0
        request_headers = self.headers
        self.headers = []  # what follows a chunked body (trailer fields) is counted here, not handed on
        if self.chunked:
            self._move(_CHUNKED)
        elif self.body_left > 0:
            self._move(_BODY)
        # else: no body, the request completes at once (HEAD -> IDLE in on_message_complete)
        if self.timer_kind is _T_HEADERS or self.timer_kind is _T_KEEPALIVE:
            self.timer_kind = _T_NONE
        parser = self.parser
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        self.url = []
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            raw_path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400, "malformed request target") from None
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        m = parser.get_method()
        method = _METHODS.get(m)
        if method is None:
            method = m.decode("ascii", "replace")
            if len(_METHODS) < 64:
                _METHODS[m] = method
        version = parser.get_http_version()
        if not self.host and version == "1.1":
            raise _Reject(400, "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)")
        scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": request_headers,
        }
        keep_alive = version == "1.1" and parser.should_keep_alive() and not parser.should_upgrade()
        cycle = Cycle(self, scope, keep_alive and not self.state.draining, self.expect_100, method == "HEAD")
        self.parsing = cycle
        if self.cycle is None:
            self.state.idle.pop(self, None)
            self._start(cycle)
        else:
            self.queue.append(cycle)
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:  # pragma: no cover - the parser calls on_body only inside a request
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        if self.body_left > 0:
            self.body_left -= len(body)
        self.body_seen = self.loop.time()
        if cycle.buffered > BODY_HIGH and not self.read_paused:
            self._update_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.parsing = None
        self.fed = 0
        self.body_left = 0
        # nothing after a connection's last request is read
        self._move(_CLOSING if cycle is not None and not cycle.keep_alive else _IDLE)
        if self.timer_kind is _T_BODY:
            self.timer_kind = _T_NONE
        if cycle is not None:
            cycle.complete = True
            cycle.wake()
        if self.queue:
            self._update_reading()

    # -- requests ----------------------------------------------------------------------------

    def _start(self, cycle: Cycle) -> None:
        self.cycle = cycle
        self.state.active += 1
        cycle.task = self.loop.create_task(self._run(cycle))

    async def _run(self, cycle: Cycle) -> None:
        try:
            await self.state.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                sys.stderr.write(
                    "gencli serve: unhandled error while answering "
                    f"{cycle.scope['method']} {cycle.scope['path'][:200]!r}:\n"
                )
                traceback.print_exception(exc, file=sys.stderr)
            if not cycle.started and not cycle.disconnected:
                self._answer(cycle, 500, "internal server error; see the server log")
            elif not cycle.finished:
                cycle.keep_alive = False
        else:
            if not cycle.started and not cycle.disconnected:
                self._answer(cycle, 500, "internal server error (no response); see the server log")
            elif not cycle.finished:
                cycle.keep_alive = False
        finally:
            self._done(cycle)

    def _answer(self, cycle: Cycle, status: int, message: str) -> None:
        """The server's own reply to a request (the app's sends after it are dropped)."""
        cycle.started = cycle.finished = True
        cycle.status = status
        cycle.keep_alive = False
        self.write(self._error(status, message, cycle.scope["path"], cycle.head))
        cycle.wake()

    def _done(self, cycle: Cycle) -> None:
        if self.cycle is cycle:
            self.cycle = None
        cycle.on_gone = None
        state = self.state
        state.active -= 1
        state.served += 1
        if state.log is not None:
            state.log.request(cycle.scope, cycle.status or 499, time.perf_counter() - cycle.begun)
        cycle.wake()
        if self.closed:
            return
        if self.failure is not None:
            status, message = self.failure
            self.failure = None
            self.write(self._error(status, message))
            self.close(linger=True)
            return
        if not cycle.keep_alive or not cycle.finished or self.state.draining:
            self.close(linger=not cycle.complete)
            return
        self._next()

    def _next(self) -> None:
        """After a reply: the next pipelined request, else the bytes held behind it, else idle.
        While the client is not reading its replies (writing paused), pipelined requests wait:
        their replies would pile up in memory (``resume_writing`` calls back; the write stall
        timer drops a client that never reads)."""
        if self.write_paused and (self.queue or self.held):
            self._update_reading()
            return
        if self.queue:
            self._start(self.queue.popleft())
            if not self.queue and self.held:
                held, self.held = self.held, b""
                self.data_received(held)
            self._update_reading()
            return
        if self.held:
            held, self.held = self.held, b""
            self.data_received(held)
            if self.closed or self.cycle is not None:
                return
        if self.phase is _CLOSING:
            self.close()
            return
        self.state.idle[self] = None
        if self.phase is _IDLE:  # else the next request's head has begun: its timer runs
            if self.limits.keep_alive <= 0:
                self.close()
                return
            self._arm(_T_KEEPALIVE, self.limits.keep_alive)
        self._update_reading()

    def body_taken(self, cycle: Cycle) -> None:
        if self.read_paused:
            self._update_reading()

    # -- reading, writing, timers ------------------------------------------------------------

    def _update_reading(self) -> None:
        if self.closed:
            return
        parsing = self.parsing
        pause = (
            bool(self.queue)
            or bool(self.held)
            or (parsing is not None and parsing.buffered > BODY_HIGH)
            or (self.write_paused and parsing is None)  # between requests, the client not reading its replies
        )
        transport = self.transport
        if transport is None:  # pragma: no cover - reading is updated only once connected
            return
        if pause and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not pause and self.read_paused and self.phase is not _CLOSING:
            self.read_paused = False
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        out = self.out
        out.append(data)
        self.out_size += len(data)
        if len(out) == 1:
            self.loop.call_soon(self.flush)
        elif self.out_size > FLUSH_HIGH:
            self.flush()

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        self.out_size = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        if not self.write_paused or self.closed:
            return
        fut = self.loop.create_future()
        self.drainers.append(fut)
        await fut

    def _wake_drainers(self) -> None:
        drainers, self.drainers = self.drainers, []
        for fut in drainers:
            if not fut.done():
                fut.set_result(None)

    def _arm(self, kind: Timer, delay: float) -> None:
        self.timer_kind = kind
        self.deadline = deadline = self.loop.time() + delay
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        kind = self.timer_kind
        if kind is _T_NONE or (self.closed and kind is not _T_LINGER):
            return
        now = self.loop.time()
        if kind is _T_BODY:
            if self.read_paused:  # the app has not taken what came: the client is not the one stalling
                self.body_seen = now
            self.deadline = self.body_seen + self.limits.body_timeout
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timeout)
            return
        self.timer_kind = _T_NONE
        if kind is _T_LINGER:
            if self.transport is not None:
                self.transport.abort()
        elif kind is _T_BODY:
            parsing = self.parsing
            if parsing is None or parsing.complete:
                return
            if parsing is self.cycle and not parsing.started:
                self._answer(
                    parsing,
                    408,
                    f"the request body stopped arriving for {self.limits.body_timeout:g} s (--body-timeout)",
                )
            parsing.gone()
            self.close()
        elif kind is _T_HEADERS:
            if self.phase is _HEAD and self.cycle is None:
                self.write(
                    self._error(
                        408, f"the request headers took longer than {self.limits.header_timeout:g} s (--header-timeout)"
                    )
                )
            self.close()
        elif kind is _T_KEEPALIVE:
            if self.cycle is None:
                self.close()

    def _write_stalled(self) -> None:
        self.write_stall = None
        if self.write_paused and not self.closed:
            # The client stopped reading its response: reset the connection, so that what the
            # kernel still holds for it (up to its send buffer, megabytes) is freed at once
            # instead of trickling into a closed window for minutes.
            self._reset_on_close()
            self.abort()

    def _reset_on_close(self) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:  # pragma: no cover - the socket is already gone
                pass

    def _refuse(self, status: int, message: str) -> None:
        """A request the parser or a bound refused: answered (once the reply in progress, if
        any, is done), then the connection closes (lingering: what the client still sends is
        read and dropped for a moment, so it gets the reply rather than a reset)."""
        self._move(_CLOSING)
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        parsing = self.parsing
        self.parsing = None
        if parsing is not None and parsing in self.queue:
            self.queue.remove(parsing)
        if parsing is not None and parsing is self.cycle:
            # the request being answered broke mid-body: the app sees the client leave
            if not parsing.started:
                self._answer(parsing, status, message)
            parsing.gone()
            self.close(linger=True)
            return
        if self.cycle is None and not self.queue:
            self.write(self._error(status, message))
            self.close(linger=True)
        else:
            self.failure = (status, message)

    def close(self, linger: bool = False) -> None:
        """Flush and close; with ``linger`` (an unread request body), half-close and drain what
        the client still sends for a moment, so that it reads the reply rather than a reset."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.state.idle.pop(self, None)
        transport = self.transport
        if transport is None:  # pragma: no cover - closed before it was connected
            return
        if linger and transport.can_write_eof():
            self._move(_CLOSING)
            if self.read_paused:
                self.read_paused = False
                transport.resume_reading()
            try:
                transport.write_eof()
            except (OSError, RuntimeError):  # pragma: no cover - the socket is already gone
                transport.close()
                return
            self._arm(_T_LINGER, LINGER)
            return
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.flush()
            self.closed = True
            self.transport.abort()
