"""The server's coalescing transport: writes made in one loop iteration go out as one."""

import asyncio

from gencli.server.protocol import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """An asyncio transport that records what is written to it."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_writes_in_one_iteration_become_one():
    async def main():
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")
        t.write(b'{"done":true}')
        assert real.writes == [] and t.get_write_buffer_size() == 32
        await asyncio.sleep(0)
        assert real.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"done":true}']
        t.write(b"next line\n")  # a later iteration: its own write
        await asyncio.sleep(0)
        assert real.writes[1:] == [b"next line\n"]
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's

    asyncio.run(main())


def test_close_flushes_first_and_nothing_is_written_after():
    async def main():
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"last words")
        t.close()
        assert real.writes == [b"last words"] and real.closed
        t.write(b"too late")
        await asyncio.sleep(0)
        assert real.writes == [b"last words"]

    asyncio.run(main())
