"""OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions (legacy text
completions, ``suffix`` for fill-in-the-middle), GET /v1/models and GET /v1/models/{id}.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
Streams are SSE: a first delta with the role, content (and ``reasoning_content``)
deltas, a finish chunk, a usage chunk when ``stream_options.include_usage``, then
``data: [DONE]``.
"""

from __future__ import annotations

import os
import re
import time
from functools import partial
from typing import Any

from gencli.config.registry import ModelEntry
from gencli.core.errors import GencliError, UsageError
from gencli.core.events import Done, TokenLogprob
from gencli.core.request import GenerateRequest, Message
from gencli.core.tools import OPENAI_CALL, openai_calls_out
from gencli.server.api.messages import Turns, chat_tools, content_text, objects, role
from gencli.server.api.streaming import answer
from gencli.server.asgi import (
    H_NOCACHE,
    H_SSE,
    Handler,
    Headers,
    Receive,
    Scope,
    Send,
    dumps,
    field_bool,
    field_int,
    field_list,
    openai_error,
    send_json,
)
from gencli.server.state import KEEP_ALIVE, State

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOP_LOGPROBS = 20


def _unsupported(data: dict[str, Any]) -> None:
    """Parameters gencli cannot honour are a 400 naming them, never silently ignored."""
    n = data.get("n")
    if n is not None and n != 1:
        raise UsageError("n must be 1: gencli serve returns one choice per request (send n requests for more)", "n")
    best_of = data.get("best_of")
    if best_of is not None and best_of != 1:
        raise UsageError("best_of must be 1: gencli serve returns one choice per request", "best_of")
    if data.get("logit_bias"):
        raise UsageError("logit_bias is not supported by gencli serve; leave it out", "logit_bias")
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise UsageError('modalities must be ["text"]: gencli serve answers with text only', "modalities")
    if data.get("audio") is not None:
        raise UsageError("audio output is not supported by gencli serve; leave out audio", "audio")


