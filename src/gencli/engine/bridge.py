"""Drive a blocking in-process run (a local model) from the event loop.

:func:`in_thread` awaits the run's turn on the loop (``await run.ready()``: a queued
request holds no thread), then iterates it in a worker thread and hands each list of
events to the loop. Stopping early (the consumer stops, or the task is cancelled because
the client went away) closes the run, which stops it before its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from gencli.core.events import Event
from gencli.providers.base import LocalRun

_EVENTS, _ERROR, _END = 0, 1, 2


async def in_thread(run: LocalRun) -> AsyncIterator[list[Event]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, list[Event] | BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: tuple[int, list[Event] | BaseException | None]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone
            stop.set()

    try:
        await run.ready()
    except BaseException:
        run.close()
        raise

    def work() -> None:
        try:
            for events in run:
                if stop.is_set():
                    break
                put((_EVENTS, events))
        except BaseException as exc:  # handed to the event loop
            put((_ERROR, exc))
        else:
            put((_END, None))
        finally:
            run.close()

    future = loop.run_in_executor(None, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _EVENTS:
                assert isinstance(value, list)
                yield value
            elif kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            else:
                break
    finally:
        stop.set()
        run.cancel()  # thread-safe, never waits: stops before the next token
        if future.done():
            future.exception()
