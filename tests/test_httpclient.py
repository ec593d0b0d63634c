"""gencli's upstream HTTP/1.1 client (gencli.transports.httpclient) against scripted upstreams on 127.0.0.1.

- Differential: a corpus of upstream answers, well-formed and hostile, each sent byte for
  byte by a raw server; the client must agree with h11 (the reference parser, fed the same
  bytes) on whether the answer is valid, its status and its body.
- The client's own bounds (head size, header count, body size, inflating), the pool (reuse,
  a stale kept-alive connection retried once, idle connections closed when quiet),
  timeouts, cancellation (the upstream sees the connection close), flow control, TLS with a
  test CA, and HTTP proxies (absolute form, CONNECT tunnels, authorization, NO_PROXY).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import threading
import zlib

import h11
import httpx
import pytest

from gencli.transports import httpclient as hc
from tests.fakes.tls import make_ca
from tests.server_fixture import ServeProcess

BODY = b'{"ok": true}'


class RawServer:
    """Answers each request with ``script(n, request)`` bytes (n counts requests from 0),
    then closes the connection when ``close`` says so. Records requests and connections."""

    def __init__(self, script, close=lambda n: False, ssl_context=None):
        self.script = script
        self.close = close
        self.ssl = ssl_context
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed_by_client = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                n = len(self.requests)
                self.requests.append(head + body)
                out = self.script(n, head + body)
                if asyncio.iscoroutine(out):
                    out = await out
                if out is not None:
                    writer.write(out)
                    await writer.drain()
                if self.close(n):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()


def reply(body: bytes = BODY, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def fetch(pool: hc.Pool, url: str, body: bytes | None = b"{}") -> tuple[int, bytes]:
    r = await pool.request("POST", url + "/v1/chat/completions", {"Content-Type": "application/json"}, body)
    try:
        return r.status, await r.read()
    finally:
        r.close()


def run(coro):
    return asyncio.run(coro)


# -- differential: the client and h11 read the same bytes --------------------------------------

CORPUS = {
    "content-length": reply(),
    "chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "chunked, extensions and trailers": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n"
    ),
    "until close": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe body ends with the connection",
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "100 then 200": b"HTTP/1.1 100 Continue\r\n\r\n" + reply(),
    "103 early hints then 200": b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + reply(),
    "error status": reply(b'{"error": "no"}', "429 Too Many Requests", b"retry-after: 7\r\n"),
    "no reason phrase": b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "repeated header": b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok",
    # hostile
    "garbage": b"this is not HTTP at all\r\n\r\n",
    "bad status line": b"HTTP/1.1 OK 200\r\ncontent-length: 2\r\n\r\nok",
    "bad version": b"HTTP/9.9 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "header without colon": b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok",
    "space before colon": b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
    "bad content-length": b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
    "negative content-length": b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
    "two content-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
    "body shorter than content-length": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
    "bad chunk size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunked cut short": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    "chunk longer than its size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "head cut short": b"HTTP/1.1 200 OK\r\ncontent-len",
    "nothing": b"",
    "NUL in a header": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "CR alone in a header": b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok",
}


# Where llhttp is stricter than h11: the client refuses what h11 would take.
STRICTER = {"bad version"}  # h11 takes any HTTP/x.y; llhttp only versions it knows


def h11_reads(raw: bytes) -> tuple:
    """What h11 makes of an answer: ("ok", status, body) or ("error",)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")  # the server closes after its answer
    status, body = None, b""
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return ("ok", status, body)
            elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                return ("error",)
    except h11.RemoteProtocolError:
        return ("error",)


async def client_reads(raw: bytes) -> tuple:
    async with RawServer(lambda n, req: raw, close=lambda n: True) as up:
        pool = hc.Pool(trust_env=False)
        try:
            status, body = await fetch(pool, up.url)
            return ("ok", status, body)
        except hc.HttpClientError:
            return ("error",)
        finally:
            await pool.close()


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_client_reads_each_answer_as_h11_does(name):
    raw = CORPUS[name]
    if name in STRICTER:
        assert run(client_reads(raw)) == ("error",) and h11_reads(raw)[0] == "ok"
    else:
        assert run(client_reads(raw)) == h11_reads(raw)


