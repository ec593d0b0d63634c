"""OpenAI's Responses API on the engine: ``POST /v1/responses`` (what Codex CLI and the
newer OpenAI SDKs call).

Pure translation first (request JSON -> engine request; engine events -> reply bytes),
then the route glue, which runs the plan with :func:`gencli.server.api.streaming.run`.
Stored responses (:mod:`gencli.server.store`: this process, or Redis with ``--redis``): a
request with ``store`` true or left out (OpenAI's default) is kept with its conversation
before its last byte goes out, so ``previous_response_id`` continues it on any replica,
``GET /v1/responses/{id}`` returns it, ``GET /v1/responses/{id}/input_items`` lists the
input items it was made from (paged: ``limit``, ``order``, ``after``) and ``DELETE
/v1/responses/{id}`` removes it; only the key that made it sees it (anyone else gets the
404 of a missing id). ``store: false`` keeps nothing. ``conversation`` objects and
``item_reference`` items are not supported (400); ``reasoning`` items sent back are skipped
(their encrypted content only means something to OpenAI).

Non-streamed, the reply is a response object whose ``output`` holds a ``reasoning``
item (when the model reasoned), a ``message`` with ``output_text`` and the
``function_call`` items (``arguments`` a JSON string). Streamed, it is the SSE sequence
the SDK's stream helper checks: ``response.created``, ``response.in_progress``, per
item ``response.output_item.added`` ... ``response.output_item.done`` with the
content / reasoning-summary parts and deltas between, then ``response.completed`` (or
``response.incomplete`` when max_output_tokens cut it); a failure part-way through is
``response.failed`` carrying the error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson

from gencli.core.errors import GencliError, UsageError
from gencli.core.events import Done, TokenLogprob, ToolCall
from gencli.core.request import GenerateRequest, Message
from gencli.core.tools import check_arguments
from gencli.server.api.messages import Turns, content_text, objects, required_str, role, string
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
    refusal,
    send_json,
)
from gencli.server.state import State

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
EFFORT = {"none": False, "minimal": False, "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
STATELESS = "gencli keeps no conversation objects; send the whole conversation in input, or previous_response_id"


# -- request -> engine ------------------------------------------------------------------


def _image_url(part: dict[str, Any], where: str) -> str:
    url = part.get("image_url")
    if isinstance(url, dict):  # chat-completions habit
        url = url.get("url")
    if not isinstance(url, str) or not url:
        what = (
            "file_id images are not supported (gencli stores no files)"
            if part.get("file_id")
            else "needs image_url (a data: URL, base64 or an http(s) URL)"
        )
        raise UsageError(f"{where}: input_image {what}", "input")
    return url


def _part(part: Any, where: str, images: list[Any]) -> str | None:
    """A content part: input_text, output_text or refusal (its text), or an input_image (put with the images)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return string(part.get("text"), f"{where}.text", "input")
    if kind == "refusal":
        return string(part.get("refusal"), f"{where}.refusal", "input")
    if kind == "input_image":
        images.append(_image_url(part, where))
        return None
    raise UsageError(f"{where}.type {kind!r} is not supported (input_text, input_image, output_text)", "input")


def _parts(content: Any, where: str, images: list[Any]) -> str:
    """Message content (a string or input_text / output_text / input_image parts) -> text."""
    return content_text(content, where, "content parts", _part, images, "input")


