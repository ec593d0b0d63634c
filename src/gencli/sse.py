"""A sans-I/O Server-Sent Events decoder: bytes in, ``data`` payloads out.

Handles LF and CRLF line ends, events split across chunks, ``:`` comments
(OpenRouter keep-alives) and multi-line ``data`` fields.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the ``data`` payload of every event completed by ``chunk``."""
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()  # the line not ended yet (b"" after a final newline)
        out: list[bytes] = []
        data = self._data
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
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if self._buf:
            line = self._buf.rstrip(b"\r")
            self._buf = b""
            self._line(line, out)
        if self._data:
            out.append(b"\n".join(self._data))
            self._data = []
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(b"\n".join(self._data))
                self._data = []
            return
        if line[0] == 58:  # ":" comment / keep-alive
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
            self._data.append(value)
        # other fields (event:, id:, retry:) carry nothing we use
