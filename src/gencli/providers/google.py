"""Google Gemini API (generativelanguage.googleapis.com), sans-I/O.

``POST {base}/v1beta/models/{model}:generateContent`` (or
``:streamGenerateContent?alt=sse``), key in ``x-goog-api-key``. Parts marked
``"thought": true`` are reasoning summaries; the rest is the answer. The stream is
SSE with CRLF line ends and no ``[DONE]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from gencli.core.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UsageError,
)
from gencli.core.events import Event, Finish, Logprobs, ReasoningDelta, TextDelta, TokenLogprob, ToolCall, Usage
from gencli.core.request import Message
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, HttpAdapter, HttpRequest, SSEParser
from gencli.providers.common import call_secrets, dumps, http_error, json_post, loads, retry_after, scrub, upstream_json

API_VERSION = "v1beta"
KEY_HEADER = "x-goog-api-key"
MAX_STOPS = 5  # the Gemini API refuses more stop sequences than this
INT32 = 2**31

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
    "MALFORMED_FUNCTION_CALL": "tool_calls",
    "UNEXPECTED_TOOL_CALL": "tool_calls",
}

# think "low" | "medium" | "high" -> thinkingBudget (Gemini 2.5) or thinkingLevel (Gemini 3)
BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
LEVELS = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}

_VERSIONS = ("/v1", "/v1beta", "/v1alpha")
_GENERATION = re.compile(r"gemini-(\d+)")


def _parts(message: Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"inlineData": {"mimeType": image.mime, "data": image.data}} for image in message.images
    ]
    if message.content:
        parts.append({"text": message.content})
    return parts


def _function_response(message: Message) -> dict[str, Any]:
    """A role "tool" message as a functionResponse part (the response must be an object)."""
    response: Any = None
    text = message.content
    if text.lstrip().startswith("{"):
        try:
            response = loads(text)
        except ValueError:
            response = None
    if not isinstance(response, dict):
        response = {"result": text}
    return {"functionResponse": {"name": message.tool_name or "tool", "response": response}}


def _duration(value: Any) -> float | None:
    """A google.protobuf.Duration as JSON ("12s", "1.5s") or as {seconds, nanos}."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    if isinstance(value, dict):
        try:
            return max(0.0, float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9)
        except (TypeError, ValueError):
            return None
    return None


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data: Any = loads(body)
    except ValueError:
        return {}
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else {}


