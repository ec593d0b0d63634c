"""Ollama's /api/generate objects, built from engine events. Shared by the server
and by ``gencli generate --json``, so both print exactly the same thing."""

from __future__ import annotations

import time

from gencli.events import Done

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


def generate_chunk(model: str, text: str = "", thinking: str | None = None) -> dict:
    obj = {"model": model, "created_at": now_iso(), "response": text, "done": False}
    if thinking:
        obj["thinking"] = thinking
    return obj


def generate_final(done: Done, stream: bool) -> dict:
    """The final line of a stream (``response: ""``) or the whole non-streamed reply."""
    obj = {
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


def load_reply(model: str) -> dict:
    """Ollama's answer to an empty prompt: the model is 'loaded', nothing generated."""
    return {"model": model, "created_at": now_iso(), "response": "", "done": True, "done_reason": "load"}
