"""OpenAI Chat Completions: OpenAI itself, OpenRouter, and any OpenAI-compatible server.

Reasoning arrives as OpenRouter ``reasoning`` / ``reasoning_details``, DeepSeek
``reasoning_content``, or ``<think>`` tags in content (split out by the engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from gencli.core.errors import UpstreamError, UsageError
from gencli.core.events import Event, Finish, Logprobs, ReasoningDelta, TextDelta, TokenLogprob, ToolCall, Usage
from gencli.core.request import Message
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, HttpAdapter, HttpRequest, SSEParser
from gencli.providers.common import call_secrets, dumps, http_error, json_post, loads, scrub, upstream_json

FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
}

OPENAI_MAX_STOPS = 4


def _content(message: Message) -> Any:
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "text": message.content})
    for image in message.images:
        parts.append({"type": "image_url", "image_url": {"url": image.data_url}})
    return parts


def _message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    if m.tool_calls:
        from gencli.core.tools import openai_calls_out

        return {"role": "assistant", "content": m.content or None, "tool_calls": openai_calls_out(m.tool_calls)}
    return {"role": m.role, "content": _content(m)}


def _tool_calls(raw: Any, call: Call, label: str) -> list[Event]:
    """ToolCall events from a message's ``tool_calls`` (arguments: a JSON string, parsed to a dict)."""
    from gencli.core.tools import new_call_id, parse_arguments

    out: list[Event] = []
    for tc in raw if isinstance(raw, list) else ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise UpstreamError(f"{call.name}: {label} sent a tool call without a function name")
        name = str(fn["name"])
        out.append(
            ToolCall(
                str(tc.get("id") or new_call_id()),
                name,
                parse_arguments(fn.get("arguments"), name, f"{call.name}: {label}"),
            )
        )
    return out


def _reasoning(obj: dict[str, Any]) -> str:
    """Reasoning text from a message or delta, whichever form the upstream uses."""
    r = obj.get("reasoning_content") or obj.get("reasoning")
    if isinstance(r, str) and r:
        return r
    details = obj.get("reasoning_details")
    if isinstance(details, list):
        return "".join(
            d.get("text") or d.get("summary") or ""
            for d in details
            if isinstance(d, dict) and d.get("type") in ("reasoning.text", "reasoning.summary")
        )
    return ""


def _token(item: Any) -> TokenLogprob | None:
    if not isinstance(item, dict) or not isinstance(item.get("logprob"), (int, float)):
        return None
    raw = item.get("bytes")
    return TokenLogprob(
        str(item.get("token", "")),
        float(item["logprob"]),
        raw if isinstance(raw, list) and all(isinstance(b, int) for b in raw) else None,
    )


