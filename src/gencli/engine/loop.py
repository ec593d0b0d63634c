"""Running a plan: the order of attempts and one attempt's step are decided here once, without
I/O (:class:`Tries`, :class:`Attempt`); the CLI's loop (:func:`execute`, blocking, over httpx)
and the server's (:func:`abatches`, on the event loop) only move bytes between a transport and
them, so the two cannot drift apart.

A plan's candidates are tried in turn (deployments, then fallbacks), each retried as
:mod:`gencli.core.retry` decides while nothing went out; a failure after output began is the
caller's error, with the answer so far kept.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping

from gencli.config.registry import ModelEntry, Registry
from gencli.core.errors import GencliError, UpstreamError, warn
from gencli.core.events import Event
from gencli.core.request import GenerateRequest
from gencli.core.retry import Retrier, falls_back
from gencli.engine.attach import afetch_images, fetch_images
from gencli.engine.fold import Run
from gencli.engine.plan import Candidate, Plan, prepare
from gencli.providers import get_adapter
from gencli.providers.base import (
    AsyncImageFetcher,
    AsyncTransport,
    HttpAdapter,
    HttpRequest,
    ImageFetcher,
    InProcessAdapter,
    StreamParser,
    SyncTransport,
)


class Attempt:
    """One try of one candidate: what to send, and what each piece of the reply becomes.
    ``local`` is set for a model run in-process, else ``upstream`` and ``http``."""

    __slots__ = ("cand", "run", "local", "upstream", "http", "_parser")

    def __init__(self, plan: Plan, cand: Candidate, http: HttpRequest | None) -> None:
        self.cand = cand
        self.run = Run(plan, cand)
        adapter = cand.adapter
        self.local: InProcessAdapter | None = None
        self.http = http
        self._parser: StreamParser | None = None
        if adapter.in_process:
            self.local = adapter
        else:
            self.upstream: HttpAdapter = adapter  # set only when ``local`` is None
            if http is not None and http.stream:
                self._parser = adapter.stream_parser(cand.call)
        self.run.request_sent()

    def refused(self, status: int, headers: Mapping[str, str], body: bytes) -> GencliError:
        """The error of an HTTP error status (the adapter reads the provider's error body)."""
        return self.upstream.parse_error(self.cand.call, status, headers, body)

    def whole(self, body: bytes) -> list[Event]:
        """The events of a reply that is not streamed."""
        return self.run.feed(self.upstream.parse_response(self.cand.call, body))

    def chunk(self, data: bytes) -> list[Event]:
        """The events of one read of a streamed reply (often none yet)."""
        assert self._parser is not None
        return self.run.feed(self._parser.feed(data))

    def end(self) -> list[Event]:
        """The events left when a streamed reply ends."""
        assert self._parser is not None
        return self.run.feed(self._parser.close())

    def broken(self, exc: GencliError) -> list[Event]:
        """The events parsed in the read that failed with ``exc`` (the answer so far is kept)."""
        return self.run.feed(exc.partial) if exc.partial else []

    def done(self) -> list[Event]:
        return self.run.done()


class Tries:
    """The order of one plan's attempts: :meth:`start` gives the next one, :meth:`failed`
    says what follows a failure (a wait and a retry, the next candidate, or the error to
    raise), :meth:`close` ends the candidate running (its router counts it no more)."""

    __slots__ = ("plan", "cands", "n", "failures", "retrier", "http", "_counted")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cands = plan.tries()
        self.n = 0
        self.failures: list[UpstreamError] = []
        self.retrier: Retrier | None = None  # the running candidate's (an upstream), None between candidates
        self.http: HttpRequest | None = None
        self._counted: Candidate | None = None  # the candidate its router counts as running

    def start(self) -> Attempt:
        cand = self.cands[self.n]
        self.plan.served = cand
        adapter = cand.adapter
        if self.retrier is None and not adapter.in_process:  # the candidate's first attempt
            self.http = adapter.build(cand.call)
            self.retrier = Retrier.for_call(cand.call.name, cand.call.retries)
            if cand.router is not None:
                cand.router.begin(cand.entry)
                self._counted = cand
        return Attempt(self.plan, cand, None if adapter.in_process else self.http)

    def failed(self, exc: UpstreamError, output: bool) -> float | None:
        """After ``exc`` (``output``: some of the answer went out): the seconds to wait before
        retrying the same candidate, or None to try the next one now. Raises the error for
        the caller when nothing is left to try."""
        if self.retrier is not None:
            try:
                return self.retrier.next_wait(exc, output)
            except UpstreamError as final:  # its retries are spent, or this one is not retried
                exc = final
        cand = self.cands[self.n]
        self.close()
        last = self.n + 1 == len(self.cands)
        if output or last or not falls_back(exc):
            raise self._all_failed(exc) from None
        self.failures.append(exc)
        nxt = self.cands[self.n + 1]
        self.plan.fell_back.append(cand.entry.label)
        if not self.plan.quiet:
            warn(f"{exc.message}; trying {nxt.entry.label} instead")
        self.n += 1
        return None

    def close(self) -> None:
        """The running candidate is done with (also when the caller stops reading early)."""
        counted, self._counted = self._counted, None
        if counted is not None and counted.router is not None:
            counted.router.end(counted.entry)
        self.retrier = None
        self.http = None

    def _all_failed(self, exc: UpstreamError) -> UpstreamError:
        """``exc`` itself, or after fallbacks the same kind of error naming each failure in turn."""
        if not self.failures:
            return exc
        what = "; then ".join(e.message for e in [*self.failures, exc])
        message = f"{self.plan.entry.name}: every deployment and fallback failed: {what}"
        try:
            return type(exc)(
                message, upstream_status=exc.upstream_status, retry_after=exc.retry_after, status=exc.status
            )
        except TypeError:  # an error kind of its own making: the plain kind
            return UpstreamError(message, upstream_status=exc.upstream_status, status=exc.status)


def _no_transport(plan: Plan) -> GencliError:
    return GencliError(f"{plan.entry.name}: no transport to reach {plan.call.base_url or 'the upstream'}")


# -- the CLI's loop: blocking ------------------------------------------------------------------


def execute(
    plan: Plan,
    transport: SyncTransport | None,
    images: ImageFetcher | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[Event, None, None]:
    """Run a prepared plan over a synchronous transport (the CLI's httpx; None for a local
    model). Image URLs are downloaded with ``images``; retry waits are slept with ``sleep``."""
    if plan.image_urls:
        fetch_images(plan, images)
    tries = Tries(plan)
    try:
        while True:
            step = tries.start()
            output = False
            batches = _local(step) if step.local is not None else _http(step, transport, plan)
            try:
                for batch in batches:
                    output = True
                    yield from batch
                return
            except UpstreamError as exc:
                wait = tries.failed(exc, output)
            finally:
                batches.close()
            if wait is not None:
                sleep(wait)
    finally:
        tries.close()


def _local(step: Attempt) -> Generator[list[Event], None, None]:
    assert step.local is not None
    local = step.local.run(step.cand.call)
    try:
        for events in local:
            out = step.run.feed(events)
            if out:
                yield out
    finally:
        local.close()  # frees the model at once, also when the consumer stops early
    yield step.done()


def _http(step: Attempt, transport: SyncTransport | None, plan: Plan) -> Generator[list[Event], None, None]:
    if transport is None:
        raise _no_transport(plan)
    assert step.http is not None
    with transport.open(step.http, step.cand.call) as resp:
        if resp.status >= 400:
            raise step.refused(resp.status, resp.headers, resp.read())
        if not step.http.stream:
            out = step.whole(resp.read())
        else:
            try:
                for chunk in resp.iter_bytes():
                    out = step.chunk(chunk)
                    if out:
                        yield out
                out = step.end()
            except GencliError as exc:
                out = step.broken(exc)
                if out:
                    yield out
                raise
    yield out + step.done()


def generate(
    req: GenerateRequest, registry: Registry, transport: SyncTransport | None, images: ImageFetcher | None = None
) -> Iterator[Event]:
    yield from execute(prepare(req, registry), transport, images)


# -- the server's loop: on the event loop ----------------------------------------------------------


async def aexecute(
    plan: Plan,
    transport: AsyncTransport | None,
    images: AsyncImageFetcher | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncGenerator[Event, None]:
    """:func:`abatches` one event at a time."""
    async for batch in abatches(plan, transport, images, sleep):
        for ev in batch:
            yield ev


async def abatches(
    plan: Plan,
    transport: AsyncTransport | None,
    images: AsyncImageFetcher | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncGenerator[list[Event], None]:
    """Run a prepared plan over an asynchronous transport (the server's), tried like
    :func:`execute`, waiting with ``sleep`` (``asyncio.sleep`` by default); a local model runs
    in a worker thread (:mod:`gencli.engine.bridge`). By batches: the events of each read from
    the upstream in one list (never empty), so a reader that lags behind takes several at once."""
    if plan.image_urls:
        await afetch_images(plan, images)
    if sleep is None:
        import asyncio  # lazily: the CLI's sync path never needs it

        sleep = asyncio.sleep
    tries = Tries(plan)
    try:
        while True:
            step = tries.start()
            output = False
            batches = _alocal(step) if step.local is not None else _ahttp(step, transport, plan)
            try:
                async for batch in batches:
                    output = True
                    yield batch
                return
            except UpstreamError as exc:
                wait = tries.failed(exc, output)
            finally:
                await batches.aclose()
            if wait is not None:
                await sleep(wait)
    finally:
        tries.close()


async def _alocal(step: Attempt) -> AsyncGenerator[list[Event], None]:
    from gencli.engine.bridge import in_thread

    assert step.local is not None
    async for events in in_thread(step.local.run(step.cand.call)):  # a full queue fails here at once (503)
        out = step.run.feed(events)
        if out:
            yield out
    yield step.done()


async def _ahttp(step: Attempt, transport: AsyncTransport | None, plan: Plan) -> AsyncGenerator[list[Event], None]:
    if transport is None:
        raise _no_transport(plan)
    assert step.http is not None
    async with transport.open(step.http, step.cand.call) as resp:
        if resp.status >= 400:
            raise step.refused(resp.status, resp.headers, await resp.read())
        if not step.http.stream:
            out = step.whole(await resp.read())
        else:
            try:
                async for chunk in resp.iter_bytes():
                    out = step.chunk(chunk)
                    if out:
                        yield out
                out = step.end()
            except GencliError as exc:
                out = step.broken(exc)
                if out:
                    yield out
                raise
    out.extend(step.done())
    yield out


def unload(entry: ModelEntry, registry: Registry) -> bool:
    """Free a local model's memory now (Ollama's ``keep_alive: 0`` with nothing to generate),
    after the generations running or queued on it; blocking. True when it was loaded; a remote
    model holds nothing here (False)."""
    adapter = get_adapter(entry.provider)
    if not adapter.in_process:
        return False
    local = registry.endpoint(entry).local
    return local is not None and adapter.unload(local, entry.name)