def input_in(raw: Any) -> tuple[list[Message], list[tuple[Message, Any]]]:
    """``input`` (a string or items) -> engine Messages, and their images (still raw) for the engine.
    A ``function_call`` joins the assistant turn before it; ``function_call_output`` is a
    role "tool" message."""
    if isinstance(raw, str):
        return [Message("user", string(raw, "input", "input"))], []
    if not isinstance(raw, list) or not raw:
        raise UsageError("input is required: a string or a non-empty array of items", "input")
    turns = Turns()
    shape = "an object (a message, function_call or function_call_output)"
    for where, item in objects(raw, "input", shape, "input"):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            who = role(item, where, ROLES, "user, system, developer or assistant", "input")
            images: list[Any] = []
            message = Message(who, _parts(item.get("content"), f"{where}.content", images))
            if images and who != "user":
                raise UsageError(f"{where}: only user messages may hold images", "input")
            turns.add(message, images)
        elif kind == "function_call":
            name = required_str(item, "name", where, "a function_call", "input")
            call_id = required_str(item, "call_id", where, "a function_call", "input")
            try:
                args = check_arguments(item.get("arguments"), where)
            except UsageError as exc:
                raise UsageError(exc.message, "input") from None
            call = ToolCall(call_id, name, args)
            if turns.messages and turns.messages[-1].role == "assistant":
                turns.messages[-1].tool_calls.append(call)
            else:
                turns.add(Message("assistant", "", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = required_str(item, "call_id", where, "a function_call_output", "input")
            images = []
            turns.add(Message("tool", _parts(item.get("output", ""), f"{where}.output", images), tool_call_id=call_id))
            if images:  # a tool's images reach the model in a user turn after the results
                turns.add(Message("user", ""), images)
        elif kind == "reasoning":
            continue  # encrypted for OpenAI's own models; nothing an upstream can read
        elif kind == "item_reference":
            raise UsageError(f"{where}: item_reference is not supported; {STATELESS}", "input")
        else:
            raise UsageError(
                f"{where}.type {kind!r} is not supported (message, function_call, function_call_output, reasoning)",
                "input",
            )
    return turns.result()


def tools_in(raw: Any) -> list[dict[str, Any]] | None:
    """Responses function tools (name, description, parameters at the top) -> chat's nested form."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise UsageError('tools must be an array of {"type": "function", "name", "parameters"}', "tools")
    out = []
    for i, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UsageError(f"tools[{i}].type {kind!r} is not supported; gencli serves function tools only", "tools")
        fn = {"name": tool.get("name")}
        for key in ("description", "parameters"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def tool_choice_in(raw: Any) -> Any:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    raise UsageError('tool_choice must be "auto", "none", "required" or {"type": "function", "name"}', "tool_choice")


def think_in(raw: Any) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UsageError('reasoning must be an object like {"effort": "medium"}', "reasoning")
    effort = raw.get("effort")
    if effort is None:
        return None
    if effort not in EFFORT:
        raise UsageError("reasoning.effort must be none, minimal, low, medium, high or xhigh", "reasoning")
    return EFFORT[effort]


def format_in(raw: Any) -> tuple[Any, dict[str, Any]]:
    """``text.format`` -> (the engine's format, the format echoed in the response)."""
    if raw is None:
        return None, {"type": "text"}
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt is None:
        return None, {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None, {"type": "text"}
    if kind == "json_object":
        return "json", {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise UsageError("text.format.schema must be a JSON schema object", "text")
        return fmt["schema"], fmt
    raise UsageError("text.format.type must be text, json_object or json_schema", "text")


ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _stored_part(part: Any, assistant: bool) -> Any:
    if assistant and isinstance(part, dict) and part.get("type") == "output_text" and "annotations" not in part:
        return {**part, "annotations": []}
    return part


def input_items(raw: Any) -> list[dict[str, Any]]:
    """``input`` (already checked by :func:`input_in`) as the items a stored response keeps and
    ``GET /v1/responses/{id}/input_items`` lists: a string is one user message; each item gets
    a ``type``, an ``id`` (the client's when it gave one not yet used in this input, else a new
    ``msg_``/``fc_``/``fco_``/``rs_`` one, made once here and stored) and a ``status``; a
    message's string content becomes one ``input_text`` part (``output_text`` for an assistant)."""
    given = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for original in given:
        item = dict(original)
        kind = item["type"] = item.get("type") or "message"
        if kind == "message":
            assistant = item.get("role") == "assistant"
            content = item.get("content")
            if isinstance(content, str):
                item["content"] = [
                    {"type": "output_text", "text": content, "annotations": []}
                    if assistant
                    else {"type": "input_text", "text": content}
                ]
            elif isinstance(content, list):
                item["content"] = [_stored_part(part, assistant) for part in content]
        item_id = item.pop("id", None)
        if not isinstance(item_id, str) or not item_id or item_id in seen:
            item_id = f"{ITEM_PREFIX.get(kind, 'item')}_{os.urandom(16).hex()}"
        seen.add(item_id)
        if item.get("status") not in ("in_progress", "completed", "incomplete"):
            item["status"] = "completed"
        out.append({"id": item_id, **item})
    return out


def request_in(
    data: dict[str, Any], model: str, history: list[Any] | None = None
) -> tuple[GenerateRequest, dict[str, Any]]:
    """A Responses request body -> (engine request, what the response object echoes back).
    ``history``: the stored conversation ``previous_response_id`` names, before ``input``."""
    if data.get("conversation") is not None:
        raise UsageError(f"conversation is not supported: {STATELESS}", "conversation")
    if data.get("background") is True:
        raise UsageError("background: true is not supported: gencli answers in the request", "background")
    if "input" not in data:
        raise UsageError("input is required: a string or an array of items", "input")
    messages, pending = input_in(data["input"])
    if history:
        earlier, earlier_images = input_in(history)
        messages, pending = earlier + messages, earlier_images + pending
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p"):
        if data.get(key) is not None:
            options[key] = data[key]
    limit = field_int(data, "max_output_tokens")
    if limit is not None:
        options["num_predict"] = limit
    instructions = data.get("instructions")
    if instructions is not None:
        string(instructions, "instructions", "instructions")
    fmt, fmt_echo = format_in(data.get("text"))
    tools = tools_in(data.get("tools"))
    req = GenerateRequest(
        model=model,
        messages=messages,
        message_images=pending,
        system=instructions or None,
        options=options,
        format=fmt,
        think=think_in(data.get("reasoning")),
        stream=field_bool(data, "stream", False),
        tools=tools,
        tool_choice=tool_choice_in(data.get("tool_choice")),
    )
    if isinstance(fmt, dict):  # the schema's name and strict reach an OpenAI upstream as given
        name, strict = fmt_echo.get("name"), fmt_echo.get("strict")
        req.format_name = name if isinstance(name, str) else None
        req.format_strict = strict if isinstance(strict, bool) else None
    raw_reasoning = data.get("reasoning")
    reasoning: dict[str, Any] = raw_reasoning if isinstance(raw_reasoning, dict) else {}
    echo = {
        "instructions": instructions,
        "max_output_tokens": limit,
        "temperature": data.get("temperature", 1.0),
        "top_p": data.get("top_p", 1.0),
        "text": {"format": fmt_echo},
        "tool_choice": data.get("tool_choice") or "auto",
        "tools": [
            {
                "type": "function",
                "name": t["function"]["name"],
                "description": t["function"].get("description"),
                "parameters": t["function"].get("parameters"),
                "strict": False,
            }
            for t in tools or ()
        ],
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "metadata": data.get("metadata") if isinstance(data.get("metadata"), dict) else {},
        "store": field_bool(data, "store", True),
        "previous_response_id": data.get("previous_response_id"),
        "user": data.get("user") if isinstance(data.get("user"), str) else None,
    }
    return req, echo


# -- engine events -> the Responses wire ------------------------------------------------


def _usage(done: Done) -> dict[str, Any]:
    p, c = done.prompt_eval_count or 0, done.eval_count or 0
    return {
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + c,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [] if text is None else [{"type": "summary_text", "text": text}],
    }


def _call_item(item_id: str, tc: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": tc.id,
        "name": tc.name,
        "arguments": dumps(tc.arguments).decode() if status == "completed" else "",
    }


def _status(done: Done) -> tuple[str, dict[str, Any] | None]:
    if done.done_reason == "length" and not done.tool_calls:
        return "incomplete", {"reason": "max_output_tokens"}
    if done.done_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class Responses:
    """The reply shape for /v1/responses (streamed as SSE, or one object; see
    :mod:`gencli.server.api.streaming`)."""

    headers: Headers = [H_SSE, H_NOCACHE]

    __slots__ = (
        "model",
        "id",
        "created",
        "echo",
        "_seq",
        "_started",
        "_items",
        "_open",
        "_buffer",
        "_delta",
        "_keeper",
        "result",
    )

    def __init__(
        self,
        model: str,
        echo: dict[str, Any],
        keeper: Callable[[str, dict[str, Any]], Awaitable[bool]] | None = None,
    ):
        self._keeper = keeper  # stores the finished response (store: true)
        self.result: dict[str, Any] | None = None
        self.model = model
        self.id = "resp_" + os.urandom(16).hex()
        self.created = int(time.time())
        self.echo = echo
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any]] = []  # finished output items
        self._open: str | None = None  # "message" | "reasoning": the item being streamed
        self._buffer: list[str] = []  # its text so far
        self._delta = (b"", b"")  # the open item's delta event around its sequence number (the hot path)

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        done: Done | None = None,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        obj = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "previous_response_id": None,
            "service_tier": "default",
            "store": False,
            "truncation": "disabled",
            "max_tool_calls": None,
            "top_logprobs": 0,
            "usage": _usage(done) if done is not None else None,
            **self.echo,
        }
        if status in ("completed", "incomplete", "failed"):
            obj["completed_at"] = int(time.time())
        return obj

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = dumps(self.response("in_progress", []))
        out = b""
        for kind in (b"response.created", b"response.in_progress"):
            out += (
                b"event: "
                + kind
                + b'\ndata: {"type":"'
                + kind
                + b'","sequence_number":'
                + str(self._seq).encode()
                + b',"response":'
                + response
                + b"}\n\n"
            )
            self._seq += 1
        return out

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self.id[5:21]}{len(self._items):03d}"

    def _close(self) -> bytes:
        kind, self._open = self._open, None
        if kind is None:
            return b""
        index = len(self._items)
        text = "".join(self._buffer)
        self._buffer = []
        if kind == "message":
            item = _message_item(self._item_id("msg"), text)
            ids = {"item_id": item["id"], "output_index": index}
            out = self._event(
                "response.output_text.done", {**ids, "content_index": 0, "text": text, "logprobs": []}
            ) + self._event("response.content_part.done", {**ids, "content_index": 0, "part": _text_part(text)})
        else:
            item = _reasoning_item(self._item_id("rs"), text)
            ids = {"item_id": item["id"], "output_index": index}
            out = self._event(
                "response.reasoning_summary_text.done", {**ids, "summary_index": 0, "text": text}
            ) + self._event(
                "response.reasoning_summary_part.done",
                {**ids, "summary_index": 0, "part": {"type": "summary_text", "text": text}},
            )
        self._items.append(item)
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _opened(self, kind: str) -> bytes:
        out = self._close()
        self._open = kind
        index = len(self._items)
        event = b"response.output_text.delta" if kind == "message" else b"response.reasoning_summary_text.delta"
        item_id = self._item_id("msg" if kind == "message" else "rs")
        where = b',"content_index":0,"logprobs":[]' if kind == "message" else b',"summary_index":0'
        self._delta = (
            b"event: " + event + b'\ndata: {"type":"' + event + b'","sequence_number":',
            b',"item_id":"' + item_id.encode() + b'","output_index":' + str(index).encode() + where + b',"delta":',
        )
        if kind == "message":
            return (
                out
                + self._event(
                    "response.output_item.added",
                    {"output_index": index, "item": _message_item(item_id, "", "in_progress")},
                )
                + self._event(
                    "response.content_part.added",
                    {"item_id": item_id, "output_index": index, "content_index": 0, "part": _text_part("")},
                )
            )
        return (
            out
            + self._event("response.output_item.added", {"output_index": index, "item": _reasoning_item(item_id, None)})
            + self._event(
                "response.reasoning_summary_part.added",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                },
            )
        )

    def _delta_event(self, kind: str, text: str) -> bytes:
        out = b"" if self._open == kind else self._start() + self._opened(kind)
        self._buffer.append(text)
        seq = self._seq
        self._seq = seq + 1
        head, tail = self._delta
        return out + head + str(seq).encode() + tail + dumps(text) + b"}\n\n"

    def text(self, text: str) -> bytes:
        return self._delta_event("message", text)

    def reasoning(self, text: str) -> bytes:
        return self._delta_event("reasoning", text)

    def logprobs(self, tokens: list[TokenLogprob]) -> bytes:
        return b""  # this route never asks for log probabilities

    def final(self, done: Done) -> bytes:
        out = self._start() + self._close()
        for tc in done.tool_calls:
            index = len(self._items)
            item = _call_item(self._item_id("fc"), tc)
            ids = {"item_id": item["id"], "output_index": index}
            out += (
                self._event(
                    "response.output_item.added",
                    {"output_index": index, "item": _call_item(item["id"], tc, "in_progress")},
                )
                + self._event("response.function_call_arguments.delta", {**ids, "delta": item["arguments"]})
                + self._event(
                    "response.function_call_arguments.done", {**ids, "name": tc.name, "arguments": item["arguments"]}
                )
                + self._event("response.output_item.done", {"output_index": index, "item": item})
            )
            self._items.append(item)
        status, incomplete = _status(done)
        response = self.result = self.response(status, self._items, done, incomplete=incomplete)
        return out + self._event(f"response.{status}", {"response": response})

    def whole(self, done: Done) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        if done.reasoning:
            items.append(_reasoning_item(f"rs_{self.id[5:21]}000", done.reasoning))
        if done.text or not done.tool_calls:
            items.append(_message_item(f"msg_{self.id[5:21]}{len(items):03d}", done.text))
        for tc in done.tool_calls:
            items.append(_call_item(f"fc_{self.id[5:21]}{len(items):03d}", tc))
        status, incomplete = _status(done)
        self.result = self.response(status, items, done, incomplete=incomplete)
        return self.result

    async def keep(self) -> None:
        """Store the finished response (before its last bytes go out, so that the next request
        of the chain finds it on any replica); a store that cannot keep it says so on stderr
        and the non-streamed reply says ``store: false``."""
        if self._keeper is None or self.result is None:
            return
        if not await self._keeper(self.id, self.result):
            self.result["store"] = False

    def error_line(self, exc: GencliError) -> bytes:
        error = {"code": "rate_limit_exceeded" if exc.status == 429 else "server_error", "message": exc.message}
        return self._start() + self._event(
            "response.failed", {"response": self.response("failed", self._items, error=error)}
        )


# -- route ----------------------------------------------------------------------------------


def _owner(scope: Scope) -> str | None:
    """Whose stored responses a request may see: its key's name (None: the operator's key, or no key)."""
    record = scope.get("gencli.key")
    return None if record is None else str(record.name)


def _not_found(response_id: str, previous: bool = False) -> UsageError:
    shown = response_id[:80]
    if previous:
        exc = UsageError(
            f"previous response with id {shown!r} not found (it expired, was deleted, was made with store: false "
            "or with another key); send the whole conversation in input",
            "previous_response_id",
        )
    else:
        exc = UsageError(f"response with id {shown!r} not found (it expired, was deleted or was never stored)")
    exc.status, exc.kind = 404, "invalid_request_error"
    return exc


async def _record(state: State, scope: Scope, response_id: str) -> dict[str, Any] | None:
    """The stored record of ``response_id`` when this request's key may see it."""
    if not response_id.startswith("resp_") or len(response_id) > 100:
        return None
    raw = await state.store.get(response_id)
    if raw is None:
        return None
    record: dict[str, Any] = orjson.loads(raw)
    if record.get("owner") != _owner(scope):
        return None
    return record


def _conversation_items(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items of a response as input items of the next turn (reasoning left out)."""
    out: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            out.append({"type": "message", "role": "assistant", "content": item.get("content") or []})
        elif item.get("type") == "function_call":
            out.append(
                {
                    "type": "function_call",
                    "call_id": item["call_id"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
    return out


async def _keep(
    state: State,
    owner: str | None,
    history: list[Any],
    given: list[dict[str, Any]],
    response_id: str,
    response: dict[str, Any],
) -> bool:
    """Store a finished response: its record holds the conversation the next turn continues
    (``history``, this request's ``given`` input items, the answer's items) and where in it
    this request's input items are (``input``: [start, end], what ``input_items`` lists)."""
    from gencli.server.shared import RedisDown

    if response.get("status") not in ("completed", "incomplete"):
        return False
    conversation = history + given + _conversation_items(response)
    span = [len(history), len(history) + len(given)]
    record = dumps({"owner": owner, "response": response, "conversation": conversation, "input": span})
    try:
        kept = await state.store.put(response_id, record)
    except RedisDown:
        return False  # said on stderr by the link
    if not kept:
        import sys

        sys.stderr.write(
            f"gencli serve: response {response_id} not stored: its conversation ({len(record)} bytes) is larger "
            f"than --responses-mb\n"
        )
    return kept


async def responses(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    data = await state.read_json(scope, receive)
    model = await state.admit(scope, data)
    store = field_bool(data, "store", True)
    previous = data.get("previous_response_id")
    history: list[Any] = []
    if previous is not None:
        if not isinstance(previous, str) or not previous:
            raise UsageError(
                "previous_response_id must be the id of a stored response (resp_...)", "previous_response_id"
            )
        found = await _record(state, scope, previous)
        if found is None:
            raise _not_found(previous, previous=True)
        history = found["conversation"]
        size = len(dumps(history)) + scope.get("gencli.body", 0)
        if size > state.max_body:
            raise refusal(
                413,
                f"the conversation of previous_response_id and this input ({size} bytes) is larger than the "
                "server's request limit (--max-body-mb); start a new conversation",
            )
    req, echo = request_in(data, model, history)
    keeper = partial(_keep, state, _owner(scope), history, input_items(data["input"])) if store else None
    await answer(state, scope, receive, send, req, lambda plan: Responses(plan.entry.name, echo, keeper))


# (method, prefix route): the paths it serves below the id, counted by the app as routes of their own
SUBPATHS = {("GET", "/v1/responses/"): ("/input_items",)}
ORDERS = ("asc", "desc")


def _query(scope: Scope) -> dict[str, str]:
    """The query string's parameters (the last of a repeated one)."""
    from urllib.parse import parse_qsl

    raw = scope.get("query_string") or b""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, max_num_fields=100))


