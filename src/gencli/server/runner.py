"""Run the ASGI app on gencli's HTTP/1.1 server (:mod:`gencli.server.http11`).

- :func:`serve_process` runs one server process on an already-bound listening socket:
  uvloop when available, ASGI lifespan startup/shutdown around it, SIGTERM/SIGINT for a
  graceful stop (in-flight requests get ``grace`` seconds), exit status 0 after a clean stop.
- :func:`supervise` runs ``--workers N``: N forked processes share the socket; SIGTERM or
  SIGINT stops them all (each gracefully), a worker that dies is replaced, and workers that
  keep dying at start end the server with status 1.
- :func:`raise_fd_limit` raises the soft open-file limit to the hard one.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from gencli.server.asgi import ASGIApp, Message, Scope, Served

if TYPE_CHECKING:
    from gencli.server.http11 import Limits

STARTUP_FAILED = 3  # a worker's exit status when the app did not start


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    if target > soft:
        for value in (target, 1 << 20, 1 << 16, 10240):  # macOS refuses more than OPEN_MAX
            if soft < value <= target:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
                    return value
                except (ValueError, OSError):
                    continue
    return soft


class Lifespan:
    """The ASGI lifespan protocol, server side."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[bool] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.error = ""
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self.queue.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if kind.endswith("failed"):
                self.error = str(message.get("message") or "startup failed")
            if not self.started.done():
                self.started.set_result(kind.endswith("complete"))
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not self.stopped.done():
            self.stopped.set_result(None)

    async def _main(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self.started.done():
                self.error = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exception(exc, file=sys.stderr)
                self.started.set_result(False)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not self.stopped.done():
                self.stopped.set_result(None)

    async def startup(self) -> bool:
        self.task = asyncio.get_running_loop().create_task(self._main())
        self.queue.put_nowait({"type": "lifespan.startup"})
        return await self.started

    async def shutdown(self, timeout: float = 10.0) -> None:
        self.queue.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self.stopped), timeout)
        except TimeoutError:
            pass
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def serve(sock: socket.socket, app: ASGIApp, limits: Limits, grace: float) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT; the exit status."""
    from gencli.server.http11 import ServerState

    loop = asyncio.get_running_loop()
    life = Lifespan(app)
    if not await life.startup():
        sys.stderr.write(f"gencli serve: the server could not start: {life.error}\n")
        return STARTUP_FAILED
    # What start-up made lives as long as the process: out of the collector's way (a full
    # collection then skips it; forked --workers keep sharing its pages).
    gc.collect()
    gc.freeze()
    if isinstance(app, Served):  # gencli's app: requests straight to its HTTP side, its log and error shapes
        state = ServerState(app.http, limits, loop, log=app.access_log, errors=app.errors)
    else:
        state = ServerState(app, limits, loop)
    server = await loop.create_server(state.protocol, sock=sock, backlog=2048)
    stop = loop.create_future()

    def _stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    try:
        await stop
    finally:
        server.close()  # no new connections from here on
        sock.close()
        await state.shutdown(grace)
        await life.shutdown()
        if isinstance(app, Served):
            app.flush()
    return 0


def serve_process(sock: socket.socket, make_app: Callable[[], ASGIApp], limits: Limits, grace: float) -> int:
    """Build the app and serve it in this process; the exit status."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        loop_factory = None
    app = make_app()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(sock, app, limits, grace))


def supervise(
    sock: socket.socket,
    workers: int,
    child: Callable[[], int],
    grace: float,
    reaped: Callable[[int], None] | None = None,
) -> int:
    """Fork ``workers`` processes running ``child()`` on the shared socket (see the module
    docstring); ``reaped(pid)`` is called for each worker that exited."""
    children: dict[int, float] = {}  # pid -> start time
    stopping = False
    quick_deaths = 0
    failed = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = child()
            except BaseException as exc:  # noqa: BLE001 - reported, then the worker exits
                if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    traceback.print_exception(exc, file=sys.stderr)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(*_: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        sock.close()  # the workers' copies close as they stop; then connections are refused
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    kill_at: float | None = None
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if stopping:
                if kill_at is None:
                    kill_at = time.monotonic() + grace + 5.0
                elif time.monotonic() > kill_at:
                    for other in list(children):
                        try:
                            os.kill(other, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            time.sleep(0.1)
            continue
        started = children.pop(pid, None)
        if reaped is not None and started is not None:
            reaped(pid)
        if started is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        what = f"signal {-code}" if code < 0 else f"status {code}"
        if code == STARTUP_FAILED:
            sys.stderr.write(f"gencli serve: worker {pid} could not start; stopping\n")
            failed = True
            stop()
            continue
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < 5.0 else 0
        if quick_deaths >= 5:
            sys.stderr.write(f"gencli serve: workers keep exiting at start (last: {what}); stopping\n")
            failed = True
            stop()
            continue
        sys.stderr.write(f"gencli serve: worker {pid} exited ({what}); starting another\n")
        sys.stderr.flush()
        spawn()
    return 1 if failed else 0