def _details(err: dict[str, Any]) -> list[dict[str, Any]]:
    details = err.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _is_key_error(err: dict[str, Any]) -> bool:
    for d in _details(err):
        if d.get("reason") in (
            "API_KEY_INVALID",
            "API_KEY_SERVICE_BLOCKED",
            "API_KEY_HTTP_REFERRER_BLOCKED",
            "API_KEY_IP_ADDRESS_BLOCKED",
            "API_KEY_ANDROID_APP_BLOCKED",
            "API_KEY_IOS_APP_BLOCKED",
            "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        ):
            return True
    return False


def _retry_delay(err: dict[str, Any]) -> float | None:
    for d in _details(err):
        if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            wait = _duration(d.get("retryDelay"))
            if wait is not None:
                return wait
    return None


def _logprob(item: Any) -> TokenLogprob | None:
    if not isinstance(item, dict) or not isinstance(item.get("logProbability"), (int, float)):
        return None
    return TokenLogprob(str(item.get("token", "")), float(item["logProbability"]))


def _logprobs(result: dict[str, Any]) -> Logprobs | None:
    """Gemini's ``logprobsResult``: ``chosenCandidates`` (one per token) and ``topCandidates``
    (the alternatives at each position)."""
    chosen = result.get("chosenCandidates")
    tops = result.get("topCandidates")
    tops = tops if isinstance(tops, list) else []
    out: list[TokenLogprob] = []
    for i, item in enumerate(chosen if isinstance(chosen, list) else ()):
        token = _logprob(item)
        if token is None:
            continue
        top = tops[i].get("candidates") if i < len(tops) and isinstance(tops[i], dict) else None
        token.top = [t for t in (_logprob(c) for c in (top if isinstance(top, list) else ())) if t is not None]
        out.append(token)
    return Logprobs(out) if out else None


class GoogleAdapter:
    in_process: Literal[False] = False
    image_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")

    def __init__(self, provider: str = "google"):
        self.provider = provider
        self.label = PROVIDERS[provider].label

    # -- request ----------------------------------------------------------------
    def url(self, call: Call) -> str:
        base = call.base_url.rstrip("/")
        if not base.endswith(_VERSIONS):
            base = f"{base}/{API_VERSION}"
        model = call.model if "/" in call.model else f"models/{call.model}"
        action = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        return f"{base}/{quote(model, safe='/-._~')}:{action}"

    def generation_config(self, call: Call) -> dict[str, Any]:
        o = call.options
        config: dict[str, Any] = {}
        if "temperature" in o:
            config["temperature"] = o["temperature"]
        if "top_p" in o:
            config["topP"] = o["top_p"]
        if "top_k" in o:
            config["topK"] = o["top_k"]
        if "num_predict" in o:
            config["maxOutputTokens"] = o["num_predict"]
        if "stop" in o:
            if len(o["stop"]) > MAX_STOPS:
                raise UsageError(
                    f"options.stop has {len(o['stop'])} entries; Gemini takes at most {MAX_STOPS} stop sequences",
                    "options.stop",
                )
            config["stopSequences"] = o["stop"]
        if "seed" in o:
            if not -INT32 <= o["seed"] < INT32:
                raise UsageError(
                    f"options.seed is {o['seed']}; Gemini takes a 32-bit seed (from {-INT32} to {INT32 - 1})",
                    "options.seed",
                )
            config["seed"] = o["seed"]
        if "presence_penalty" in o:
            config["presencePenalty"] = o["presence_penalty"]
        if "frequency_penalty" in o:
            config["frequencyPenalty"] = o["frequency_penalty"]
        if call.logprobs:
            config["responseLogprobs"] = True
            if call.top_logprobs:
                config["logprobs"] = call.top_logprobs
        if call.format == "json":
            config["responseMimeType"] = "application/json"
        elif isinstance(call.format, dict):
            # The user's format is a JSON Schema: responseJsonSchema takes it as is
            # (responseSchema takes only an OpenAPI subset and rejects e.g. additionalProperties).
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = call.format
        thinking = self.thinking_config(call)
        if thinking:
            config["thinkingConfig"] = thinking
        return config

    def thinking_config(self, call: Call) -> dict[str, Any] | None:
        if "thinking" not in call.capabilities:
            return None  # models without thinking reject a thinkingConfig
        think = call.think
        version = _GENERATION.match(call.model.rsplit("/", 1)[-1])
        levels = version is not None and int(version.group(1)) >= 3  # Gemini 3 on: thinkingLevel
        if think is None:
            return {"includeThoughts": True}  # show reasoning summaries by default
        if think is False:
            if levels:  # Gemini 3 cannot switch thinking off; ask for the least
                return {"thinkingLevel": "MINIMAL" if "flash" in call.model else "LOW"}
            return {"thinkingBudget": 0}
        if think is True:
            return {"includeThoughts": True} if levels else {"includeThoughts": True, "thinkingBudget": -1}
        if levels:
            return {"includeThoughts": True, "thinkingLevel": LEVELS[think]}
        return {"includeThoughts": True, "thinkingBudget": BUDGETS[think]}

    def body(self, call: Call) -> dict[str, Any]:
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        signed = 0  # 1: Gemini 3, which wants a thoughtSignature on replayed functionCall parts; 2: older
        for m in call.messages:
            if m.role == "system":
                if m.content:
                    system.append({"text": m.content})
                continue
            if m.role == "tool":  # results go back as functionResponse parts of one user turn
                part = _function_response(m)
                last = contents[-1] if contents else None
                if last is not None and last["role"] == "user" and "functionResponse" in last["parts"][-1]:
                    last["parts"].append(part)
                else:
                    contents.append({"role": "user", "parts": [part]})
                continue
            if m.tool_calls:
                if not signed:
                    version = _GENERATION.match(call.model.rsplit("/", 1)[-1])
                    signed = 1 if version is not None and int(version.group(1)) >= 3 else 2
                parts = [{"text": m.content}] if m.content else []
                for tc in m.tool_calls:
                    part = {"functionCall": {"name": tc.name, "args": tc.arguments}}
                    if signed == 1:  # the original signature is not kept; Google documents this bypass
                        part["thoughtSignature"] = "skip_thought_signature_validator"
                    parts.append(part)
                contents.append({"role": "model", "parts": parts})
                continue
            parts = _parts(m)
            if parts:  # Gemini refuses empty parts
                role = "model" if m.role == "assistant" else "user"
                if contents and contents[-1]["role"] == role:  # one turn per role, as Gemini alternates them
                    contents[-1]["parts"].extend(parts)
                else:
                    contents.append({"role": role, "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        if call.tools:
            decls = []
            for tool in call.tools:
                fn = tool["function"]
                decl: dict[str, Any] = {"name": fn["name"], "description": fn.get("description", "")}
                if fn.get("parameters"):
                    decl["parametersJsonSchema"] = fn["parameters"]  # full JSON Schema, as responseJsonSchema
                decls.append(decl)
            body["tools"] = [{"functionDeclarations": decls}]
            if call.tool_choice in ("auto", "none"):
                body["toolConfig"] = {"functionCallingConfig": {"mode": call.tool_choice.upper()}}
            elif call.tool_choice:  # a call is required (of the named function)
                mode: dict[str, Any] = {"mode": "ANY"}
                if isinstance(call.tool_choice, dict):
                    mode["allowedFunctionNames"] = [call.tool_choice["name"]]
                body["toolConfig"] = {"functionCallingConfig": mode}
        config = self.generation_config(call)
        if config:
            body["generationConfig"] = config
        return body

    def build(self, call: Call) -> HttpRequest:
        return json_post(call, self.url(call), self.body(call), KEY_HEADER, stream=call.stream)

    # -- embeddings (batchEmbedContents) ----------------------------------------------
    embed_batch = 100  # the Gemini API takes at most 100 requests per batch

    def build_embed(self, call: Call, inputs: list[str]) -> HttpRequest:
        base = call.base_url.rstrip("/")
        if not base.endswith(_VERSIONS):
            base = f"{base}/{API_VERSION}"
        model = call.model if "/" in call.model else f"models/{call.model}"
        dims = call.options.get("dimensions")
        requests = []
        for text in inputs:
            req: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if dims:
                req["outputDimensionality"] = dims
            requests.append(req)
        url = f"{base}/{quote(model, safe='/-._~')}:batchEmbedContents"
        return json_post(call, url, {"requests": requests}, KEY_HEADER)

    def parse_embed(self, call: Call, body: bytes) -> tuple[list[list[float]], int | None]:
        data = upstream_json(call, self.label, body, "an embeddings response")
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            raise self.error(call, int(data["error"].get("code") or 0), {}, data["error"])
        items = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise UpstreamError(f"{call.name}: {self.label} sent an embeddings response without 'embeddings'")
        vectors = []
        for item in items:
            values = item.get("values") if isinstance(item, dict) else None
            if not isinstance(values, list):
                raise UpstreamError(f"{call.name}: {self.label} sent an embedding without 'values'")
            vectors.append(values)
        return vectors, None  # batchEmbedContents reports no token counts

    # -- responses --------------------------------------------------------------
    def events(self, call: Call, data: Any, out: list[Event]) -> None:
        """Append the events of one GenerateContentResponse (a whole reply or a stream chunk)."""
        if not isinstance(data, dict):
            raise UpstreamError(f"{call.name}: {self.label} sent an unexpected response")
        if isinstance(data.get("error"), dict):
            raise self.error(call, int(data["error"].get("code") or 0), {}, data["error"])
        candidates = data.get("candidates") or []
        feedback = data.get("promptFeedback") or {}
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            reason = feedback["blockReason"]
            raise UpstreamError(
                f"{call.name}: {self.label} blocked the prompt (blockReason {reason}); rephrase it",
                upstream_status=200,
                status=400,
            )
        if candidates and isinstance(candidates[0], dict):
            candidate = candidates[0]
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                text = part.get("text") if isinstance(part, dict) else None
                if text:
                    out.append(ReasoningDelta(text) if part.get("thought") else TextDelta(text))
                elif isinstance(part, dict) and isinstance(part.get("functionCall"), dict):
                    out.append(self.tool_call(call, part["functionCall"]))
            if call.logprobs and isinstance(candidate.get("logprobsResult"), dict):
                lp = _logprobs(candidate["logprobsResult"])
                if lp is not None:
                    out.append(lp)
            reason = candidate.get("finishReason")
            if reason and reason != "FINISH_REASON_UNSPECIFIED":
                out.append(Finish(FINISH.get(str(reason), "stop")))
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            answer, thoughts = usage.get("candidatesTokenCount"), usage.get("thoughtsTokenCount")
            completion = None if answer is None and thoughts is None else (answer or 0) + (thoughts or 0)
            out.append(Usage(usage.get("promptTokenCount"), completion, thoughts))

    def tool_call(self, call: Call, fc: dict[str, Any]) -> ToolCall:
        from gencli.core.tools import new_call_id

        name = fc.get("name")
        if not isinstance(name, str) or not name:
            raise UpstreamError(f"{call.name}: {self.label} sent a functionCall without a name")
        args = fc.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise UpstreamError(f"{call.name}: {self.label} sent arguments for tool '{name}' that are not an object")
        cid = fc.get("id")
        return ToolCall(cid if isinstance(cid, str) and cid else new_call_id(), name, args)

    def parse_response(self, call: Call, body: bytes) -> list[Event]:
        data = upstream_json(call, self.label, body, "a response")
        out: list[Event] = []
        for item in data if isinstance(data, list) else (data,):  # a JSON array when not SSE
            self.events(call, item, out)
        return out

    def stream_parser(self, call: Call) -> GoogleStreamParser:
        return GoogleStreamParser(self, call)

    def parse_error(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return self.error(call, status, headers, _error_object(body), body)

    def error(
        self, call: Call, status: int, headers: Mapping[str, str], err: dict[str, Any], body: bytes | None = None
    ) -> UpstreamError:
        """A typed error from a Gemini error object ``{code, message, status, details}``."""
        if status in (401, 403) or (status == 400 and _is_key_error(err)) or err.get("status") == "UNAUTHENTICATED":
            var = call.key_env or "GEMINI_API_KEY"
            return UpstreamAuthError(
                f"{call.name}: {self.label} rejected the API key (HTTP {status}); check {var}", upstream_status=status
            )
        if body is None:
            body = dumps({"error": err})
        exc = http_error(call, self.provider, status, headers, body)
        if status == 429 or err.get("status") == "RESOURCE_EXHAUSTED":
            wait = _retry_delay(err)
            if wait is None:
                wait = retry_after(headers)
            if not isinstance(exc, UpstreamRateLimited):
                detail = scrub(str(err.get("message") or ""), call.api_key, call_secrets(call))
                exc = UpstreamRateLimited(
                    f"{call.name}: {self.label} is rate limiting requests" + (f": {detail}" if detail else ""),
                    upstream_status=status or 429,
                )
            exc.retry_after = wait
        return exc


class GoogleStreamParser(SSEParser["GoogleAdapter"]):
    __slots__ = ()

    def _event(self, payload: bytes, out: list[Event]) -> None:
        if not payload.strip():
            return
        try:
            chunk = loads(payload)
        except ValueError:
            raise UpstreamError(f"{self.call.name}: {self.adapter.label} sent a malformed stream event") from None
        self.adapter.events(self.call, chunk, out)


def adapter(provider: str) -> HttpAdapter:  # typed as the Protocol: mypy checks that the class conforms
    return GoogleAdapter(provider)
