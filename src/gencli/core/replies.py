"""Ollama's reply objects (/api/generate and /api/chat lines, tool calls, load replies),
built from engine events: the one place they are defined. Shared by the server
(:mod:`gencli.server.api.ollama`) and by ``gencli generate --json``, so both print exactly
the same thing."""

from __future__ import annotations

import time
from typing import Any

from gencli.core.events import Done, ToolCall

_last_sec = -1
_last_prefix = ""


def now_iso() -> str:
    """RFC 3339 UTC timestamp with microseconds, e.g. 2025-10-26T17:21:21.196249Z."""
    global _last_sec, _last_prefix
    t = time.time()
    sec = int(t)
    if sec != _last_sec:
        _last_sec = sec
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_last_prefix}.{int((t - sec) * 1e6):06d}Z"


def generate_chunk(model: str, text: str = "", thinking: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"model": model, "created_at": now_iso(), "response": text, "done": False}
    if thinking:
        obj["thinking"] = thinking
    return obj


def generate_final(done: Done, stream: bool) -> dict[str, Any]:
    """The final line of a stream (``response: ""``) or the whole non-streamed reply."""
    obj: dict[str, Any] = {
        "model": done.model,
        "created_at": now_iso(),
        "response": "" if stream else done.text,
        "done": True,
        "done_reason": done.done_reason,
        "context": done.context,
    }
    if done.reasoning:
        if not stream:
            obj["thinking"] = done.reasoning
        obj["reasoning"] = done.reasoning
    obj.update(done.stats())
    return obj


def load_reply(model: str) -> dict[str, Any]:
    """Ollama's answer to an empty prompt: the model is 'loaded', nothing generated."""
    return {"model": model, "created_at": now_iso(), "response": "", "done": True, "done_reason": "load"}


def calls_out(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls on Ollama's wire: arguments are an object."""
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments}} for i, c in enumerate(calls)
    ]


def chat_chunk(model: str, text: str = "", thinking: str | None = None) -> dict[str, Any]:
    """A streamed /api/chat line: a piece of the answer or (``thinking``) of the reasoning."""
    message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    return {"model": model, "created_at": now_iso(), "message": message, "done": False}


def chat_final(model: str, done: Done, whole: bool) -> dict[str, Any]:
    """The final /api/chat line of a stream, or (``whole``) the whole non-streamed reply
    with the answer, the reasoning and the tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": done.text if whole else ""}
    if whole and done.reasoning:
        message["thinking"] = done.reasoning
    if whole and done.tool_calls:
        message["tool_calls"] = calls_out(done.tool_calls)
    obj = {"model": model, "created_at": now_iso(), "message": message, "done": True, "done_reason": done.done_reason}
    obj.update(done.stats())
    return obj


def chat_calls(model: str, calls: list[ToolCall]) -> dict[str, Any]:
    """The streamed line with the tool calls, before the final line (as Ollama sends them)."""
    return {
        "model": model,
        "created_at": now_iso(),
        "done": False,
        "message": {"role": "assistant", "content": "", "tool_calls": calls_out(calls)},
    }


def chat_load_reply(model: str) -> dict[str, Any]:
    """Ollama's answer to a chat without messages: the model is 'loaded'."""
    return {
        "model": model,
        "created_at": now_iso(),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }
