"""Ollama's API on the engine: /api/generate, /api/chat, /api/tags, /api/show, /api/ps,
/api/version and ``GET /``. Requests are translated to engine requests here; the reply
objects come from :mod:`gencli.core.replies` (shared with ``gencli generate --json``).

``/api/generate`` does not stream unless asked (the seed's contract); ``/api/chat``
streams unless told not to, as Ollama does. An empty prompt (or no messages) is a load
request: the model is checked and "loaded", nothing is generated.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from functools import partial
from typing import Any

import orjson

from gencli import __version__
from gencli.config.registry import ModelEntry, context_length
from gencli.core import replies
from gencli.core.errors import GencliError, ModelNotFound, UsageError
from gencli.core.events import Done, TokenLogprob
from gencli.core.request import GenerateRequest, Message
from gencli.core.tools import OLLAMA_CALL
from gencli.server.api.messages import Turns, chat_tools, objects, role, string
from gencli.server.api.streaming import answer
from gencli.server.asgi import (
    H_NDJSON,
    H_TEXT,
    Handler,
    Headers,
    Receive,
    Scope,
    Send,
    bounded,
    dumps,
    field_bool,
    field_list,
    field_str,
    send_bytes,
    send_json,
)
from gencli.server.state import KEEP_ALIVE, State

OLLAMA_VERSION = "0.14.0"  # what /api/version reports: the first Ollama with /v1/responses and /v1/messages
FOREVER = "2318-01-01T00:00:00Z"  # /api/ps's expires_at for a negative keep_alive (Ollama shows a far date)

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


# -- model metadata -----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_KEEP_ALIVE = 10 * 365 * 86400.0  # beyond ten years a duration means "forever"


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a Go duration ("5m", "1h30m", "-1s"),
    or a number in a string; negative: forever. None when absent."""
    if value is None:
        return None
    where = 'keep_alive must be a number of seconds or a duration such as "5m" (negative: keep loaded)'
    if isinstance(value, bool):
        raise UsageError(where, "keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise UsageError(where, "keep_alive") from None
            seconds = sign * sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise UsageError(where, "keep_alive")
    if not math.isfinite(seconds):
        raise UsageError(where, "keep_alive")
    return -1.0 if seconds < 0 or seconds > MAX_KEEP_ALIVE else seconds


def tagged(name: str) -> str:
    """The name as Ollama lists it: always with a tag (``llama3.1`` -> ``llama3.1:latest``)."""
    return name if ":" in name else name + ":latest"


def show_template(entry: ModelEntry) -> str:
    """The Go template /api/show reports: what gencli sends for this model. Clients read
    capabilities from it: LiteLLM "tools" in it (tools), Continue ``.Suffix`` (fill-in-the-middle)."""
    caps = entry.capabilities
    chat = (
        "{{- if .System }}system: {{ .System }}\n{{ end }}"
        + ("{{- if .Tools }}tools: {{ range .Tools }}{{ . }}\n{{ end }}{{ end }}" if "tools" in caps else "")
        + "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}{{ .Prompt }}"
    )
    if "insert" in caps:
        return "{{- if .Suffix }}{{ .Prompt }}<|fill-in-the-middle|>{{ .Suffix }}{{- else }}" + chat + "{{- end }}"
    return chat


def show_parameters(entry: ModelEntry, context: int) -> str:
    """/api/show's ``parameters``, as Ollama writes them: one ``name value`` line each, strings quoted."""
    lines = [f"{'num_ctx':<30} {context}"]
    for key, value in entry.options.items():
        if key == "num_ctx":
            continue
        if key == "stop" and isinstance(value, list):
            lines.extend(f"{'stop':<30} {orjson.dumps(s).decode()}" for s in value)
        elif not isinstance(value, (dict, list)):
            lines.append(f"{key:<30} {value}")
    return "\n".join(lines)


def keep_alive(data: dict[str, Any]) -> float:
    """The request's keep_alive in seconds, the server's default when absent (negative: forever)."""
    seconds = keep_alive_seconds(data.get("keep_alive"))
    return KEEP_ALIVE if seconds is None else seconds


def local_details(entry: ModelEntry) -> dict[str, Any] | None:
    """A local model's real details from its GGUF metadata (None if the file is unavailable)."""
    if entry.provider != "local":
        return None
    from gencli.providers.llama.gguf import local_details as details

    try:
        return details(entry)
    except GencliError:
        return None


def details(entry: ModelEntry) -> dict[str, Any]:
    local = local_details(entry)
    if local:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": local["family"],
            "families": local["families"],
            "parameter_size": local["parameter_size"],
            "quantization_level": local["quantization_level"],
        }
    return {
        "parent_model": "",
        "format": "gguf" if entry.provider == "local" else "api",
        "family": entry.provider,
        "families": [entry.provider],
        "parameter_size": "",
        "quantization_level": "",
    }


