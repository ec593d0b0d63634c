"""Bytes a ``gencli serve`` worker holds at once for one purpose (request bodies, downloaded
images): counted as they are taken and given back when done; past the limit the request
gets 503 with Retry-After, because the server is busy, not the request wrong."""

from __future__ import annotations

from gencli.core.errors import ServerBusy

MB = 1024 * 1024


class MemoryBudget:
    """``charge(n)`` counts ``n`` more bytes held (``n`` = 0: only check the budget is not
    spent) or raises :class:`ServerBusy` naming ``what`` and the flag that sets the limit;
    ``release(n)`` gives them back."""

    __slots__ = ("flag", "held", "limit", "what")

    def __init__(self, limit: int, what: str, flag: str):
        self.limit = limit
        self.what = what
        self.flag = flag
        self.held = 0

    def charge(self, n: int) -> None:
        if self.held + n > self.limit or (n == 0 and self.held >= self.limit):
            exc = ServerBusy(
                f"the server is holding its limit of {self.limit // MB} MB of {self.what} "
                f"(gencli serve {self.flag}); retry shortly"
            )
            exc.retry_after = 1  # type: ignore[attr-defined]
            raise exc
        self.held += n

    def release(self, n: int) -> None:
        self.held = max(0, self.held - n)