def test_the_corpus_holds_both_kinds():
    verdicts = [h11_reads(raw)[0] for raw in CORPUS.values()]
    assert verdicts.count("ok") >= 10 and verdicts.count("error") >= 12


# -- the client's own bounds --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(300)) + b"content-length: 0\r\n\r\n",
            "more than 200 headers",
        ),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n", "larger than 64 KB"),
        (b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 2\r\n\r\nok", "unsupported content-encoding"),
        (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 9\r\n\r\nnot gzip!", "damaged"),
    ],
)
def test_bounds_on_the_head_and_encodings(raw, message):
    async def main():
        async with RawServer(lambda n, req: raw, close=lambda n: True) as up:
            pool = hc.Pool(trust_env=False)
            try:
                with pytest.raises(hc.RemoteProtocolError, match=message):
                    await fetch(pool, up.url)
            finally:
                await pool.close()

    run(main())


def test_a_body_over_max_body_is_refused_and_a_gzip_bomb_does_not_inflate():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MB of zeros in ~64 KB

    async def main():
        big = b"x" * 300_000
        async with RawServer(lambda n, req: reply(big), close=lambda n: True) as up:
            pool = hc.Pool(trust_env=False, max_body=100_000)
            with pytest.raises(hc.RemoteProtocolError, match="larger than"):
                await fetch(pool, up.url)
            await pool.close()
        answer = reply(bomb, extra=b"content-encoding: gzip\r\n")
        async with RawServer(lambda n, req: answer, close=lambda n: True) as up:
            pool = hc.Pool(trust_env=False)
            with pytest.raises(hc.RemoteProtocolError, match="expands too much|larger than"):
                await fetch(pool, up.url)
            await pool.close()

    run(main())


def test_gzip_and_deflate_bodies_are_inflated_and_identity_is_asked_for():
    text = b'{"choices": []}' * 100

    async def main():
        for encoding, data in (("gzip", gzip.compress(text)), ("deflate", zlib.compress(text))):
            answer = reply(data, extra=f"content-encoding: {encoding}\r\n".encode())
            async with RawServer(lambda n, req, answer=answer: answer) as up:
                pool = hc.Pool(trust_env=False)
                assert await fetch(pool, up.url) == (200, text)
                assert b"\r\nAccept-Encoding: identity\r\n" in up.requests[0]
                await pool.close()

    run(main())


def test_a_header_with_a_line_break_is_refused_before_sending():
    async def main():
        async with RawServer(lambda n, req: reply()) as up:
            pool = hc.Pool(trust_env=False)
            with pytest.raises(ValueError, match="line break"):
                await pool.request("POST", up.url + "/x", {"X-Evil": "a\r\nHost: elsewhere"}, b"{}")
            assert up.requests == []
            await pool.close()

    run(main())


# -- the pool -------------------------------------------------------------------------------


def test_connections_are_reused_and_the_request_is_what_was_asked():
    async def main():
        async with RawServer(lambda n, req: reply()) as up:
            pool = hc.Pool(trust_env=False)
            for _ in range(5):
                assert await fetch(pool, up.url, b'{"a": 1}') == (200, BODY)
            assert up.connections == 1
            first = up.requests[0]
            assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % up.port)
            assert b"\r\nContent-Type: application/json\r\n" in first and b"\r\nContent-Length: 8\r\n" in first
            assert first.endswith(b'\r\n\r\n{"a": 1}')
            await pool.close()

    run(main())


def test_connection_close_and_until_close_answers_are_not_reused():
    async def main():
        answers = [reply(extra=b"connection: close\r\n"), b"HTTP/1.1 200 OK\r\n\r\nuntil close"]
        for answer in answers:
            async with RawServer(lambda n, req, answer=answer: answer, close=lambda n: True) as up:
                pool = hc.Pool(trust_env=False)
                for _ in range(3):
                    assert (await fetch(pool, up.url))[0] == 200
                assert up.connections == 3
                await pool.close()

    run(main())


def test_a_stale_kept_alive_connection_is_retried_once_on_a_new_one():
    async def main():
        # the upstream answers the first request, then closes the connection on the next
        # one without a byte (as a server whose keep-alive ran out does)
        def script(n, req):
            return reply() if n != 1 else None

        async with RawServer(script, close=lambda n: n == 1) as up:
            pool = hc.Pool(trust_env=False)
            assert await fetch(pool, up.url) == (200, BODY)
            assert await fetch(pool, up.url) == (200, BODY)  # retried on a second connection
            assert up.connections == 2 and len(up.requests) == 3
            await pool.close()

    run(main())