def digest(entry: ModelEntry) -> str:
    ident = f"{entry.name}\0{entry.provider}\0{entry.model}\0{entry.base_url}".encode()
    return hashlib.sha256(ident).hexdigest()


def tag(state: State, entry: ModelEntry) -> dict[str, Any]:
    name = tagged(entry.name)
    return {
        "name": name,
        "model": name,
        "modified_at": state.modified_at,
        "size": (local_details(entry) or {}).get("size", 0),
        "digest": digest(entry),
        "details": details(entry),
        "capabilities": list(entry.capabilities),
    }


# -- simple routes --------------------------------------------------------------------------


async def root(scope: Scope, receive: Receive, send: Send) -> None:
    await send_bytes(send, 200, b"Ollama is running", [H_TEXT], scope["method"] == "HEAD")


async def version(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"version": OLLAMA_VERSION}, scope["method"] == "HEAD")


async def tags(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    models = [tag(state, e) for e in state.ready_models(scope)]
    await send_json(send, 200, {"models": models}, scope["method"] == "HEAD")


async def ps(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    now = time.time()
    out = []
    for name, _used in sorted(state.last_used.items(), key=lambda kv: -kv[1]):
        entry = state.registry.models.get(name)
        expires = state.expires.get(name, 0.0)
        if entry is None or expires <= now:
            continue
        item = tag(state, entry)
        item["expires_at"] = (
            FOREVER if expires == math.inf else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        )
        item["size_vram"] = 0
        item["context_length"] = context_length(entry)
        out.append(item)
    await send_json(send, 200, {"models": out})


def model_or_name(data: dict[str, Any]) -> str:
    """The model /api/show and /api/pull name: ``model``, or ``name`` as older clients send it."""
    name = data.get("model") or data.get("name")
    if not name:
        raise UsageError("model is required", "model")
    if not isinstance(name, str):
        raise UsageError("model must be a string", "model")
    return name


async def show(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    name = model_or_name(data)
    entry = state.resolve(name)
    scope.setdefault("gencli", {})["model"] = entry.name
    arch = entry.provider
    window = context_length(entry)
    info: dict[str, Any] = {"general.architecture": arch, "general.basename": entry.model or entry.name}
    local = local_details(entry)
    if local:  # the GGUF's own metadata: architecture, parameter count, ...
        info = dict(local["model_info"])
        arch = str(info.get("general.architecture") or arch)
        info.setdefault("general.architecture", arch)
        info.setdefault("general.basename", entry.name)
        trained = local.get("context_length")
        if isinstance(trained, int) and trained > 0 and not entry.context_length:
            window = min(window, trained)  # what the model is loaded with (gencli.providers.llama.runner)
    info[f"{arch}.context_length"] = window  # VS Code Copilot sizes its prompts from this
    missing = state.registry.missing_key(entry)
    reply: dict[str, Any] = {
        "modelfile": f"# served by gencli {__version__}: {entry.provider} model {entry.model or entry.path}\n"
        f"FROM {entry.model or entry.path}\n",
        "parameters": show_parameters(entry, window),
        "template": show_template(entry),
        "license": "",
        "details": details(entry),
        "model_info": info,
        "capabilities": list(entry.capabilities),
        "modified_at": state.modified_at,
    }
    if entry.description:
        reply["description"] = entry.description
    if missing:
        reply["ready"] = False
        reply["missing_key"] = missing
    await send_json(send, 200, reply)


# -- model management -----------------------------------------------------------------------


async def pull(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Ollama's pull: a model named in models.json is already here, so the pull succeeds at
    once in Ollama's progress shape (streamed unless ``stream: false``); any other name is
    a 404 saying where models come from."""
    data = await state.read_json(scope, receive)
    name = model_or_name(data)
    stream = field_bool(data, "stream", True)
    try:
        entry = state.resolve(name)
    except ModelNotFound:
        shown = bounded(name)[:200]
        exc = ModelNotFound(
            f"model '{shown}' cannot be pulled: gencli serves the models named in its "
            f"models.json (run 'gencli models' to list them); add an entry there instead",
            name,
        )
        raise exc from None
    scope.setdefault("gencli", {})["model"] = entry.name
    if stream:
        lines = [
            {"status": "pulling manifest"},
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        await send_bytes(send, 200, b"".join(dumps(line) + b"\n" for line in lines), [H_NDJSON])
    else:
        await send_json(send, 200, {"status": "success"})


async def not_here(scope: Scope, receive: Receive, send: Send) -> None:
    """push, create, copy, delete and blobs: models are entries in models.json, not files here."""
    path = scope["path"]
    what = path.split("/")[2] if path.count("/") >= 2 else path
    raise UsageError(
        f"{what} is not supported by gencli serve: its models are the entries of models.json "
        f"(edit that file to add, copy or remove one)",
        None,
    )


# -- generation -----------------------------------------------------------------------------


async def generate(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    stream = field_bool(data, "stream", False)
    prompt = field_str(data, "prompt")
    images = field_list(data, "images")
    seconds = keep_alive(data)
    if not prompt and not images:
        entry = state.resolve(model)
        if seconds == 0:  # Ollama's unload (Open WebUI's unload button)
            await state.unload(entry)
            await send_load(send, {**replies.load_reply(entry.name), "done_reason": "unload"}, stream)
            return
        state.touch(entry.name, seconds)
        await send_load(send, replies.load_reply(entry.name), stream)
        return
    logprobs, top = ollama_logprobs(data)
    req = GenerateRequest(
        model=model,
        prompt=prompt or "",
        system=data.get("system"),
        images=images or [],
        options=data.get("options"),  # type: ignore[arg-type]  # checked by the engine
        format=data.get("format"),
        think=data.get("think"),
        context=data.get("context"),
        stream=stream,
        suffix=field_str(data, "suffix"),
        raw=field_bool(data, "raw", False),
        template=field_str(data, "template"),
        logprobs=logprobs,
        top_logprobs=top,
        keep_alive=seconds,
    )
    await answer(state, scope, receive, send, req, lambda plan: OllamaGenerate(plan.entry.name))


async def chat(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    stream = field_bool(data, "stream", True)  # Ollama streams chat unless told not to (the seed only covers generate)
    raw_messages = field_list(data, "messages")
    seconds = keep_alive(data)
    if not raw_messages:
        entry = state.resolve(model)
        reply = replies.chat_load_reply(entry.name)
        if seconds == 0:  # Ollama's unload (Open WebUI's unload button)
            await state.unload(entry)
            reply["done_reason"] = "unload"
        else:
            state.touch(entry.name, seconds)
        await send_load(send, reply, stream)
        return
    logprobs, top = ollama_logprobs(data)
    messages, images = messages_in(raw_messages)
    req = GenerateRequest(
        model=model,
        messages=messages,
        message_images=images,
        options=data.get("options"),  # type: ignore[arg-type]  # checked by the engine
        format=data.get("format"),
        think=data.get("think"),
        stream=stream,
        tools=data.get("tools"),
        logprobs=logprobs,
        top_logprobs=top,
        keep_alive=seconds,
    )
    await answer(state, scope, receive, send, req, lambda plan: OllamaChat(plan.entry.name))


async def send_load(send: Send, reply: dict[str, Any], stream: bool) -> None:
    if stream:
        await send_bytes(send, 200, dumps(reply) + b"\n", [H_NDJSON])
    else:
        await send_json(send, 200, reply)


# -- request -> engine ----------------------------------------------------------------------


def messages_in(raw: list[Any]) -> tuple[list[Message], list[tuple[Message, Any]]]:
    """Ollama chat messages -> engine Messages, and their images (still raw) for the engine."""
    turns = Turns()
    for where, m in objects(raw, "messages", "an object with role and content"):
        message = Message(role(m, where, ROLES), string(m.get("content"), f"{where}.content", optional=True))
        raw_images = m.get("images")
        if raw_images and not isinstance(raw_images, list):
            raise UsageError(f"{where}.images must be an array of base64 strings", "images")
        turns.add(message, raw_images or ())
        chat_tools(m, where, message, OLLAMA_CALL, names=("tool_name", "name"))
    return turns.result()


# -- engine events -> reply bytes -------------------------------------------------------------


class OllamaGenerate:
    """/api/generate's reply: NDJSON lines (:func:`gencli.core.replies.generate_chunk`, ``generate_final``)."""

    headers: Headers = [H_NDJSON]

    __slots__ = ("model", "_prefix")

    def __init__(self, model: str):
        self.model = model
        self._prefix = b'{"model":' + dumps(model) + b',"created_at":"'

    def text(self, text: str) -> bytes:  # the bytes of dumps(replies.generate_chunk(model, text)), spliced
        return b"".join((self._prefix, replies.now_iso().encode(), b'","response":', dumps(text), b',"done":false}\n'))

    def reasoning(self, text: str) -> bytes:
        return dumps(replies.generate_chunk(self.model, "", text)) + b"\n"

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        return dumps({**replies.generate_chunk(self.model), "logprobs": logprob_list(tokens)}) + b"\n"

    def final(self, done: Done) -> bytes:
        return dumps(replies.generate_final(done, True)) + b"\n"

    def whole(self, done: Done) -> dict[str, Any]:
        out = replies.generate_final(done, False)
        if done.logprobs is not None:
            out["logprobs"] = logprob_list(done.logprobs)
        return out

    def error_line(self, exc: GencliError) -> bytes:
        return dumps({"error": exc.message}) + b"\n"


class OllamaChat(OllamaGenerate):
    """/api/chat's reply: NDJSON lines with a ``message`` (:func:`gencli.core.replies.chat_chunk`, ...)."""

    __slots__ = ()

    def text(self, text: str) -> bytes:  # the bytes of dumps(replies.chat_chunk(model, text)), spliced
        return b"".join(
            (
                self._prefix,
                replies.now_iso().encode(),
                b'","message":{"role":"assistant","content":',
                dumps(text),
                b'},"done":false}\n',
            )
        )

    def reasoning(self, text: str) -> bytes:
        return dumps(replies.chat_chunk(self.model, "", text)) + b"\n"

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        return dumps({**replies.chat_chunk(self.model), "logprobs": logprob_list(tokens)}) + b"\n"

    def final(self, done: Done) -> bytes:
        line = dumps(replies.chat_final(self.model, done, False)) + b"\n"
        if done.tool_calls:  # as Ollama streams them: one line with the calls before the final line
            line = dumps(replies.chat_calls(self.model, done.tool_calls)) + b"\n" + line
        return line

    def whole(self, done: Done) -> dict[str, Any]:
        out = replies.chat_final(self.model, done, True)
        if done.logprobs is not None:
            out["logprobs"] = logprob_list(done.logprobs)
        return out


def ollama_logprobs(data: dict[str, Any]) -> tuple[bool, int]:
    """``logprobs`` and ``top_logprobs`` of an Ollama request (0-20, as Ollama checks)."""
    logprobs = field_bool(data, "logprobs", False)
    top = data.get("top_logprobs")
    if top is None:
        return logprobs, 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise UsageError("top_logprobs must be between 0 and 20", "top_logprobs")
    return logprobs, top


def logprob_list(tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Log probabilities in Ollama's shape: ``[{token, logprob, bytes?, top_logprobs?}]``."""
    out = []
    for t in tokens:
        item: dict[str, Any] = {"token": t.token, "logprob": t.logprob}
        if t.bytes is not None:
            item["bytes"] = t.bytes
        if t.top:
            item["top_logprobs"] = [
                {"token": a.token, "logprob": a.logprob, **({"bytes": a.bytes} if a.bytes is not None else {})}
                for a in t.top
            ]
        out.append(item)
    return out


def prefix_routes(state: State) -> list[tuple[str, str, Handler]]:
    """Routes with a parameter in the path: (method, path prefix, handler)."""
    return [("POST", "/api/blobs/", not_here), ("HEAD", "/api/blobs/", not_here)]


def routes(state: State) -> dict[tuple[str, str], Handler]:
    """Ollama's routes, for the app's table."""
    return {
        ("GET", "/"): root,
        ("HEAD", "/"): root,
        ("GET", "/api/version"): version,
        ("HEAD", "/api/version"): version,
        ("GET", "/api/tags"): partial(tags, state),
        ("HEAD", "/api/tags"): partial(tags, state),
        ("POST", "/api/show"): partial(show, state),
        ("GET", "/api/ps"): partial(ps, state),
        ("POST", "/api/generate"): partial(generate, state),
        ("POST", "/api/chat"): partial(chat, state),
        ("POST", "/api/pull"): partial(pull, state),
        ("POST", "/api/push"): not_here,
        ("POST", "/api/create"): not_here,
        ("POST", "/api/copy"): not_here,
        ("DELETE", "/api/delete"): not_here,
    }
