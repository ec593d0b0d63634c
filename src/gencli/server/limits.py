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
(``TIME``): one round trip, atomic, the same answer for every replica. Redis down:
``--redis-fail open`` (the default) admits the request uncounted, ``closed`` answers 503 with
Retry-After; either way one line on stderr when it stops answering and one when it is back.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from gencli.errors import GencliError
from gencli.server.shared import PREFIX, RedisDown, RedisLink

if TYPE_CHECKING:
    from gencli.keys import KeyRecord

WINDOW = 60  # seconds


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

    async def spend(self, record: KeyRecord, tokens: int) -> None:
        """Count ``tokens`` of a finished request of ``record``."""

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
        now = self._clock()
        second = int(now)
        requests = tokens = None
        if record.rpm:
            requests = self._requests.get(record.name)
            if requests is None:
                requests = self._requests[record.name] = _Window()
            requests.trim(second)
            if requests.total + 1 > record.rpm:
                raise over(record, 1, requests.total, requests.wait(now, record.rpm))
        if record.tpm:
            tokens = self._tokens.get(record.name)
            if tokens is not None:
                tokens.trim(second)
                if tokens.total >= record.tpm:
                    raise over(record, 2, tokens.total, tokens.wait(now, record.tpm))
        if requests is not None:
            requests.add(second, 1)

    async def spend(self, record: KeyRecord, tokens: int) -> None:
        if not record.tpm or tokens <= 0:
            return
        window = self._tokens.get(record.name)
        if window is None:
            window = self._tokens[record.name] = _Window()
        second = int(self._clock())
        window.trim(second)
        window.add(second, tokens)

    async def close(self) -> None:
        return None


# KEYS: the requests hash, the tokens hash; ARGV: rpm (0: none), tpm (0: none), the window.
# Returns {0, 0, 0} when admitted (the request counted), else {1 (requests) or 2 (tokens),
# milliseconds to wait, used}.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local rpm, tpm, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
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
if rpm > 0 then
  local live, total = load(KEYS[1])
  if total + 1 > rpm then return {1, wait(live, total, rpm), total} end
end
if tpm > 0 then
  local live, total = load(KEYS[2])
  if total >= tpm then return {2, wait(live, total, tpm), total} end
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('EXPIRE', KEYS[1], window + 1)
end
return {0, 0, 0}
"""

# KEYS: the tokens hash; ARGV: tokens, the window.
SPEND = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""


class RedisLimiter:
    """The limits counted in Redis (shared by every process that uses the same Redis)."""

    def __init__(self, link: RedisLink, fail_open: bool = True):
        self.link = link
        self.fail_open = fail_open

    @staticmethod
    def _keys(record: KeyRecord) -> list[str]:
        base = f"{PREFIX}{{{record.name}}}"
        return [base + ":r", base + ":t"]

    async def admit(self, record: KeyRecord) -> None:
        if not record.rpm and not record.tpm:
            return
        script = self.link.script(ADMIT)
        keys = self._keys(record)
        args = [record.rpm or 0, record.tpm or 0, WINDOW]
        try:
            what, wait_ms, used = await self.link.run(
                "the per-key limit" + (" (admitting requests uncounted)" if self.fail_open else ""),
                lambda client: script(keys=keys, args=args, client=client),
            )
        except RedisDown as exc:
            if self.fail_open:
                return
            exc.message = f"{exc.message} (--redis-fail closed)"
            raise
        if what:
            raise over(record, int(what), int(used), int(wait_ms) / 1000)

    async def spend(self, record: KeyRecord, tokens: int) -> None:
        if not record.tpm or tokens <= 0:
            return
        script = self.link.script(SPEND)
        keys = self._keys(record)[1:]
        try:
            await self.link.run(
                "the per-key limit", lambda client: script(keys=keys, args=[tokens, WINDOW], client=client)
            )
        except RedisDown:
            return  # logged by the link; the answer went out already

    async def close(self) -> None:
        await self.link.close()
