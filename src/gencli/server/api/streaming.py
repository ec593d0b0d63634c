"""Run a prepared plan and write its reply in a wire format's shape, streamed or whole.

The first events are pulled from :func:`gencli.engine.abatches` before the status line goes
out, so a failure before any output (a bad key, an image URL that cannot be fetched, 429,
5xx, a timeout) gets its real status and the API's error body. Once streaming started, a
failure becomes the shape's error line (an ``{"error": ...}`` line, an SSE error event)
and the answer so far is kept.

While a generation runs, :class:`Disconnect` waits for the client's ``http.disconnect``;
when it comes, the request task is cancelled, which closes the upstream connection at once
(see :mod:`gencli.transports.server`). The events of one read from the upstream are written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gencli.core.errors import GencliError
from gencli.core.events import Done, Logprobs, ReasoningDelta, TextDelta, TokenLogprob
from gencli.engine import Plan, abatches, prepare
from gencli.providers.base import AsyncImageFetcher, AsyncTransport
from gencli.server.asgi import Headers, Receive, Scope, Send, internal, send_error, send_json

if TYPE_CHECKING:
    from gencli.core.request import GenerateRequest
    from gencli.server.state import State


class Upstream(AsyncTransport, AsyncImageFetcher, Protocol):
    """What the runner sends through: a transport that also downloads image URLs."""


class Shape(Protocol):
    """A wire format's reply to one generation (Ollama's generate and chat, OpenAI's chat
    completions and Responses, Anthropic's Messages): the bytes of each streamed piece, or
    the whole reply as one JSON object."""

    headers: Headers  # of a streamed reply

    def text(self, text: str) -> bytes: ...

    def reasoning(self, text: str) -> bytes: ...

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes: ...

    def final(self, done: Done) -> bytes: ...

    def whole(self, done: Done) -> dict[str, Any]: ...

    def error_line(self, exc: GencliError) -> bytes: ...


class Disconnect:
    """Waits for the client's http.disconnect while a reply is produced; on it, cancels
    the request task (which closes the upstream connection).

    On gencli's own server the connection calls back when the client leaves (the ASGI
    extension ``gencli.on_disconnect``): no task, no timer. On another ASGI server a watcher
    task starts when the reply takes longer than ``DELAY`` seconds: fast replies (most
    non-streamed ones) pay for a timer handle, not a task. A client that left earlier is
    still seen, since ``receive()`` then returns http.disconnect at once.
    """

    DELAY = 0.02

    __slots__ = ("gone", "finished", "_task", "_watch", "_timer", "_receive", "_hook")

    def __init__(self, receive: Receive, scope: Scope | None = None):
        self.gone = False
        self.finished = False
        self._task = asyncio.current_task()
        self._receive = receive
        self._watch: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        extensions = scope.get("extensions") if scope is not None else None
        self._hook: Callable[[Callable[[], None] | None], None] | None = (
            extensions.get("gencli.on_disconnect") if extensions else None
        )
        if self._hook is not None:
            self._hook(self._left)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.DELAY, self._start)

    def _left(self) -> None:
        if not self.finished:
            self.gone = True
            if self._task is not None:
                self._task.cancel()

    def _start(self) -> None:
        if not self.finished:
            self._watch = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                self._left()
                return

    def stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._hook is not None:
            self._hook(None)
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


def _header_value(text: str) -> bytes:
    """A registry name as a header value: printable ASCII, others escaped, bounded."""
    value = text[:200].encode("ascii", "backslashreplace")
    return bytes(c if 0x20 <= c < 0x7F else 0x3F for c in value)


def served_headers(plan: Plan, info: dict[str, Any]) -> Headers:
    """For a model with deployments or fallbacks: ``X-Gencli-Model`` (the registry name that
    answered: the model asked for, or the fallback taken) and ``X-Gencli-Deployment`` (its
    deployment's name, when it has deployments); noted in ``info`` for the access log and
    the metrics. The reply's own ``model`` stays the name asked for."""
    served = plan.served
    if served is None or not plan.candidates:
        return []
    entry = served.entry
    info["served"] = entry.label
    info["served_by"] = (entry.name, entry.deployment)  # for the metrics (a name may hold a slash)
    if plan.fell_back:
        info["fell_back"] = plan.fell_back
    headers = [(b"x-gencli-model", _header_value(entry.name))]
    if entry.deployment:
        headers.append((b"x-gencli-deployment", _header_value(entry.deployment)))
    return headers


async def run(
    transport: Upstream, scope: Scope, receive: Receive, send: Send, plan: Plan, stream: bool, shape: Shape
) -> None:
    """Run ``plan`` over ``transport`` (which also downloads its image URLs) and write the
    reply with ``shape``: streamed when ``stream``, else one JSON object. The events of one
    read from the upstream are written at once (:func:`gencli.engine.abatches`)."""
    agen = abatches(plan, transport, transport)
    keep = getattr(shape, "keep", None)  # a shape that stores its reply (Responses' store: true) before its end
    watch = Disconnect(receive, scope)
    info = scope.setdefault("gencli", {})
    started = False
    try:
        try:
            batch = await agen.__anext__()
        except GencliError as exc:
            watch.stop()
            await send_error(scope, send, exc)
            return
        except (StopAsyncIteration, asyncio.CancelledError):
            raise
        except Exception as exc:
            watch.stop()
            await send_error(scope, send, internal(exc))
            return
        if not stream:
            while type(batch[-1]) is not Done:
                batch = await agen.__anext__()
            done = batch[-1]
            assert isinstance(done, Done)
            info["tokens"] = {"prompt": done.prompt_eval_count, "completion": done.eval_count}
            info["timing"] = (done.total_duration, None)
            watch.stop()
            whole = shape.whole(done)
            if keep is not None:
                await keep()
            await send_json(send, 200, whole, extra=served_headers(plan, info) or None)
            return
        started = True
        headers = shape.headers
        if plan.candidates:
            headers = [*headers, *served_headers(plan, info)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            while True:
                parts = []
                for event in batch:
                    t = type(event)
                    if t is TextDelta:
                        body = shape.text(event.text)  # type: ignore[union-attr]
                    elif t is ReasoningDelta:
                        body = shape.reasoning(event.text)  # type: ignore[union-attr]
                    elif t is Logprobs:
                        body = shape.logprobs(event.tokens)  # type: ignore[union-attr]
                    elif t is Done:
                        done = event  # type: ignore[assignment]
                        info["tokens"] = {"prompt": done.prompt_eval_count, "completion": done.eval_count}
                        info["timing"] = (done.total_duration, done.load_duration + done.prompt_eval_duration)
                        watch.stop()
                        parts.append(shape.final(done))
                        if keep is not None:
                            await keep()
                        await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                        return
                    else:
                        continue
                    if body:
                        parts.append(body)
                if parts:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": parts[0] if len(parts) == 1 else b"".join(parts),
                            "more_body": True,
                        }
                    )
                batch = await agen.__anext__()
        except GencliError as exc:
            watch.stop()
            await send({"type": "http.response.body", "body": shape.error_line(exc), "more_body": False})
        except (StopAsyncIteration, asyncio.CancelledError):
            raise
        except Exception as exc:
            watch.stop()
            await send({"type": "http.response.body", "body": shape.error_line(internal(exc)), "more_body": False})
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except GencliError as exc:  # non-streamed: failed after the first event
        if started:
            raise
        await send_error(scope, send, exc)
    except Exception as exc:
        if started:
            raise
        await send_error(scope, send, internal(exc))
    finally:
        watch.stop()
        await agen.aclose()


async def answer(
    state: State, scope: Scope, receive: Receive, send: Send, req: GenerateRequest, shape: Callable[[Plan], Shape]
) -> None:
    """A generation route's work after reading its request: prepare ``req`` (its images count
    against the request's quota, released when the reply is done), mark the model used for
    ``req.keep_alive`` (/api/ps) and :func:`run` it with ``shape(plan)``."""
    quota = state.image_quota()
    try:
        plan = prepare(req, state.registry, model_default=False, quota=quota)
        plan.quiet = True  # a fallback taken is in the access log and the metrics, not a line of its own
        state.touch(plan.entry.name, req.keep_alive)
        await run(state.transport, scope, receive, send, plan, req.stream, shape(plan))
    finally:
        quota.release()
