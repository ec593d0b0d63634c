"""One access-log line per request on stderr, for ``gencli serve``.

    2026-11-26T20:50:01Z POST /api/generate model=gpt-4o-mini status=200 12.3ms tokens=50

Method, path (never the query string), model, status, duration and tokens — never
prompts, bodies, headers or keys. The app reports the model and the token count
by filling ``scope["gencli"]`` (``{"model": ..., "tokens": ...}``) when it knows
them. ``tokens`` is ``prompt/completion`` when the app reports both.

Cheap: one formatted line per request, and the lines written within a few
milliseconds of each other go out in one write (flushed at exit too), so a busy
server does not pay a system call per request.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import time
from typing import IO, Any

from gencli.server.guard import ASGIApp, Message, Receive, Scope, Send

_MAX_FIELD = 200
FLUSH_DELAY = 0.02  # seconds a line may wait for others to share its write
FLUSH_LINES = 256


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


class AccessLog:
    """ASGI middleware: ``AccessLog(app, stream=sys.stderr)``."""

    def __init__(self, app: ASGIApp, stream: IO[str] | None = None):
        self.app = app
        self.stream = stream
        self._second = -1
        self._stamp = ""
        self._lines: list[str] = []
        atexit.register(self.flush)

    def flush(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            stream = self.stream or sys.stderr
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass

    def _emit(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()
        elif len(lines) >= FLUSH_LINES:
            self.flush()

    def _now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

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
            ms = (time.perf_counter() - start) * 1000.0
            info = scope.get("gencli")
            model = tokens = None
            if info:
                model = info.get("model")
                tokens = info.get("tokens")
            if not status:
                status = 499 if failed is not None and not isinstance(failed, Exception) else 500
            line = (f"{self._now()} {scope['method']} {_clean(scope['path'])}"
                    f" model={_clean(str(model)) if model else '-'} status={status} {ms:.1f}ms"
                    f" tokens={_tokens(tokens) if tokens is not None else '-'}\n")
            self._emit(line)