def _cursor(ids: list[str], query: dict[str, str], name: str, response_id: str) -> int | None:
    """Where the item ``after``/``before`` names is in ``ids`` (None: not given)."""
    if name not in query:
        return None
    wanted = query[name]
    try:
        return ids.index(wanted)
    except ValueError:
        raise UsageError(
            f"{name}: response {response_id[:80]!r} has no input item with id {wanted[:80]!r}", name
        ) from None


def page_params(query: dict[str, str]) -> tuple[int, str]:
    """``limit`` (1 to 100, default 20) and ``order`` (``desc``, the default, or ``asc``) of a list."""
    raw_limit = query.get("limit", "20")
    limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) < 5 else 0
    if not 1 <= limit <= 100:
        raise UsageError(f"limit must be an integer from 1 to 100, not {raw_limit[:20]!r}", "limit")
    order = query.get("order", "desc")
    if order not in ORDERS:
        raise UsageError(f"order must be asc or desc, not {order[:20]!r}", "order")
    return limit, order


def item_page(items: list[dict[str, Any]], query: dict[str, str], response_id: str) -> dict[str, Any]:
    """One page of a response's input items, as OpenAI's ``GET /v1/responses/{id}/input_items``
    answers it: ``limit`` items in ``order`` (``desc``: the last input first) after the item
    ``after`` (and before ``before``, as older versions of the API had it); ``include`` is
    accepted and changes nothing (an item is kept whole)."""
    limit, order = page_params(query)
    ordered = items if order == "asc" else items[::-1]
    ids = [item["id"] for item in ordered]
    after, before = _cursor(ids, query, "after", response_id), _cursor(ids, query, "before", response_id)
    window = ordered[(0 if after is None else after + 1) : (len(ordered) if before is None else before)]
    page = window[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(window) > limit,
    }


