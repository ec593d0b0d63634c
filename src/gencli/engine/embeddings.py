"""Embeddings on the same registry and transports as generation.

``embed(registry, model, inputs, transport)`` (CLI, httpx) and ``aembed(...)``
(server, gencli.transports.httpclient) validate the inputs, resolve a model with the ``embedding``
capability, send the inputs in batches the provider accepts
(``adapter.build_embed`` / ``adapter.parse_embed``, sans-I/O like generation) and
return the vectors L2-normalised, as Ollama does. An in-process adapter (the local
provider) may offer ``adapter.embed(call, inputs) -> (vectors, prompt_tokens)``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from gencli.config.registry import ModelEntry, Registry
from gencli.core.errors import GencliError, UpstreamError, UsageError
from gencli.providers import get_adapter
from gencli.providers.base import (
    AsyncTransport,
    Call,
    HttpEmbedder,
    InProcessEmbedder,
    SyncTransport,
)

MAX_INPUTS = 10_000
MAX_DIMENSIONS = 65536


@dataclass(slots=True)
class Embeddings:
    model: str
    embeddings: list[list[float]] = field(default_factory=list)
    prompt_tokens: int | None = None
    total_duration: int = 0  # ns
    load_duration: int = 0  # ns


@dataclass(slots=True)
class EmbedPlan:
    entry: ModelEntry
    adapter: HttpEmbedder | InProcessEmbedder
    call: Call
    inputs: list[str]
    started: int


def check_inputs(raw: Any, name: str = "input") -> list[str]:
    """A string or a list of strings -> a list of strings (UsageError otherwise)."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise UsageError(f"{name} must be a string or an array of strings", name)
    if len(raw) > MAX_INPUTS:
        raise UsageError(f"{name} has {len(raw)} entries; at most {MAX_INPUTS}", name)
    for i, text in enumerate(raw):
        where = f"{name}[{i}]" if len(raw) > 1 else name
        if not isinstance(text, str):
            raise UsageError(f"{where} must be a string", name)
        if not text.strip():
            raise UsageError(f"{where} is empty; give text to embed", name)
        if "\x00" in text:
            raise UsageError(f"{where} contains a NUL character", name)
    return raw


def default_embed_model(registry: Registry) -> str:
    """``GENCLI_EMBED_MODEL``, else the first ready model with the ``embedding`` capability."""
    explicit = registry.settings.embed_model
    if explicit:
        return explicit
    for entry in registry.models.values():
        if "embedding" in entry.capabilities and registry.missing_key(entry) is None:
            return entry.name
    raise UsageError(
        "no embedding model is ready: name one with -m (e.g. text-embedding-3-small, which needs "
        "OPENAI_API_KEY, or gemini-embedding-001, which needs GEMINI_API_KEY)",
        "model",
    )


def prepare_embed(
    registry: Registry, model: str | None, inputs: Any, dimensions: Any = None, entry: ModelEntry | None = None
) -> EmbedPlan:
    started = time.perf_counter_ns()
    texts = check_inputs(inputs)
    if entry is None:
        entry = registry.resolve(model or default_embed_model(registry))
    if "embedding" not in entry.capabilities:
        raise UsageError(
            f"model '{entry.name}' does not support embeddings (no 'embedding' capability); "
            f"use an embedding model such as text-embedding-3-small",
            "model",
        )
    adapter = get_adapter(entry.provider)
    if not isinstance(adapter, (HttpEmbedder, InProcessEmbedder)):
        raise UsageError(f"model '{entry.name}': the {entry.provider} provider cannot embed", "model")
    options: dict[str, Any] = {}
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise UsageError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}", "dimensions")
        options["dimensions"] = dimensions
    call = Call(**registry.endpoint(entry)._asdict(), messages=[], options=options, stream=False)
    return EmbedPlan(entry, adapter, call, texts, started)


