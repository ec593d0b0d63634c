"""Function tools: validation of the tool list a caller sends, and the bookkeeping
that lets one conversation move between wires.

Ollama clients send tool results as ``{"role": "tool", "tool_name": ...}`` with no
call id; OpenAI clients send ``tool_call_id`` and no name; OpenAI upstreams need the
id, Gemini upstreams need the name. :func:`pair_tool_messages` fills in whichever is
missing from the assistant turn that made the calls, so every adapter finds both.

A wire format's own tool fields are read by its server module (``server/ollama.py``,
``server/openai.py``, ...); OpenAI's call objects are built here, where the OpenAI adapter
and the server's OpenAI routes share them (Ollama's are in :mod:`gencli.core.replies`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import orjson

from gencli.core.errors import UpstreamError, UsageError
from gencli.core.events import ToolCall
from gencli.core.request import Message

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def validate_tools(raw: Any) -> list[dict[str, Any]] | None:
    """The tool list normalised to ``[{"type": "function", "function": {name, description, parameters}}]``;
    None when there are no tools. UsageError names the first fault."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise UsageError('tools must be an array of {"type": "function", "function": {...}} objects', "tools")
    if not raw:
        return None
    if len(raw) > MAX_TOOLS:
        raise UsageError(f"tools has {len(raw)} entries; at most {MAX_TOOLS}", "tools")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise UsageError(
                f'{where} must be an object like {{"type": "function", "function": {{"name": ...}}}}', "tools"
            )
        kind = tool.get("type", "function")
        if kind != "function":
            raise UsageError(f'{where}.type is {kind!r}; only "function" tools are supported', "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise UsageError(f"{where}.function must be an object with a name", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise UsageError(f"{where}.function.name is required", "tools")
        if not _NAME.match(name):
            raise UsageError(
                f"{where}.function.name {name[:64]!r} must start with a letter or _ and hold only "
                f"letters, digits, _ . : - (at most 128)",
                "tools",
            )
        if name in seen:
            raise UsageError(f"{where}.function.name {name!r} is used by two tools", "tools")
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise UsageError(f"{where}.function.description must be a string", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise UsageError(f"{where}.function.parameters must be a JSON schema object", "tools")
        clean: dict[str, Any] = {"name": name}
        if desc:
            clean["description"] = desc
        if params is not None:
            clean["parameters"] = params
        out.append({"type": "function", "function": clean})
    return out


def validate_tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, str] | None:
    """OpenAI's ``tool_choice`` -> what adapters take: None (not given: the upstream's default),
    ``"auto"`` (the model decides), ``"none"`` (no tool may be called), ``"required"`` (some
    tool must be called) or ``{"name": tool}`` (that tool must be called); each is passed on
    as the caller gave it. UsageError names the fault."""
    if raw is None:
        return None
    if isinstance(raw, str) and raw in ("auto", "none", "required"):
        if raw == "required" and not tools:
            raise UsageError('tool_choice is "required" but no tools were given', "tool_choice")
        return raw
    name = None
    if isinstance(raw, dict) and raw.get("type", "function") == "function":
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else raw.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(
            'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if not any(t["function"]["name"] == name for t in tools or ()):
        raise UsageError(f"tool_choice names the tool {name[:64]!r}, which is not in tools", "tool_choice")
    return {"name": name}


def check_arguments(value: Any, where: str) -> dict[str, Any]:
    """Tool-call arguments from a caller: an object, or a JSON string holding one."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise UsageError(f"{where}.arguments is not valid JSON", "messages") from None
    if not isinstance(value, dict):
        raise UsageError(f"{where}.arguments must be an object", "messages")
    return value


# The tool_calls of an assistant message, as each wire's clients send them (named in errors)
OLLAMA_CALL = '{"function": {"name": ..., "arguments": {...}}}'
OPENAI_CALL = '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "..."}}'


def check_calls(raw: Any, where: str, shape: str) -> list[ToolCall]:
    """``tool_calls`` of a message a caller sends: [{id?, function: {name, arguments}}], the
    arguments an object or a JSON string holding one; a call of another shape is refused,
    naming ``shape``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UsageError(f"{where}.tool_calls must be an array", "messages")
    out = []
    for j, tc in enumerate(raw):
        w = f"{where}.tool_calls[{j}]"
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise UsageError(f"{w} must be {shape}", "messages")
        cid = tc.get("id")
        out.append(ToolCall(cid if isinstance(cid, str) else "", fn["name"], check_arguments(fn.get("arguments"), w)))
    return out


def parse_arguments(text: Any, name: str, who: str) -> dict[str, Any]:
    """Arguments an upstream sent as a JSON string (OpenAI wire) -> dict; a clear UpstreamError if not an object."""
    if isinstance(text, dict):
        return text
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if not isinstance(text, str):
        raise UpstreamError(f"{who} sent arguments for tool '{name}' that are not a JSON string")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        shown = " ".join(text.split())[:80]
        raise UpstreamError(f"{who} sent malformed JSON arguments for tool '{name}': {shown}") from None
    if not isinstance(value, dict):
        raise UpstreamError(f"{who} sent arguments for tool '{name}' that are not a JSON object")
    return value


def pair_tool_messages(messages: list[Message]) -> None:
    """Give every assistant tool call an id, and every tool message both its call id and its tool name
    (taken from the closest earlier assistant calls: by id, else by name, else in order)."""
    open_calls: list[ToolCall] = []  # calls of the last assistant turn not yet answered
    for i, m in enumerate(messages):
        if m.role == "assistant":
            if m.tool_calls:
                for call in m.tool_calls:
                    if not call.id:
                        call.id = new_call_id()
                open_calls = list(m.tool_calls)
            else:
                open_calls = []
        elif m.role == "tool":
            match = None
            if m.tool_call_id:
                match = next((c for c in open_calls if c.id == m.tool_call_id), None)
            if match is None and m.tool_name:
                match = next((c for c in open_calls if c.name == m.tool_name), None)
            if match is None and not m.tool_call_id and not m.tool_name and open_calls:
                match = open_calls[0]
            if match is not None:
                open_calls.remove(match)
                m.tool_call_id = m.tool_call_id or match.id
                m.tool_name = m.tool_name or match.name
            if not m.tool_name and not m.tool_call_id:
                raise UsageError(
                    f"messages[{i}]: a tool message needs tool_name (or tool_call_id) naming the call it answers",
                    "messages",
                )
            if not m.tool_call_id:
                m.tool_call_id = new_call_id()
            if not m.tool_name:
                m.tool_name = "tool"


def openai_calls_out(calls: list[ToolCall], with_index: bool = False) -> list[dict[str, Any]]:
    """OpenAI's wire: arguments are a JSON string."""
    out = []
    for i, c in enumerate(calls):
        item: dict[str, Any] = {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()},
        }
        if with_index:
            item = {"index": i, **item}
        out.append(item)
    return out
