"""gencli serve's upstream HTTP/1.1 client: asyncio and httptools' llhttp response parser.

Made for one job: many small requests to a few upstreams (the model providers), their
answers read whole or streamed. Compared side by side with aiohttp's client (see
bench/README.md, "Upstream clients"), it spends a fraction of the CPU per request: a
request is one prepared head and one write on a pooled connection; a response is parsed
by llhttp and handed over as it arrives, several reads joined when the reader lags.

- **Pool**: kept-alive connections per origin (and proxy), reused last-in first-out; one
  idle for longer than ``idle_timeout`` is closed by a sweep (a timer while any is idle,
  not one per request), and every idle connection is closed once the pool has had no
  request in progress for ``quiet`` seconds (``on_quiet`` is then called: the server
  trims its memory). A reused connection that fails before a byte of the answer came
  (the upstream closed it while idle) is retried once on a new one.
- **TLS**: ``https://`` upstreams verified against gencli's one trust store
  (:mod:`gencli.transports.trust`: certifi's roots, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``).
- **Addresses**: ``resolve`` (optional) turns a host name into the addresses to connect
  to; the client then connects to those very addresses, in order (the TLS name check, SNI
  and the Host header stay the URL's). The image fetcher's address guard
  (:mod:`gencli.transports.address_guard`) checks each address there, so the address checked is the
  address connected to.
- **Proxies**: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` (and lower
  case), looked up once per URL: plain HTTP through the proxy in absolute form, HTTPS
  through a ``CONNECT`` tunnel; ``user:password@`` in the proxy URL is sent as Basic
  proxy authorization. HTTP proxies only (``http://``).
- **Timeouts**: ``connect_timeout`` for the connection (and TLS, and the tunnel);
  ``read_timeout`` for each wait for bytes from the upstream (the head, then every part of
  the body). One lazily re-armed timer per connection.
- **Bounds** (the answer comes from outside the process): response head at most
  ``max_header_bytes`` and ``max_headers``; a body read whole at most ``max_body``
  bytes; a streamed body buffers at most ``BUFFER_HIGH`` bytes before reading pauses; a
  compressed body (``gzip``/``deflate``, sent though ``identity`` was asked for) inflates
  at most ``INFLATE_STEP`` bytes per read from the socket.
- **Cancellation**: leaving a response before its end (an error, or the task cancelled
  because the server's client went away) closes the connection at once, so the upstream
  sees it and stops; a response read to its end goes back to the pool.

Requests are GET or POST with a body given whole (``bytes``); header names and values
may not hold CR, LF or NUL. No redirects are followed, no cookies kept.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

BUFFER_HIGH = 1024 * 1024  # streamed body bytes buffered before reading from the socket pauses
INFLATE_STEP = 16 * 1024 * 1024  # bytes one read from the socket may inflate to
_SWEEP = 1.0  # seconds between sweeps of idle connections
_TARGETS_MAX = 256  # parsed URLs kept


# what a pooled connection is kept under: (tls, host, port, proxy, proxy authorization)
_Key = tuple[bool, str, int, "tuple[str, int] | None", "str | None"]

# (host, port) -> the addresses to connect to, in order; raises (a ConnectError) to refuse
Resolver = Callable[[str, int], Awaitable[list[str]]]


class HttpClientError(Exception):
    """A request failed. ``answered``: part of the response had arrived."""

    answered = False

    def __init__(self, message: str, answered: bool = False):
        super().__init__(message)
        self.answered = answered


class ConnectError(HttpClientError):
    """The connection (DNS, TCP, TLS or the proxy tunnel) could not be made."""


class ConnectTimeout(ConnectError):
    pass


class ReadTimeout(HttpClientError):
    """No byte arrived for ``read_timeout`` seconds."""


class RemoteProtocolError(HttpClientError):
    """The upstream broke the protocol, closed the connection early, or passed a bound."""


class Headers(dict[str, str]):
    """Response headers: lower-case names; ``get`` takes any case. A repeated header keeps
    its values joined with ``", "`` (as HTTP allows)."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _Target:
    """One request URL, parsed once: where to connect and what to send."""

    __slots__ = ("key", "host", "port", "tls", "target", "host_header", "proxy", "proxy_auth", "tunnel")

    def __init__(self, url: str, trust_env: bool):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ConnectError(f"unsupported URL scheme {scheme!r} (http or https)")
        host = parts.hostname
        if not host:
            raise ConnectError("the URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ConnectError("the URL has a bad port") from None
        self.tls = scheme == "https"
        self.host = host
        self.port = port
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self.host_header = netloc
        path = parts.path or "/"
        self.target = path + ("?" + parts.query if parts.query else "")
        self.proxy: tuple[str, int] | None = None
        self.proxy_auth: str | None = None
        self.tunnel = False
        if trust_env:
            proxy = _env_proxy(scheme, host)
            if proxy is not None:
                pparts = urlsplit(proxy)
                if pparts.scheme.lower() != "http" or not pparts.hostname:
                    raise ConnectError(f"unsupported proxy {pparts.scheme or proxy!r}: only http:// proxies")
                try:
                    pport = pparts.port or 80
                except ValueError:
                    raise ConnectError("the proxy URL has a bad port") from None
                self.proxy = (pparts.hostname, pport)
                if pparts.username is not None:
                    cred = f"{unquote(pparts.username)}:{unquote(pparts.password or '')}"
                    self.proxy_auth = "Basic " + base64.b64encode(cred.encode()).decode()
                if self.tls:
                    self.tunnel = True
                else:
                    self.target = f"http://{netloc}{self.target}"  # absolute form to a proxy
        self.key = (self.tls, host, port, self.proxy, self.proxy_auth)


def _env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for ``scheme://host`` (None: connect directly)."""
    proxies = urllib.request.getproxies_environment()
    if not proxies:
        return None
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(scheme) or proxies.get("all")


def _check_header(text: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("a request header holds a line break or NUL")
    return text


class Response:
    """One response: ``status``, ``headers``, ``await read()`` or ``async for iter_bytes()``."""

    __slots__ = (
        "conn",
        "status",
        "headers",
        "chunks",
        "size",
        "done",
        "error",
        "waiter",
        "until_close",
        "inflater",
        "total",
        "max_body",
        "head_done",
        "skip",
        "header_bytes",
        "raw_headers",
        "seen",
        "left",
        "errors",
        "whole",
    )

    def __init__(self, conn: Connection, max_body: int):
        self.conn = conn
        self.status = 0
        self.headers = Headers()
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.chunks: list[bytes] = []
        self.size = 0  # bytes buffered (not yet taken by the reader)
        self.total = 0  # body bytes received (after inflating)
        self.done = False  # the whole body arrived
        self.head_done = False
        self.error: HttpClientError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.until_close = False  # no length and not chunked: the body ends with the connection
        self.inflater: Any = None  # a zlib decompressor for a gzip/deflate body
        self.max_body = max_body
        self.skip = False  # an informational (1xx) head: dropped
        self.seen = False  # a byte of the answer arrived
        self.left = False
        self.whole = False  # read() wants the whole body: reading never pauses (max_body bounds it)
        # what read() and iter_bytes() raise for a failure: errors(exc), or exc itself
        self.errors: Callable[[HttpClientError], BaseException] | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        await self.waiter

    async def read(self) -> bytes:
        """The whole body (at most ``max_body`` bytes)."""
        self.whole = True
        self.conn.taken()
        while not self.done:
            if self.error is not None:
                raise self._error()
            await self._wait()
        if self.error is not None:
            raise self._error()
        chunks = self.chunks
        self.chunks = []
        self.size = 0
        self.conn.taken()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what came since the last step, joined."""
        while True:
            chunks = self.chunks
            if chunks:
                self.chunks = []
                self.size = 0
                self.conn.taken()
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                continue
            if self.error is not None:
                raise self._error()
            if self.done:
                return
            await self._wait()

    def _error(self) -> BaseException:
        error = self.error
        assert error is not None
        return error if self.errors is None else self.errors(error)

    def close(self) -> None:
        """Leave the response: back to the pool when it was read to its end, else closed."""
        if not self.left:
            self.left = True
            conn = self.conn
            conn.release(self)
            conn.pool._done()


class Connection(asyncio.Protocol):
    """One connection to an upstream (or to a proxy tunnelling to it)."""

    __slots__ = (
        "pool",
        "loop",
        "key",
        "transport",
        "parser",
        "response",
        "timer",
        "deadline",
        "read_timeout",
        "idle_since",
        "closed",
        "keep_alive",
        "paused",
        "reused",
        "tunnel_buf",
        "tunnel",
    )

    def __init__(self, pool: Pool, key: _Key) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.key = key
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.read_timeout = 0.0
        self.idle_since = 0.0
        self.closed = False
        self.keep_alive = True
        self.paused = False
        self.reused = False
        self.tunnel_buf: bytearray | None = None  # the proxy's answer to CONNECT, while it arrives
        self.tunnel: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.tunnel_buf is not None:
            self._tunnel_data(data)
            return
        r = self.response
        if r is None or r.done:  # bytes nobody asked for: this connection is not reusable
            self.keep_alive = False
            self.abort()
            return
        r.seen = True
        if self.read_timeout:
            self.deadline = self.loop.time() + self.read_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(
                cause
                if isinstance(cause, HttpClientError)
                else RemoteProtocolError(f"bad response ({cause or exc})", r.head_done)
            )
        except httptools.HttpParserError as exc:
            reason = str(exc.args[0] if exc.args else exc)[:100]
            self._fail(RemoteProtocolError(f"malformed HTTP response ({reason})", True))

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.tunnel is not None:
            self._tunnel_result(ConnectError(_reason(exc) if exc else "the proxy closed the connection"))
        self.pool._gone(self)
        r = self.response
        if r is None or r.done or r.error is not None:
            return
        if r.head_done and r.until_close and exc is None:  # the body ended with the connection
            self._finish_body()
            r.done = True
            r.wake()
            return
        why = _reason(exc) if exc is not None else "the upstream closed the connection"
        if r.head_done:
            self._fail(RemoteProtocolError(f"{why} before the end of the response", True))
        else:
            self._fail(RemoteProtocolError(why, r.seen))

    def pause_writing(self) -> None:  # a large request body: the transport buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        r = self.response
        assert r is not None
        r.skip = False
        r.raw_headers = []
        r.header_bytes = 0

    def on_status(self, status: bytes) -> None:
        r = self.response
        assert r is not None
        r.header_bytes += len(status)
        r.status = -1  # the status line began (the answer has started)

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.response
        assert r is not None
        limits = self.pool
        raw = r.raw_headers
        if len(raw) >= limits.max_headers:
            raise RemoteProtocolError(f"the response has more than {limits.max_headers} headers", True)
        r.header_bytes += len(name) + len(value) + 4
        if r.header_bytes > limits.max_header_bytes:
            raise RemoteProtocolError(f"the response head is larger than {limits.max_header_bytes // 1024} KB", True)
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.response
        assert r is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            r.skip = True
            r.status = -1
            return
        r.status = status
        headers = r.headers
        length = chunked = False
        encoding = None
        for name, value in r.raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            old = headers.get(key)
            headers[key] = text if old is None else old + ", " + text
            if key == "content-length":
                length = True
            elif key == "transfer-encoding":
                chunked = "chunked" in text.lower()
            elif key == "content-encoding":
                encoding = text.strip().lower()
        r.raw_headers = []
        if encoding and encoding != "identity":
            if encoding in ("gzip", "x-gzip"):
                r.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                r.inflater = zlib.decompressobj()
            else:
                raise RemoteProtocolError(f"unsupported content-encoding {encoding[:40]!r}", True)
        r.until_close = not length and not chunked and status not in (204, 304)
        r.head_done = True
        r.wake()

    def on_body(self, body: bytes) -> None:
        r = self.response
        assert r is not None
        if r.skip:
            return
        if r.inflater is not None:
            try:
                body = r.inflater.decompress(body, INFLATE_STEP)
            except zlib.error:
                raise RemoteProtocolError("the compressed body is damaged", True) from None
            if r.inflater.unconsumed_tail:
                raise RemoteProtocolError("the compressed body expands too much", True)
            if not body:
                return
        r.total += len(body)
        if r.total > r.max_body:
            raise RemoteProtocolError(f"the response body is larger than {r.max_body // (1024 * 1024)} MB", True)
        r.chunks.append(body)
        r.size += len(body)
        if r.size > BUFFER_HIGH and not r.whole and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        r.wake()

    def on_message_complete(self) -> None:
        r = self.response
        assert r is not None
        if r.skip:
            r.skip = False
            return
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._finish_body()
        r.done = True
        r.wake()

    def _finish_body(self) -> None:
        r = self.response
        assert r is not None
        if r.inflater is not None:
            tail = r.inflater.flush()
            if tail:
                r.chunks.append(tail)
                r.size += len(tail)
                r.total += len(tail)

    # -- the tunnel through a proxy ------------------------------------------------------

    def _tunnel_data(self, data: bytes) -> None:
        buf = self.tunnel_buf
        assert buf is not None
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.pool.max_header_bytes:
                self.tunnel_buf = None
                self._tunnel_result(ConnectError("the proxy's answer to CONNECT is too large"))
            return
        self.tunnel_buf = None
        line = bytes(buf[: buf.find(b"\r\n")])
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
            shown = line.decode("latin-1")[:100]
            self._tunnel_result(ConnectError(f"the proxy refused the tunnel ({shown})"))
        elif end + 4 < len(buf):
            self._tunnel_result(ConnectError("the proxy sent bytes after its answer to CONNECT"))
        else:
            self._tunnel_result(None)

    def _tunnel_result(self, error: HttpClientError | None) -> None:
        fut = self.tunnel
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    # -- requests ------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes | None, read_timeout: float, max_body: int) -> Response:
        r = self.response = Response(self, max_body)
        self.read_timeout = read_timeout
        if read_timeout:
            # one lazy timer per connection: left armed between requests, re-armed when it fires early
            self.deadline = deadline = self.loop.time() + read_timeout
            timer = self.timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer = self.loop.call_at(deadline, self._timeout)
        transport = self.transport
        if body:
            transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                transport.write(body)
        else:
            transport.write(head)
        return r

    def taken(self) -> None:
        """The reader took the buffered body: reading resumes if it was paused."""
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def release(self, r: Response) -> None:
        if self.response is not r:
            return
        self.response = None
        if r.done and r.error is None and self.keep_alive and not self.closed and not r.until_close:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            self.reused = True
            self.pool._checkin(self)
        else:
            self.abort()  # the upstream sees the connection close and stops

    def _fail(self, error: HttpClientError) -> None:
        r = self.response
        if r is not None and r.error is None and not r.done:
            r.error = error
            r.wake()
        self.keep_alive = False
        self.abort()

    def _timeout(self) -> None:
        self.timer = None
        r = self.response
        if r is None or r.done or self.closed or not self.read_timeout:
            return  # idle, or the answer is complete: the timer lapses
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timeout)
            return
        self._fail(ReadTimeout(f"read timeout ({self.read_timeout:g} s)", r.head_done))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        t = self.transport
        if t is not None:
            t.abort()


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


class Pool:
    """Connections to the upstreams of one process (see the module docstring)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        idle_timeout: float = 15.0,
        quiet: float = 2.0,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 200,
        max_body: int = 128 * 1024 * 1024,
        trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        on_quiet: Callable[[], None] | None = None,
        resolve: Resolver | None = None,
    ):
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.quiet = quiet
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.trust_env = trust_env
        self._ssl = ssl_context
        self.on_quiet = on_quiet
        self.resolve = resolve
        self.idle: dict[_Key, list[Connection]] = {}
        self.idle_count = 0
        self.active = 0  # requests in progress
        self.quiet_since = 0.0
        self.busy_since_quiet = False
        self._targets: dict[str, _Target] = {}
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections: set[Connection] = set()
        self.closed = False

    # -- the API -------------------------------------------------------------------------

    def target(self, url: str) -> _Target:
        t = self._targets.get(url)
        if t is None:
            t = _Target(url, self.trust_env)
            if len(self._targets) >= _TARGETS_MAX:
                self._targets.clear()
                self._heads.clear()
            self._targets[url] = t
        return t

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Response:
        """Send a request; the response once its head arrived. Leave it with ``close()``."""
        if self.closed:
            raise ConnectError("the client is closed")
        target = self.target(url)
        head = self._head(method, target, headers, body)
        rt = self.read_timeout if read_timeout is None else read_timeout
        ct = self.connect_timeout if connect_timeout is None else connect_timeout
        self.active += 1
        self.busy_since_quiet = True
        try:
            for attempt in (0, 1):
                conn = self._checkout(target.key)
                if conn is None:
                    conn = await self._connect(target, ct)
                r = conn.send(head, body, rt, self.max_body)
                try:
                    while not r.head_done:
                        if r.error is not None:
                            raise r.error
                        await r._wait()
                except RemoteProtocolError as exc:
                    conn.release(r)
                    if attempt == 0 and conn.reused and not exc.answered:
                        continue  # the upstream closed the kept-alive connection as it was reused
                    raise
                except BaseException:
                    conn.release(r)
                    raise
                return r
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._done()
            raise

    def close_idle(self) -> int:
        """Close every idle connection; how many were closed."""
        n = 0
        for conns in self.idle.values():
            for conn in conns:
                conn.abort()
                n += 1
        self.idle.clear()
        self.idle_count = 0
        return n

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.close_idle()
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)

    # -- inside --------------------------------------------------------------------------

    def _head(self, method: str, target: _Target, headers: dict[str, str], body: bytes | None) -> bytes:
        key = (method, target.target, target.host_header, target.proxy_auth, tuple(headers.items()))
        fixed = self._heads.get(key)
        if fixed is None:
            lines = [f"{method} {_check_header(target.target)} HTTP/1.1\r\nHost: {target.host_header}\r\n"]
            lower = set()
            for name, value in headers.items():
                lower.add(name.lower())
                lines.append(f"{_check_header(name)}: {_check_header(str(value))}\r\n")
            if "accept-encoding" not in lower:
                lines.append("Accept-Encoding: identity\r\n")
            if target.proxy_auth and not target.tunnel:
                lines.append(f"Proxy-Authorization: {target.proxy_auth}\r\n")
            fixed = "".join(lines).encode()
            if len(self._heads) >= _TARGETS_MAX:
                self._heads.clear()
            self._heads[key] = fixed
        if body is None and method in ("GET", "HEAD"):
            return fixed + b"\r\n"
        return fixed + b"Content-Length: %d\r\n\r\n" % (len(body) if body else 0)

    def _checkout(self, key: _Key) -> Connection | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            self.idle_count -= 1
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def _checkin(self, conn: Connection) -> None:
        if self.closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self.idle.setdefault(conn.key, []).append(conn)
        self.idle_count += 1
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP, self._sweep)

    def _done(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.quiet_since = self.loop.time()
            if self._sweeper is None and self.busy_since_quiet and not self.closed:
                self._sweeper = self.loop.call_later(_SWEEP, self._sweep)

    def _gone(self, conn: Connection) -> None:
        self.connections.discard(conn)
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            self.idle_count -= 1

    def _sweep(self) -> None:
        self._sweeper = None
        if self.closed:
            return
        now = self.loop.time()
        if self.active == 0 and self.busy_since_quiet and now - self.quiet_since >= self.quiet:
            self.busy_since_quiet = False
            self.close_idle()
            if self.on_quiet is not None:  # once the closed connections are gone (a loop turn or two)
                self.loop.call_later(0.1, self._quiet)
            return
        oldest = now - self.idle_timeout
        for key, conns in list(self.idle.items()):
            keep = [c for c in conns if c.idle_since > oldest and not c.closed]
            for c in conns:
                if c.idle_since <= oldest:
                    c.abort()
            self.idle_count -= len(conns) - len(keep)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        if self.idle_count or (self.active == 0 and self.busy_since_quiet):
            self._sweeper = self.loop.call_later(_SWEEP, self._sweep)

    def _quiet(self) -> None:
        if self.active == 0 and not self.closed and self.on_quiet is not None:
            self.on_quiet()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            from gencli.transports import trust

            self._ssl = trust.context()
        return self._ssl

    async def _connect(self, target: _Target, timeout: float) -> Connection:
        conn = Connection(self, target.key)
        host, port = target.proxy or (target.host, target.port)
        tls = target.tls and target.proxy is None
        try:
            async with asyncio.timeout(timeout):
                # the addresses to connect to: the resolve hook's (each one it checked), else the name
                addresses = [host] if self.resolve is None else await self.resolve(host, port)
                failure: ConnectError | None = ConnectError(f"no address to connect to for {host}")
                for address in addresses:
                    conn = attempt = Connection(self, target.key)
                    try:
                        await self.loop.create_connection(
                            lambda attempt=attempt: attempt,  # called at once, in this iteration
                            address,
                            port,
                            ssl=self._ssl_context() if tls else None,
                            server_hostname=target.host if tls else None,
                        )
                    except (OSError, ssl.SSLError, ValueError) as exc:
                        failure = ConnectError(_reason(exc))
                        continue
                    failure = None
                    break
                if failure is not None:
                    raise failure
                if target.tunnel:
                    await self._tunnel(conn, target)
        except TimeoutError:
            conn.abort()
            raise ConnectTimeout(f"connect timeout ({timeout:g} s)") from None
        except BaseException:
            conn.abort()
            raise
        self.connections.add(conn)
        return conn

    async def _tunnel(self, conn: Connection, target: _Target) -> None:
        authority = f"{target.host}:{target.port}" if ":" not in target.host else f"[{target.host}]:{target.port}"
        lines = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
        if target.proxy_auth:
            lines.append(f"Proxy-Authorization: {target.proxy_auth}\r\n")
        conn.tunnel_buf = bytearray()
        conn.tunnel = self.loop.create_future()
        conn.transport.write("".join(lines).encode() + b"\r\n")
        try:
            await conn.tunnel
        finally:
            conn.tunnel = None
        try:
            tls_transport = await self.loop.start_tls(
                conn.transport, conn, self._ssl_context(), server_hostname=target.host
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectError(_reason(exc)) from None
        assert tls_transport is not None
        conn.transport = tls_transport