def test_an_answer_that_began_is_never_retried():
    async def main():
        def script(n, req):
            return reply() if n == 0 else b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\npartial"

        async with RawServer(script, close=lambda n: n >= 1) as up:
            pool = hc.Pool(trust_env=False)
            assert await fetch(pool, up.url) == (200, BODY)
            r = await pool.request("POST", up.url + "/x", {}, b"{}")
            with pytest.raises(hc.RemoteProtocolError, match="before the end of the response"):
                await r.read()
            r.close()
            assert len(up.requests) == 2
            await pool.close()

    run(main())


def test_idle_connections_close_when_the_pool_goes_quiet_then_on_quiet_runs():
    async def main():
        quiet = []
        async with RawServer(lambda n, req: reply()) as up:
            pool = hc.Pool(trust_env=False, quiet=0.3, on_quiet=lambda: quiet.append(pool.idle_count))
            await asyncio.gather(*(fetch(pool, up.url) for _ in range(8)))
            assert pool.idle_count == 8 and up.connections == 8
            for _ in range(50):
                if quiet:
                    break
                await asyncio.sleep(0.1)
            assert quiet == [0]  # closed before on_quiet ran
            await asyncio.sleep(0.2)
            assert up.closed_by_client == 8  # the upstream saw every connection close
            assert await fetch(pool, up.url) == (200, BODY)  # and the pool still works
            await pool.close()

    run(main())


def test_an_idle_connection_past_idle_timeout_is_closed_while_others_work():
    async def main():
        async with RawServer(lambda n, req: reply()) as up:
            pool = hc.Pool(trust_env=False, idle_timeout=0.5, quiet=60)
            await fetch(pool, up.url)
            assert pool.idle_count == 1
            for _ in range(40):
                if pool.idle_count == 0:
                    break
                await asyncio.sleep(0.1)
            assert pool.idle_count == 0 and up.closed_by_client == 1
            await pool.close()

    run(main())


# -- timeouts, cancellation, flow control ----------------------------------------------------------


def test_read_timeouts_before_and_during_the_answer():
    async def main():
        async def hang(n, req):
            if n == 1:
                return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome"
            await asyncio.sleep(30)

        async with RawServer(hang) as up:
            pool = hc.Pool(trust_env=False, read_timeout=0.3)
            with pytest.raises(hc.ReadTimeout) as info:
                await fetch(pool, up.url)
            assert not info.value.answered
        async with RawServer(lambda n, req: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome") as up:
            r = await pool.request("POST", up.url + "/x", {}, b"{}", read_timeout=0.3)
            assert r.status == 200
            with pytest.raises(hc.ReadTimeout) as info:
                await r.read()
            assert info.value.answered
            r.close()
            await pool.close()

    run(main())


def test_a_proxy_that_never_answers_connect_is_a_connect_timeout(monkeypatch):
    async def main():
        async with RawServer(lambda n, req: None) as silent_proxy:
            monkeypatch.setenv("HTTPS_PROXY", silent_proxy.url)
            monkeypatch.setenv("NO_PROXY", "")
            pool = hc.Pool(connect_timeout=0.3)
            with pytest.raises(hc.ConnectTimeout):
                await pool.request("POST", "https://127.0.0.1:9/x", {}, b"{}")
            await pool.close()

    run(main())


def test_a_refused_connection_is_a_connect_error():
    async def main():
        async with RawServer(lambda n, req: reply()) as up:
            url = up.url
        pool = hc.Pool(trust_env=False)
        with pytest.raises(hc.ConnectError):
            await fetch(pool, url)
        await pool.close()

    run(main())


def test_leaving_a_stream_early_closes_the_connection_at_once():
    async def main():
        seen_close = asyncio.Event()

        async def stream(n, req):
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"

        class Watching(RawServer):
            async def _handle(self, reader, writer):
                await super()._handle(reader, writer)
                seen_close.set()

        async with Watching(stream) as up:
            pool = hc.Pool(trust_env=False)

            async def consume():
                r = await pool.request("POST", up.url + "/x", {}, b"{}")
                try:
                    async for chunk in r.iter_bytes():
                        assert chunk == b"first"
                        await asyncio.sleep(30)
                finally:
                    r.close()

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(seen_close.wait(), 5)
            assert pool.active == 0 and pool.idle_count == 0
            await pool.close()

    run(main())


def test_a_slow_reader_pauses_reading_and_gets_every_byte():
    size = 8 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)

    async def main():
        async with RawServer(lambda n, req: reply(payload)) as up:
            pool = hc.Pool(trust_env=False)
            r = await pool.request("POST", up.url + "/x", {}, b"{}")
            got = []
            paused = False
            async for chunk in r.iter_bytes():
                got.append(chunk)
                await asyncio.sleep(0.01)
                paused |= r.conn.paused
                assert r.size <= hc.BUFFER_HIGH + 512 * 1024  # what waits is bounded
            r.close()
            assert paused and b"".join(got) == payload
            assert await fetch(pool, up.url) == (200, payload)  # the connection went back to the pool
            assert up.connections == 1
            await pool.close()

    run(main())


