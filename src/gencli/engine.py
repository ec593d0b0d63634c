"""The engine: validate a request, resolve the model, build the messages, run a
provider and yield events. Shared by the CLI (sync, httpx) and the server (async,
aiohttp); the two loops below differ only in how bytes arrive.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

from gencli import context as ctx
from gencli import images as img
from gencli.errors import GencliError, UpstreamError, UsageError
from gencli.events import Done, Finish, Loaded, ReasoningDelta, TextDelta, ToolCall, Usage
from gencli.providers import get_adapter
from gencli.providers.base import Call
from gencli.registry import ModelEntry, Registry
from gencli.retry import Retrier
from gencli.request import GenerateRequest, Message
from gencli.think import ThinkSplitter, split_complete

_INT_MAX = 2**31 - 1


def _number(options: dict, key: str, lo: float, hi: float) -> None:
    v = options.get(key)
    if v is None:
        options.pop(key, None)
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UsageError(f"options.{key} must be a number from {lo:g} to {hi:g}", f"options.{key}")
    if not lo <= v <= hi:
        raise UsageError(f"options.{key} is {v:g}; it must be from {lo:g} to {hi:g}", f"options.{key}")


def _integer(options: dict, key: str, lo: int, hi: int = _INT_MAX) -> None:
    v = options.get(key)
    if v is None:
        options.pop(key, None)
        return
    if isinstance(v, float) and v.is_integer():
        v = options[key] = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise UsageError(f"options.{key} must be an integer", f"options.{key}")
    if not lo <= v <= hi:
        raise UsageError(f"options.{key} is {v}; it must be from {lo} to {hi}", f"options.{key}")


MAX_STOPS = 16


def validate_options(raw: Any) -> dict[str, Any]:
    """Check the options the providers understand; unknown keys are dropped (as Ollama does)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError("options must be an object, e.g. {\"temperature\": 0.7}", "options")
    options = dict(raw)
    _number(options, "temperature", 0, 2)
    _number(options, "top_p", 0, 1)
    _number(options, "min_p", 0, 1)
    _number(options, "presence_penalty", -2, 2)
    _number(options, "frequency_penalty", -2, 2)
    _number(options, "repeat_penalty", 0, 10)
    _integer(options, "top_k", 0, 100000)
    _integer(options, "seed", -(2**63), 2**63 - 1)
    _integer(options, "num_ctx", 1, 10_000_000)
    _integer(options, "num_predict", -2, 10_000_000)
    if options.get("num_predict") is not None and options["num_predict"] in (-1, -2, 0):
        options.pop("num_predict")  # Ollama: -1 infinite, -2 fill the context
    stop = options.get("stop")
    if stop is None:
        options.pop("stop", None)
    else:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise UsageError("options.stop must be a string or a list of strings", "options.stop")
        stop = [s for s in stop if s]
        if len(stop) > MAX_STOPS:
            raise UsageError(f"options.stop has {len(stop)} entries; at most {MAX_STOPS}", "options.stop")
        if any(len(s) > 1000 for s in stop):
            raise UsageError("options.stop entries must be at most 1000 characters", "options.stop")
        if stop:
            options["stop"] = stop
        else:
            options.pop("stop")
    return options


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string", name)
    if "\x00" in value:
        raise UsageError(f"{name} contains a NUL character", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name} is not valid Unicode (lone surrogate)", name) from None
    return value


@dataclass(slots=True)
class Plan:
    """A validated request: the adapter, the call it builds from, and images still to fetch."""

    entry: ModelEntry
    adapter: Any
    call: Call
    history: list[Message]  # conversation before this turn's answer (for context)
    image_urls: list[tuple[int, str]] = field(default_factory=list)
    started: int = 0  # perf_counter_ns at prepare()
    want_context: bool = True

    def add_image(self, index: int, data: bytes) -> None:
        image = img.from_bytes(data, f"image {index + 1}", self.adapter.image_types)
        self.call.messages[-1].images.append(image)


