"""Anthropic's Messages API (api.anthropic.com), sans-I/O.

``POST {base}/v1/messages`` with the key in ``x-api-key`` and
``anthropic-version: 2023-06-01``. Answers are content blocks: ``text``,
``thinking`` (reasoning) and ``tool_use`` (arguments as an object). Streams are
SSE events named by their ``type``: ``message_start``, ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``thinking_delta``, ``input_json_delta``) /
``content_block_stop``, ``message_delta`` (stop reason, usage), ``message_stop``,
``ping``, and ``error`` (e.g. ``overloaded_error`` part-way through).

Thinking: Claude 4.6 and later take ``thinking: {"type": "adaptive"}`` with
``output_config.effort`` (the Claude 5 family refuses the older form); earlier models
take ``{"type": "enabled", "budget_tokens": N}``. Sampling: Claude 4.7 and later refuse
``temperature``, ``top_p`` and ``top_k`` at any value, and older models refuse
``temperature`` and ``top_k`` (and a ``top_p`` below 0.95) while thinking, so gencli
does not send them then (clients such as Open WebUI send a temperature by default).
Replaying a tool call made while thinking needs the signed thinking block of that
turn, which gencli does not keep: such a request is sent without thinking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from gencli.core.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UsageError,
)
from gencli.core.events import Event, Finish, ReasoningDelta, TextDelta, ToolCall, Usage
from gencli.core.request import Message
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, HttpAdapter, HttpRequest, SSEParser
from gencli.providers.common import call_secrets, http_error, json_post, loads, scrub, upstream_json

API_VERSION = "2023-06-01"  # the anthropic-version header
VERSION_HEADER = {"anthropic-version": API_VERSION}
DEFAULT_MAX_TOKENS = 8192  # Anthropic requires max_tokens; used when the caller sets no limit
MIN_BUDGET = 1024  # the smallest thinking budget Anthropic takes
BUDGETS = {"low": MIN_BUDGET, "medium": 8192, "high": 24576}  # think level -> budget_tokens (older models)
JSON_INSTRUCTION = "Reply with a single JSON object and nothing else."

STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}

# an error event's type -> the HTTP status Anthropic answers it with
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_NUMBER = re.compile(r"\d+")


def version(model: str) -> tuple[int, int]:
    """A Claude model's (major, minor) version, (0, 0) when the id names none. Ids put it
    after the family (claude-sonnet-4-6, claude-haiku-4-5-20251001, claude-opus-5) or
    before it (claude-3-7-sonnet-20250219); an 8-digit date is no version."""
    parts = [int(n) for n in _NUMBER.findall(model.rsplit("/", 1)[-1]) if len(n) < 8]
    if not parts:
        return (0, 0)
    return parts[0], parts[1] if len(parts) > 1 else 0


def adaptive(model: str) -> bool:
    """Claude 4.6 and later take adaptive thinking (the Claude 5 family only that)."""
    return version(model) >= (4, 6)


def takes_sampling(model: str) -> bool:
    """Claude 4.7 and later refuse temperature, top_p and top_k (a 400 at any value)."""
    return version(model) < (4, 7)


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _content(message: Message) -> list[dict[str, Any]]:
    """A user or assistant message as content blocks (images first, as Anthropic recommends)."""
    blocks: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.data}}
        for image in message.images
    ]
    if message.content:
        blocks.append(_text_block(message.content))
    for tc in message.tool_calls:
        blocks.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": tc.arguments})
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if message.content:
        block["content"] = message.content
    return block


class AnthropicAdapter:
    in_process: Literal[False] = False
    image_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif", "image/webp")

    def __init__(self, provider: str = "anthropic"):
        self.provider = provider
        self.label = PROVIDERS[provider].label

    # -- request ----------------------------------------------------------------
    def url(self, call: Call, path: str = "messages") -> str:
        base = call.base_url.rstrip("/")
        return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"

    def conversation(self, call: Call) -> tuple[list[str], list[dict[str, Any]]]:
        """(system texts, messages) with tool results as user turns and same-role turns merged."""
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for m in call.messages:
            if m.role == "system":
                if m.content:
                    system.append(m.content)
                continue
            if m.role == "tool":
                role, blocks = "user", [_tool_result(m)]
            else:
                role, blocks = ("assistant" if m.role == "assistant" else "user"), _content(m)
            if not blocks:
                continue  # Anthropic refuses empty content
            if messages and messages[-1]["role"] == role:
                last = messages[-1]["content"]
                if role == "user" and blocks[0]["type"] == "tool_result":
                    # tool results come first in their user turn
                    split = next((i for i, b in enumerate(last) if b["type"] != "tool_result"), len(last))
                    last[split:split] = blocks
                else:
                    last.extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
        if call.format == "json":
            system.append(JSON_INSTRUCTION)
        return system, messages

    def thinking(self, call: Call, messages: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None, int]:
        """(the ``thinking`` object, ``output_config.effort``, ``max_tokens``) for ``call.think``.
        Thinking counts toward max_tokens: without ``num_predict`` a budget is added to the
        default. Not while a tool call is forced (Anthropic refuses that) or replayed (see the
        module docstring)."""
        n = call.options.get("num_predict")
        explicit = isinstance(n, int) and n > 0
        max_tokens: int = n if isinstance(n, int) and n > 0 else DEFAULT_MAX_TOKENS
        think = call.think
        if think is None or "thinking" not in call.capabilities:
            return None, None, max_tokens
        effort = think if isinstance(think, str) else None
        skip = _replays_tool_use(messages) or bool(
            call.tools and (call.tool_choice == "required" or isinstance(call.tool_choice, dict))
        )
        if adaptive(call.model):
            if think is False:  # some of these models always think: ask for the least
                return None, "low", max_tokens
            return (None if skip else {"type": "adaptive", "display": "summarized"}), effort, max_tokens
        if think is False:
            return {"type": "disabled"}, None, max_tokens
        if skip:
            return None, None, max_tokens
        budget = BUDGETS[effort or "medium"]
        if not explicit:
            return {"type": "enabled", "budget_tokens": budget}, None, max_tokens + budget
        budget = min(budget, max_tokens - 1)
        if budget < MIN_BUDGET:
            raise UsageError(
                f"options.num_predict is {max_tokens}; Claude's extended thinking needs more than "
                f"{MIN_BUDGET} output tokens (raise it, or turn thinking off)",
                "options.num_predict",
            )
        return {"type": "enabled", "budget_tokens": budget}, None, max_tokens

    def body(self, call: Call) -> dict[str, Any]:
        o = call.options
        system, messages = self.conversation(call)
        thinking, effort, max_tokens = self.thinking(call, messages)
        body: dict[str, Any] = {"model": call.model, "max_tokens": max_tokens, "messages": messages}
        if system:
            body["system"] = "\n\n".join(system)
        if call.stream:
            body["stream"] = True
        if thinking is not None:
            body["thinking"] = thinking
        if takes_sampling(call.model):
            if "temperature" in o and not thinking:
                if o["temperature"] > 1:
                    raise UsageError(
                        f"options.temperature is {o['temperature']:g}; Anthropic takes 0 to 1", "options.temperature"
                    )
                body["temperature"] = o["temperature"]
            if "top_p" in o and (not thinking or o["top_p"] >= 0.95):
                body["top_p"] = o["top_p"]
            if "top_k" in o and not thinking:
                body["top_k"] = o["top_k"]
        if "stop" in o:
            body["stop_sequences"] = o["stop"]
        if call.tools:
            tools = []
            for tool in call.tools:
                fn = tool["function"]
                spec: dict[str, Any] = {"name": fn["name"]}
                if fn.get("description"):
                    spec["description"] = fn["description"]
                spec["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
                tools.append(spec)
            body["tools"] = tools
            choice = call.tool_choice
            if choice == "required":
                body["tool_choice"] = {"type": "any"}
            elif choice in ("auto", "none"):
                body["tool_choice"] = {"type": choice}
            elif isinstance(choice, dict):
                body["tool_choice"] = {"type": "tool", "name": choice["name"]}
        output: dict[str, Any] = {}
        if effort:
            output["effort"] = effort
        if isinstance(call.format, dict):
            output["format"] = {"type": "json_schema", "schema": call.format}
        if output:
            body["output_config"] = output
        return body

    def build(self, call: Call) -> HttpRequest:
        return json_post(call, self.url(call), self.body(call), "x-api-key", stream=call.stream, extra=VERSION_HEADER)

    # -- token counting (POST {base}/v1/messages/count_tokens) -------------------------
    def build_count(self, call: Call) -> HttpRequest:
        body = self.body(call)
        count = {k: body[k] for k in ("model", "messages", "system", "tools", "tool_choice", "thinking") if k in body}
        return json_post(call, self.url(call, "messages/count_tokens"), count, "x-api-key", extra=VERSION_HEADER)

    def parse_count(self, call: Call, body: bytes) -> int:
        data = upstream_json(call, self.label, body, "a token count")
        n = data.get("input_tokens") if isinstance(data, dict) else None
        if not isinstance(n, int) or isinstance(n, bool):
            raise UpstreamError(f"{call.name}: {self.label} sent a token count without input_tokens")
        return n

    # -- responses --------------------------------------------------------------
    def parse_response(self, call: Call, body: bytes) -> list[Event]:
        data = upstream_json(call, self.label, body, "a response")
        if not isinstance(data, dict):
            raise UpstreamError(f"{call.name}: {self.label} sent an unexpected response")
        if data.get("type") == "error":
            raise self.error_event(call, data.get("error"))
        content = data.get("content")
        if not isinstance(content, list):
            raise UpstreamError(f"{call.name}: {self.label} sent a message without content")
        out: list[Event] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and block.get("text"):
                out.append(TextDelta(str(block["text"])))
            elif kind == "thinking" and block.get("thinking"):
                out.append(ReasoningDelta(str(block["thinking"])))
            elif kind == "tool_use":
                out.append(self.tool_call(call, block.get("id"), block.get("name"), block.get("input")))
        reason = data.get("stop_reason")
        if reason:
            out.append(Finish(STOP.get(reason, "stop"), _stop_sequence(data.get("stop_sequence"))))
        usage = data.get("usage")
        if isinstance(usage, dict):
            out.append(Usage(_input_tokens(usage), usage.get("output_tokens")))
        return out

    def tool_call(self, call: Call, cid: Any, name: Any, args: Any) -> ToolCall:
        from gencli.core.tools import new_call_id

        if not isinstance(name, str) or not name:
            raise UpstreamError(f"{call.name}: {self.label} sent a tool_use block without a name")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise UpstreamError(f"{call.name}: {self.label} sent an input for tool '{name}' that is not an object")
        return ToolCall(cid if isinstance(cid, str) and cid else new_call_id(), name, args)

    def stream_parser(self, call: Call) -> AnthropicStreamParser:
        return AnthropicStreamParser(self, call)

    def parse_error(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        exc = http_error(call, self.provider, status, headers, body)
        if status == 529:  # Anthropic's "overloaded": a 503 for gencli's callers
            exc.status = 503
            exc.kind = "overloaded_error"
        return exc

    def error_event(self, call: Call, err: Any) -> UpstreamError:
        """A typed error from an ``error`` object (in a stream, or a body with HTTP 200)."""
        err = err if isinstance(err, dict) else {}
        kind = str(err.get("type") or "api_error")
        message = scrub(str(err.get("message") or kind), call.api_key, call_secrets(call))
        status = ERROR_STATUS.get(kind, 500)
        if status in (401, 403):
            var = call.key_env or "ANTHROPIC_API_KEY"
            return UpstreamAuthError(
                f"{call.name}: {self.label} rejected the API key ({kind}); check {var}", upstream_status=status
            )
        if status == 429:
            return UpstreamRateLimited(
                f"{call.name}: {self.label} is rate limiting requests: {message}", upstream_status=429
            )
        exc = UpstreamError(f"{call.name}: {self.label} reported an error ({kind}): {message}", upstream_status=status)
        if status == 529:
            exc.status = 503
            exc.kind = "overloaded_error"
        return exc


def _replays_tool_use(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn called tools (Anthropic then wants its signed thinking back)."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            return any(b["type"] == "tool_use" for b in m["content"])
    return False


def _stop_sequence(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _input_tokens(usage: dict[str, Any]) -> int | None:
    n = usage.get("input_tokens")
    if not isinstance(n, int):
        return None
    for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        extra = usage.get(key)
        if isinstance(extra, int):
            n += extra
    return n


class AnthropicStreamParser(SSEParser["AnthropicAdapter"]):
    __slots__ = ("done", "tools")

    def __init__(self, adapter: AnthropicAdapter, call: Call):
        super().__init__(adapter, call)
        self.done = False  # saw message_stop
        self.tools: dict[int, list[Any]] = {}  # open tool_use blocks by index: [id, name, input JSON pieces]

    def _end(self, out: list[Event]) -> None:
        if not self.done:
            raise UpstreamError(
                f"{self.call.name}: {self.adapter.label} closed the stream before the answer "
                f"was complete (no message_stop)"
            )

    def _event(self, payload: bytes, out: list[Event]) -> None:
        try:
            event = loads(payload)
        except ValueError:
            raise UpstreamError(f"{self.call.name}: {self.adapter.label} sent a malformed stream event") from None
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                if delta.get("text"):
                    out.append(TextDelta(str(delta["text"])))
            elif dtype == "thinking_delta":
                if delta.get("thinking"):
                    out.append(ReasoningDelta(str(delta["thinking"])))
            elif dtype == "input_json_delta":
                slot = self.tools.get(event.get("index"))  # type: ignore[arg-type]
                if slot is not None and isinstance(delta.get("partial_json"), str):
                    slot[2].append(delta["partial_json"])
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use":
                self.tools[event.get("index")] = [block.get("id"), block.get("name"), []]  # type: ignore[index]
            elif btype == "text" and block.get("text"):
                out.append(TextDelta(str(block["text"])))
            elif btype == "thinking" and block.get("thinking"):
                out.append(ReasoningDelta(str(block["thinking"])))
        elif kind == "content_block_stop":
            slot = self.tools.pop(event.get("index"), None)  # type: ignore[arg-type]
            if slot is not None:
                from gencli.core.tools import parse_arguments

                name = slot[1] if isinstance(slot[1], str) else ""
                args = parse_arguments("".join(slot[2]), name, f"{self.call.name}: {self.adapter.label}")
                out.append(self.adapter.tool_call(self.call, slot[0], name, args))
        elif kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                out.append(Usage(_input_tokens(usage), None))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            reason = delta.get("stop_reason")
            if reason:
                out.append(Finish(STOP.get(reason, "stop"), _stop_sequence(delta.get("stop_sequence"))))
            usage = event.get("usage")
            if isinstance(usage, dict):
                out.append(Usage(_input_tokens(usage), usage.get("output_tokens")))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise self.adapter.error_event(self.call, event.get("error"))


def adapter(provider: str) -> HttpAdapter:  # typed as the Protocol: mypy checks that the class conforms
    return AnthropicAdapter(provider)
