"""uvicorn's httptools protocol with writes coalesced per event-loop iteration.

uvicorn writes a reply's status line and headers, then its body, as separate
``transport.write`` calls (two syscalls for every non-streamed reply), and a streamed
reply's lines one by one even when a single upstream read produced several. Here the
writes made while one callback runs go out as one at the start of the next loop
iteration (microseconds later). Measured with bench/bench_server.py; see bench/README.md.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport proxy whose ``write``s within one loop iteration become one."""

    __slots__ = ("_t", "_loop", "_buf")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._t = transport
        self._loop = loop
        self._buf: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._buf:
            self._loop.call_soon(self._flush)
        self._buf.append(data)

    def _flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        self._buf = []
        if not self._t.is_closing():
            self._t.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + sum(map(len, self._buf))

    def close(self) -> None:
        self._flush()
        self._t.close()

    def __getattr__(self, name: str):  # everything else is the real transport's
        return getattr(self._t, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