def prepare(req: GenerateRequest, registry: Registry, model_default: bool = True) -> Plan:
    started = time.perf_counter_ns()
    if not isinstance(req.model, str) or (not req.model and not model_default):
        raise UsageError("model is required", "model")
    entry = registry.resolve(req.model or None)
    adapter = get_adapter(entry.provider)
    key, key_env = registry.key(entry)

    options = dict(entry.options)
    options.update(validate_options(req.options))
    fmt = req.format
    if fmt == "" or fmt is None:
        fmt = None
    elif fmt != "json" and not isinstance(fmt, dict):
        raise UsageError("format must be \"json\" or a JSON schema object", "format")
    think = req.think
    if think is not None and not isinstance(think, bool) and think not in ("low", "medium", "high"):
        raise UsageError("think must be true, false, \"low\", \"medium\" or \"high\"", "think")
    tools = tool_choice = None
    if req.tools is not None or req.tool_choice is not None:
        from gencli.tools import validate_tool_choice, validate_tools

        tools = validate_tools(req.tools)
        tool_choice = validate_tool_choice(req.tool_choice, tools)
        if tool_choice == "none":  # the model may not call any: it is not told about them
            tools = tool_choice = None
        if tools and "tools" not in entry.capabilities:
            raise UsageError(f"model '{entry.name}' does not support tools (no 'tools' capability)", "tools")

    messages: list[Message] = []
    if req.system is not None and _check_text(req.system, "system"):
        messages.append(Message("system", req.system))
    if req.messages is not None:
        messages.extend(req.messages)
        if not any(m.role == "user" for m in messages):
            raise UsageError("messages must contain at least one user message", "messages")
        history = [m for m in messages if m.role != "system"]
        want_context = False
        if any(m.role == "tool" or m.tool_calls for m in messages):
            from gencli.tools import pair_tool_messages

            pair_tool_messages(messages)
    else:
        if req.prompt is None:
            raise UsageError("prompt is required", "prompt")
        prompt = _check_text(req.prompt, "prompt")
        if not prompt.strip() and not req.images:
            raise UsageError("prompt is empty", "prompt")
        prior = ctx.decode(req.context)
        messages.extend(prior)
        messages.append(Message("user", prompt))
        history = prior + [Message("user", prompt)]
        want_context = True

    call = Call(
        model=entry.model,
        name=entry.name,
        base_url=registry.base_url(entry),
        api_key=key,
        key_env=key_env,
        headers=entry.headers,
        messages=messages,
        options=options,
        format=fmt,
        think=think,
        stream=req.stream,
        extra={"path": entry.path, "package": entry.package, "timeout": entry.timeout,
               "retries": entry.retries, "capabilities": entry.capabilities},
        tools=tools,
        tool_choice=tool_choice,
    )
    plan = Plan(entry, adapter, call, history, started=started, want_context=want_context)

    if req.images:
        if not isinstance(req.images, list):
            raise UsageError("images must be an array of base64 strings or http(s) URLs", "images")
        if "vision" not in entry.capabilities:
            raise UsageError(f"model '{entry.name}' does not take images (no 'vision' capability)", "images")
        for i, raw in enumerate(req.images):
            where = f"image {i + 1}"
            if isinstance(raw, (bytes, bytearray)):
                plan.add_image(i, bytes(raw))
            elif not isinstance(raw, str) or not raw:
                raise UsageError(f"{where} must be a base64 string or an http(s) URL", "images")
            elif img.is_url(raw):
                plan.image_urls.append((i, raw))
            else:
                plan.add_image(i, img.decode_base64(raw, where))
    return plan


class Run:
    """Folds adapter events into engine events and the final Done (timings, context)."""

    __slots__ = ("plan", "splitter", "text", "reasoning", "first", "sent", "usage", "finish", "stream",
                 "tool_calls", "stop_sequence")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.stream = plan.call.stream
        self.splitter = ThinkSplitter(implicit_open=plan.entry.reasoning_tags)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.first = 0
        self.sent = 0
        self.usage = Usage()
        self.finish = "stop"
        self.tool_calls: list[ToolCall] = []
        self.stop_sequence: str | None = None

    def request_sent(self) -> None:
        self.sent = time.perf_counter_ns()

    def feed(self, events: list) -> list:
        out = []
        for ev in events:
            t = type(ev)
            if t is TextDelta:
                if not ev.text:
                    continue
                if self.stream:
                    r, x = self.splitter.feed(ev.text)
                else:
                    r, x = split_complete(ev.text)
                self._emit(r, x, out)
            elif t is ReasoningDelta:
                if ev.text:
                    self._emit(ev.text, "", out)
            elif t is Usage:
                if ev.prompt_tokens is not None:
                    self.usage.prompt_tokens = ev.prompt_tokens
                if ev.completion_tokens is not None:
                    self.usage.completion_tokens = ev.completion_tokens
            elif t is Finish:
                self.finish = ev.reason
                self.stop_sequence = ev.stop_sequence
            elif t is ToolCall:
                if not self.first:
                    self.first = time.perf_counter_ns()
                self.tool_calls.append(ev)
                out.append(ev)
            elif t is Loaded:
                self.sent = time.perf_counter_ns()
        return out

    def _emit(self, r: str, x: str, out: list) -> None:
        if not self.first and (r or x):
            self.first = time.perf_counter_ns()
        if r:
            self.reasoning.append(r)
            out.append(ReasoningDelta(r))
        if x:
            self.text.append(x)
            out.append(TextDelta(x))

    def done(self) -> list:
        out: list = []
        r, x = self.splitter.close()
        self._emit(r, x, out)
        end = time.perf_counter_ns()
        started = self.plan.started
        sent = self.sent or started
        first = self.first or end
        text = "".join(self.text)
        context: list[int] = []
        if self.plan.want_context:
            context = ctx.encode(self.plan.history + [Message("assistant", text)])
        finish = self.finish
        if self.tool_calls and finish == "stop":
            finish = "tool_calls"  # Gemini says STOP; OpenAI-compatible servers vary
        out.append(Done(
            model=self.plan.entry.name,
            done_reason=finish,
            text=text,
            reasoning="".join(self.reasoning),
            prompt_eval_count=self.usage.prompt_tokens,
            eval_count=self.usage.completion_tokens,
            total_duration=end - started,
            load_duration=sent - started,
            prompt_eval_duration=first - sent,
            eval_duration=end - first,
            context=context,
            tool_calls=self.tool_calls,
            stop_sequence=self.stop_sequence,
        ))
        return out