async def stored(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /v1/responses/{id}``: a stored response object; ``GET
    /v1/responses/{id}/input_items``: a page of the input items it was made from."""
    response_id = scope["path"][len("/v1/responses/") :]
    if response_id.endswith("/input_items"):
        await listed(state, scope, send, response_id[: -len("/input_items")])
        return
    found = await _record(state, scope, response_id)
    if found is None:
        raise _not_found(response_id)
    await send_json(send, 200, found["response"], head=scope["method"] == "HEAD")


async def listed(state: State, scope: Scope, send: Send, response_id: str) -> None:
    """``GET /v1/responses/{id}/input_items``: the input items of the stored response (what
    its request gave as ``input``; not those of the responses before it in its chain)."""
    query = _query(scope)
    page_params(query)  # a bad limit or order is a 400 whatever the id
    found = await _record(state, scope, response_id)
    span = None if found is None else found.get("input")
    if found is None or not isinstance(span, list):  # (a record of a gencli before input_items: none kept)
        raise _not_found(response_id)
    page = item_page(found["conversation"][span[0] : span[1]], query, response_id)
    await send_json(send, 200, page, head=scope["method"] == "HEAD")


async def delete(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """``DELETE /v1/responses/{id}``: forget a stored response."""
    response_id = scope["path"][len("/v1/responses/") :]
    found = await _record(state, scope, response_id)
    if found is None or not await state.store.delete(response_id):
        raise _not_found(response_id)
    await send_json(send, 200, {"id": response_id, "object": "response", "deleted": True})


def routes(state: State) -> dict[tuple[str, str], Handler]:
    """OpenAI's Responses API, for the app's table."""
    return {("POST", "/v1/responses"): partial(responses, state)}


def prefix_routes(state: State) -> list[tuple[str, str, Handler]]:
    """A stored response by id: (method, path prefix, handler)."""
    return [
        ("GET", "/v1/responses/", partial(stored, state)),
        ("DELETE", "/v1/responses/", partial(delete, state)),
    ]
