"""A fake Google Gemini API upstream (generativelanguage.googleapis.com).

A real aiohttp server on 127.0.0.1 that speaks the wire described in
/work/shared/reference/upstream-wire.md:
``POST /{v1|v1beta}/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` (SSE with CRLF line ends, no ``[DONE]``).
It accepts camelCase and snake_case field names and both base64 alphabets, as the
``google-genai`` SDK sends them, and refuses unknown fields with 400 as the real API
does. The key goes in ``x-goog-api-key`` (or ``?key=``): none is 403
PERMISSION_DENIED, a wrong one 400 INVALID_ARGUMENT / API_KEY_INVALID.

Behaviour is chosen by the model name in the URL (prefix match):

- ``gemini-echo`` (and any other ``gemini-*``): "You said: <last user text>", one
  word per stream event, ``[image/png N bytes]`` for each image. Honours
  ``stopSequences`` (cuts before the first), ``maxOutputTokens`` (cuts to N words,
  finishReason MAX_TOKENS) and ``responseMimeType: application/json`` (answers a
  JSON object ``{"echo": text}``). Usage counts words.
- ``gemini-think``: thinks before the echo answer. Thought parts (``"thought": true``)
  are sent only with ``thinkingConfig.includeThoughts``; ``thinkingBudget: 0`` turns
  thinking off (no ``thoughtsTokenCount``).
- ``gemini-tokens-N``: N tokens ``tok0 tok1 ...``, one per event (benchmarks).
- ``gemini-blocked``: HTTP 200, ``promptFeedback.blockReason: SAFETY``, no candidates.
- ``gemini-safety``: a little text, then finishReason SAFETY.
- ``gemini-error-400-key``: 400 API_KEY_INVALID whatever the key.
- ``gemini-error-429``: 429 RESOURCE_EXHAUSTED with RetryInfo ``retryDelay: "12s"``;
  ``gemini-error-429-frac``: ``"1.5s"``; ``gemini-error-429-header``: no RetryInfo,
  ``Retry-After: 7``.
- ``gemini-error-503``: 503 UNAVAILABLE "The model is overloaded".
- ``gemini-error-midstream``: some text, then an SSE event with a top-level ``error``.
- ``gemini-tools`` / ``gemini-tools-N``: with ``tools: [{functionDeclarations}]`` it
  answers functionCall parts for the first (N) functions (args from each
  ``parametersJsonSchema``/``parameters``: strings get the last user text, integers 42,
  numbers 1.5, booleans true), finishReason STOP, as Gemini does; streamed, one event
  per call. Once the last user turn holds functionResponse parts it answers
  "Tool results: <responses as JSON>". A functionCall turn must be followed by as many
  functionResponse parts, with the same names (400 otherwise, as the real API).
- ``:batchEmbedContents`` / ``:embedContent``: deterministic, not normalised vectors
  (12 dimensions, or ``outputDimensionality``) from a hash of the text; a model named
  ``gemini-*`` or ``text-embedding-*`` (404 otherwise).
- a model not starting with ``gemini``: 404 NOT_FOUND.

``FakeGemini`` runs it in a background thread; ``gemini_fake`` is a session fixture.
``python -m tests.fakes.gemini_upstream --port N`` serves it in the foreground.
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

FAKE_KEY = "gm-fake-test-key-0123456789abcdef"

_dumps = orjson.dumps
_WORD = re.compile(r"\S+\s*")
_SNAKE = re.compile(r"_([a-z])")

# Known fields (camelCase) of the request messages the fake checks; the real API
# answers 400 'Invalid JSON payload received. Unknown name "x"' for anything else.
_REQUEST_FIELDS = {
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
}
_CONFIG_FIELDS = {
    "candidateCount",
    "stopSequences",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "speechConfig",
    "thinkingConfig",
    "mediaResolution",
    "imageConfig",
}
_THINKING_FIELDS = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
_CONTENT_FIELDS = {"role", "parts"}
_PART_FIELDS = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
}
_BLOB_FIELDS = {"mimeType", "data", "displayName"}
MAX_STOPS = 5


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw: bytes = b""

    @property
    def model(self) -> str:
        return self.path.rsplit("/models/", 1)[-1].split(":", 1)[0]


class BadRequest(Exception):
    """The request is malformed: answer 400 INVALID_ARGUMENT with this message."""


def _camel(name: str) -> str:
    return _SNAKE.sub(lambda m: m.group(1).upper(), name)


def _norm(obj: Any, known: set[str], where: str) -> dict:
    """The object with camelCase keys; unknown keys are refused as the real API does."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise BadRequest(f"Invalid value at '{where}', expected an object")
    out = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in known:
            raise BadRequest(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
        out[name] = value
    return out


def _b64(data: str, where: str) -> bytes:
    raw = data.replace("-", "+").replace("_", "/")
    raw += "=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for \"{data[:20]}\""
        ) from None


