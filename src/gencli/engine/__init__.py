"""The engine: validate a request, resolve the model, build the messages, run a
provider and yield events. Shared by the CLI (sync, httpx) and the server (async,
gencli.transports.httpclient); the two loops below differ only in how bytes arrive.

Glossary (each object is made from the one before it):

``GenerateRequest`` (gencli.core.request)
    What a caller asks for, as given: CLI flags or an HTTP body. Not yet checked; its
    images are raw (base64, data URLs, http(s) URLs, bytes), for any route.
``Plan`` (here, made by :func:`prepare`)
    A checked request: the model entry, its adapter, the :class:`Call`, the
    conversation to encode as ``context``, image URLs still to download (each with its
    place among its message's images) and the request's image quota (a server's limits).
``Call`` (gencli.providers.base)
    What the adapter needs for this generation, resolved and immutable: the upstream
    model id, key, base URL, messages, the options the provider takes, the timeout
    and retries, and for a local model its file and load settings.
``HttpRequest`` (gencli.providers.base)
    What an HTTP adapter builds from a Call: method, URL, headers and body, sent by a
    transport (:class:`~gencli.providers.base.SyncTransport` or ``AsyncTransport``).
``Candidate`` (here)
    One place a plan can be sent: a model entry (or one of its ``deployments``), its adapter
    and its Call. A plan's candidates are its model's deployments in the order its router
    picked, then its ``fallbacks`` (models.json); the loops below move to the next one when
    a candidate fails before any output (:func:`gencli.core.retry.falls_back`), never after.
``Run`` (here)
    One attempt: folds the adapter's events into the events callers see (text and
    reasoning deltas, tool calls) and the final :class:`~gencli.core.events.Done`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from gencli.config.registry import ModelEntry, Registry, Router
from gencli.core import context as ctx
from gencli.core import images as img
from gencli.core import options as opts
from gencli.core.errors import GencliError, ImageError, MissingKey, UpstreamError, UsageError, warn
from gencli.core.events import (
    Done,
    Event,
    Finish,
    Loaded,
    Logprobs,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    Usage,
)
from gencli.core.request import GenerateRequest, Message
from gencli.core.retry import Retrier, falls_back
from gencli.core.think import ThinkSplitter, split_complete
from gencli.providers import PROVIDERS, get_adapter
from gencli.providers.base import (
    Adapter,
    AsyncImageFetcher,
    AsyncTransport,
    Call,
    HttpAdapter,
    HttpRequest,
    ImageFetcher,
    LocalModel,
    SyncTransport,
)


class IgnoredOptions:
    """Warns about the options a request set that its model ignores, once per model and option
    name in a process: a client that sends ``num_ctx`` with every chat (Open WebUI) gets one
    line in the server's log, not one a request. Bounded: the names remembered are cut short
    and at most ``LIMIT`` (then forgotten all at once), and a line names a few of them."""

    LIMIT = 1024

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def warn(self, model: str, label: str, names: list[str]) -> None:
        seen = self.seen
        model_key = model[:80]
        new = [n for n in names if (model_key, n[:80]) not in seen]
        if not new:
            return
        warn(opts.ignored_message(model, label, new))
        if len(seen) + len(new) > self.LIMIT:
            seen.clear()
        seen.update((model_key, n[:80]) for n in new[: self.LIMIT])


_IGNORED = IgnoredOptions()


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
class Candidate:
    """One place a plan can be sent: the model entry (a deployment's variant of it, whose
    ``label`` names both), its adapter, the Call built for it, and the router that counts
    the requests running on it (a model with deployments)."""

    entry: ModelEntry
    adapter: Adapter
    call: Call
    router: Router | None = None


@dataclass(slots=True)
class Plan:
    """A validated request: the adapter, the call it builds from, and images still to fetch.
    ``entry``, ``adapter`` and ``call`` are the first candidate's; ``candidates`` the places
    tried in order (deployments, then fallbacks); ``served`` the one being tried (the one that
    answered, once a run ended)."""

    entry: ModelEntry
    adapter: Adapter
    call: Call
    history: list[Message]  # conversation before this turn's answer (for context)
    # image URLs still to download: (the message, the image's place in its list, its number, the URL)
    image_urls: list[tuple[Message, int, int, str]] = field(default_factory=list)
    started: int = 0  # perf_counter_ns at prepare()
    want_context: bool = True
    quota: img.ImageQuota | None = None  # the request's image limits (gencli serve), downloads counted too
    candidates: list[Candidate] = field(default_factory=list)  # empty: only (entry, adapter, call)
    served: Candidate | None = None
    quiet: bool = False  # no warning line when a fallback is taken (the server counts them instead)
    fell_back: list[str] = field(default_factory=list)  # the labels of the candidates that failed first

    def tries(self) -> list[Candidate]:
        return self.candidates or [Candidate(self.entry, self.adapter, self.call)]


def _local_model(entry: ModelEntry, queue_limit: int) -> LocalModel:
    o = entry.options
    return LocalModel(
        path=entry.path,
        package=entry.package,
        num_ctx=o.get("num_ctx"),
        num_thread=o.get("num_thread"),
        num_batch=o.get("num_batch"),
        num_gpu=o.get("num_gpu"),
        queue_limit=queue_limit,
    )


MAX_TOP_LOGPROBS = 20  # Ollama's and OpenAI's bound
# Characters of answer (text and reasoning) one generation may gather: far above any model's
# output, and below what the upstream body cap (128 MB) would let an upstream make a process
# hold (the pieces, then the joined answer, up to 4 bytes a character).
MAX_ANSWER = 32 * 1024 * 1024


def _keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UsageError('keep_alive must be a number of seconds or a duration such as "5m"', "keep_alive")
    return float(value)


def _text_mode(
    req: GenerateRequest, entry: ModelEntry, prompt: str, fmt: Any, tools: Any
) -> tuple[str, str | None] | None:
    """For ``raw``, ``suffix`` or ``template``: (the prompt to send as it is, the suffix); None
    for a normal (chat) generation. What cannot be honoured is a UsageError, never dropped."""
    raw, suffix, template = req.raw, req.suffix, req.template
    if not isinstance(raw, bool):
        raise UsageError("raw must be true or false", "raw")
    if suffix is not None:
        suffix = _check_text(suffix, "suffix") or None
    if template is not None:
        template = _check_text(template, "template") or None
    if not (raw or suffix or template):
        return None
    spec = PROVIDERS[entry.provider]
    if suffix and "insert" not in entry.capabilities:
        raise UsageError(
            f"model '{entry.name}' does not support insert (fill-in-the-middle with suffix; "
            f"no 'insert' capability in models.json)",
            "suffix",
        )
    if raw and (template or req.system or req.context):
        raise UsageError("raw mode does not support template, system, or context", "raw")
    if suffix and (req.system or req.context):
        raise UsageError(
            "suffix (fill-in-the-middle) does not support system or context; send the code "
            "before the gap as prompt and the code after it as suffix",
            "suffix",
        )
    if template:
        if req.context:
            raise UsageError("template does not support context; put the conversation in the prompt", "template")
        from gencli.core.template import render_template

        prompt = render_template(template, prompt, req.system or "", suffix or "")
        suffix = None
    if not spec.local and spec.completions_path is None:
        what = "fill-in-the-middle" if suffix else "raw prompts or templates"
        raise UsageError(
            f"model '{entry.name}': {spec.label} has no text-completion endpoint, so {what} "
            f"cannot be sent; leave out raw, suffix and template",
            "raw",
        )
    if tools:
        raise UsageError("tools cannot be used with raw, suffix or template (a text completion)", "tools")
    if fmt is not None and not spec.local:
        raise UsageError(
            f"format cannot be used with raw, suffix or template on {spec.label}'s text-completion endpoint", "format"
        )
    return prompt, suffix


def prepare(
    req: GenerateRequest,
    registry: Registry,
    model_default: bool = True,
    *,
    timeout: float | None = None,
    retries: int | None = None,
    quota: img.ImageQuota | None = None,
) -> Plan:
    """Check ``req`` and resolve everything a run needs. ``timeout`` and ``retries`` are
    this call's own (the CLI's flags); unset, the model's (models.json) and then the
    process settings (``registry.settings``) apply. ``quota``: the request's image limits
    (a server's), checked before any image is decoded and charged for every image."""
    started = time.perf_counter_ns()
    asked_timeout, asked_retries = timeout, retries
    if not isinstance(req.images, list):
        raise UsageError("images must be an array of base64 strings or http(s) URLs", "images")
    if quota is not None and (req.images or req.message_images):
        quota.check_count(len(req.images) + len(req.message_images))  # before decoding any of them
    if not isinstance(req.model, str) or (not req.model and not model_default):
        raise UsageError("model is required", "model")
    entry = registry.resolve(req.model or None)
    route = registry.route(entry) if entry.deployments or entry.fallbacks else [entry]
    entry = _first_ready(route, entry, registry)
    spec = PROVIDERS[entry.provider]
    adapter = get_adapter(entry.provider)
    key, key_env = registry.key(entry)
    settings = registry.settings

    asked, ignored = opts.check(req.options, spec.options)
    if ignored:
        _IGNORED.warn(entry.name, spec.label, ignored)
    options = {k: v for k, v in entry.options.items() if k in spec.options}  # models.json defaults
    options.update(asked)
    fmt = req.format
    if fmt == "" or fmt is None:
        fmt = None
    elif fmt != "json" and not isinstance(fmt, dict):
        raise UsageError('format must be "json" or a JSON schema object', "format")
    think = req.think
    if think is not None and not isinstance(think, bool) and think not in ("low", "medium", "high"):
        raise UsageError('think must be true, false, "low", "medium" or "high"', "think")
    if think not in (None, False) and "thinking" not in entry.capabilities:
        raise UsageError(
            f"model '{entry.name}' does not support thinking (no 'thinking' capability); leave out think or send false",
            "think",
        )
    fmt_name, fmt_strict = req.format_name, req.format_strict
    if fmt_name is not None and (not isinstance(fmt_name, str) or not 1 <= len(fmt_name) <= 64):
        raise UsageError("the schema's name must be a string of 1 to 64 characters", "format")
    if fmt_strict is not None and not isinstance(fmt_strict, bool):
        raise UsageError("the schema's strict must be true or false", "format")
    if not isinstance(req.logprobs, bool):
        raise UsageError("logprobs must be true or false", "logprobs")
    top = req.top_logprobs
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise UsageError(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    if req.logprobs and not spec.logprobs:
        raise UsageError(
            f"model '{entry.name}': {spec.label} does not return log probabilities; leave out logprobs", "logprobs"
        )
    tools = tool_choice = None
    if req.tools is not None or req.tool_choice is not None:
        from gencli.core.tools import validate_tool_choice, validate_tools

        tools = validate_tools(req.tools)
        tool_choice = validate_tool_choice(req.tool_choice, tools)
        if tool_choice == "none" and "tools" not in entry.capabilities:
            tools = tool_choice = None  # no tool may be called: a model without tools need not hear of them
        if tools and "tools" not in entry.capabilities:
            raise UsageError(f"model '{entry.name}' does not support tools (no 'tools' capability)", "tools")

    messages: list[Message] = []
    text_prompt: str | None = None  # a text completion's prompt (raw, suffix, template), sent as it is
    suffix: str | None = None
    if req.system is not None:
        _check_text(req.system, "system")
    if req.messages is not None:
        if req.system:
            messages.append(Message("system", req.system))
        messages.extend(req.messages)
        if not any(m.role == "user" for m in messages):
            raise UsageError("messages must contain at least one user message", "messages")
        history = [m for m in messages if m.role != "system"]
        want_context = False
        if any(m.role == "tool" or m.tool_calls for m in messages):
            from gencli.core.tools import pair_tool_messages

            pair_tool_messages(messages)
    else:
        if req.prompt is None:
            raise UsageError("prompt is required", "prompt")
        prompt = _check_text(req.prompt, "prompt")
        text = _text_mode(req, entry, prompt, fmt, tools)
        if text is not None:  # one prompt string for a text-completion endpoint (or the local model)
            text_prompt, suffix = text
            messages = [Message("user", text_prompt)]
            history = [Message("user", text_prompt)]
            want_context = suffix is None
        else:
            if not prompt.strip() and not req.images:
                raise UsageError("prompt is empty", "prompt")
            if req.system:
                messages.append(Message("system", req.system))
            prior = ctx.decode(req.context)
            messages.extend(prior)
            messages.append(Message("user", prompt))
            history = prior + [Message("user", prompt)]
            want_context = True

    if timeout is None:
        timeout = entry.timeout if entry.timeout is not None else settings.timeout
    if retries is None:
        retries = entry.retries if entry.retries is not None else settings.retries
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
        tools=tools,
        tool_choice=tool_choice,
        capabilities=tuple(entry.capabilities),
        timeout=timeout,
        retries=retries,
        local=_local_model(entry, settings.local_queue) if spec.local else None,
        format_name=fmt_name,
        format_strict=fmt_strict,
        prompt=text_prompt,
        suffix=suffix,
        logprobs=req.logprobs,
        top_logprobs=top if req.logprobs else 0,
        keep_alive=_keep_alive(req.keep_alive),
        secrets=settings.secrets,
    )
    plan = Plan(entry, adapter, call, history, started=started, want_context=want_context, quota=quota)
    if req.images or req.message_images:
        if req.images and text_prompt is not None:
            raise UsageError(
                "images cannot be sent with raw, suffix or template (a text completion); "
                "send them with a normal prompt",
                "images",
            )
        _images(plan, [*req.message_images, *((messages[-1], raw) for raw in req.images)])
    if len(route) > 1:
        _candidates(plan, route, registry, req, asked_timeout, asked_retries)
    return plan


def _first_ready(route: list[ModelEntry], entry: ModelEntry, registry: Registry) -> ModelEntry:
    """The first of the model's own deployments whose key is set (the first one when none
    is: its MissingKey names what to set)."""
    own = [e for e in route if e.name == entry.name]
    if len(own) > 1:
        for e in own:
            if registry.missing_key(e) is None:
                return e
    return own[0]


def _candidates(
    plan: Plan,
    route: list[ModelEntry],
    registry: Registry,
    req: GenerateRequest,
    timeout: float | None,
    retries: int | None,
) -> None:
    """The plan's candidates: its own (first) and a Call for each other entry of ``route``
    that can take this request (its key set, the capabilities the request uses; others are
    skipped). Deployments of one model but its last are tried once each: the next one is
    another key or upstream, better than waiting to retry this one."""
    first = plan.entry
    out = [Candidate(first, plan.adapter, plan.call, registry.router(registry.models.get(first.name, first)))]
    call = plan.call
    images = bool(plan.image_urls) or any(m.images for m in call.messages)
    settings = registry.settings
    for e in route:
        if e is first:
            continue
        spec = PROVIDERS[e.provider]
        caps = e.capabilities
        if (
            "completion" not in caps
            or (images and "vision" not in caps)
            or (call.think not in (None, False) and "thinking" not in caps)
            or (call.tools and "tools" not in caps)
            or (call.suffix and "insert" not in caps)
            or (call.prompt is not None and not spec.local and (spec.completions_path is None or call.format))
            or (call.logprobs and not spec.logprobs)
        ):
            continue
        try:
            key, key_env = registry.key(e)
            asked, _ = opts.check(req.options, spec.options)
        except (MissingKey, UsageError):  # its key is not set, or it takes an option differently
            continue
        options = {k: v for k, v in e.options.items() if k in spec.options}
        options.update(asked)
        adapter = get_adapter(e.provider)
        c = replace(
            call,
            model=e.model,
            name=e.name,
            base_url=registry.base_url(e),
            api_key=key,
            key_env=key_env,
            headers=e.headers,
            options=options,
            capabilities=tuple(caps),
            timeout=timeout if timeout is not None else e.timeout if e.timeout is not None else settings.timeout,
            retries=retries if retries is not None else e.retries if e.retries is not None else settings.retries,
            local=_local_model(e, settings.local_queue) if spec.local else None,
        )
        out.append(Candidate(e, adapter, c, registry.router(registry.models.get(e.name, e))))
    for i in range(len(out) - 1):
        if out[i].entry.deployment and out[i + 1].entry.name == out[i].entry.name:
            out[i].call = replace(out[i].call, retries=0)
    plan.call = out[0].call
    plan.candidates = out


def _images(plan: Plan, raw_images: list[tuple[Message, Any]]) -> None:
    """Check and decode a request's images onto their messages; URLs wait in ``plan.image_urls``
    for :func:`fetch_images` (or :func:`afetch_images`), each keeping its place."""
    entry, quota, types = plan.entry, plan.quota, plan.adapter.image_types
    if "vision" not in entry.capabilities:
        raise UsageError(f"model '{entry.name}' does not take images (no 'vision' capability)", "images")
    places: dict[int, int] = {}  # id(message) -> the place of its next image
    for n, (message, raw) in enumerate(raw_images):
        where = f"image {n + 1}"
        at = places.get(id(message), len(message.images))
        places[id(message)] = at + 1
        if isinstance(raw, (bytes, bytearray)):
            data = bytes(raw)
        elif not isinstance(raw, str) or not raw:
            raise ImageError(f"{where} must be a base64 string or an http(s) URL")
        elif img.is_url(raw):
            plan.image_urls.append((message, at, n, raw))
            continue
        else:
            data = img.decode_base64(raw, where)
        if quota is not None:
            quota.add(len(data))
        message.images.append(img.from_bytes(data, where, types))


def fetch_images(plan: Plan, fetcher: ImageFetcher | None) -> None:
    """Download the plan's image URLs (the CLI: httpx) onto their messages, in their places."""
    pending, plan.image_urls = plan.image_urls, []
    if not pending:
        return
    if fetcher is None:
        raise UsageError("image URLs cannot be downloaded here; send the image data instead", "images")
    for message, at, n, url in pending:
        data = fetcher.fetch_image(url)
        if plan.quota is not None:
            plan.quota.add(len(data))
        message.images.insert(at, img.from_bytes(data, f"image {n + 1}", plan.adapter.image_types))


async def afetch_images(plan: Plan, fetcher: AsyncImageFetcher | None) -> None:
    """Download the plan's image URLs on the event loop (the server), counted by ``plan.quota``
    as the bytes arrive, onto their messages in their places."""
    pending, plan.image_urls = plan.image_urls, []
    if not pending:
        return
    if fetcher is None:
        raise UsageError("image URLs cannot be downloaded here; send the image data instead", "images")
    for message, at, n, url in pending:
        data = await fetcher.fetch_image(url, plan.quota)
        message.images.insert(at, img.from_bytes(data, f"image {n + 1}", plan.adapter.image_types))


class AnswerTooLong(UpstreamError):
    """The upstream's answer passed MAX_ANSWER characters."""


class Run:
    """Folds adapter events into engine events and the final Done (timings, context)."""

    __slots__ = (
        "plan",
        "splitter",
        "text",
        "reasoning",
        "first",
        "sent",
        "usage",
        "finish",
        "stream",
        "tool_calls",
        "stop_sequence",
        "logprobs",
        "hide_reasoning",
        "size",
        "served",
        "over",
    )

    def __init__(self, plan: Plan, served: Candidate | None = None) -> None:
        self.plan = plan
        self.served = served.entry if served is not None else plan.entry
        self.stream = plan.call.stream
        self.splitter = ThinkSplitter(implicit_open=self.served.reasoning_tags)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.first = 0
        self.sent = 0
        self.usage = Usage()
        self.finish = "stop"
        self.tool_calls: list[ToolCall] = []
        self.stop_sequence: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if plan.call.logprobs else None
        self.hide_reasoning = plan.call.think is False  # an upstream that reasons anyway: dropped here
        self.size = 0  # characters of text and reasoning gathered (at most MAX_ANSWER)
        self.over: UpstreamError | None = None  # the answer cap was reached: raised on the next call

    def request_sent(self) -> None:
        self.sent = time.perf_counter_ns()

    def feed(self, events: list[Event]) -> list[Event]:
        """The engine events of ``events``. When the answer cap is reached, the events before
        it are returned and the cap's error is raised by the next ``feed`` or ``done``, so the
        answer up to the cap is kept (streamed, or in the error's reply)."""
        if self.over is not None:
            raise self.over
        out: list[Event] = []
        try:
            self._fold(events, out)
        except AnswerTooLong as exc:
            self.over = exc
        return out

    def _fold(self, events: list[Event], out: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, TextDelta):
                if not ev.text:
                    continue
                if self.stream:
                    r, x = self.splitter.feed(ev.text)
                else:
                    r, x = split_complete(ev.text)
                self._emit(r, x, out)
            elif isinstance(ev, ReasoningDelta):
                if ev.text:
                    self._emit(ev.text, "", out)
            elif isinstance(ev, Usage):
                if ev.prompt_tokens is not None:
                    self.usage.prompt_tokens = ev.prompt_tokens
                if ev.completion_tokens is not None:
                    self.usage.completion_tokens = ev.completion_tokens
                if ev.reasoning_tokens is not None:
                    self.usage.reasoning_tokens = ev.reasoning_tokens
            elif isinstance(ev, Finish):
                self.finish = ev.reason
                self.stop_sequence = ev.stop_sequence
            elif isinstance(ev, ToolCall):
                if not self.first:
                    self.first = time.perf_counter_ns()
                self.tool_calls.append(ev)
                out.append(ev)
            elif isinstance(ev, Logprobs):
                if self.logprobs is not None and ev.tokens:
                    self.logprobs.extend(ev.tokens)
                    out.append(ev)
            elif isinstance(ev, Loaded):
                self.sent = time.perf_counter_ns()

    def _emit(self, r: str, x: str, out: list[Event]) -> None:
        if self.hide_reasoning:
            r = ""
        if not self.first and (r or x):
            self.first = time.perf_counter_ns()
        self.size += len(r) + len(x)
        if self.size > MAX_ANSWER:
            raise AnswerTooLong(
                f"{self.served.name}: the upstream sent an answer longer than {MAX_ANSWER // (1024 * 1024)} M "
                "characters; it was stopped there"
            )
        if r:
            self.reasoning.append(r)
            out.append(ReasoningDelta(r))
        if x:
            self.text.append(x)
            out.append(TextDelta(x))

    def done(self) -> list[Event]:
        if self.over is not None:
            raise self.over
        out: list[Event] = []
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
        out.append(
            Done(
                model=self.plan.entry.name,
                done_reason=finish,
                text=text,
                reasoning="".join(self.reasoning),
                prompt_eval_count=self.usage.prompt_tokens,
                eval_count=self.usage.completion_tokens,
                reasoning_count=self.usage.reasoning_tokens,
                total_duration=end - started,
                load_duration=sent - started,
                prompt_eval_duration=first - sent,
                eval_duration=end - first,
                context=context,
                tool_calls=self.tool_calls,
                stop_sequence=self.stop_sequence,
                logprobs=self.logprobs,
                served=self.served.label,
            )
        )
        return out


def unload(entry: ModelEntry, registry: Registry) -> bool:
    """Free a local model's memory now (Ollama's ``keep_alive: 0`` with nothing to generate),
    after the generations running or queued on it; blocking. True when it was loaded; a remote
    model holds nothing here (False)."""
    adapter = get_adapter(entry.provider)
    if not adapter.in_process:
        return False
    return adapter.unload(_local_model(entry, registry.settings.local_queue), entry.name)


def _no_transport(plan: Plan) -> GencliError:
    return GencliError(f"{plan.entry.name}: no transport to reach {plan.call.base_url or 'the upstream'}")


def execute(
    plan: Plan,
    transport: SyncTransport | None,
    images: ImageFetcher | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[Event, None, None]:
    """Run a prepared plan over a synchronous transport (the CLI's httpx; None for a local
    model). Image URLs are downloaded with ``images``. A failure before the first event is
    retried as :mod:`gencli.core.retry` decides, waiting with ``sleep``; never after output began.
    When a candidate fails before any output (:func:`gencli.core.retry.falls_back`), the next one
    (another deployment, a fallback) is tried."""
    if plan.image_urls:
        fetch_images(plan, images)
    tries = plan.tries()
    failed: list[UpstreamError] = []
    for n, cand in enumerate(tries):
        plan.served = cand
        output = False
        attempts = _candidate(plan, cand, transport, sleep)
        try:
            for ev in attempts:
                output = True
                yield ev
            return
        except UpstreamError as exc:
            if output or n + 1 == len(tries) or not falls_back(exc):
                raise _all_failed(plan, failed, exc) from None
            failed.append(exc)
            _fell_back(plan, cand, exc, tries[n + 1])
        finally:
            attempts.close()


def _candidate(
    plan: Plan, cand: Candidate, transport: SyncTransport | None, sleep: Callable[[float], None]
) -> Generator[Event, None, None]:
    """One candidate's attempts: a local model's run, or an upstream's with retries."""
    adapter, call, router = cand.adapter, cand.call, cand.router
    if adapter.in_process:
        run = Run(plan, cand)
        run.request_sent()
        local = adapter.run(call)
        try:
            for events in local:
                out = run.feed(events)
                if out:
                    yield from out
        finally:
            local.close()  # frees the model at once, also when the consumer stops early
        yield from run.done()
        return
    if transport is None:
        raise _no_transport(plan)
    http = adapter.build(call)
    retrier = Retrier.for_call(call.name, call.retries)
    if router is not None:
        router.begin(cand.entry)
    try:
        while True:
            run = Run(plan, cand)
            output = False
            attempt = _attempt(adapter, call, run, http, transport)
            try:
                for ev in attempt:
                    output = True
                    yield ev
                return
            except UpstreamError as exc:
                wait = retrier.next_wait(exc, output)
            finally:
                attempt.close()
            sleep(wait)
    finally:
        if router is not None:
            router.end(cand.entry)


def _fell_back(plan: Plan, cand: Candidate, exc: UpstreamError, nxt: Candidate) -> None:
    plan.fell_back.append(cand.entry.label)
    if not plan.quiet:
        warn(f"{exc.message}; trying {nxt.entry.label} instead")


def _all_failed(plan: Plan, failed: list[UpstreamError], exc: UpstreamError) -> UpstreamError:
    """The error to raise when the last candidate tried failed: ``exc`` itself, or after
    fallbacks the same kind of error naming each failure in turn."""
    if not failed:
        return exc
    what = "; then ".join(e.message for e in [*failed, exc])
    message = f"{plan.entry.name}: every deployment and fallback failed: {what}"
    try:
        return type(exc)(message, upstream_status=exc.upstream_status, retry_after=exc.retry_after, status=exc.status)
    except TypeError:  # an error kind of its own making (EventTooLarge): the plain kind
        return UpstreamError(message, upstream_status=exc.upstream_status, status=exc.status)


def _attempt(
    adapter: HttpAdapter, call: Call, run: Run, http: HttpRequest, transport: SyncTransport
) -> Generator[Event, None, None]:
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


def generate(
    req: GenerateRequest, registry: Registry, transport: SyncTransport | None, images: ImageFetcher | None = None
) -> Iterator[Event]:
    yield from execute(prepare(req, registry), transport, images)


async def aexecute(
    plan: Plan,
    transport: AsyncTransport | None,
    images: AsyncImageFetcher | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncGenerator[Event, None]:
    """Run a prepared plan over an asynchronous transport (the server's); retried like
    :func:`execute`, waiting with ``sleep`` (``asyncio.sleep`` by default). A local model
    runs in a worker thread (:mod:`gencli.engine.bridge`). One event at a time (see :func:`abatches`)."""
    async for batch in abatches(plan, transport, images, sleep):
        for ev in batch:
            yield ev


async def abatches(
    plan: Plan,
    transport: AsyncTransport | None,
    images: AsyncImageFetcher | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncGenerator[list[Event], None]:
    """:func:`aexecute` by batches: the events of each read from the upstream in one list
    (never empty), so a reader that lags behind the upstream takes several at once. Moves to
    the next candidate like :func:`execute`."""
    if plan.image_urls:
        await afetch_images(plan, images)
    if sleep is None:
        import asyncio  # lazily: the CLI's sync path never needs it

        sleep = asyncio.sleep
    tries = plan.tries()
    failed: list[UpstreamError] = []
    for n, cand in enumerate(tries):
        plan.served = cand
        output = False
        attempts = _acandidate(plan, cand, transport, sleep)
        try:
            async for batch in attempts:
                output = True
                yield batch
            return
        except UpstreamError as exc:
            if output or n + 1 == len(tries) or not falls_back(exc):
                raise _all_failed(plan, failed, exc) from None
            failed.append(exc)
            _fell_back(plan, cand, exc, tries[n + 1])
        finally:
            await attempts.aclose()


async def _acandidate(
    plan: Plan, cand: Candidate, transport: AsyncTransport | None, sleep: Callable[[float], Awaitable[None]]
) -> AsyncGenerator[list[Event], None]:
    adapter, call, router = cand.adapter, cand.call, cand.router
    if adapter.in_process:
        from gencli.engine.bridge import in_thread

        run = Run(plan, cand)
        run.request_sent()
        async for events in in_thread(adapter.run(call)):  # a full queue fails here at once (503)
            out = run.feed(events)
            if out:
                yield out
        yield run.done()
        return
    if transport is None:
        raise _no_transport(plan)
    http = adapter.build(call)
    retrier = Retrier.for_call(call.name, call.retries)
    if router is not None:
        router.begin(cand.entry)
    try:
        while True:
            run = Run(plan, cand)
            output = False
            attempt = _abatches(adapter, call, run, http, transport)
            try:
                async for batch in attempt:
                    output = True
                    yield batch
                return
            except UpstreamError as exc:
                wait = retrier.next_wait(exc, output)
            finally:
                await attempt.aclose()
            await sleep(wait)
    finally:
        if router is not None:
            router.end(cand.entry)


async def _abatches(
    adapter: HttpAdapter, call: Call, run: Run, http: HttpRequest, transport: AsyncTransport
) -> AsyncGenerator[list[Event], None]:
    run.request_sent()
    async with transport.open(http, call) as resp:
        if resp.status >= 400:
            raise adapter.parse_error(call, resp.status, resp.headers, await resp.read())
        if http.stream:
            parser = adapter.stream_parser(call)
            try:
                async for chunk in resp.iter_bytes():
                    out = run.feed(parser.feed(chunk))
                    if out:
                        yield out
                out = run.feed(parser.close())
            except GencliError as exc:
                out = run.feed(exc.partial)  # the answer before a mid-stream error is kept
                if out:
                    yield out
                raise
        else:
            out = run.feed(adapter.parse_response(call, await resp.read()))
    out.extend(run.done())
    yield out
