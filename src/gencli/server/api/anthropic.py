"""Anthropic's Messages API on the engine: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` (what Claude Code calls with ``ANTHROPIC_BASE_URL``).

Pure translation first (request JSON -> engine request; engine events -> reply bytes),
then the route glue, which runs the plan with :func:`gencli.server.api.streaming.run`.
Errors have Anthropic's shape (:func:`gencli.server.asgi.anthropic_error`)
``{"type": "error", "error": {"type", "message"}}``; once a stream started, a failure
is an ``error`` event. Streams are SSE events named by their type: ``message_start``,
``ping``, ``content_block_start`` / ``content_block_delta`` (``text_delta``,
``thinking_delta``, ``input_json_delta``) / ``content_block_stop``, ``message_delta``
(``stop_reason``, usage) and ``message_stop``.

What gencli keeps of a conversation is what every upstream takes: text, images, tool
calls and results. ``thinking`` blocks sent back are dropped (their signatures only
mean something to Anthropic); ``cache_control``, ``metadata`` and other fields gencli
has no use for are accepted and ignored, as Ollama does.

Token counts: ``count_tokens`` asks an Anthropic upstream its own count, uses the model's
tokenizer (and chat template) for a local model, and otherwise estimates: one token per
4 characters of text (system, messages, tool definitions, tool calls and results), 4 per
message, 1600 per image (Anthropic's size for a ~1.15 megapixel image).
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

from gencli.core.errors import GencliError, UsageError
from gencli.core.events import Done, TokenLogprob, ToolCall
from gencli.core.request import GenerateRequest, Message
from gencli.engine import Plan, afetch_images, prepare
from gencli.providers.base import Call
from gencli.server.api.messages import Turns, content_text, required_str, role, string
from gencli.server.api.streaming import answer
from gencli.server.asgi import (
    H_NOCACHE,
    H_SSE,
    Handler,
    Headers,
    Receive,
    Scope,
    Send,
    anthropic_error,
    dumps,
    field_bool,
    field_int,
    send_json,
)
from gencli.server.state import State

PATHS = ("/v1/messages", "/v1/messages/count_tokens")

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
IMAGE_TOKENS = 1600
ROLES = {"user": "user", "assistant": "assistant"}


# -- request -> engine ------------------------------------------------------------------


def system_text(raw: Any) -> str | None:
    """``system``: a string or a list of text blocks."""
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise UsageError("system must be a string or an array of text blocks", "system")
    texts = []
    for i, block in enumerate(raw):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise UsageError(f'system[{i}] must be a text block {{"type": "text", "text": ...}}', "system")
        texts.append(string(block.get("text"), f"system[{i}].text"))
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> str:
    """An image block's base64 data or URL (decoded or fetched by the route)."""
    source = block.get("source")
    if isinstance(source, dict):
        kind = source.get("type")
        value = source.get("data") if kind == "base64" else source.get("url") if kind == "url" else None
        if isinstance(value, str) and value:
            return value
    raise UsageError(
        f'{where}.source must be {{"type": "base64", "media_type", "data"}} or {{"type": "url", "url"}}', "messages"
    )


def _result_part(part: Any, where: str, images: list[Any]) -> str | None:
    """A block of a tool_result's content: text, or an image (put with the images)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return string(part.get("text"), f"{where}.text")
    if kind == "image":
        images.append(_image(part, where))
        return None
    raise UsageError(f"{where}.type {kind!r} is not supported in a tool_result (text, image)", "messages")


def _result_content(block: dict[str, Any], where: str, images: list[Any]) -> str:
    """A tool_result's content: a string or text and image blocks (images go to ``images``)."""
    content = content_text(block.get("content"), f"{where}.content", "blocks", _result_part, images, optional=True)
    return f"Error: {content}" if block.get("is_error") is True else content


def messages_in(raw: Any) -> tuple[list[Message], list[tuple[Message, Any]]]:
    """Anthropic messages -> engine Messages (tool results become role "tool" messages
    before the rest of their user turn), and their images (still raw) for the engine."""
    if not isinstance(raw, list) or not raw:
        raise UsageError('messages is required (a non-empty array of {"role", "content"})', "messages")
    turns = Turns()
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        who = role(m, where, ROLES, says='"user" or "assistant"')
        content = m.get("content")
        if isinstance(content, str):
            turns.add(Message(who, string(content, f"{where}.content")))
            continue
        if not isinstance(content, list):
            raise UsageError(f"{where}.content must be a string or an array of content blocks", "messages")
        texts: list[str] = []
        images: list[Any] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(content):
            w = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(string(block.get("text"), f"{w}.text"))
            elif kind in ("thinking", "redacted_thinking") and who == "assistant":
                continue  # signed by Anthropic for Anthropic; no upstream can use it
            elif kind == "image" and who == "user":
                images.append(_image(block, w))
            elif kind == "tool_use" and who == "assistant":
                name, args = required_str(block, "name", w, "a tool_use block"), block.get("input", {})
                if not isinstance(args, dict):
                    raise UsageError(f"{w}.input must be an object", "messages")
                cid = block.get("id")
                calls.append(ToolCall(cid if isinstance(cid, str) else "", name, args))
            elif kind == "tool_result" and who == "user":
                cid = required_str(block, "tool_use_id", w, "a tool_result block")
                turns.add(Message("tool", _result_content(block, w, images), tool_call_id=cid))
            else:
                allowed = "text, thinking, tool_use" if who == "assistant" else "text, image, tool_result"
                article = "an" if who == "assistant" else "a"
                raise UsageError(
                    f"{w}.type {kind!r} is not supported in {article} {who} message ({allowed})", "messages"
                )
        if texts or images or calls:
            turns.add(Message(who, "\n".join(texts), tool_calls=calls), images)
    return turns.result()


