"""A sans-I/O Server-Sent Events decoder: bytes in, ``data`` payloads out.

Handles LF and CRLF line ends, events split across chunks, ``:`` comments
(OpenRouter keep-alives) and multi-line ``data`` fields.

Bounds (the bytes come from an upstream): the line not ended yet grows in place in a
bytearray and is copied once, when its newline arrives (a line streamed in small chunks
costs linear time, not quadratic); one line, and one event (its ``data`` lines and the line
being read), may hold at most :data:`MAX_EVENT` bytes, past which :class:`EventTooLarge`
is raised. A read that starts no event in progress and is below the cap is decoded without
counting (the hot path: bench/bench_sse.py).
"""

from __future__ import annotations

from gencli.core.errors import UpstreamError

MAX_EVENT = 8 * 1024 * 1024  # bytes in one event: far above any real one (a whole answer fits)


class EventTooLarge(UpstreamError):
    """An event passed :data:`MAX_EVENT`; ``payloads`` holds the events completed before it
    in the same ``feed`` (the caller parses them first, so the partial answer is kept)."""

    def __init__(self, payloads: list[bytes]):
        super().__init__(f"the upstream sent an event larger than {MAX_EVENT // (1024 * 1024)} MB")
        self.payloads = payloads


class SSEDecoder:
    __slots__ = ("_pending", "_data", "_data_size")

    def __init__(self) -> None:
        self._pending = bytearray()  # the line not ended yet (grown in place: linear)
        self._data: list[bytes] = []  # the data lines of the event being read
        self._data_size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the ``data`` payload of every event completed by ``chunk``.

        Raises :class:`EventTooLarge` when the event being read passes :data:`MAX_EVENT`."""
        pending = self._pending
        if pending:
            pending += chunk  # amortised: a bytearray grows in place
            if b"\n" not in chunk:  # the line goes on
                if len(pending) + self._data_size > MAX_EVENT:
                    self._fail([])
                return []
            buf = bytes(pending)
            self._pending = bytearray()
        else:
            buf = chunk
        data = self._data
        if data or len(buf) > MAX_EVENT:  # an event goes on from an earlier read, or a huge read
            return self._feed_checked(buf)
        # No event in progress and a read below the cap: nothing here can pass it, so no line
        # is counted on this (hot) path.
        lines = buf.split(b"\n")
        tail = lines.pop()  # the line not ended yet (b"" after a final newline)
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # the blank line that ends an event
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                if value[:1] == b" ":
                    value = value[1:]
                data.append(value)
            # ":" comments (keep-alives) and other fields (event:, id:, retry:) carry nothing we use
        if data:  # an event goes on in the next read
            self._data_size = sum(map(len, data)) + len(data)
        if tail:
            self._pending += tail
        return out

    def _feed_checked(self, buf: bytes) -> list[bytes]:
        """``feed`` for a read that could pass the cap: every line counted."""
        lines = buf.split(b"\n")
        tail = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if len(line) > MAX_EVENT:  # a data line, a comment or another field
                self._fail(out)
            self._line(line.removesuffix(b"\r"), out)
            if self._data_size > MAX_EVENT:
                self._fail(out)
        if tail:
            self._pending += tail
            if len(tail) + self._data_size > MAX_EVENT:
                self._fail(out)
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if self._pending:
            line = bytes(self._pending).rstrip(b"\r")
            self._pending = bytearray()
            self._line(line, out)
        if self._data:
            out.append(b"\n".join(self._data))
            self._data = []
            self._data_size = 0
        return out

    def _fail(self, out: list[bytes]) -> None:
        self._pending = bytearray()  # the decoder holds nothing more once the stream is refused
        self._data = []
        self._data_size = 0
        raise EventTooLarge(out)

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(b"\n".join(self._data))
                self._data = []
                self._data_size = 0
            return
        if line[0] == 58:  # ":" comment / keep-alive
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
            self._data.append(value)
            self._data_size += len(value) + 1
        # other fields (event:, id:, retry:) carry nothing we use