# -- TLS and proxies -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def test_tls_upstream_verified_with_the_ca_and_refused_without_it(ca):
    async def main():
        async with RawServer(lambda n, req: reply(), ssl_context=ca.server_context()) as up:
            pool = hc.Pool(trust_env=False, ssl_context=ca.client_context())
            assert await fetch(pool, up.url) == (200, BODY)
            assert await fetch(pool, up.url.replace("127.0.0.1", "localhost")) == (200, BODY)
            await pool.close()
            stranger = hc.Pool(trust_env=False)  # the system's CAs do not know the test CA
            with pytest.raises(hc.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                await fetch(stranger, up.url)
            await stranger.close()

    run(main())


class Proxy(RawServer):
    """A small HTTP proxy: absolute-form requests forwarded, CONNECT tunnelled; it records
    each request head it got and may demand Basic credentials."""

    def __init__(self, credentials: str | None = None):
        super().__init__(lambda n, req: None)
        self.credentials = credentials
        self.heads: list[bytes] = []

    async def _handle(self, reader, writer):
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        if self.credentials is not None:
            token = base64.b64encode(self.credentials.encode())
            if b"\r\nProxy-Authorization: Basic " + token + b"\r\n" not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                writer.close()
                return
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method == b"CONNECT":
            host, port = target.rsplit(b":", 1)
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = b""
        else:
            url = target.decode()
            assert url.startswith("http://")
            hostport, _, path = url[7:].partition("/")
            host, port = hostport.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            rest = head.replace(target, b"/" + path.encode(), 1)
            rest = b"\r\n".join(
                line for line in rest.split(b"\r\n") if not line.lower().startswith(b"proxy-authorization:")
            )
            up_writer.write(rest)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.parametrize("credentials", [None, "user:p@ss word"])
def test_plain_http_through_a_proxy_in_absolute_form(monkeypatch, credentials):
    async def main():
        async with RawServer(lambda n, req: reply()) as up, Proxy(credentials) as proxy:
            auth = ""
            if credentials:
                user, password = credentials.split(":")
                auth = f"{user}:{password.replace('@', '%40').replace(' ', '%20')}@"
            monkeypatch.setenv("HTTP_PROXY", f"http://{auth}127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "example.invalid")
            pool = hc.Pool()
            assert await fetch(pool, up.url) == (200, BODY)
            assert proxy.heads[0].startswith(b"POST http://127.0.0.1:%d/v1/chat/completions HTTP/1.1" % up.port)
            assert up.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1")
            assert (
                b"roxy-authorization" not in up.requests[0].lower()
            )  # the upstream never sees the proxy's credentials
            await pool.close()

    run(main())


def test_https_through_a_connect_tunnel_with_credentials(monkeypatch, ca):
    async def main():
        async with RawServer(lambda n, req: reply(), ssl_context=ca.server_context()) as up, Proxy("u:pw") as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://u:pw@127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "")
            pool = hc.Pool(ssl_context=ca.client_context())
            assert await fetch(pool, up.url) == (200, BODY)
            assert await fetch(pool, up.url) == (200, BODY)  # the tunnel is kept alive and reused
            assert proxy.heads == [
                b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Proxy-Authorization: Basic dTpwdw==\r\n\r\n" % (up.port, up.port)
            ]
            assert up.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1")
            await pool.close()
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")  # no credentials: 407
            pool = hc.Pool(ssl_context=ca.client_context())
            with pytest.raises(hc.ConnectError, match="proxy refused the tunnel.*407"):
                await fetch(pool, up.url)
            await pool.close()

    run(main())


def test_no_proxy_bypasses_the_proxy(monkeypatch):
    async def main():
        async with RawServer(lambda n, req: reply()) as up, Proxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
            pool = hc.Pool()
            assert await fetch(pool, up.url) == (200, BODY)
            assert proxy.connections == 0 and up.connections == 1
            await pool.close()

    run(main())


# -- end to end: gencli serve to a TLS upstream, directly and through a proxy --------------------


class InThread:
    """Runs an async server (RawServer, Proxy) on an event loop in a thread."""

    def __init__(self, server):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(10)

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.__aexit__(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def openai_answer(n, req):
    return reply(
        b'{"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": '
        b'"assistant", "content": "over TLS"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, '
        b'"completion_tokens": 2}}'
    )


def test_gencli_serve_reaches_a_tls_upstream_directly_and_through_a_proxy(tmp_path, ca):
    with InThread(RawServer(openai_answer, ssl_context=ca.server_context())) as up, InThread(Proxy()) as proxy:
        models = {"m": {"provider": "openai-compatible", "model": "x", "base_url": up.url + "/v1"}}
        for name, env in (("direct", {}), ("proxy", {"HTTPS_PROXY": proxy.url, "NO_PROXY": "", "no_proxy": ""})):
            s = ServeProcess(tmp_path / name, models, env={"SSL_CERT_FILE": str(ca.ca_pem), **env})
            try:
                r = httpx.post(s.url + "/api/generate", json={"model": "m", "prompt": "hi"}, timeout=30)
                assert r.status_code == 200 and r.json()["response"] == "over TLS", (name, r.text, s.stderr())
            finally:
                s.stop()
        assert len(proxy.heads) == 1 and proxy.heads[0].startswith(b"CONNECT 127.0.0.1:%d " % up.port)
        s = ServeProcess(tmp_path / "untrusted", models)  # without the test CA: refused, and said so
        try:
            r = httpx.post(s.url + "/api/generate", json={"model": "m", "prompt": "hi"}, timeout=30)
            assert r.status_code == 502 and "certificate verify failed" in r.json()["error"]
        finally:
            s.stop()


def test_the_cli_and_the_server_trust_the_same_roots(tmp_path, ca):
    """One trust store (gencli.transports.trust): certifi's roots unless SSL_CERT_FILE or SSL_CERT_DIR
    names others, for the CLI's httpx as for gencli serve's own client (the test above): the
    CLI reaches the TLS upstream with the test CA named, and is refused without it."""
    import json

    import certifi

    from gencli.transports import trust
    from tests.conftest import clean_env, run_gencli

    assert trust.roots({}) == (certifi.where(), None)
    assert trust.roots({"SSL_CERT_FILE": str(ca.ca_pem), "SSL_CERT_DIR": "/x"}) == (str(ca.ca_pem), None)
    assert trust.roots({"SSL_CERT_DIR": "/etc/certs"}) == (None, "/etc/certs")
    events = (
        b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": '
        b'"over TLS"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    )

    def sse(n, req):
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(events) + events
        )

    with InThread(RawServer(sse, ssl_context=ca.server_context())) as up:
        path = tmp_path / "models.json"
        models = {"m": {"provider": "openai-compatible", "model": "x", "base_url": up.url + "/v1"}}
        path.write_text(json.dumps(models))
        work = tmp_path / "work"
        work.mkdir()
        trusted = clean_env(tmp_path, GENCLI_MODELS=str(path), SSL_CERT_FILE=str(ca.ca_pem))
        r = run_gencli(["generate", "-m", "m", "hi"], trusted, work)
        assert r.returncode == 0 and b"over TLS" in r.stdout, r.stderr
        r = run_gencli(["generate", "-m", "m", "hi"], clean_env(tmp_path, GENCLI_MODELS=str(path)), work)
        assert r.returncode == 1 and b"certificate verify failed" in r.stderr.lower(), r.stderr
