"""The one Redis connection of a server process (``--redis URL`` / ``GENCLI_REDIS_URL``),
shared by the per-key limits (:mod:`gencli.server.limits`) and the stored responses
(:mod:`gencli.server.store`), so that every replica counts one budget and continues any
chain.

The client is the maintained ``redis`` package's asyncio API (``redis.asyncio``), created in
the worker's own event loop on first use (a forked worker never inherits a connection).
Every command has a short timeout. When Redis does not answer, :class:`RedisLink` says so
once on stderr (the URL without its password), treats Redis as down for
``RETRY_AFTER`` seconds (so requests do not each wait for a timeout), and says so again
when it answers; callers decide what "down" means (``--redis-fail``: limits open or closed;
stored responses: 503).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gencli.core.errors import GencliError

T = TypeVar("T")

TIMEOUT = 1.0  # seconds for a connection or a command
RETRY_AFTER = 1.0  # seconds Redis counts as down after a failure
PREFIX = "gencli:"


class RedisDown(GencliError):
    """Redis did not answer (or answered with an error): 503 with Retry-After."""

    status = 503
    kind = "overloaded_error"

    def __init__(self, message: str, retry_after: float = RETRY_AFTER):
        super().__init__(message)
        self.retry_after = retry_after


def shown_url(url: str) -> str:
    """``url`` without its user name and password (for logs and errors)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "redis"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{host}{port}{parts.path if parts.path not in ('', '/') else ''}"


def check_url(url: str) -> str:
    """A usable Redis URL, or a one-line :class:`gencli.config.settings.SettingError`."""
    from gencli.config.settings import SettingError

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise SettingError(f"--redis: {shown_url(url)!r} is not a URL; use redis://HOST:PORT/DB") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingError(f"--redis: {shown_url(url)!r} must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingError(f"--redis: {shown_url(url)!r} names no host; use redis://HOST:PORT/DB")
    return url


class RedisLink:
    """One process's Redis client, with the down/up log lines and the short pause after a failure."""

    def __init__(self, url: str, consequence: str = "", log: Callable[[str], None] | None = None):
        """``consequence``: what the log line says happens while Redis is down."""
        self.url = url
        self.consequence = consequence
        self.shown = shown_url(url)
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0
        self._down = False
        self._log = log or _stderr

    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                retry_on_timeout=False,
                health_check_interval=0,
            )
        return self._client

    def script(self, lua: str) -> Any:
        """A registered Lua script (EVALSHA, loaded again by the client when Redis lost it)."""
        found = self._scripts.get(lua)
        if found is None:
            found = self._scripts[lua] = self.client().register_script(lua)
        return found

    async def run(self, what: str, action: Callable[[Any], Awaitable[T]]) -> T:
        """``await action(client)``; a failure of Redis is a :class:`RedisDown` naming ``what``
        needed it (the client is not told where Redis is), and a log line the first time; for
        ``RETRY_AFTER`` seconds no command is tried."""
        from redis.exceptions import RedisError

        now = time.monotonic()
        if now < self._down_until:
            raise RedisDown(f"the server's Redis is not answering, so {what} are unavailable; retry shortly")
        try:
            result = await action(self.client())
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER
            if not self._down:
                self._down = True
                reason = str(exc).replace(self.url, self.shown)[:200] or type(exc).__name__
                self._log(f"gencli serve: Redis at {self.shown} is not answering ({reason}); {self.consequence}")
            raise RedisDown(f"the server's Redis is not answering, so {what} are unavailable; retry shortly") from None
        if self._down:
            self._down = False
            self._log(f"gencli serve: Redis at {self.shown} answers again")
        return result

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # pragma: no cover - closing a broken connection
                pass


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
