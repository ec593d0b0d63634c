"""A fake Anthropic Messages API upstream (api.anthropic.com).

A real aiohttp server on 127.0.0.1 that speaks Anthropic's wire: ``POST /v1/messages``
(JSON, or SSE with ``stream: true``) and ``POST /v1/messages/count_tokens``. The key
goes in ``x-api-key`` (or ``Authorization: Bearer``, as the SDK's ``auth_token`` sends
it); none or a wrong one is 401 ``authentication_error``. ``anthropic-version`` is
required. Requests are checked as the real API checks them, each fault a 400
``invalid_request_error`` naming the field: unknown fields ("Extra inputs are not
permitted"), no ``max_tokens``, roles, block types, empty text blocks, a
``tool_result`` that answers no ``tool_use`` of the previous turn and a ``tool_use`` left
unanswered, ``temperature`` above 1, thinking budgets (at least 1024 and below
``max_tokens``) and ``temperature`` / ``top_k`` while thinking. Models whose id carries
version 4.6 or later (``claude-think-5``) take only adaptive thinking, older ones only
the budget form; from 4.7 on (and on every model from ``anthropic-version: 2026-10-21``,
what current SDKs send) ``temperature``, ``top_p`` and ``top_k`` are refused, as the
real API does.

Behaviour is chosen by the model id:

- ``claude-echo`` (and any other ``claude-*``): "You said: <last user text>", one word
  per ``text_delta``, `` [N images]`` for images. ``stop_sequences`` cut before the first
  one found (``stop_reason: stop_sequence`` with the sequence), ``max_tokens`` cuts to
  N words (``max_tokens``); ``output_config.format`` answers the JSON object
  ``{"echo": text}``. Usage counts words (input: system, text and tool results).
- ``claude-think*``: with thinking on (``enabled`` or ``adaptive``) a signed
  ``thinking`` block comes first.
- ``claude-tools*``: with ``tools``, ``tool_use`` blocks calling every tool (input from
  each ``input_schema``: strings get the last user text, integers 42, numbers 1.5,
  booleans true), ``stop_reason: tool_use``; streamed, the input arrives in
  ``input_json_delta`` pieces. ``tool_choice: {"type": "none"}`` answers text. Once the
  last user turn holds ``tool_result`` blocks: "Tool results: <contents>".
- ``claude-tokens-N``: N tokens ``tok0 tok1 ...`` (benchmarks).
- ``claude-error-401`` / ``-403`` / ``-404`` / ``-429`` (``retry-after: 7``) / ``-500`` /
  ``-529`` (overloaded); ``claude-error-midstream``: two words, then an ``error`` event
  (``overloaded_error``; not streamed: a 529); ``claude-error-truncate``: the stream ends
  without ``message_stop`` (not streamed: a cut body).

``FakeAnthropic`` runs it in a background thread; ``anthropic_fake`` is a session
fixture. ``python tests/fakes/anthropic_upstream.py --port N`` serves it in the foreground.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

try:
    from tests.fakes.threaded import ThreadedServer, run_from_command_line, session_fixture
except ImportError:  # run as a script: python tests/fakes/<name>.py --port N
    from threaded import ThreadedServer, run_from_command_line, session_fixture  # type: ignore[no-redef]

FAKE_KEY = "sk-ant-fake-test-0123456789abcdef"
NO_SAMPLING_VERSION = "2026-10-21"  # from this anthropic-version on, no model takes sampling parameters
SIGNATURE = "EqQBCkYIBxgCKkBfakeSignatureForTests"

_dumps = orjson.dumps
_WORD = re.compile(r"\S+\s*")
_NUMBER = re.compile(r"\d+")

_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "service_tier",
    "container",
    "inference_geo",
    "speed",
    "context_management",
    "mcp_servers",
    "diagnostics",
    "cache_control",
}
_COUNT_FIELDS = {
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "context_management",
    "mcp_servers",
    "speed",
    "cache_control",
}
_BLOCKS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control", "caller"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
}
_MEDIA = ("image/jpeg", "image/png", "image/gif", "image/webp")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw: bytes = b""


class BadRequest(Exception):
    """Answer 400 invalid_request_error with this message."""


def error_body(kind: str, message: str) -> bytes:
    return _dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_" + uuid.uuid4().hex[:24]}
    )


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(kind, message), headers=headers, content_type="application/json")


def _version(model: str) -> tuple[int, int]:
    parts = [int(n) for n in _NUMBER.findall(model) if len(n) < 8]
    return (parts[0], parts[1] if len(parts) > 1 else 0) if parts else (0, 0)


def adaptive_model(model: str) -> bool:
    """Claude 4.6 and later (by the version numbers in the id) take only adaptive thinking."""
    return _version(model) >= (4, 6)


def refuses_sampling(model: str) -> bool:
    """Claude 4.7 and later refuse temperature, top_p and top_k."""
    return _version(model) >= (4, 7)


@dataclass
class Parsed:
    """What the fake understood of a request."""

    model: str = ""
    max_tokens: int = 0
    system: str = ""
    messages: list[dict] = field(default_factory=list)  # [{role, blocks: [validated block dicts]}]
    tools: list[dict] = field(default_factory=list)
    tool_choice: dict = field(default_factory=dict)
    thinking: dict = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)
    json_format: bool = False

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "user":
                texts = [b["text"] for b in m["blocks"] if b["type"] == "text"]
                if texts:
                    return " ".join(texts)
        return ""

    def words(self) -> int:
        n = len(_WORD.findall(self.system))
        for m in self.messages:
            for b in m["blocks"]:
                if b["type"] == "text":
                    n += len(_WORD.findall(b["text"]))
                elif b["type"] == "tool_result":
                    n += len(_WORD.findall(_result_text(b)))
                elif b["type"] == "tool_use":
                    n += len(_WORD.findall(_dumps(b["input"]).decode()))
                elif b["type"] == "image":
                    n += 100
        for t in self.tools:
            n += len(_WORD.findall(_dumps(t).decode().replace(",", " ")))
        return n

    @property
    def thinking_on(self) -> bool:
        return self.thinking.get("type") in ("enabled", "adaptive")


def _result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
    return ""


def _check_block(b: Any, where: str) -> dict:
    if not isinstance(b, dict):
        raise BadRequest(f"{where}: Input should be a valid dictionary")
    kind = b.get("type")
    known = _BLOCKS.get(kind)  # type: ignore[arg-type]
    if known is None:
        raise BadRequest(
            f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {', '.join(repr(k) for k in _BLOCKS)}"
        )
    for key in b:
        if key not in known:
            raise BadRequest(f"{where}.{kind}.{key}: Extra inputs are not permitted")
    if kind == "text":
        if not isinstance(b.get("text"), str):
            raise BadRequest(f"{where}.text.text: Field required")
        if not b["text"]:
            raise BadRequest("messages: text content blocks must be non-empty")
    elif kind == "image":
        src = b.get("source")
        if not isinstance(src, dict) or src.get("type") not in ("base64", "url"):
            raise BadRequest(
                f"{where}.image.source: Input tag found using 'type' does not match any of the "
                f"expected tags: 'base64', 'url'"
            )
        if src["type"] == "base64":
            if src.get("media_type") not in _MEDIA:
                raise BadRequest(
                    f"{where}.image.source.base64.media_type: Input should be {', '.join(repr(m) for m in _MEDIA)}"
                )
            try:
                base64.b64decode(src.get("data") or "", validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"{where}.image.source.base64: invalid base64 data") from None
    elif kind == "tool_use":
        if not isinstance(b.get("id"), str) or not b["id"] or not isinstance(b.get("name"), str):
            raise BadRequest(f"{where}.tool_use: id and name are required")
        if not isinstance(b.get("input"), dict):
            raise BadRequest(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(b.get("tool_use_id"), str):
            raise BadRequest(f"{where}.tool_result.tool_use_id: Field required")
    elif kind == "thinking":
        if not isinstance(b.get("signature"), str):
            raise BadRequest(f"{where}.thinking.signature: Field required")
    return b


def parse_request(body: Any, counting: bool = False, api_version: str = "2023-06-01") -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    for key in body:
        if key not in (_COUNT_FIELDS if counting else _FIELDS):
            raise BadRequest(f"{key}: Extra inputs are not permitted")
    out = Parsed()
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: Field required")
    out.model = body["model"]
    if not counting:
        mt = body.get("max_tokens")
        if mt is None:
            raise BadRequest("max_tokens: Field required")
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise BadRequest("max_tokens: Input should be greater than or equal to 1")
        out.max_tokens = mt
    system = body.get("system")
    if isinstance(system, str):
        out.system = system
    elif isinstance(system, list):
        out.system = "\n".join(_check_block(b, f"system.{i}")["text"] for i, b in enumerate(system))
    elif system is not None:
        raise BadRequest("system: Input should be a valid string or list")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: Field required")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        for key in m:
            if key not in ("role", "content"):
                raise BadRequest(f"messages.{i}.{key}: Extra inputs are not permitted")
        content = m.get("content")
        if isinstance(content, str):
            if not content and not (m["role"] == "assistant" and i == len(messages) - 1):
                raise BadRequest(
                    f"messages.{i}: all messages must have non-empty content except for the "
                    f"optional final assistant message"
                )
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = [_check_block(b, f"messages.{i}.content.{j}") for j, b in enumerate(content)]
        else:
            raise BadRequest(f"messages.{i}.content: Input should be a valid string or list")
        out.messages.append({"role": m["role"], "blocks": blocks})
    if not out.messages:
        raise BadRequest("messages: at least one message is required")
    for i, m in enumerate(out.messages):  # every tool_use answered at once, every tool_result answering one
        uses = [b["id"] for b in m["blocks"] if b["type"] == "tool_use"]
        prev = out.messages[i - 1] if i else None
        asked = {b["id"] for b in prev["blocks"] if b["type"] == "tool_use"} if prev else set()
        for b in m["blocks"]:
            if b["type"] == "tool_result" and b["tool_use_id"] not in asked:
                raise BadRequest(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{b['tool_use_id']}. Each `tool_result` block must have a corresponding "
                    f"`tool_use` block in the previous message."
                )
        if uses and i + 1 < len(out.messages):
            answered = {b["tool_use_id"] for b in out.messages[i + 1]["blocks"] if b["type"] == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise BadRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                    f"corresponding `tool_result` block in the next message."
                )
    for i, t in enumerate(body.get("tools") or []):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise BadRequest(f"tools.{i}.name: Field required")
        for key in t:
            if key not in (
                "name",
                "description",
                "input_schema",
                "type",
                "cache_control",
                "strict",
                "input_examples",
                "defer_loading",
                "eager_input_streaming",
                "allowed_callers",
            ):
                raise BadRequest(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
        if not isinstance(t.get("input_schema"), dict):
            raise BadRequest(f"tools.{i}.custom.input_schema: Field required")
        out.tools.append(t)
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise BadRequest(
                "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
            )
        if choice["type"] == "tool" and not any(t["name"] == choice.get("name") for t in out.tools):
            raise BadRequest(f"tool_choice: tool {choice.get('name')!r} is not among the tools")
        out.tool_choice = choice
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise BadRequest(
                "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled', 'adaptive'"
            )
        if kind == "enabled":
            if adaptive_model(out.model):
                raise BadRequest(
                    '"thinking.type.enabled" is not supported for this model. Use '
                    '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                    "behavior."
                )
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise BadRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if not counting and budget >= out.max_tokens:
                raise BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`.")
        elif kind == "adaptive" and not adaptive_model(out.model):
            raise BadRequest("adaptive thinking is not supported on this model")
        out.thinking = thinking
    if out.thinking_on:
        if body.get("temperature") not in (None, 1):
            raise BadRequest("`temperature` may only be set to 1 when thinking is enabled or in adaptive mode.")
        if body.get("top_k") is not None:
            raise BadRequest("`top_k` is not supported when thinking is enabled or in adaptive mode.")
        if out.tool_choice.get("type") in ("any", "tool"):
            raise BadRequest("Thinking may not be enabled when tool_choice forces tool use.")
    if refuses_sampling(out.model) or api_version >= NO_SAMPLING_VERSION:
        for key in ("temperature", "top_p", "top_k"):
            if body.get(key) is not None:
                raise BadRequest(f"`{key}` is not supported for this model.")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1):
        raise BadRequest("temperature: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops):
            raise BadRequest("stop_sequences: each element must be a non-empty string")
        out.stops = stops
    oc = body.get("output_config")
    if oc is not None:
        if not isinstance(oc, dict) or any(k not in ("effort", "format", "task_budget") for k in oc):
            raise BadRequest("output_config: Extra inputs are not permitted")
        if oc.get("effort") is not None and oc["effort"] not in ("low", "medium", "high", "xhigh", "max"):
            raise BadRequest("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
        fmt = oc.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
                raise BadRequest('output_config.format: expected {"type": "json_schema", "schema": {...}}')
            out.json_format = True
    return out


def _arg_value(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return {"integer": 42, "number": 1.5, "boolean": True, "object": {}, "array": []}.get(kind, text)


@dataclass
class Reply:
    thinking: str = ""
    words: list[str] = field(default_factory=list)
    tool_uses: list[dict] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    midstream_error: bool = False
    truncate: bool = False


def plan_reply(req: Parsed) -> Reply:
    model = req.model
    r = Reply()
    last = req.messages[-1] if req.messages else {"blocks": []}
    results = [b for b in last["blocks"] if b["type"] == "tool_result"] if last.get("role") == "user" else []
    if model.startswith("claude-think") and req.thinking_on:
        r.thinking = "Let me think about this. The user wants an echo."
    if model.startswith("claude-tools") and req.tools and not results and req.tool_choice.get("type") != "none":
        text = req.last_user_text()
        for i, t in enumerate(req.tools):
            props = (t.get("input_schema") or {}).get("properties") or {}
            r.tool_uses.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{i}_{uuid.uuid4().hex[:8]}",
                    "name": t["name"],
                    "input": {k: _arg_value(v, text) for k, v in props.items()},
                }
            )
        r.stop_reason = "tool_use"
        return r
    if results:
        text = "Tool results: " + "; ".join(_result_text(b) for b in results)
    elif model.startswith("claude-tokens-"):
        n = int(model.rsplit("-", 1)[1]) if model.rsplit("-", 1)[1].isdigit() else 10
        r.words = [f"tok{i} " if i < n - 1 else f"tok{i}" for i in range(n)]
        text = ""
    else:
        text = "You said: " + req.last_user_text()
        images = sum(1 for m in req.messages[-1:] for b in m["blocks"] if b["type"] == "image")
        if images:
            text += f" [{images} image{'s' if images > 1 else ''}]"
        if req.json_format:
            text = _dumps({"echo": text}).decode()
    if text:
        for s in req.stops:
            if s in text:
                text = text[: text.index(s)]
                r.stop_reason, r.stop_sequence = "stop_sequence", s
                break
        r.words = _WORD.findall(text) or ([text] if text else [])
    if len(r.words) > req.max_tokens:
        r.words, r.stop_reason, r.stop_sequence = r.words[: req.max_tokens], "max_tokens", None
    r.midstream_error = model.startswith("claude-error-midstream")
    r.truncate = model.startswith("claude-error-truncate")
    return r


class FakeAnthropic(ThreadedServer):
    """The fake upstream on 127.0.0.1:<free port>, in a thread with its own event loop."""

    thread_name = "fake-anthropic"

    def __init__(self, api_key: str | None = FAKE_KEY, port: int = 0):
        super().__init__(port)
        self.api_key = api_key  # None: accept any key
        self.requests: list[Recorded] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)
        return app

    def last(self, path: str = "/v1/messages") -> Recorded:
        for r in reversed(self.requests):
            if r.path == path:
                return r
        raise AssertionError(f"the fake Anthropic upstream got no request to {path}")

    # -- handlers ------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body, raw)
        )
        key = request.headers.get("x-api-key")
        auth = request.headers.get("Authorization", "")
        if key is None and auth.startswith("Bearer "):
            key = auth[7:]
        if self.api_key is not None:
            if not key:
                return body, _error(401, "authentication_error", "x-api-key header is required")
            if key != self.api_key:
                return body, _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return body, _error(400, "invalid_request_error", "anthropic-version: header is required")
        if body is None:
            return body, _error(
                400, "invalid_request_error", "There was an issue with the request body: it is not valid JSON"
            )
        return body, None

    async def _count(self, request: web.Request) -> web.Response:
        body, failure = await self._read(request)
        if failure is not None:
            return failure
        try:
            req = parse_request(body, counting=True)
        except BadRequest as exc:
            return _error(400, "invalid_request_error", str(exc))
        return web.Response(body=_dumps({"input_tokens": req.words()}), content_type="application/json")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._read(request)
        if failure is not None:
            return failure
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and model.startswith("claude-error-"):
            failure = self._failure(model)
            if failure is not None:
                return failure
        try:
            req = parse_request(body, api_version=request.headers["anthropic-version"])
        except BadRequest as exc:
            return _error(400, "invalid_request_error", str(exc))
        if not req.model.startswith("claude-"):
            return _error(404, "not_found_error", f"model: {req.model}")
        reply = plan_reply(req)
        mid = "msg_" + uuid.uuid4().hex[:24]
        usage_in = req.words()
        out_tokens = len(_WORD.findall(reply.thinking)) + len(reply.words) + 5 * len(reply.tool_uses)
        if body.get("stream") is True:
            return await self._stream(request, req, reply, mid, usage_in, out_tokens)
        content: list[dict] = []
        if reply.thinking:
            content.append({"type": "thinking", "thinking": reply.thinking, "signature": SIGNATURE})
        if reply.words:
            content.append({"type": "text", "text": "".join(reply.words)})
        content.extend(reply.tool_uses)
        if reply.midstream_error:
            return _error(529, "overloaded_error", "Overloaded")
        if reply.truncate:
            return web.Response(
                body=b'{"id":"' + mid.encode() + b'","type":"message","content":[{"ty', content_type="application/json"
            )
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": {
                "input_tokens": usage_in,
                "output_tokens": out_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        }
        return web.Response(body=_dumps(message), content_type="application/json")

    def _failure(self, model: str) -> web.Response | None:
        if model == "claude-error-401":
            return _error(401, "authentication_error", "invalid x-api-key")
        if model == "claude-error-403":
            return _error(
                403, "permission_error", "Your API key does not have permission to use the specified resource."
            )
        if model == "claude-error-404":
            return _error(404, "not_found_error", f"model: {model}")
        if model == "claude-error-429":
            return _error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
                headers={"retry-after": "7"},
            )
        if model == "claude-error-500":
            return _error(500, "api_error", "Internal server error")
        if model == "claude-error-529":
            return _error(529, "overloaded_error", "Overloaded")
        return None

    async def _stream(
        self, request: web.Request, req: Parsed, reply: Reply, mid: str, usage_in: int, out_tokens: int
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def event(kind: str, data: dict) -> None:
            await resp.write(b"event: " + kind.encode() + b"\ndata: " + _dumps({"type": kind, **data}) + b"\n\n")

        try:
            await event(
                "message_start",
                {
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": req.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": usage_in,
                            "output_tokens": 1,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                            "service_tier": "standard",
                        },
                    }
                },
            )
            index = 0
            if reply.thinking:
                await event(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
                )
                await event("ping", {})
                for piece in _WORD.findall(reply.thinking):
                    await event(
                        "content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}}
                    )
                await event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "signature_delta", "signature": SIGNATURE}},
                )
                await event("content_block_stop", {"index": index})
                index += 1
            if reply.words:
                await event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                if index == 0:
                    await event("ping", {})
                for n, word in enumerate(reply.words):
                    await event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": word}})
                    if reply.midstream_error and n == 1:
                        await event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                        await resp.write_eof()
                        return resp
                if reply.truncate:
                    await resp.write_eof()
                    return resp
                await event("content_block_stop", {"index": index})
                index += 1
            for use in reply.tool_uses:
                await event(
                    "content_block_start",
                    {
                        "index": index,
                        "content_block": {"type": "tool_use", "id": use["id"], "name": use["name"], "input": {}},
                    },
                )
                raw = _dumps(use["input"]).decode()
                await event(
                    "content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": ""}}
                )
                for j in range(0, len(raw), 7):
                    await event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "input_json_delta", "partial_json": raw[j : j + 7]}},
                    )
                await event("content_block_stop", {"index": index})
                index += 1
            await event(
                "message_delta",
                {
                    "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                    "usage": {"output_tokens": out_tokens},
                },
            )
            await event("message_stop", {})
            await resp.write_eof()
        except ConnectionResetError:  # the client went away mid-stream
            pass
        return resp


try:
    anthropic_fake = session_fixture(
        FakeAnthropic,
        "anthropic_fake",
        "One fake Anthropic upstream for the session; it expects ``x-api-key: FAKE_KEY``.",
    )
except ImportError:  # run as a script without pytest
    pass


if __name__ == "__main__":
    run_from_command_line(FakeAnthropic, "Fake Anthropic Messages API upstream on 127.0.0.1")