@dataclass
class Parsed:
    """What the fake understood of a request (all camelCase)."""

    contents: list[dict] = field(default_factory=list)  # [{role, parts: [{text}|{image: (mime, bytes)}]}]
    system: str = ""
    config: dict = field(default_factory=dict)
    thinking: dict = field(default_factory=dict)
    tools: list[dict] = field(default_factory=list)  # functionDeclarations

    def last_user(self) -> dict:
        for content in reversed(self.contents):
            if content["role"] == "user":
                return content
        return {"role": "user", "parts": []}

    def words(self) -> int:
        n = len(_WORD.findall(self.system))
        for content in self.contents:
            for part in content["parts"]:
                n += len(_WORD.findall(part.get("text", ""))) if "text" in part else 258
        return n


def parse_request(body: Any) -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest("Invalid JSON payload received. Expected an object.")
    req = _norm(body, _REQUEST_FIELDS, "")
    out = Parsed()
    contents = req.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    for i, raw in enumerate(contents):
        content = _norm(raw, _CONTENT_FIELDS, f"contents[{i}]")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise BadRequest(f"Please use a valid role: user, model. (contents[{i}].role is {role!r})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        seen = []
        for j, rawp in enumerate(parts):
            where = f"contents[{i}].parts[{j}]"
            part = _norm(rawp, _PART_FIELDS, where)
            if "text" in part:
                if not isinstance(part["text"], str) or not part["text"]:
                    raise BadRequest(f"Unable to submit request because it has an empty text parameter ({where}).")
                seen.append({"text": part["text"], "thought": bool(part.get("thought"))})
            elif "inlineData" in part:
                blob = _norm(part["inlineData"], _BLOB_FIELDS, f"{where}.inline_data")
                mime, data = blob.get("mimeType"), blob.get("data")
                if not mime or not isinstance(data, str) or not data:
                    raise BadRequest(f"* GenerateContentRequest.{where}.inline_data: mime_type and data are required")
                seen.append({"image": (mime, _b64(data, f"{where}.inline_data.data"))})
            elif "functionCall" in part:
                fc = _norm(part["functionCall"], {"id", "name", "args"}, f"{where}.function_call")
                if not fc.get("name") or not isinstance(fc.get("args", {}), dict):
                    raise BadRequest(f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty.")
                seen.append({"functionCall": fc})
            elif "functionResponse" in part:
                fr = _norm(
                    part["functionResponse"],
                    {"id", "name", "response", "willContinue", "scheduling", "parts"},
                    f"{where}.function_response",
                )
                if not fr.get("name") or not isinstance(fr.get("response"), dict):
                    raise BadRequest(
                        f"* GenerateContentRequest.{where}.function_response: name and an object response are required"
                    )
                seen.append({"functionResponse": fr})
            else:
                raise BadRequest(
                    f"* GenerateContentRequest.{where}.data: required oneof field 'data' must "
                    f"have one initialized field"
                )
        out.contents.append({"role": role, "parts": seen})
    system = req.get("systemInstruction")
    if system is not None:
        if isinstance(system, str):  # the API takes a bare string too
            out.system = system
        else:
            sys_content = _norm(system, _CONTENT_FIELDS, "system_instruction")
            out.system = "\n".join(
                _norm(p, _PART_FIELDS, "system_instruction.parts").get("text", "")
                for p in sys_content.get("parts") or []
            )
    config = _norm(req.get("generationConfig"), _CONFIG_FIELDS, "generation_config")
    stops = config.get("stopSequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("Invalid value at 'generation_config.stop_sequences'")
        if len(stops) > MAX_STOPS:
            raise BadRequest(
                f"* GenerateContentRequest.generation_config.stop_sequences: the number of stop "
                f"sequences must be at most {MAX_STOPS}"
            )
    seed = config.get("seed")
    if seed is not None and (not isinstance(seed, int) or not -(2**31) <= seed < 2**31):
        raise BadRequest(f"Invalid value at 'generation_config.seed' (TYPE_INT32), {seed}")
    if config.get("responseSchema") is not None and config.get("responseJsonSchema") is not None:
        raise BadRequest("response_schema and response_json_schema cannot both be set")
    if (config.get("responseSchema") is not None or config.get("responseJsonSchema") is not None) and config.get(
        "responseMimeType"
    ) not in ("application/json", "text/x.enum"):
        raise BadRequest(
            "* GenerateContentRequest.generation_config.response_mime_type: must be "
            "application/json when a response schema is set"
        )
    thinking = _norm(config.get("thinkingConfig"), _THINKING_FIELDS, "generation_config.thinking_config")
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise BadRequest("thinking_budget and thinking_level are not supported together.")
    out.config, out.thinking = config, thinking
    for i, tool in enumerate(req.get("tools") or []):
        tool = _norm(tool, {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}, f"tools[{i}]")
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            decl = _norm(
                decl,
                {
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                    "responseJsonSchema",
                    "behavior",
                },
                f"tools[{i}].function_declarations[{j}]",
            )
            if not decl.get("name"):
                raise BadRequest(
                    f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Name cannot be empty."
                )
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise BadRequest("parameters and parameters_json_schema cannot both be set")
            out.tools.append(decl)
    for i, content in enumerate(out.contents):
        calls = [p["functionCall"]["name"] for p in content["parts"] if "functionCall" in p]
        if calls:
            nxt = out.contents[i + 1] if i + 1 < len(out.contents) else None
            answers = [p["functionResponse"]["name"] for p in (nxt or {}).get("parts", []) if "functionResponse" in p]
            if nxt is not None and sorted(answers) != sorted(calls):
                raise BadRequest(
                    "Please ensure that the number of function response parts is equal to the number "
                    "of function call parts of the function call turn."
                )
    return out


def _arg_value(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, str):
        kind = kind.lower()
    return {"integer": 42, "number": 1.5, "boolean": True, "object": {}, "array": []}.get(kind, text)


def tool_calls_for(model: str, req: Parsed) -> list[dict] | None:
    """functionCall parts to answer with, or None when the last user turn holds results."""
    last = req.contents[-1] if req.contents else {"parts": []}
    if not req.tools or any("functionResponse" in p for p in last["parts"]):
        return None
    text = " ".join(p["text"] for p in req.last_user()["parts"] if "text" in p)
    tail = model[len("gemini-tools-") :]
    n = int(tail) if tail.isdigit() else 1
    out = []
    for decl in req.tools[:n]:
        schema = decl.get("parametersJsonSchema") or decl.get("parameters") or {}
        props = schema.get("properties") or {}
        out.append({"functionCall": {"name": decl["name"], "args": {k: _arg_value(v, text) for k, v in props.items()}}})
    return out


def fake_gemini_vector(text: str, dims: int = 12) -> list[float]:
    """The vector the fake answers for ``text`` (before any normalisation)."""
    import hashlib

    digest = b""
    while len(digest) < dims:
        digest += hashlib.sha256(b"gemini" + text.encode() + bytes([len(digest) % 251])).digest()
    return [(b - 128) / 8 for b in digest[:dims]]


# -- replies -------------------------------------------------------------------
@dataclass
class Reply:
    thoughts: list[str] = field(default_factory=list)  # sent as thought parts (if includeThoughts)
    text: list[str] = field(default_factory=list)
    finish: str = "STOP"
    prompt_tokens: int = 0
    thought_tokens: int | None = None
    midstream_error: bool = False


def _error(
    status: int, state: str, message: str, details: list | None = None, headers: dict | None = None
) -> web.Response:
    err: dict[str, Any] = {"code": status, "message": message, "status": state}
    if details is not None:
        err["details"] = details
    return web.Response(
        status=status, body=_dumps({"error": err}), headers=headers, content_type="application/json", charset="UTF-8"
    )


def key_invalid() -> web.Response:
    msg = "API key not valid. Please pass a valid API key."
    return _error(
        400,
        "INVALID_ARGUMENT",
        msg,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": msg},
        ],
    )


def rate_limited(model: str, delay: str | None, headers: dict | None = None) -> web.Response:
    details: list[dict] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "10",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return _error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        details,
        headers,
    )


def _echo_text(req: Parsed) -> str:
    user = req.last_user()
    texts = [p["text"] for p in user["parts"] if "text" in p]
    images = [f"[{p['image'][0]} {len(p['image'][1])} bytes]" for p in user["parts"] if "image" in p]
    return "You said: " + " ".join(texts + images)


def plan_reply(model: str, req: Parsed) -> Reply:
    reply = Reply(prompt_tokens=req.words())
    config = req.config
    if model.startswith("gemini-tokens-"):
        try:
            n = int(model.rsplit("-", 1)[1])
        except ValueError:
            n = 10
        words = [f"tok{i} " for i in range(n)]
    elif config.get("responseMimeType") == "application/json":
        words = [_dumps({"echo": _echo_text(req)}).decode()]
    else:
        words = _WORD.findall(_echo_text(req))
    if model.startswith("gemini-think"):
        thinking = req.thinking
        if thinking.get("thinkingBudget") != 0:
            thoughts = ["**Reading the prompt**\n\nThe user wants an echo. ", "I will repeat what they said."]
            reply.thought_tokens = sum(len(_WORD.findall(t)) for t in thoughts)
            if thinking.get("includeThoughts"):
                reply.thoughts = thoughts
    if model.startswith("gemini-safety"):
        words, reply.finish = ["I cannot ", "continue "], "SAFETY"
    stops = config.get("stopSequences") or []
    if stops:
        full = "".join(words)
        cut = min((full.find(s) for s in stops if s in full), default=-1)
        if cut >= 0:
            words = _WORD.findall(full[:cut]) or ([full[:cut]] if full[:cut] else [])
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and limit < len(words):
        words, reply.finish = words[:limit], "MAX_TOKENS"
    reply.text = words
    reply.midstream_error = model.startswith("gemini-error-midstream")
    return reply


def _usage(reply: Reply, candidates: int | None) -> dict:
    usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
    total = reply.prompt_tokens
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
        total += candidates
    if reply.thought_tokens is not None:
        usage["thoughtsTokenCount"] = reply.thought_tokens
        total += reply.thought_tokens
    usage["totalTokenCount"] = total
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}]
    return usage