def normalize(vector: list[float]) -> list[float]:
    """The vector scaled to unit L2 length (a zero vector stays zero)."""
    total = math.fsum(x * x for x in vector)
    if total <= 0:
        return [float(x) for x in vector]
    scale = 1.0 / math.sqrt(total)
    return [x * scale for x in vector]


def _batches(plan: EmbedPlan) -> list[list[str]]:
    size = plan.adapter.embed_batch
    return [plan.inputs[i : i + size] for i in range(0, len(plan.inputs), size)]


def _collect(
    plan: EmbedPlan, result: Embeddings, batch: list[str], vectors: list[list[float]], tokens: int | None
) -> None:
    if len(vectors) != len(batch):
        raise UpstreamError(
            f"{plan.entry.name}: the provider returned {len(vectors)} embeddings for {len(batch)} inputs"
        )
    for vec in vectors:
        if not vec or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
            raise UpstreamError(f"{plan.entry.name}: the provider returned an embedding that is not a list of numbers")
        result.embeddings.append(normalize(vec))
    if tokens is not None:
        result.prompt_tokens = (result.prompt_tokens or 0) + tokens


def _finish(plan: EmbedPlan, result: Embeddings, sent: int) -> Embeddings:
    result.total_duration = time.perf_counter_ns() - plan.started
    result.load_duration = max(0, sent - plan.started)
    return result  # prompt_tokens stays None when the provider does not count (Gemini)


def _no_transport(plan: EmbedPlan) -> GencliError:
    return GencliError(f"{plan.entry.name}: no transport to reach {plan.call.base_url or 'the upstream'}")


def execute_embed(plan: EmbedPlan, transport: SyncTransport | None) -> Embeddings:
    result = Embeddings(plan.entry.name)
    sent = time.perf_counter_ns()
    adapter = plan.adapter
    for batch in _batches(plan):
        if adapter.in_process:
            vectors, tokens = adapter.embed(plan.call, batch)
        else:
            if transport is None:
                raise _no_transport(plan)
            http = adapter.build_embed(plan.call, batch)
            with transport.open(http, plan.call) as resp:
                body = resp.read()
                if resp.status >= 400:
                    raise adapter.parse_error(plan.call, resp.status, resp.headers, body)
            vectors, tokens = adapter.parse_embed(plan.call, body)
        _collect(plan, result, batch, vectors, tokens)
    return _finish(plan, result, sent)


async def aexecute_embed(plan: EmbedPlan, transport: AsyncTransport | None) -> Embeddings:
    result = Embeddings(plan.entry.name)
    sent = time.perf_counter_ns()
    adapter = plan.adapter
    for batch in _batches(plan):
        if adapter.in_process:
            vectors, tokens = await asyncio.to_thread(adapter.embed, plan.call, batch)
        else:
            if transport is None:
                raise _no_transport(plan)
            http = adapter.build_embed(plan.call, batch)
            async with transport.open(http, plan.call) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise adapter.parse_error(plan.call, resp.status, resp.headers, body)
            vectors, tokens = adapter.parse_embed(plan.call, body)
        _collect(plan, result, batch, vectors, tokens)
    return _finish(plan, result, sent)


def embed(
    registry: Registry, model: str | None, inputs: Any, transport: SyncTransport | None, dimensions: Any = None
) -> Embeddings:
    """Embed ``inputs`` (a string or a list of strings) over a synchronous transport."""
    return execute_embed(prepare_embed(registry, model, inputs, dimensions), transport)


async def aembed(
    registry: Registry, model: str | None, inputs: Any, transport: AsyncTransport | None, dimensions: Any = None
) -> Embeddings:
    """Embed ``inputs`` over an asynchronous transport (the server's)."""
    return await aexecute_embed(prepare_embed(registry, model, inputs, dimensions), transport)


__all__ = ["Embeddings", "aembed", "check_inputs", "default_embed_model", "embed", "normalize", "prepare_embed"]