def execute(plan: Plan, transport) -> Iterator:
    """Run a prepared plan over a synchronous transport (the CLI's httpx). A failure before
    the first event is retried as :mod:`gencli.retry` decides; never after output began."""
    for index, url in plan.image_urls:
        plan.add_image(index, transport.fetch_image(url))
    adapter, call = plan.adapter, plan.call
    if getattr(adapter, "in_process", False):
        run = Run(plan)
        run.request_sent()
        for events in adapter.run(call):
            out = run.feed(events)
            if out:
                yield from out
        yield from run.done()
        return
    http = adapter.build(call)
    retrier = Retrier.for_call(call)
    while True:
        run = Run(plan)
        output = False
        attempt = _attempt(plan, run, http, transport)
        try:
            for ev in attempt:
                output = True
                yield ev
            return
        except UpstreamError as exc:
            if output:
                raise
            wait = retrier.failed(exc)
            if wait is None:
                raise retrier.error(exc) from None
        finally:
            attempt.close()
        time.sleep(wait)


def _attempt(plan: Plan, run: Run, http, transport) -> Iterator:
    adapter, call = plan.adapter, plan.call
    run.request_sent()
    with transport.open(http, call) as resp:
        if resp.status >= 400:
            raise adapter.parse_error(call, resp.status, resp.headers, resp.read())
        if http.stream:
            parser = adapter.stream_parser(call)
            try:
                for chunk in resp.iter_bytes():
                    out = run.feed(parser.feed(chunk))
                    if out:
                        yield from out
                yield from run.feed(parser.close())
            except GencliError as exc:
                yield from run.feed(exc.partial)  # the answer before a mid-stream error is kept
                raise
        else:
            yield from run.feed(adapter.parse_response(call, resp.read()))
    yield from run.done()


def generate(req: GenerateRequest, registry: Registry, transport) -> Iterator:
    yield from execute(prepare(req, registry), transport)


async def aexecute(plan: Plan, transport) -> AsyncIterator:
    """Run a prepared plan over an asynchronous transport (the server's aiohttp); retried
    like :func:`execute`."""
    for index, url in plan.image_urls:
        plan.add_image(index, await transport.fetch_image(url))
    adapter, call = plan.adapter, plan.call
    if getattr(adapter, "in_process", False):
        run = Run(plan)
        run.request_sent()
        async for events in transport.run_in_thread(adapter, call):
            for ev in run.feed(events):
                yield ev
        for ev in run.done():
            yield ev
        return
    http = adapter.build(call)
    retrier = Retrier.for_call(call)
    while True:
        run = Run(plan)
        output = False
        attempt = _aattempt(plan, run, http, transport)
        try:
            async for ev in attempt:
                output = True
                yield ev
            return
        except UpstreamError as exc:
            if output:
                raise
            wait = retrier.failed(exc)
            if wait is None:
                raise retrier.error(exc) from None
        finally:
            await attempt.aclose()
        import asyncio  # lazily: the CLI's sync path never needs it

        await asyncio.sleep(wait)


async def _aattempt(plan: Plan, run: Run, http, transport) -> AsyncIterator:
    adapter, call = plan.adapter, plan.call
    run.request_sent()
    async with transport.open(http, call) as resp:
        if resp.status >= 400:
            raise adapter.parse_error(call, resp.status, resp.headers, await resp.read())
        if http.stream:
            parser = adapter.stream_parser(call)
            try:
                async for chunk in resp.iter_bytes():
                    for ev in run.feed(parser.feed(chunk)):
                        yield ev
                for ev in run.feed(parser.close()):
                    yield ev
            except GencliError as exc:
                for ev in run.feed(exc.partial):  # the answer before a mid-stream error is kept
                    yield ev
                raise
        else:
            for ev in run.feed(adapter.parse_response(call, await resp.read())):
                yield ev
    for ev in run.done():
        yield ev