def _chat_logprobs(data: dict[str, Any]) -> tuple[bool, int]:
    lp = data.get("logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise UsageError("logprobs must be true or false", "logprobs")
    top = data.get("top_logprobs")
    if top is None:
        return bool(lp), 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise UsageError(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    if not lp:
        raise UsageError("top_logprobs needs logprobs: true", "top_logprobs")
    return True, top


def _openai_logprobs(tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Chat Completions' ``logprobs.content``: token objects with ``bytes`` and ``top_logprobs``."""

    def item(t: Any) -> dict[str, Any]:
        return {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.bytes if t.bytes is not None else list(t.token.encode("utf-8")),
        }

    return [{**item(t), "top_logprobs": [item(a) for a in t.top]} for t in tokens]


ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
EFFORT = {"low": "low", "medium": "medium", "high": "high", "minimal": False, "none": False}


def _options(data: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p"):
        if data.get(key) is not None:
            options[key] = data[key]
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = field_int(data, key)  # a positive count (Ollama's num_predict -1/-2 meanings do not apply)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    if data.get("stop") is not None:
        options["stop"] = data["stop"]
    return options


def _format(data: dict[str, Any]) -> tuple[Any, str | None, bool | None]:
    """``response_format`` -> (the engine's format, the schema's name, its strict flag)."""
    rf = data.get("response_format")
    if rf is None:
        return None, None, None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise UsageError("response_format must be an object with a type", "response_format")
    kind = rf["type"]
    if kind == "text":
        return None, None, None
    if kind == "json_object":
        return "json", None, None
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
            raise UsageError("response_format.json_schema.schema must be a JSON schema object", "response_format")
        name, strict = js.get("name"), js.get("strict")
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise UsageError(
                "response_format.json_schema.name must be 1 to 64 letters, digits, _ or -", "response_format"
            )
        if strict is not None and not isinstance(strict, bool):
            raise UsageError("response_format.json_schema.strict must be true or false", "response_format")
        return js["schema"], name, strict
    raise UsageError(
        f"response_format.type '{kind}' is not supported (text, json_object, json_schema)", "response_format"
    )


def _include_usage(data: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: a streamed reply ends with a chunk holding the usage."""
    so = data.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise UsageError("stream_options must be an object", "stream_options")
    return bool(so and so.get("include_usage"))


def _think(data: dict[str, Any]) -> Any:
    effort = data.get("reasoning_effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORT:
        raise UsageError("reasoning_effort must be one of none, minimal, low, medium, high", "reasoning_effort")
    return EFFORT[effort]


def _part(where: str, part: Any, _: str, images: list[Any]) -> str | None:
    """A content part of the message at ``where``: a text part's text, or an image_url put with the images."""
    if not isinstance(part, dict):
        raise UsageError(f"{where}.content parts must be objects", "messages")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise UsageError(f"{where}.content text part needs a string 'text'", "messages")
        return text
    if kind == "image_url":
        url = part.get("image_url")
        images.append(url.get("url") if isinstance(url, dict) else url)
        return None
    raise UsageError(f"{where}.content part type '{kind}' is not supported (text, image_url)", "messages")


def messages_in(raw: list[Any]) -> tuple[list[Message], list[tuple[Message, Any]]]:
    """OpenAI chat messages -> engine Messages, and their images (still raw) for the engine."""
    turns = Turns()
    for where, m in objects(raw, "messages", "an object with role and content"):
        message = Message(role(m, where, ROLE_MAP), "")
        images: list[Any] = []
        message.content = content_text(
            m.get("content"), f"{where}.content", "parts", partial(_part, where), images, optional=True
        )
        turns.add(message, images)
        chat_tools(m, where, message, OPENAI_CALL, id_required=True)
    return turns.result()


def _usage(done: Done) -> dict[str, Any]:
    p = done.prompt_eval_count or 0
    c = done.eval_count or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class OpenAIChat:
    headers: Headers = [H_SSE, H_NOCACHE]

    __slots__ = ("model", "id", "created", "include_usage", "_sent_role", "_text")

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": {"content": _openai_logprobs(tokens), "refusal": None},
                    "finish_reason": None,
                }
            ],
        }
        return self._role() + b"data: " + dumps(obj) + b"\n\n"

    def __init__(self, model: str, include_usage: bool):
        self.model = model
        self.id = "chatcmpl-" + os.urandom(12).hex()
        self.created = int(time.time())
        self.include_usage = include_usage
        self._sent_role = False
        # a content chunk is these bytes with the text's JSON string spliced in (as _chunk would write it)
        head = self._chunk({"content": ""})
        cut = head.index(b'"content":""') + len(b'"content":')
        self._text = (head[:cut], head[cut + 2 :])

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + dumps(obj) + b"\n\n"

    def _role(self) -> bytes:
        if self._sent_role:
            return b""
        self._sent_role = True
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        before, after = self._text
        if self._sent_role:
            return b"".join((before, dumps(text), after))
        return self._role() + b"".join((before, dumps(text), after))

    def reasoning(self, text: str) -> bytes:
        return self._role() + self._chunk({"reasoning_content": text})

    def final(self, done: Done) -> bytes:
        out = self._role()
        if done.tool_calls:  # OpenAI's streamed shape: tool_calls deltas with an index, arguments a JSON string
            out += self._chunk({"tool_calls": openai_calls_out(done.tool_calls, with_index=True)})
        out += self._chunk({}, done.done_reason)
        if self.include_usage:
            obj = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": _usage(done),
            }
            out += b"data: " + dumps(obj) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self, done: Done) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": done.text}
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        if done.tool_calls:
            message["tool_calls"] = openai_calls_out(done.tool_calls)
            if not done.text:
                message["content"] = None
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": done.done_reason,
                    "logprobs": None
                    if done.logprobs is None
                    else {"content": _openai_logprobs(done.logprobs), "refusal": None},
                }
            ],
            "usage": _usage(done),
        }

    def error_line(self, exc: GencliError) -> bytes:
        return b"data: " + dumps(openai_error(exc)) + b"\n\n"