def _response(parts: list[dict] | None, model: str, rid: str, usage: dict, finish: str | None = None) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}, "index": 0}
    if not parts:
        candidate["content"] = {"role": "model"}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": rid}


def _blocked(model: str, req: Parsed, rid: str) -> dict:
    n = req.words()
    return {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}],
        },
        "usageMetadata": {"promptTokenCount": n, "totalTokenCount": n},
        "modelVersion": model,
        "responseId": rid,
    }


class FakeGemini(ThreadedServer):
    """The fake upstream on 127.0.0.1:<free port>, in a thread with its own event loop."""

    thread_name = "fake-gemini"

    def __init__(self, api_key: str | None = FAKE_KEY, port: int = 0):
        super().__init__(port)
        self.api_key = api_key  # None: accept any non-empty key
        self.requests: list[Recorded] = []

    # -- lifecycle -----------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(r"/{version:v1|v1beta|v1alpha}/models/{target}", self._generate)
        return app

    # -- helpers for tests ---------------------------------------------------
    def last(self, model: str | None = None) -> Recorded:
        """The most recent request (for ``model``, if given)."""
        for rec in reversed(self.requests):
            if model is None or rec.model == model:
                return rec
        raise AssertionError(f"the fake Gemini upstream got no request for {model or 'any model'}")

    # -- handler ---------------------------------------------------------------
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            raw,
        )
        self.requests.append(rec)
        target = request.match_info["target"]
        model, _, action = target.partition(":")
        if action in ("batchEmbedContents", "embedContent"):
            return self._embed(request, model, action, body)
        if action not in ("generateContent", "streamGenerateContent"):
            return _error(404, "NOT_FOUND", f"Method {action or '(none)'} not found")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers "
                "without established identity). Please use API Key or other form of API consumer "
                "identity to call this API.",
            )
        if model.startswith("gemini-error-400-key") or (self.api_key is not None and key != self.api_key):
            return key_invalid()
        if raw and body is None:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            req = parse_request(body)
        except BadRequest as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        if not model.startswith("gemini"):
            return _error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version "
                f"{request.match_info['version']}, or is not supported for generateContent. Call "
                f"ListModels to see the list of available models and their supported methods.",
            )
        if model.startswith("gemini-error-429"):
            if model.endswith("-header"):
                return rate_limited(model, None, {"Retry-After": "7"})
            return rate_limited(model, "1.5s" if model.endswith("-frac") else "12s")
        if model.startswith("gemini-error-503"):
            return _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        rid = uuid.uuid4().hex[:22]
        stream = action == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return _error(400, "INVALID_ARGUMENT", "this fake serves streamGenerateContent only with alt=sse")
        if model.startswith("gemini-blocked"):
            data = _blocked(model, req, rid)
            if not stream:
                return web.json_response(data, dumps=lambda o: _dumps(o).decode())
            return await self._sse(request, [data])
        reply = plan_reply(model, req)
        if model.startswith("gemini-tools"):
            calls = tool_calls_for(model, req)
            if calls is not None:
                usage = {
                    "promptTokenCount": reply.prompt_tokens,
                    "candidatesTokenCount": 5,
                    "totalTokenCount": reply.prompt_tokens + 5,
                }
                if not stream:
                    data = _response(calls, model, rid, usage, "STOP")
                    return web.json_response(data, dumps=lambda o: _dumps(o).decode())
                events = [
                    _response([c], model, rid, usage, "STOP" if i == len(calls) - 1 else None)
                    for i, c in enumerate(calls)
                ]
                return await self._sse(request, events)
            results = [p["functionResponse"]["response"] for p in req.contents[-1]["parts"] if "functionResponse" in p]
            reply.text = _WORD.findall("Tool results: " + _dumps(results).decode())
        thought_parts = [{"text": t, "thought": True} for t in reply.thoughts]
        if not stream:
            text = "".join(reply.text)
            parts = thought_parts + ([{"text": text}] if text else [])
            data = _response(parts, model, rid, _usage(reply, len(reply.text)), reply.finish)
            return web.json_response(data, dumps=lambda o: _dumps(o).decode())
        events = [_response([p], model, rid, _usage(reply, None)) for p in thought_parts]
        for i, word in enumerate(reply.text):
            last = i == len(reply.text) - 1
            events.append(
                _response(
                    [{"text": word}], model, rid, _usage(reply, i + 1 if last else None), reply.finish if last else None
                )
            )
            if reply.midstream_error and i == 1:
                events.append(
                    {"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}
                )
                break
        if not reply.text:
            events.append(_response(None, model, rid, _usage(reply, 0), reply.finish))
        return await self._sse(request, events)

    def _embed(self, request: web.Request, model: str, action: str, body: Any) -> web.Response:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        if self.api_key is not None and key != self.api_key:
            return key_invalid()
        if not model.startswith(("gemini", "text-embedding")):
            return _error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported for {action}.",
            )
        if not isinstance(body, dict):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            if action == "embedContent":
                requests = [body]
            else:
                requests = _norm(body, {"requests"}, "").get("requests")
                if not isinstance(requests, list) or not requests:
                    raise BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
                if len(requests) > 100:
                    raise BadRequest("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
            vectors = []
            for i, raw_req in enumerate(requests):
                r = _norm(raw_req, {"model", "content", "taskType", "title", "outputDimensionality"}, f"requests[{i}]")
                if action == "batchEmbedContents" and r.get("model") != f"models/{model}":
                    raise BadRequest(
                        f"Model names should match the batch model (requests[{i}].model is {r.get('model')!r})"
                    )
                content = _norm(r.get("content"), _CONTENT_FIELDS, f"requests[{i}].content")
                texts = [
                    _norm(p, _PART_FIELDS, f"requests[{i}].content.parts").get("text")
                    for p in content.get("parts") or []
                ]
                if not texts or not all(isinstance(t, str) and t for t in texts):
                    raise BadRequest(f"* requests[{i}].content: text is required")
                vectors.append({"values": fake_gemini_vector(" ".join(texts), r.get("outputDimensionality") or 12)})
        except BadRequest as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        data = {"embedding": vectors[0]} if action == "embedContent" else {"embeddings": vectors}
        return web.json_response(data, dumps=lambda o: _dumps(o).decode())

    async def _sse(self, request: web.Request, events: list[dict]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for ev in events:
            await resp.write(b"data: " + _dumps(ev) + b"\r\n\r\n")
        await resp.write_eof()
        return resp


try:
    gemini_fake = session_fixture(
        FakeGemini, "gemini_fake", "One fake Gemini upstream for the session; it expects ``x-goog-api-key: FAKE_KEY``."
    )
except ImportError:  # run as a script without pytest
    pass


if __name__ == "__main__":
    run_from_command_line(FakeGemini, "Fake Google Gemini API upstream on 127.0.0.1")
