"""When to retry a request to an upstream, and how long to wait first.

Pure policy, shared by :func:`gencli.engine.execute` (sleeps with ``time.sleep``) and
:func:`gencli.engine.aexecute` (``asyncio.sleep``): the loops ask a :class:`Retrier`
after each failed attempt and either wait the seconds it answers or raise the error it
builds. Only failures *before any output* reach it (the engines never retry once an
event was yielded).

Retried: no connection or a connection reset (``UpstreamUnreachable``), and HTTP 408,
429 and 5xx answers. Not retried: timeouts (the timeout is the budget the user set),
bad keys, bad requests, malformed answers. Waits are exponential backoff with full
jitter (``uniform(0, min(MAX_BACKOFF, BASE * 2**attempt))``), or exactly what the
upstream asked for (``Retry-After``, ``retry-after-ms``, Gemini's
``RetryInfo.retryDelay``, all already in the error's ``retry_after``). An upstream
that asks for more than ``MAX_WAIT`` seconds fails at once with its own message.

Pure: no I/O, no environment, no sleeping. The clock and the random source are
parameters (``time.monotonic`` and ``random.random`` unless given others) and the loops
do the waiting with the ``sleep`` they are given (:func:`gencli.engine.execute`), so
tests can run every path without waiting. How many retries a call gets is ``call.retries``, resolved
by :func:`gencli.engine.prepare`: the CLI's ``--retries``, else the model's ``retries``
in models.json, else ``GENCLI_RETRIES`` / ``gencli serve --retries``
(:class:`gencli.config.settings.Settings`), else :data:`DEFAULT_RETRIES`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from gencli.core.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gencli.core.number import DEFAULT_RETRIES as DEFAULT_RETRIES  # the retries setting's bounds (gencli.core.number)
from gencli.core.number import MAX_RETRIES as MAX_RETRIES

BASE = 0.5  # seconds: the first backoff is up to 0.5 s, then 1 s, 2 s ...
MAX_BACKOFF = 8.0
MAX_WAIT = 5.0  # a Retry-After longer than this is not waited for
BUDGET = 60.0  # no retry starts more than this long after the first attempt
RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})

_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times"}


def retryable(exc: BaseException) -> bool:
    if not isinstance(exc, UpstreamError) or isinstance(exc, (UpstreamAuthError, UpstreamTimeout)):
        return False
    if isinstance(exc, UpstreamUnreachable):
        return True
    return exc.upstream_status in RETRY_STATUSES


def falls_back(exc: BaseException) -> bool:
    """A failure before any output after which the next deployment or fallback is tried
    (models.json's ``deployments`` and ``fallbacks``): no connection, a timeout, HTTP 408,
    429 and 5xx (each after its own retries). A bad key or a bad request is not: the next
    model would be asked the same thing."""
    if isinstance(exc, (UpstreamTimeout, UpstreamUnreachable)):
        return True
    return isinstance(exc, UpstreamError) and exc.upstream_status in RETRY_STATUSES


class RetryPolicy:
    """Decides "wait this long, then retry" or "give up" (None) from an error, the number
    of attempts made so far and the time since the first one. No I/O, no clock."""

    def __init__(
        self,
        retries: int = DEFAULT_RETRIES,
        base: float = BASE,
        max_backoff: float = MAX_BACKOFF,
        max_wait: float = MAX_WAIT,
        budget: float = BUDGET,
        rand: Callable[[], float] = random.random,
    ):
        self.retries = retries
        self.base = base
        self.max_backoff = max_backoff
        self.max_wait = max_wait
        self.budget = budget
        self.rand = rand

    def decide(self, exc: BaseException, attempts: int, elapsed: float) -> float | None:
        if attempts > self.retries or not isinstance(exc, UpstreamError) or not retryable(exc):
            return None
        asked = exc.retry_after
        if asked is not None:
            if asked > self.max_wait:
                return None  # the upstream wants longer than we wait: say so now
            wait = float(asked)
        else:
            wait = self.rand() * min(self.max_backoff, self.base * 2 ** (attempts - 1))
        if elapsed + wait > self.budget:
            return None
        return wait


class Retrier:
    """One request's attempts: ``wait = r.failed(exc)`` after each failure; the loop
    sleeps ``wait`` seconds and tries again, or raises ``r.error(exc)`` when it is None
    (:meth:`next_wait` does both for the engine's loops)."""

    __slots__ = ("policy", "name", "attempts", "statuses", "started", "clock")

    def __init__(self, policy: RetryPolicy, name: str, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.name = name
        self.attempts = 0
        self.statuses: list[int] = []
        self.clock = clock
        self.started = clock()

    @classmethod
    def for_call(cls, name: str, retries: int, clock: Callable[[], float] = time.monotonic) -> Retrier:
        """The retrier for one call: ``retries`` as resolved by the engine (at most MAX_RETRIES)."""
        return cls(RetryPolicy(min(max(retries, 0), MAX_RETRIES)), name, clock)

    def failed(self, exc: BaseException) -> float | None:
        self.attempts += 1
        self.statuses.append((exc.upstream_status if isinstance(exc, UpstreamError) else 0) or 0)
        return self.policy.decide(exc, self.attempts, self.clock() - self.started)

    def next_wait(self, exc: UpstreamError, output: bool) -> float:
        """After an attempt failed with ``exc``: the seconds to wait before the next one. Raises
        ``exc`` itself when output went out already (never retried), :meth:`error` when the
        policy retries no more."""
        if output:
            raise exc
        wait = self.failed(exc)
        if wait is None:
            raise self.error(exc) from None
        return wait

    def error(self, exc: BaseException) -> BaseException:
        """The error to raise: ``exc`` itself after one attempt, else the same kind of error
        saying what was tried, with the upstream's own message kept."""
        if self.attempts <= 1 or not isinstance(exc, UpstreamError):
            return exc
        elapsed = self.clock() - self.started
        statuses = set(self.statuses)
        if len(statuses) == 1 and 0 not in statuses:
            what = f"upstream returned {self.statuses[0]}"
        elif statuses == {0}:
            what = "the connection failed"
        else:
            what = "upstream failed"
        times = _TIMES.get(self.attempts, f"{self.attempts} times")
        detail = exc.message
        prefix = f"{self.name}: "
        if detail.startswith(prefix):
            detail = detail[len(prefix) :]
        message = f"{self.name}: {what} {times} over {elapsed:.1f} s (last: {detail})"
        out = type(exc)(message, upstream_status=exc.upstream_status, retry_after=exc.retry_after, status=exc.status)
        return out
