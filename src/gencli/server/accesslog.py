"""One access-log line per request on stderr, for ``gencli serve``.

    2026-11-26T20:50:01Z POST /api/generate model=gpt-4o-mini status=200 12.3ms tokens=50

Method, path (never the query string), model, status, duration and tokens — never
prompts, bodies, headers or keys. The app reports the model and the token count
by filling ``scope["gencli"]`` (``{"model": ..., "tokens": ...}``) when it knows
them. ``tokens`` is ``prompt/completion`` when the app reports both. A request answered
by a deployment or a fallback adds ``served=NAME[/DEPLOYMENT]``; every line ends with the
request's ``id=`` (its X-Request-Id).

``--log-format json`` (``GENCLI_LOG_FORMAT=json``) writes one JSON object a line instead::

    {"time":"2026-11-26T20:50:01Z","request_id":"5f0c...","method":"POST","route":"/api/generate",
     "path":"/api/generate","model":"gpt-4o-mini","served":null,"key":"operator","status":200,
     "latency_ms":12.3,"tokens_in":12,"tokens_out":38}

``key`` is the name of the key the request came with (``operator`` for the server's API
key, ``-`` without one), never the key.

The event loop never writes: it hands each request's facts to a :class:`LogWriter`
(a list append), whose thread formats the lines of each few milliseconds and writes
them in one system call. When stderr is not read (a full pipe), the thread waits and
the server keeps serving; past ``MAX_PENDING`` lines waiting, lines are dropped and
counted, and the count is written once stderr takes lines again.

gencli's HTTP server records requests itself (:meth:`LogWriter.request`, from the
connection when a request ends); :class:`AccessLog` is the same log as ASGI middleware,
for the app run by another ASGI server (``create_app``).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from gencli.server.asgi import ASGIApp, Message, Receive, Scope, Send

_MAX_FIELD = 200
FLUSH_DELAY = 0.02  # seconds a line may wait for others to share its write
MAX_PENDING = 5_000  # lines waiting for stderr before new ones are dropped


def _clean(text: str) -> str:
    """A path or model name made safe for one log line (no control characters, bounded)."""
    if len(text) > _MAX_FIELD:
        text = text[:_MAX_FIELD] + "..."
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "%20")


def _tokens(value: Any) -> str:
    if isinstance(value, dict):
        return "/".join(str(value[k]) for k in ("prompt", "completion") if value.get(k) is not None) or "-"
    if isinstance(value, (tuple, list)):
        return "/".join(str(v) for v in value)
    return str(value)


class LogWriter:
    """Formats and writes access-log lines in its own thread (see the module docstring)."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        delay: float = FLUSH_DELAY,
        max_pending: int = MAX_PENDING,
        json_lines: bool = False,
        route_of: Callable[[str, str], tuple[str, str]] | None = None,
    ):
        self.stream = stream
        self.json_lines = json_lines
        self.route_of = route_of
        self.delay = delay
        self.max_pending = max_pending
        self._pending: list[tuple[float, str, str, dict[str, Any] | None, int, float]] = []
        self.dropped = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._second = -1
        self._stamp = ""
        atexit.register(self.flush)

    def request(self, scope: Scope, status: int, seconds: float) -> None:
        """Record one request (called on the event loop: an append, nothing more)."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.dropped += 1
            return
        pending.append((time.time(), scope["method"], scope["path"], scope.get("gencli"), status, seconds))
        if len(pending) == 1:
            if self._thread is None:
                self._start()
            self._wake.set()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gencli-access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.delay)
            self.flush()

    def flush(self, wait: float = 2.0) -> None:
        """Format and write what is pending (from the writer thread; at shutdown and exit from
        the main thread, which waits at most ``wait`` seconds for a write stuck on stderr)."""
        if not self._write_lock.acquire(timeout=wait):
            return  # the writer thread is stuck on a stderr nobody reads: do not hang with it
        try:
            pending = self._pending
            self._pending = []
            dropped, self.dropped = self.dropped, 0
            if not pending and not dropped:
                return
            text = "".join(self._line(*p) for p in pending)
            if dropped:
                text += (
                    f"gencli serve: {dropped} access-log line{'s' if dropped > 1 else ''} dropped "
                    "(stderr was not being read)\n"
                )
            self._write(text)
        except (OSError, ValueError):
            pass
        finally:
            self._write_lock.release()

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()
            return
        # straight to the descriptor: a write blocked on a full pipe holds none of sys.stderr's locks
        sys.stderr.flush()
        view = memoryview(text.encode("utf-8", "replace"))
        fd = sys.stderr.fileno()
        while view:
            view = view[os.write(fd, view) :]

    def _line(
        self, when: float, method: str, path: str, info: dict[str, Any] | None, status: int, seconds: float
    ) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        model = tokens = served = rid = None
        if info:
            model = info.get("model")
            tokens = info.get("tokens")
            served = info.get("served")
            rid = info.get("request_id")
        if self.json_lines:
            return self._json(method, path, info, status, seconds, model, tokens, served, rid)
        return (
            f"{self._stamp} {method} {_clean(path)} model={_clean(str(model)) if model else '-'}"
            f" status={status} {seconds * 1000.0:.1f}ms tokens={_tokens(tokens) if tokens is not None else '-'}"
            f"{' served=' + _clean(str(served)) if served else ''}{' id=' + rid.decode('latin-1') if rid else ''}\n"
        )

    def _json(
        self,
        method: str,
        path: str,
        info: dict[str, Any] | None,
        status: int,
        seconds: float,
        model: Any,
        tokens: Any,
        served: Any,
        rid: bytes | None,
    ) -> str:
        import orjson

        route = self.route_of(method, path)[0] if self.route_of is not None else None
        tin = tout = None
        if isinstance(tokens, dict):
            tin, tout = tokens.get("prompt"), tokens.get("completion")
        line = {
            "time": self._stamp,
            "request_id": rid.decode("latin-1") if rid else None,
            "method": method[:_MAX_FIELD],
            "route": route,
            "path": path if len(path) <= _MAX_FIELD else path[:_MAX_FIELD] + "...",
            "model": str(model)[:_MAX_FIELD] if model else None,
            "served": str(served)[:_MAX_FIELD] if served else None,
            "key": (info.get("key") if info else None) or "-",
            "status": status,
            "latency_ms": round(seconds * 1000.0, 3),
            "tokens_in": tin,
            "tokens_out": tout,
        }
        if info and info.get("fell_back"):
            line["fell_back"] = info["fell_back"]
        if info and info.get("rejected"):
            line["rejected"] = info["rejected"]
        return orjson.dumps(line).decode("utf-8", "replace") + "\n"


class AccessLog:
    """ASGI middleware: ``AccessLog(app, stream=sys.stderr)``; ``writer`` holds its lines."""

    def __init__(self, app: ASGIApp, stream: IO[str] | None = None, writer: LogWriter | None = None):
        self.app = app
        self.writer = writer or LogWriter(stream)

    def flush(self) -> None:
        self.writer.flush()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if not status and message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        failed = None
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:  # logged, then re-raised unchanged
            failed = exc
            raise
        finally:
            if not status:
                status = 499 if failed is not None and not isinstance(failed, Exception) else 500
            self.writer.request(scope, status, time.perf_counter() - start)
