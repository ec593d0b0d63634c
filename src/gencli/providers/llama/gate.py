"""One generation at a time per loaded model: a FIFO :class:`Gate` with a bounded queue.

A run takes a :class:`Ticket` (``enter``: granted at once, queued, or
:class:`gencli.core.errors.ServerBusy` past the bound), waits for its turn in its thread
(``wait``) or on the event loop (``await_turn``), and gives it back with ``leave``, which
hands the model to the next ticket in order.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from gencli.core.errors import ServerBusy

if TYPE_CHECKING:
    import asyncio


class Ticket:
    __slots__ = ("granted", "abandoned", "future", "loop")

    def __init__(self) -> None:
        self.granted = False
        self.abandoned = False
        self.future: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


class Gate:
    """FIFO admission for one model: one holder, at most ``limit`` waiting."""

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.cond = threading.Condition()
        self.busy = False
        self.queue: deque[Ticket] = deque()

    def enter(self) -> Ticket:
        """Take a place: granted at once if free, else queued; ServerBusy past the bound. Never blocks."""
        t = Ticket()
        with self.cond:
            if not self.busy:
                self.busy = True
                t.granted = True
            elif len(self.queue) >= self.limit:
                raise ServerBusy(
                    f"model '{self.name}' is busy: one generation is running and "
                    f"{len(self.queue)} are waiting (the limit); retry later"
                )
            else:
                self.queue.append(t)
        return t

    def wait(self, t: Ticket, cancelled: threading.Event) -> bool:
        """Block until ``t`` holds the model (True) or ``cancelled`` is set (False; the place is given up)."""
        with self.cond:
            while not t.granted:
                if cancelled.is_set():
                    self._leave(t)
                    return False
                self.cond.wait(0.05)
        return True

    async def await_turn(self, t: Ticket) -> None:
        """Wait on the event loop (no thread) until ``t`` holds the model; cancelling gives the place up."""
        import asyncio  # lazily: the CLI runs a local model without an event loop

        with self.cond:
            if t.granted:
                return
            t.loop = asyncio.get_running_loop()
            t.future = t.loop.create_future()
        try:
            await t.future
        except BaseException:
            self.leave(t)
            raise

    def leave(self, t: Ticket) -> None:
        with self.cond:
            self._leave(t)

    def _leave(self, t: Ticket) -> None:
        if t.abandoned:
            return
        t.abandoned = True
        if not t.granted:
            try:
                self.queue.remove(t)
            except ValueError:
                pass
            return
        # hand the model to the next waiter
        while self.queue:
            nxt = self.queue.popleft()
            nxt.granted = True
            self.cond.notify_all()
            if nxt.future is not None and nxt.loop is not None:
                nxt.loop.call_soon_threadsafe(_grant, nxt.future)
            return
        self.busy = False


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_GATES: dict[str, Gate] = {}
_LOCK = threading.Lock()


def gate_for(path: Path, name: str, limit: int) -> Gate:
    """The gate of a model file (one per file in the process; ``limit`` is the settings' bound)."""
    key = str(path)
    with _LOCK:
        g = _GATES.get(key)
        if g is None:
            g = _GATES[key] = Gate(name, limit)
        return g
