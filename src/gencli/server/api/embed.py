"""Embedding routes: Ollama's POST /api/embed and legacy POST /api/embeddings, and
OpenAI's POST /v1/embeddings. All run :func:`gencli.engine.embeddings.aexecute_embed` on the
server's shared transport; vectors are L2-normalised (as Ollama's are).

- /api/embed: ``{"model", "input": str | [str], "dimensions"?}`` ->
  ``{"model", "embeddings": [[...]], "total_duration", "load_duration", "prompt_eval_count"}``
- /api/embeddings: ``{"model", "prompt"}`` -> ``{"embedding": [...]}``
- /v1/embeddings: ``{"model", "input", "encoding_format": "float" | "base64", "dimensions"?}``
  -> OpenAI's list; base64 is the little-endian float32 bytes of each vector.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Callable
from functools import partial
from typing import Any

from gencli.config.registry import ModelEntry
from gencli.core.errors import GencliError, UsageError
from gencli.engine.embeddings import Embeddings, aexecute_embed, check_inputs, prepare_embed
from gencli.server.asgi import Handler, Receive, Scope, Send, internal, send_json
from gencli.server.state import State


async def _embed(
    state: State, scope: Scope, data: dict[str, Any], inputs: Any, empty_ok: bool
) -> tuple[ModelEntry, Embeddings | None]:
    entry = state.resolve(await state.admit(scope, data))
    if empty_ok and (inputs == "" or inputs == []):
        # Ollama answers an empty input with no vectors (a load probe), after checking the model
        prepare_embed(state.registry, None, "x", entry=entry)
        state.touch(entry.name)
        return entry, None
    plan = prepare_embed(state.registry, None, inputs, data.get("dimensions"), entry=entry)
    state.touch(entry.name)
    try:
        result = await aexecute_embed(plan, state.transport)
    except GencliError:
        raise
    except Exception as exc:
        raise internal(exc) from None
    scope["gencli"]["tokens"] = {"prompt": result.prompt_tokens, "completion": None}
    return entry, result


async def api_embed(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    if "input" not in data or data["input"] is None:
        raise UsageError("input is required (a string or an array of strings)", "input")
    entry, result = await _embed(state, scope, data, data["input"], empty_ok=True)
    if result is None:
        await send_json(send, 200, {"model": entry.name, "embeddings": []})
        return
    await send_json(
        send,
        200,
        {
            "model": entry.name,
            "embeddings": result.embeddings,
            "total_duration": result.total_duration,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_tokens or 0,
        },
    )


async def api_embeddings(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    prompt = data.get("prompt")
    if prompt is None:
        raise UsageError("prompt is required", "prompt")
    if not isinstance(prompt, str):
        raise UsageError("prompt must be a string", "prompt")
    if prompt:
        check_inputs(prompt, "prompt")  # errors name this route's field
    _, result = await _embed(state, scope, data, prompt, empty_ok=True)
    await send_json(send, 200, {"embedding": result.embeddings[0] if result is not None else []})


def _b64(vector: list[float]) -> str:
    arr = array("f", vector)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


async def v1_embeddings(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    inputs = data.get("input")
    if inputs is None:
        raise UsageError("input is required (a string or an array of strings)", "input")
    if (
        isinstance(inputs, list)
        and inputs
        and all(isinstance(t, int) for t in inputs)
        or (isinstance(inputs, list) and inputs and all(isinstance(t, list) for t in inputs))
    ):
        raise UsageError("input as token arrays is not supported; send text", "input")
    fmt = data.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise UsageError('encoding_format must be "float" or "base64"', "encoding_format")
    entry, result = await _embed(state, scope, data, inputs, empty_ok=False)
    assert result is not None  # _embed answers None only for an empty input with empty_ok
    encode: Callable[[list[float]], Any] = _b64 if fmt == "base64" else (lambda v: v)
    tokens = result.prompt_tokens or 0
    await send_json(
        send,
        200,
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.embeddings)
            ],
            "model": entry.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


def routes(state: State) -> dict[tuple[str, str], Handler]:
    """The embedding routes, for the app's table."""
    return {
        ("POST", "/api/embed"): partial(api_embed, state),
        ("POST", "/api/embeddings"): partial(api_embeddings, state),
        ("POST", "/v1/embeddings"): partial(v1_embeddings, state),
    }
