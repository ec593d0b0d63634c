"""From a request to a plan: :func:`prepare` runs the request's checks
(:mod:`gencli.engine.checks`), resolves the model and where to reach it (one
:meth:`~gencli.config.registry.Registry.endpoint` call for each place it can be sent),
builds the :class:`~gencli.providers.base.Call` and places the request's images
(:mod:`gencli.engine.attach`). The places a plan is tried in, in order, are its
:class:`Candidate` s: the model's deployments as its router orders them, then its fallbacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from gencli.config.registry import ModelEntry, Registry, Router
from gencli.core import images as img
from gencli.core import options as opts
from gencli.core.errors import MissingKey, UsageError
from gencli.core.request import GenerateRequest, Message
from gencli.engine import attach, checks
from gencli.providers import PROVIDERS, get_adapter
from gencli.providers.base import Adapter, Call


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
    checks.image_count(req, quota)
    entry = registry.resolve(checks.model_name(req, model_default))
    route = registry.route(entry) if entry.deployments or entry.fallbacks else [entry]
    entry = _first_ready(route, entry, registry)
    spec = PROVIDERS[entry.provider]
    endpoint = registry.endpoint(entry, timeout=timeout, retries=retries)  # a missing key is said first
    options = checks.options(req, entry, spec)
    fmt = checks.output_format(req)
    think = checks.think(req, entry)
    top_logprobs = checks.logprobs(req, entry, spec)
    tools, tool_choice = checks.tools(req, entry)
    talk = checks.conversation(req, entry, fmt, tools)
    call = Call(
        endpoint.model,
        endpoint.name,
        endpoint.base_url,
        endpoint.api_key,
        endpoint.key_env,
        endpoint.headers,
        capabilities=endpoint.capabilities,
        timeout=endpoint.timeout,
        retries=endpoint.retries,
        local=endpoint.local,
        secrets=endpoint.secrets,
        messages=talk.messages,
        options=options,
        format=fmt,
        think=think,
        stream=req.stream,
        tools=tools,
        tool_choice=tool_choice,
        format_name=req.format_name,
        format_strict=req.format_strict,
        prompt=talk.prompt,
        suffix=talk.suffix,
        logprobs=req.logprobs,
        top_logprobs=top_logprobs,
        keep_alive=checks.keep_alive(req.keep_alive),
    )
    plan = Plan(
        entry,
        get_adapter(entry.provider),
        call,
        talk.history,
        started=started,
        want_context=talk.want_context,
        quota=quota,
    )
    if req.images or req.message_images:
        if req.images and talk.prompt is not None:
            raise UsageError(
                "images cannot be sent with raw, suffix or template (a text completion); "
                "send them with a normal prompt",
                "images",
            )
        attach.place(plan, [*req.message_images, *((talk.messages[-1], raw) for raw in req.images)])
    if len(route) > 1:
        _candidates(plan, route, registry, req, timeout, retries)
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


def _takes(e: ModelEntry, call: Call, images: bool) -> bool:
    """Whether ``e`` can take what ``call`` asks for (the capabilities it uses)."""
    spec, caps = PROVIDERS[e.provider], e.capabilities
    return not (
        "completion" not in caps
        or (images and "vision" not in caps)
        or (call.think not in (None, False) and "thinking" not in caps)
        or (call.tools and "tools" not in caps)
        or (call.suffix and "insert" not in caps)
        or (call.prompt is not None and not spec.local and (spec.completions_path is None or call.format))
        or (call.logprobs and not spec.logprobs)
    )


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
    for e in route:
        if e is first or not _takes(e, call, images):
            continue
        spec = PROVIDERS[e.provider]
        try:
            endpoint = registry.endpoint(e, timeout=timeout, retries=retries)
            asked, _ = opts.check(req.options, spec.options)
        except (MissingKey, UsageError):  # its key is not set, or it takes an option differently
            continue
        options = {k: v for k, v in e.options.items() if k in spec.options}
        options.update(asked)
        c = replace(call, **endpoint._asdict(), options=options)
        out.append(Candidate(e, get_adapter(e.provider), c, registry.router(registry.models.get(e.name, e))))
    for i in range(len(out) - 1):
        if out[i].entry.deployment and out[i + 1].entry.name == out[i].entry.name:
            out[i].call = replace(out[i].call, retries=0)
    plan.call = out[0].call
    plan.candidates = out