async def chat_completions(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    stream = field_bool(data, "stream", False)
    include_usage = _include_usage(data)
    raw = field_list(data, "messages")
    if not raw:
        raise UsageError("messages is required (a non-empty array)", "messages")
    _unsupported(data)
    messages, images = messages_in(raw)
    fmt, fmt_name, fmt_strict = _format(data)
    logprobs, top = _chat_logprobs(data)
    req = GenerateRequest(
        model=model,
        messages=messages,
        message_images=images,
        options=_options(data),
        format=fmt,
        format_name=fmt_name,
        format_strict=fmt_strict,
        think=_think(data),
        stream=stream,
        tools=data.get("tools"),
        tool_choice=data.get("tool_choice"),
        logprobs=logprobs,
        top_logprobs=top,
        keep_alive=KEEP_ALIVE,
    )
    await answer(state, scope, receive, send, req, lambda plan: OpenAIChat(plan.entry.name, include_usage))


def _model_object(state: State, entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": state.modified_ts, "owned_by": entry.provider}


async def models(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = [_model_object(state, e) for e in state.ready_models(scope)]
    await send_json(send, 200, {"object": "list", "data": data})


async def model(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """GET /v1/models/{id} (the openai SDK's ``models.retrieve``): a registry name, with or
    without ``:latest``; 404 in OpenAI's shape for any other."""
    from urllib.parse import unquote

    name = unquote(scope["path"][len("/v1/models/") :])
    entry = state.resolve(name)
    scope.setdefault("gencli", {})["model"] = entry.name
    await send_json(send, 200, _model_object(state, entry))


class OpenAICompletion:
    """Legacy completions (``text_completion``): a choice with ``text``; streamed as SSE chunks."""

    headers: Headers = [H_SSE, H_NOCACHE]

    __slots__ = ("model", "id", "created", "include_usage", "top")

    def __init__(self, model: str, include_usage: bool, top: int):
        self.model = model
        self.id = "cmpl-" + os.urandom(12).hex()
        self.created = int(time.time())
        self.include_usage = include_usage
        self.top = top

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + dumps(obj) + b"\n\n"

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any]:
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in tokens] if self.top else None,
            "text_offset": [],
        }

    def text(self, text: str) -> bytes:
        return self._event([{"text": text, "index": 0, "logprobs": None, "finish_reason": None}])

    def reasoning(self, text: str) -> bytes:
        return b""

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        return self._event([{"text": "", "index": 0, "logprobs": self._logprobs(tokens), "finish_reason": None}])

    def final(self, done: Done) -> bytes:
        out = self._event([{"text": "", "index": 0, "logprobs": None, "finish_reason": done.done_reason}])
        if self.include_usage:
            out += self._event([], _usage(done))
        return out + b"data: [DONE]\n\n"

    def whole(self, done: Done) -> dict[str, Any]:
        logprobs = None if done.logprobs is None else self._logprobs(done.logprobs)
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"text": done.text, "index": 0, "logprobs": logprobs, "finish_reason": done.done_reason}],
            "usage": _usage(done),
        }

    def error_line(self, exc: GencliError) -> bytes:
        return b"data: " + dumps(openai_error(exc)) + b"\n\n"


async def completions(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/completions: ``prompt`` sent as it is (a text completion), ``suffix`` for
    fill-in-the-middle on models with the 'insert' capability."""
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    stream = field_bool(data, "stream", False)
    include_usage = _include_usage(data)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise UsageError("prompt must be a string (one prompt per request)", "prompt")
    suffix = data.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise UsageError("suffix must be a string", "suffix")
    _unsupported(data)
    if data.get("echo"):
        raise UsageError("echo is not supported by gencli serve; leave it out", "echo")
    top = data.get("logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 5):
        raise UsageError("logprobs must be an integer from 0 to 5", "logprobs")
    req = GenerateRequest(
        model=model,
        prompt=prompt,
        options=_options(data),
        stream=stream,
        raw=True,
        suffix=suffix or None,
        logprobs=top is not None,
        top_logprobs=top or 0,
        keep_alive=KEEP_ALIVE,
    )
    await answer(
        state, scope, receive, send, req, lambda plan: OpenAICompletion(plan.entry.name, include_usage, top or 0)
    )


def routes(state: State) -> dict[tuple[str, str], Handler]:
    """OpenAI's chat completions, completions and models list, for the app's table."""
    return {
        ("POST", "/v1/chat/completions"): partial(chat_completions, state),
        ("POST", "/v1/completions"): partial(completions, state),
        ("GET", "/v1/models"): partial(models, state),
    }


def prefix_routes(state: State) -> list[tuple[str, str, Handler]]:
    """Routes with a parameter in the path: (method, path prefix, handler)."""
    return [("GET", "/v1/models/", partial(model, state))]