def _logprobs(choice: dict[str, Any]) -> Logprobs | None:
    """A choice's log probabilities: Chat Completions' ``logprobs.content`` (token objects with
    ``top_logprobs``) or legacy Completions' ``tokens`` / ``token_logprobs`` / ``top_logprobs``."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    out: list[TokenLogprob] = []
    content = lp.get("content")
    if isinstance(content, list):
        for item in content:
            token = _token(item)
            if token is None:
                continue
            for alt in item.get("top_logprobs") or ():
                t = _token(alt)
                if t is not None:
                    token.top.append(t)
            out.append(token)
    elif isinstance(lp.get("tokens"), list) and isinstance(lp.get("token_logprobs"), list):
        tops = lp.get("top_logprobs")
        tops = tops if isinstance(tops, list) else []
        for i, (tok, value) in enumerate(zip(lp["tokens"], lp["token_logprobs"], strict=False)):  # upstream data
            if not isinstance(value, (int, float)):
                continue
            token = TokenLogprob(str(tok), float(value))
            alts = tops[i] if i < len(tops) else None
            if isinstance(alts, dict):
                token.top = [TokenLogprob(str(k), float(v)) for k, v in alts.items() if isinstance(v, (int, float))]
            out.append(token)
    return Logprobs(out) if out else None


SAMPLING = ("temperature", "top_p", "num_predict", "stop", "seed", "presence_penalty", "frequency_penalty")
EXTRAS = {"top_k": "top_k", "repeat_penalty": "repetition_penalty", "min_p": "min_p"}  # not OpenAI's own
BEARER = ("Authorization", "Bearer ")  # where the key goes: the header and what precedes the key
OPENROUTER_HEADERS = {"HTTP-Referer": "https://github.com/gencli/gencli", "X-Title": "gencli"}  # app attribution


class OpenAIAdapter:
    in_process: Literal[False] = False
    image_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")

    def __init__(self, provider: str):
        self.provider = provider
        self.label = PROVIDERS[provider].label

    # -- request ----------------------------------------------------------------
    def body(self, call: Call) -> dict[str, Any]:
        if call.prompt is not None:
            return self.completion_body(call)
        o = call.options
        body: dict[str, Any] = {
            "model": call.model,
            "messages": [_message(m) for m in call.messages],
        }
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if call.logprobs:
            body["logprobs"] = True
            if call.top_logprobs:
                body["top_logprobs"] = call.top_logprobs
        if self.provider == "openai" and len(o.get("stop", ())) > OPENAI_MAX_STOPS:
            raise UsageError(f"options.stop: OpenAI takes at most {OPENAI_MAX_STOPS} stop sequences", "options.stop")
        self._sampling(o, body, "max_completion_tokens" if self.provider == "openai" else "max_tokens")
        if call.tools:
            body["tools"] = call.tools
            choice = call.tool_choice  # passed on exactly as the caller gave it (none when not given)
            if isinstance(choice, dict):
                body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            elif choice is not None:
                body["tool_choice"] = choice
        if call.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif isinstance(call.format, dict):
            schema: dict[str, Any] = {"name": call.format_name or "response", "schema": call.format}
            if call.format_strict is not None:
                schema["strict"] = call.format_strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        think = call.think
        if think is not None:
            if self.provider == "openrouter":
                if think is False:
                    body["reasoning"] = {"exclude": True}
                elif think is True:
                    body["reasoning"] = {"enabled": True}
                else:
                    body["reasoning"] = {"effort": think}
            elif "thinking" in call.capabilities:
                if isinstance(think, str):
                    body["reasoning_effort"] = think
                elif think is False and self.provider == "openai":
                    body["reasoning_effort"] = "minimal"
        return body

    def completion_body(self, call: Call) -> dict[str, Any]:
        """A text completion (``{base}/completions``): the prompt as it is, and the suffix for
        fill-in-the-middle. Sampling options as for chat; the legacy API's ``max_tokens``."""
        o = call.options
        body: dict[str, Any] = {"model": call.model, "prompt": call.prompt}
        if call.suffix is not None:
            body["suffix"] = call.suffix
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        self._sampling(o, body, "max_tokens")
        if call.logprobs:
            body["logprobs"] = call.top_logprobs  # the legacy API's form: how many alternatives
        return body

    def _sampling(self, o: Mapping[str, Any], body: dict[str, Any], max_tokens: str) -> None:
        """Ollama's options as the OpenAI wire's sampling fields (chat and text completions),
        ``num_predict`` as ``max_tokens``; the open-weights servers' EXTRAS but to OpenAI."""
        for key in SAMPLING:
            if key in o:
                body[max_tokens if key == "num_predict" else key] = o[key]
        if self.provider != "openai":
            body.update((theirs, o[ours]) for ours, theirs in EXTRAS.items() if ours in o)

    def build(self, call: Call) -> HttpRequest:
        path = "/chat/completions" if call.prompt is None else (PROVIDERS[self.provider].completions_path or "")
        extra = OPENROUTER_HEADERS if self.provider == "openrouter" else None
        return json_post(call, f"{call.base_url}{path}", self.body(call), *BEARER, call.stream, extra)

    # -- embeddings (POST {base}/embeddings) -------------------------------------
    embed_batch = 2048  # OpenAI takes at most 2048 inputs per request

    def build_embed(self, call: Call, inputs: list[str]) -> HttpRequest:
        body: dict[str, Any] = {"model": call.model, "input": inputs, "encoding_format": "float"}
        if call.options.get("dimensions"):
            body["dimensions"] = call.options["dimensions"]
        return json_post(call, f"{call.base_url}/embeddings", body, *BEARER)

    def parse_embed(self, call: Call, body: bytes) -> tuple[list[list[float]], int | None]:
        """(vectors in input order, prompt tokens) from an embeddings response."""
        data = upstream_json(call, self.label, body, "an embeddings response")
        if isinstance(data, dict) and data.get("error"):
            raise self._inline_error(call, data["error"])
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise UpstreamError(f"{call.name}: {self.label} sent an embeddings response without 'data'")
        items = sorted((i for i in items if isinstance(i, dict)), key=lambda i: i.get("index", 0))
        vectors = []
        for item in items:
            vec = item.get("embedding")
            if isinstance(vec, str):  # base64 little-endian float32, from servers that ignore encoding_format
                import base64
                import struct

                raw = base64.b64decode(vec)
                vec = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            if not isinstance(vec, list):
                raise UpstreamError(f"{call.name}: {self.label} sent an embedding that is not a list of numbers")
            vectors.append(vec)
        usage = data.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return vectors, tokens if isinstance(tokens, int) else None

    # -- responses --------------------------------------------------------------
    def parse_response(self, call: Call, body: bytes) -> list[Event]:
        data = upstream_json(call, self.label, body, "a response")
        if not isinstance(data, dict):
            raise UpstreamError(f"{call.name}: {self.label} sent an unexpected response")
        if data.get("error"):
            raise self._inline_error(call, data["error"])
        out: list[Event] = []
        choices = data.get("choices") or []
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            message = choice.get("message") or {}
            reasoning = _reasoning(message)
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            content = message.get("content") if message else choice.get("text")  # chat, or a text completion
            if content:
                out.append(TextDelta(content))
            if call.logprobs:
                lp = _logprobs(choice)
                if lp is not None:
                    out.append(lp)
            if message.get("tool_calls"):
                out.extend(_tool_calls(message["tool_calls"], call, self.label))
            reason = choice.get("finish_reason")
            if reason:
                out.append(Finish(FINISH.get(str(reason), str(reason))))
        usage = data.get("usage")
        if isinstance(usage, dict):
            out.append(_usage(usage))
        return out

    def stream_parser(self, call: Call) -> OpenAIStreamParser:
        return OpenAIStreamParser(self, call)

    def parse_error(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return http_error(call, self.provider, status, headers, body)

    def _inline_error(self, call: Call, err: Any) -> UpstreamError:
        if isinstance(err, dict):
            msg = err.get("message") or str(err.get("code") or "unknown error")
            code = err.get("code")
        else:
            msg, code = str(err), None
        status = code if isinstance(code, int) and 400 <= code < 600 else 0
        detail = scrub(str(msg), call.api_key, call_secrets(call))
        return UpstreamError(f"{call.name}: {self.label} reported an error: {detail}", upstream_status=status)


class OpenAIStreamParser(SSEParser["OpenAIAdapter"]):
    __slots__ = ("done", "finished", "calls")

    def __init__(self, adapter: OpenAIAdapter, call: Call):
        super().__init__(adapter, call)
        self.done = False  # saw data: [DONE]
        self.finished = False  # saw a finish_reason
        self.calls: dict[int, list[Any]] = {}  # streamed tool calls by index: [id, name, argument pieces]

    def _end(self, out: list[Event]) -> None:
        if self.calls and (self.done or self.finished):
            self._flush_calls(out)
        if not self.done and not self.finished:
            raise UpstreamError(
                f"{self.call.name}: {self.adapter.label} closed the stream before the answer "
                f"was complete (no finish_reason, no [DONE])"
            )

    def _event(self, payload: bytes, out: list[Event]) -> None:
        if payload == b"[DONE]":
            self.done = True
            if self.calls:
                self._flush_calls(out)
            return
        try:
            chunk = loads(payload)
        except ValueError:
            raise UpstreamError(f"{self.call.name}: {self.adapter.label} sent a malformed stream event") from None
        if not isinstance(chunk, dict):
            return
        if chunk.get("error"):
            raise self.adapter._inline_error(self.call, chunk["error"])
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if delta and isinstance(delta, dict):
                if "reasoning" in delta or "reasoning_content" in delta or "reasoning_details" in delta:
                    r = _reasoning(delta)
                    if r:
                        out.append(ReasoningDelta(r))
                c = delta.get("content")
                if c:
                    out.append(TextDelta(c))
                tcs = delta.get("tool_calls")
                if tcs:
                    self._call_pieces(tcs)
            elif isinstance(choice.get("text"), str) and choice["text"]:  # a text completion's chunk
                out.append(TextDelta(choice["text"]))
            if self.call.logprobs:
                lp = _logprobs(choice)
                if lp is not None:
                    out.append(lp)
            reason = choice.get("finish_reason")
            if reason:
                if reason == "error":
                    raise UpstreamError(f"{self.call.name}: {self.adapter.label} ended the stream with an error")
                self.finished = True
                if self.calls:
                    self._flush_calls(out)
                out.append(Finish(FINISH.get(str(reason), str(reason))))
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            out.append(_usage(usage))

    def _call_pieces(self, tcs: Any) -> None:
        """Assemble streamed ``delta.tool_calls``: id and name come first, arguments in pieces, by index."""
        for tc in tcs if isinstance(tcs, list) else ():
            if not isinstance(tc, dict):
                continue
            index = tc.get("index")
            if not isinstance(index, int):  # no index: a new id starts a new call, else it continues the last
                known = tc.get("id") and any(c[0] == tc["id"] for c in self.calls.values())
                index = len(self.calls) if (tc.get("id") and not known) or not self.calls else max(self.calls)
            slot = self.calls.get(index)
            if slot is None:
                slot = self.calls[index] = ["", "", []]
            if tc.get("id"):
                slot[0] = str(tc["id"])
            fn = tc.get("function")
            if isinstance(fn, dict):
                if fn.get("name") and not slot[1]:
                    slot[1] = str(fn["name"])
                args = fn.get("arguments")
                if isinstance(args, str):
                    slot[2].append(args)
                elif isinstance(args, dict):  # some compatible servers send an object
                    slot[2] = [dumps(args).decode()]

    def _flush_calls(self, out: list[Event]) -> None:
        raw = [
            {"id": slot[0], "function": {"name": slot[1], "arguments": "".join(slot[2])}}
            for _, slot in sorted(self.calls.items())
        ]
        self.calls = {}
        out.extend(_tool_calls(raw, self.call, self.adapter.label))


def adapter(provider: str) -> HttpAdapter:  # typed as the Protocol: mypy checks that the class conforms
    return OpenAIAdapter(provider)


def _usage(usage: dict[str, Any]) -> Usage:
    """Token counts; ``completion_tokens_details.reasoning_tokens`` (OpenAI's o-series, OpenRouter,
    DeepSeek) when present."""
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        reasoning if isinstance(reasoning, int) and not isinstance(reasoning, bool) else None,
    )
