"""Per-key limits of ``gencli serve``: requests and tokens per minute (``gencli keys add NAME
--rpm N --tpm N``), counted in this process or, with ``--redis URL``, in Redis so that every
replica and worker shares one budget.

The window is a sliding minute in one-second buckets, the same in both places: a key's
requests (and tokens) of the last 60 seconds are the sum of its buckets younger than 60
seconds. A request is admitted when one more request stays within ``rpm`` and the tokens of
the last minute are still below ``tpm``; its request is counted at once, and its tokens
(prompt + completion, known when the reply is done) when it ends, so a long answer may take
a key past ``tpm`` once, and the next requests wait. Refused: 429 with ``Retry-After``, the
seconds until the oldest buckets that must leave the window have left it.

In Redis a key's buckets are two hashes (``gencli:{NAME}:r`` and ``:t``; the braces keep
them in one cluster slot), read, trimmed and counted by one Lua script on Redis's own clock
(``TIME``): one round trip per request, atomic, the same answer for every replica. A
finished request's tokens ride along with the key's next request in that process, or go on
their own within ``FLUSH`` seconds when none comes, so another replica sees them at most
that late. Redis down:
``--redis-fail open`` (the default) admits the request uncounted, ``closed`` answers 503 with
Retry-After; either way one line on stderr when it stops answering and one when it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from gencli.core.errors import GencliError
from gencli.server.shared import PREFIX, TIMEOUT, RedisDown, RedisLink

if TYPE_CHECKING:
    from gencli.config.keys import KeyRecord

WINDOW = 60  # seconds
FLUSH = 0.5  # seconds a finished request's tokens may wait for the key's next request (Redis)


class OverLimit(GencliError):
    """A key went past its requests or tokens per minute: 429 with Retry-After."""

    status = 429
    kind = "rate_limit_error"
    exit_code = 1

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def over(record: KeyRecord, what: int, used: int, wait: float) -> OverLimit:
    seconds = max(1, int(wait + 0.999))
    if what == 1:
        text = f"key {record.name!r} is over its limit of {record.rpm} requests per minute"
    else:
        text = f"key {record.name!r} is over its limit of {record.tpm} tokens per minute ({used} used)"
    return OverLimit(f"{text}; retry in {seconds} s", seconds)


class Limiter(Protocol):
    async def admit(self, record: KeyRecord) -> None:
        """Count one request of ``record``; :class:`OverLimit` when it is over a limit."""

    def spend(self, record: KeyRecord, tokens: int) -> None:
        """Count ``tokens`` of a finished request of ``record`` (at once, or noted to be sent)."""

    async def close(self) -> None: ...


class _Window:
    """One key's counts of the last minute, in one-second buckets ([second, count], oldest first)."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def trim(self, second: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] <= second - WINDOW:
            self.total -= buckets.popleft()[1]

    def add(self, second: int, n: int) -> None:
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += n
        else:
            buckets.append([second, n])
        self.total += n

    def wait(self, now: float, limit: int) -> float:
        """Seconds until one more fits under ``limit``."""
        total = self.total
        for second, n in self.buckets:
            total -= n
            if total + 1 <= limit:
                return second + WINDOW - now
        return float(WINDOW)


class LocalLimiter:
    """The limits counted in this process (each ``--workers`` process counts its own)."""

    def __init__(self, clock: Any = time.time):
        self._clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}

    async def admit(self, record: KeyRecord) -> None:
        self.check(record)

    def check(self, record: KeyRecord) -> None:
        """:meth:`admit` without a coroutine (``State.admit`` calls it directly)."""
        now = self._clock()
        second = int(now)
        requests = None
        rpm, tpm = record.rpm, record.tpm
        if rpm:
            requests = self._requests.get(record.name)
            if requests is None:
                requests = self._requests[record.name] = _Window()
            buckets = requests.buckets
            if buckets and buckets[0][0] <= second - WINDOW:
                requests.trim(second)
            if requests.total + 1 > rpm:
                raise over(record, 1, requests.total, requests.wait(now, rpm))
        if tpm:
            tokens = self._tokens.get(record.name)
            if tokens is not None:
                buckets = tokens.buckets
                if buckets and buckets[0][0] <= second - WINDOW:
                    tokens.trim(second)
                if tokens.total >= tpm:
                    raise over(record, 2, tokens.total, tokens.wait(now, tpm))
        if requests is not None:
            buckets = requests.buckets
            if buckets and buckets[-1][0] == second:
                buckets[-1][1] += 1
            else:
                buckets.append([second, 1])
            requests.total += 1

    def spend(self, record: KeyRecord, tokens: int) -> None:
        if not record.tpm or tokens <= 0:
            return
        window = self._tokens.get(record.name)
        if window is None:
            window = self._tokens[record.name] = _Window()
        second = int(self._clock())
        buckets = window.buckets
        if buckets and buckets[0][0] <= second - WINDOW:
            window.trim(second)
        window.add(second, tokens)

    async def close(self) -> None:
        return None


# One call for a batch of requests (those admitted in the same turn of the event loop), in
# order. KEYS: per request, its key's requests hash and tokens hash; ARGV: the window, then per
# request its rpm (0: none), tpm (0: none) and the tokens of finished requests still to count.
# Returns per request {0, 0, 0} when admitted (the request counted), else {1 (requests) or 2
# (tokens), milliseconds to wait, used}.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local function load(key)
  local flat = redis.call('HGETALL', key)
  local live, stale, total = {}, {}, 0
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s <= sec - window then
      stale[#stale + 1] = flat[i]
    else
      local n = tonumber(flat[i + 1])
      live[#live + 1] = {s, n}
      total = total + n
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return live, total
end
local function wait(live, total, limit)
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(live) do
    total = total - b[2]
    if total + 1 <= limit then return math.ceil((b[1] + window - now) * 1000) end
  end
  return window * 1000
end
local function admit(rk, tk, rpm, tpm, spent)
  if spent > 0 then
    redis.call('HINCRBY', tk, sec, spent)
    redis.call('EXPIRE', tk, window + 1)
  end
  if rpm > 0 then
    local live, total = load(rk)
    if total + 1 > rpm then return 1, wait(live, total, rpm), total end
  end
  if tpm > 0 then
    local live, total = load(tk)
    if total >= tpm then return 2, wait(live, total, tpm), total end
  end
  if rpm > 0 then
    redis.call('HINCRBY', rk, sec, 1)
    redis.call('EXPIRE', rk, window + 1)
  end
  return 0, 0, 0
end
local out = {}
for i = 1, #KEYS / 2 do
  local what, ms, used = admit(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]),
    tonumber(ARGV[3 * i + 1]))
  out[#out + 1] = what
  out[#out + 1] = ms
  out[#out + 1] = used
end
return out
"""
BATCH = 256  # requests per call at most


def _calling(script: Any, keys: list[bytes], args: list[Any]) -> Callable[[Any], Awaitable[Any]]:
    """What :meth:`RedisLink.run` calls with the client: the script with these keys and arguments."""

    def action(client: Any) -> Awaitable[Any]:
        return script(keys=keys, args=args, client=client)  # type: ignore[no-any-return]

    return action


class RedisLimiter:
    """The limits counted in Redis (shared by every process that uses the same Redis). One
    script call is in flight at a time: the requests that arrive meanwhile (or in the same turn
    of the event loop) go together in the next one, so under load a call carries many."""

    def __init__(self, link: RedisLink, fail_open: bool = True):
        self.link = link
        self.fail_open = fail_open
        self._spent: dict[str, tuple[KeyRecord, int]] = {}  # tokens not yet counted in Redis, by key name
        self._timer: asyncio.TimerHandle | None = None
        self._queue: list[tuple[KeyRecord, int, asyncio.Future[list[int]] | None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = False  # a call is in flight, or scheduled
        self._made: dict[KeyRecord, tuple[bytes, bytes, bytes, bytes]] = {}
        self.what = "per-key limits"

    def _words(self, record: KeyRecord) -> tuple[bytes, bytes, bytes, bytes]:
        """A key's two hash names, rpm and tpm as the bytes sent (made once per key and limits:
        the client then encodes nothing of them per request)."""
        found = self._made.get(record)
        if found is None:
            if len(self._made) >= 4096:  # the keys file changed often: start again
                self._made.clear()
            base = f"{PREFIX}{{limits}}:{record.name}"  # one hash tag: a batch stays in one cluster slot
            found = self._made[record] = (
                (base + ":r").encode(),
                (base + ":t").encode(),
                str(record.rpm or 0).encode(),
                str(record.tpm or 0).encode(),
            )
        return found

    def _submit(self, record: KeyRecord, spent: int, future: asyncio.Future[list[int]] | None) -> None:
        self._queue.append((record, spent, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
        if not batch:
            self._busy = False
            return
        task = asyncio.ensure_future(self._call(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._send()  # what came meanwhile, or idle

    async def _call(self, batch: list[tuple[KeyRecord, int, asyncio.Future[list[int]] | None]]) -> None:
        keys: list[bytes] = []
        args: list[Any] = [WINDOW]
        for record, spent, future in batch:
            rk, tk, rpm, tpm = self._words(record)
            keys += (rk, tk)
            args += (rpm, tpm, spent) if future is not None else (b"0", b"0", spent)
        try:
            flat = await self.link.run(self.what, _calling(self.link.script(ADMIT), keys, args))
        except BaseException as exc:
            for record, spent, future in batch:
                if spent:
                    self._owe(record, spent)  # counted when Redis answers again
                if future is not None and not future.done():
                    future.set_exception(RedisDown(exc.message) if isinstance(exc, RedisDown) else exc)
            if not isinstance(exc, Exception):
                raise
            return
        for i, (_, _, future) in enumerate(batch):
            if future is not None and not future.done():
                future.set_result(flat[3 * i : 3 * i + 3])  # integer replies: ints already

    async def admit(self, record: KeyRecord) -> None:
        if not record.rpm and not record.tpm:
            return
        owed = self._spent.pop(record.name, None)
        spent = owed[1] if owed is not None else 0
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._submit(record, spent, future)
        try:
            what, wait_ms, used = await future
        except RedisDown as exc:
            if self.fail_open:
                return
            exc.message = f"{exc.message} (--redis-fail closed)"
            raise
        if what:
            raise over(record, what, used, wait_ms / 1000)

    def _owe(self, record: KeyRecord, tokens: int) -> None:
        self._spent[record.name] = (record, self._spent.get(record.name, (record, 0))[1] + tokens)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH, self.flush)

    def spend(self, record: KeyRecord, tokens: int) -> None:
        """Tokens are counted with the key's next request, or by :meth:`flush` within ``FLUSH`` s."""
        if record.tpm and tokens > 0:
            self._owe(record, tokens)

    def flush(self) -> None:
        """Send the tokens still owed (with the next batch); owed again when Redis is down."""
        self._timer = None
        spent, self._spent = self._spent, {}
        for record, tokens in spent.values():
            self._submit(record, tokens, None)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._spent:
            self.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * TIMEOUT
        while (self._busy or self._tasks) and loop.time() < deadline:  # the owed tokens go
            await asyncio.sleep(0.01)
        if self._timer is not None:  # Redis is down: what is still owed is dropped
            self._timer.cancel()
            self._timer = None
        await self.link.close()
