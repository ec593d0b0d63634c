"""The lifecycle the fake upstreams share: an aiohttp app served on 127.0.0.1 from a
background thread with its own event loop, so tests (sync or async) can use it."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


class ThreadedServer:
    """Subclasses set ``thread_name`` and implement ``app()``."""

    thread_name = "fake-upstream"

    def __init__(self, port: int = 0):
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    @property
    def open_connections(self) -> int:
        server = self._runner.server if self._runner else None
        return len(server.connections) if server is not None else 0

    def start(self):
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # report start-up failures to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None


def run_from_command_line(cls, description: str) -> None:
    """``python tests/fakes/<fake>.py --port N [--key K]``: serve until interrupted (benchmarks)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default=None, help="expected API key (default: accept any)")
    args = parser.parse_args()
    fake = cls(api_key=args.key, port=args.port).start()
    print(f"{cls.thread_name} upstream on {fake.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


def session_fixture(cls, name: str, doc: str):
    """The pytest fixture ``name`` (session-scoped): one ``cls`` fake started for the whole
    session and stopped after it. Raises ImportError without pytest (a fake run as a script)."""
    import pytest

    def fixture():
        fake = cls().start()
        yield fake
        fake.stop()

    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=name)(fixture)