def tools_in(raw: Any) -> list[dict[str, Any]] | None:
    """Anthropic tools (``name``, ``description``, ``input_schema``) -> function tools."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise UsageError('tools must be an array of {"name", "description", "input_schema"}', "tools")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise UsageError(f"tools[{i}] must be an object with a name and an input_schema", "tools")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise UsageError(
                f"tools[{i}].type {kind!r} is an Anthropic server tool; gencli serves custom tools "
                f"only (name, description, input_schema)",
                "tools",
            )
        fn = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def tool_choice_in(raw: Any) -> Any:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": raw.get("name")}}
    raise UsageError('tool_choice must be {"type": "auto" | "any" | "tool" | "none"}', "tool_choice")


def think_in(data: dict[str, Any], max_tokens: int | None) -> Any:
    """``thinking`` (and ``output_config.effort``) -> the engine's think: a budget becomes a level."""
    raw = data.get("thinking")
    oc = data.get("output_config")
    effort = oc.get("effort") if isinstance(oc, dict) else None
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise UsageError("output_config.effort must be low, medium, high, xhigh or max", "output_config")
    level = None if effort is None else {"xhigh": "high", "max": "high"}.get(effort, effort)
    if raw is None:
        return level
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return level or True
    if kind == "enabled":
        budget = raw.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
            raise UsageError("thinking.budget_tokens must be an integer of at least 1024", "thinking")
        if max_tokens is not None and budget >= max_tokens:
            raise UsageError(
                f"thinking.budget_tokens ({budget}) must be less than max_tokens ({max_tokens})", "thinking"
            )
        return level or ("low" if budget < 4096 else "medium" if budget < 16384 else "high")
    raise UsageError(
        'thinking must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or {"type": "disabled"}',
        "thinking",
    )


def format_in(data: dict[str, Any]) -> Any:
    oc = data.get("output_config")
    if oc is None:
        return None
    if not isinstance(oc, dict):
        raise UsageError("output_config must be an object", "output_config")
    fmt = oc.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise UsageError('output_config.format must be {"type": "json_schema", "schema": {...}}', "output_config")
    return fmt["schema"]


def request_in(data: dict[str, Any], model: str, counting: bool = False) -> GenerateRequest:
    """A Messages (or count_tokens) request body -> the engine request."""
    max_tokens = field_int(data, "max_tokens", 1)
    if max_tokens is None and not counting:
        raise UsageError("max_tokens is required: the most tokens to generate, e.g. 1024", "max_tokens")
    messages, pending = messages_in(data.get("messages"))
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p", "top_k"):
        if data.get(key) is not None:
            options[key] = data[key]
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stops = data.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
            raise UsageError("stop_sequences must be an array of strings", "stop_sequences")
        options["stop"] = stops
    return GenerateRequest(
        model=model,
        messages=messages,
        message_images=pending,
        system=system_text(data.get("system")),
        options=options,
        format=format_in(data),
        think=think_in(data, max_tokens),
        stream=False if counting else field_bool(data, "stream", False),
        tools=tools_in(data.get("tools")),
        tool_choice=tool_choice_in(data.get("tool_choice")),
    )


def estimate_tokens(call: Call, images: int = 0) -> int:
    """The documented estimate: 4 characters a token, 4 per message, 1600 per image
    (``images``: those not yet downloaded onto the messages)."""
    chars = 0
    n = IMAGE_TOKENS * images
    for m in call.messages:
        n += 4 + IMAGE_TOKENS * len(m.images)
        chars += len(m.content)
        for tc in m.tool_calls:
            chars += len(tc.name) + len(dumps(tc.arguments))
    for tool in call.tools or ():
        chars += len(dumps(tool["function"]))
    return n + math.ceil(chars / 4)


# -- engine events -> Anthropic's wire -------------------------------------------------


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"


def _tool_use(tc: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tc.id, "name": tc.name, "input": tc.arguments}


