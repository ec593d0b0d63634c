"""gencli's HTTP/1.1 server framing, proven against h11: the same request bytes go to the
server (``gencli.server.http11.HttpConnection`` on an in-memory transport, with an app that
records what it was handed) and to ``h11.Connection(h11.SERVER)``, and the decisions are
compared: every request the server hands its app must be one h11 parses with the same
method, target, headers and body; where the two differ, the case names the difference and
why, and only one way is allowed: the server may refuse what h11 takes, never take what h11
refuses (request smuggling lives in that gap). Every case is fed whole, split at every byte,
and one byte at a time, and must be decided alike each way.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import h11
import pytest

from gencli.server.http11 import HttpConnection, Limits, ServerState


class Request(NamedTuple):
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class Decision(NamedTuple):
    requests: tuple[Request, ...]  # the requests accepted whole, in order
    refused: bool  # the parser refused what followed them (a 4xx, the connection closed)


# -- gencli's server, in memory ---------------------------------------------------------------


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 11434)}.get(name, default)


async def _gencli(pieces: list[bytes]) -> Decision:
    seen: list[Request] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left, or the request broke off: not accepted
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        headers = tuple((name, value) for name, value in scope["headers"])
        seen.append(Request(scope["method"].encode(), target, headers, body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    state = ServerState(app, Limits(), asyncio.get_running_loop())
    conn = HttpConnection(state)
    transport = MemoryTransport()
    conn.connection_made(transport)
    for piece in pieces:
        for _ in range(200):  # a paused reader takes no bytes: as a socket would hold them
            if not transport.paused or transport.closed:
                break
            await asyncio.sleep(0)
        if transport.closed:
            break
        conn.data_received(piece)
        for _ in range(5):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    refused = b"HTTP/1.1 4" in transport.out
    conn.connection_lost(None)
    await asyncio.sleep(0)
    return Decision(tuple(seen), refused)


def gencli_decides(pieces: list[bytes]) -> Decision:
    return asyncio.run(_gencli(pieces))


# -- h11 --------------------------------------------------------------------------------------


def h11_decides(pieces: list[bytes]) -> Decision:
    conn = h11.Connection(h11.SERVER)
    accepted: list[Request] = []
    current: list[Any] | None = None
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return Decision(tuple(accepted), True)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                headers = tuple((bytes(name), bytes(value)) for name, value in event.headers)
                current = [event.method, event.target, headers, b""]
            elif isinstance(event, h11.Data):
                assert current is not None
                current[3] += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                accepted.append(Request(current[0], current[1], current[2], current[3]))
                current = None
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return Decision(tuple(accepted), False)  # the connection's last request
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover - no EOF is fed
                break
    return Decision(tuple(accepted), False)


# -- the corpus -------------------------------------------------------------------------------

H = b"Host: a.test\r\n"
GET = b"GET /p?q=1 HTTP/1.1\r\n" + H + b"\r\n"
POST_CL = b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
POST_CHUNKED = b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

SAME = "same"  # both decide alike
STRICTER = "stricter"  # gencli refuses what h11 accepts (or waits for): each names why

CASES: list[tuple[str, bytes, str, str]] = [
    ("get", GET, SAME, ""),
    ("post content-length", POST_CL, SAME, ""),
    ("post chunked", POST_CHUNKED, SAME, ""),
    ("pipelined three", GET + POST_CL + POST_CHUNKED, SAME, ""),
    ("connection close ends the connection", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n" + GET, SAME, ""),
    ("header value whitespace", b"GET / HTTP/1.1\r\n" + H + b"X-A:   v w  \r\n\r\n", SAME, ""),
    (
        "chunk extensions",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'5;name=value;x\r\nhello\r\n3;a="q"\r\nabc\r\n0;end\r\n\r\n',
        SAME,
        "",
    ),
    (
        "chunked with a trailer",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n",
        SAME,
        "",
    ),
    (
        "content-length then transfer-encoding",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        STRICTER,
        "both framings named: llhttp refuses (RFC 9112 6.1 allows it); h11 reads it chunked",
    ),
    (
        "transfer-encoding then content-length",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        STRICTER,
        "both framings named: llhttp refuses; h11 reads it chunked",
    ),
    (
        "duplicate content-length, equal",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        STRICTER,
        "llhttp refuses any second Content-Length; h11 takes equal ones as one",
    ),
    (
        "duplicate content-length, different",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        SAME,
        "",
    ),
    (
        "content-length list",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello",
        STRICTER,
        "a list of equal lengths: llhttp refuses it, h11 takes it as one",
    ),
    ("signed content-length +", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", SAME, ""),
    ("signed content-length -", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello", SAME, ""),
    ("hex content-length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", SAME, ""),
    (
        "obs-fold",
        b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n",
        STRICTER,
        "a folded header line: llhttp refuses it (RFC 9112 5.2 allows a 400); h11 unfolds it",
    ),
    (
        "bare LF line ends",
        b"GET / HTTP/1.1\n" + H.replace(b"\r\n", b"\n") + b"\n",
        STRICTER,
        "llhttp takes CRLF only; h11 also takes a bare LF",
    ),
    (
        "bare LF in a chunk size line",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        SAME,
        "",
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"1\r\nhello\r\n0\r\n\r\n",
        STRICTER,
        "a chunk size past 64 bits: llhttp refuses it; h11 waits for the bytes of a chunk that large",
    ),
    (
        "chunk size not hex",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        SAME,
        "",
    ),
    (
        "two Host headers",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        SAME,
        "",
    ),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", SAME, ""),
    ("HTTP/1.0 without Host", b"GET /old HTTP/1.0\r\n\r\n", SAME, ""),
    (
        "a trailer field is not a header",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nHost: evil.test\r\n"
        b"Authorization: Bearer x\r\n\r\n" + GET,
        SAME,
        "",
    ),
    (
        "transfer-encoding not chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello",
        SAME,
        "",
    ),
    ("space before the colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : v\r\n\r\n", SAME, ""),
    ("nul in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", SAME, ""),
    ("control character in the target", b"GET /\x01 HTTP/1.1\r\n" + H + b"\r\n", SAME, ""),
    ("bad version", b"GET / HTTP/1.2.3\r\n" + H + b"\r\n", SAME, ""),
]


def _splits(data: bytes) -> list[list[bytes]]:
    out = [[data], list(data[i : i + 1] for i in range(len(data)))]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    return out


@pytest.mark.parametrize("name,data,relation,why", CASES, ids=[c[0] for c in CASES])
def test_the_server_decides_as_h11_or_stricter(name, data, relation, why):
    whole = gencli_decides([data])
    theirs = h11_decides([data])
    if relation == SAME:
        assert whole == theirs, (name, whole, theirs)
    else:
        assert why
        # stricter: what the server accepted h11 accepted alike, and the server refused the rest
        assert whole.refused, (name, whole, theirs)
        assert theirs.requests[: len(whole.requests)] == whole.requests, (name, whole, theirs)
        assert len(theirs.requests) > len(whole.requests) or not theirs.refused, (name, whole, theirs)
    for pieces in _splits(data):
        assert gencli_decides(pieces) == whole, (name, [len(p) for p in pieces])
        assert h11_decides(pieces) == theirs, (name, [len(p) for p in pieces])


def test_the_corpus_accepts_and_refuses():
    """The corpus is not all one kind: it proves framing both ways."""
    decisions = [gencli_decides([data]) for _, data, _, _ in CASES]
    assert sum(1 for d in decisions if d.requests and not d.refused) >= 6
    assert sum(1 for d in decisions if d.refused) >= 10


def test_trailer_fields_are_bounded_like_headers():
    """Trailer fields are dropped, not handed on, and still bounded: more than --max-headers
    of them is a 431, as in a head."""
    trailers = b"".join(b"X-T%d: 1\r\n" % i for i in range(150))
    data = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n" + trailers + b"\r\n"

    async def go() -> bytes:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            while (await receive())["type"] == "http.request":
                pass

        state = ServerState(app, Limits(), asyncio.get_running_loop())
        conn = HttpConnection(state)
        transport = MemoryTransport()
        conn.connection_made(transport)
        conn.data_received(data)
        for _ in range(10):
            await asyncio.sleep(0)
        conn.connection_lost(None)
        return bytes(transport.out)

    out = asyncio.run(go())
    assert out.startswith(b"HTTP/1.1 431 "), out[:200]
    assert b"too many request headers" in out


def test_a_move_outside_the_table_is_refused():
    from gencli.server.http11 import NEXT, Phase

    async def go() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # pragma: no cover
            pass

        conn = HttpConnection(ServerState(app, Limits(), asyncio.get_running_loop()))
        assert conn.phase is Phase.IDLE and Phase.BODY not in NEXT[Phase.IDLE]
        with pytest.raises(RuntimeError, match="no move from idle to body"):
            conn._move(Phase.BODY)
        conn._move(Phase.HEAD)
        conn._move(Phase.BODY)
        assert conn.phase is Phase.BODY

    asyncio.run(go())