def stop_reason(done: Done) -> str:
    if done.tool_calls:
        return "tool_use"
    if done.stop_sequence:
        return "stop_sequence"
    return STOP_REASONS.get(done.done_reason, "end_turn")


class AnthropicMessages:
    """The reply shape for /v1/messages (streamed as SSE, or one message; see
    :mod:`gencli.server.api.streaming`)."""

    headers: Headers = [H_SSE, H_NOCACHE]

    __slots__ = ("model", "id", "input_estimate", "_started", "_index", "_open", "_delta")

    def __init__(self, model: str, input_estimate: int = 0):
        self.model = model
        self.id = "msg_" + os.urandom(12).hex()
        self.input_estimate = input_estimate  # message_start's input_tokens: the real count comes at the end
        self._started = False
        self._index = 0
        self._open: str | None = None  # the kind of the open content block
        self._delta = b""  # its delta event up to the text (the hot path)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        self._index += 1
        return _event("content_block_stop", {"index": self._index - 1})

    def _block(self, kind: str) -> bytes:
        """Open a block of ``kind`` unless one is open (closing a block of another kind first)."""
        if self._open == kind:
            return b""
        out = self._close()
        self._open = kind
        block = (
            {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
        )
        field = b'"text_delta","text":' if kind == "text" else b'"thinking_delta","thinking":'
        self._delta = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(self._index).encode()
            + b',"delta":{"type":'
            + field
        )
        return out + _event("content_block_start", {"index": self._index, "content_block": block})

    def text(self, text: str) -> bytes:
        out = b"" if self._open == "text" else self._start() + self._block("text")
        return out + self._delta + dumps(text) + b"}}\n\n"

    def reasoning(self, text: str) -> bytes:
        out = b"" if self._open == "thinking" else self._start() + self._block("thinking")
        return out + self._delta + dumps(text) + b"}}\n\n"

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        return b""  # this route never asks for log probabilities

    def final(self, done: Done) -> bytes:
        out = self._start() + self._close()
        for tc in done.tool_calls:
            start = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
            out += (
                _event("content_block_start", {"index": self._index, "content_block": start})
                + _event(
                    "content_block_delta",
                    {
                        "index": self._index,
                        "delta": {"type": "input_json_delta", "partial_json": dumps(tc.arguments).decode()},
                    },
                )
                + _event("content_block_stop", {"index": self._index})
            )
            self._index += 1
        usage = {"input_tokens": done.prompt_eval_count or 0, "output_tokens": done.eval_count or 0}
        return (
            out
            + _event(
                "message_delta",
                {"delta": {"stop_reason": stop_reason(done), "stop_sequence": done.stop_sequence}, "usage": usage},
            )
            + _event("message_stop", {})
        )

    def whole(self, done: Done) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if done.reasoning:
            content.append({"type": "thinking", "thinking": done.reasoning, "signature": ""})
        if done.text:
            content.append({"type": "text", "text": done.text})
        content.extend(_tool_use(tc) for tc in done.tool_calls)
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(done),
            "stop_sequence": done.stop_sequence,
            "usage": {"input_tokens": done.prompt_eval_count or 0, "output_tokens": done.eval_count or 0},
        }

    def error_line(self, exc: GencliError) -> bytes:
        return self._start() + _event("error", {"error": anthropic_error(exc)["error"]})


# -- routes -------------------------------------------------------------------------------


async def messages(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    req = request_in(data, model)

    def shape(plan: Plan) -> AnthropicMessages:
        estimate = estimate_tokens(plan.call, len(plan.image_urls)) if req.stream else 0
        return AnthropicMessages(plan.entry.name, estimate)

    await answer(state, scope, receive, send, req, shape)


async def count_tokens(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    req = request_in(data, model, counting=True)
    quota = state.image_quota()
    try:
        plan = prepare(req, state.registry, model_default=False, quota=quota)
        await afetch_images(plan, state.transport)
    finally:
        quota.release()
    call, adapter = plan.call, plan.adapter
    from gencli.providers.anthropic import AnthropicAdapter

    if isinstance(adapter, AnthropicAdapter):  # Anthropic counts itself
        http = adapter.build_count(call)
        async with state.transport.open(http, call) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise adapter.parse_error(call, resp.status, resp.headers, body)
        n = adapter.parse_count(call, body)
    elif plan.entry.provider == "local":
        import asyncio

        from gencli.providers.llama.runner import count_tokens as local_count

        n = await asyncio.to_thread(local_count, call)
    else:
        n = estimate_tokens(call)
    await send_json(send, 200, {"input_tokens": n})


def routes(state: State) -> dict[tuple[str, str], Handler]:
    """Anthropic's Messages API, for the app's table."""
    return {
        ("POST", "/v1/messages"): partial(messages, state),
        ("POST", "/v1/messages/count_tokens"): partial(count_tokens, state),
    }
