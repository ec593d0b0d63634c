"""A fake OpenAI Chat Completions upstream (also OpenRouter / DeepSeek / vLLM shapes).

A real aiohttp server on 127.0.0.1 that speaks the wire described in
/work/shared/reference/upstream-wire.md. Behaviour is chosen by the request's
``model`` field:

- anything else / ``echo``: "You said: <last user text>" in several chunks; usage
  counts words. Honours ``stop`` (cuts before it) and ``max_tokens`` /
  ``max_completion_tokens`` (cuts to N words, finish_reason "length").
- ``tokens-N``: N tokens ``tok0 tok1 ...``, one per SSE event (benchmarks).
- ``reason-openrouter``: ``reasoning`` + ``reasoning_details`` with content "" while
  thinking (omitted when the request says ``reasoning: {"exclude": true}``).
- ``reason-deepseek``: ``reasoning_content`` with content null while thinking.
- ``think-tags``: ``<think>...</think>`` in content, the tags split across chunks.
- ``think-noopen``: reasoning with no opening tag, then ``</think>``, then the answer.
- ``error-401`` / ``error-404`` / ``error-429`` (retry-after: 7) / ``error-500``.
- ``error-midstream``: some content, then a chunk with a top-level ``error`` (HTTP 200).
- ``error-truncate``: some content, then the stream ends with no finish_reason and no
  ``[DONE]`` (non-streamed: a cut JSON body).
- ``keepalive``: ``: OPENROUTER PROCESSING`` comments before the data.
- ``length``: finish_reason "length". ``json``: a JSON object string as content.
- ``slow-N`` / ``slow-N-M``: M tokens (default 20), one every N ms.
- ``tools`` / ``tools-N``: with ``tools`` in the request, calls the first (N) tools
  (arguments built from each tool's parameter schema: strings get the last user text,
  integers 42, numbers 1.5, booleans true); streamed, the arguments arrive in pieces
  across chunks, by index; finish_reason "tool_calls". Once the conversation holds
  tool results it answers "Tool results: <contents>". Tool messages must answer a
  preceding assistant tool call id, and assistant arguments must be JSON strings
  (400 otherwise, as OpenAI does). ``tools-bad-args``: arguments that are not JSON.
- ``POST /v1/embeddings``: deterministic, not normalised vectors (16 dimensions, or
  ``dimensions``) from a hash of each input; ``encoding_format`` float or base64;
  usage counts words. Model ``error-*`` fails as for chat.
- Faults (tests/test_reliability.py). A ``@tag`` suffix keys the per-model attempt
  counters, so each test gets fresh state (``burst503-2@t1``):
  ``hang``: reads the request, never answers (until the client goes away).
  ``close-midstream``: three content pieces, then the TCP connection is dropped
  (non-streamed: half a body, then dropped). ``giant-line`` (streamed): two content pieces,
  then one ``data:`` line that never ends (96 MB in 4 KB writes, until the client goes away:
  more than the event cap plus what the kernel buffers on loopback, up to 32 + 4 MB here).
  ``long-answer`` (streamed): 96 M characters of content in 64 KB deltas, then a normal end
  (more than the answer cap plus what the kernel buffers on loopback: up to 32 + 4 MB here).
  ``garbage``: HTTP 200 whose stream holds
  bytes that are not SSE JSON (non-streamed: an HTML body). ``reset-K``: the first K
  requests are dropped before any byte is sent, then echo. ``retry-after-N[-K]`` /
  ``retry-after-ms-N[-K]``: 429 with ``Retry-After: N`` (``retry-after-ms: N``) for the
  first K (default 1) requests, then echo. ``burst503-K``: 503 K times, then echo.
  ``echo-auth``: a 500 whose message repeats the request's Authorization header (a
  careless upstream; tests/test_secrets.py checks gencli never shows it).
  ``FakeOpenAI.attempts`` counts requests per model; ``disconnect_times`` holds the
  ``time.monotonic()`` of each dropped stream.
- ``logprobs: true`` (chat): every content piece carries ``logprobs.content`` with one token
  object (``token``, ``logprob`` -0.25, ``bytes``, and ``top_logprobs`` alternatives: the token
  itself, then ``alt1``, ``alt2``... at -2.5, -3.5... as many as ``top_logprobs`` asks).
- ``POST /v1/completions`` (legacy completions, also what DeepSeek's FIM beta and Ollama
  take): ``prompt`` and optional ``suffix``; answers "You said: <prompt>", or with a suffix
  "Inserted between: <prompt> | <suffix>"; streamed or not, ``max_tokens`` and ``stop`` as for
  chat; ``logprobs: N`` answers the legacy ``tokens`` / ``token_logprobs`` / ``top_logprobs``.
  Model ``chat-only``: 404 as OpenAI answers a chat model there; ``error-*`` as for chat.
- Every request body is recorded (``requests``): tests read ``tool_choice``,
  ``response_format``, ``logprobs``, ``suffix``... exactly as they arrived.
- ``gpt-5*`` / ``o1*`` / ``o3*`` / ``o4*``: like echo, but ``max_tokens`` is refused with
  400 ``unsupported_parameter`` as OpenAI's reasoning models do.

``FakeOpenAI`` runs it in a background thread; ``openai_fake`` is a session fixture.
``python tests/fakes/openai_upstream.py --port N`` serves it in the foreground.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

try:
    from tests.fakes.threaded import ThreadedServer, run_from_command_line, session_fixture
except ImportError:  # run as a script: python tests/fakes/<name>.py --port N
    from threaded import ThreadedServer, run_from_command_line, session_fixture  # type: ignore[no-redef]

FAKE_KEY = "sk-fake-test-0123456789abcdef"

_dumps = orjson.dumps
_FAULTS = (
    "hang",
    "close-midstream",
    "giant-line",
    "long-answer",
    "garbage",
    "reset-",
    "retry-after-",
    "burst503-",
    "echo-auth",
)
_WORD = re.compile(r"\S*\s*")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw: bytes = b""


@dataclass
class _Reply:
    """What to send: reasoning pieces, content pieces, finish reason, usage."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    finish: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    style: str = "plain"  # plain | openrouter | deepseek
    delay: float = 0.0
    keepalive: int = 0
    midstream_error: bool = False
    truncate: bool = False  # the stream / body stops early, without finish_reason or [DONE]
    logprobs: bool = False
    top_logprobs: int = 0


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _images_in(content: Any) -> int:
    if isinstance(content, list):
        return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return 0


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w]


class FakeOpenAI(ThreadedServer):
    """The fake upstream on 127.0.0.1:<free port>, in a thread with its own event loop."""

    thread_name = "fake-openai"

    def __init__(self, api_key: str | None = FAKE_KEY, port: int = 0):
        super().__init__(port)
        self.api_key = api_key  # None: accept any key (or none)
        self.requests: list[Recorded] = []
        self.disconnects = 0  # streams the client dropped before the end
        self.disconnect_times: list[float] = []  # time.monotonic() of each
        self.attempts: dict[str, int] = {}  # requests per model name (fault modes)

    # -- lifecycle -----------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/completions", self._completions)
        return app

    # -- helpers for tests ---------------------------------------------------
    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[Recorded]:
        return self.requests[mark:]

    def last(self, path: str = "/v1/chat/completions") -> Recorded:
        for r in reversed(self.requests):
            if r.path == path:
                return r
        raise AssertionError(f"the fake received no request to {path}")

    # -- handlers ------------------------------------------------------------
    async def _read(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """The request's JSON body (None when it is not JSON), recorded, and the 401 to
        answer instead when its key is wrong (None when it is right)."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body, raw)
        )
        return body, self._auth_failure(request)

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        got = request.headers.get("Authorization", "")
        if got == f"Bearer {self.api_key}":
            return None
        key = got[7:] if got.startswith("Bearer ") else ""
        if not key:
            msg = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            code = None
        else:
            shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
            msg = (
                f"Incorrect API key provided: {shown}. You can find your API key at "
                f"https://platform.openai.com/account/api-keys."
            )
            code = "invalid_api_key"
        return web.Response(
            status=401, body=_error_body(msg, "invalid_request_error", code), content_type="application/json"
        )

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(
            Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, None)
        )
        denied = self._auth_failure(request)
        if denied is not None:
            return denied
        names = [
            "echo",
            "gpt-4o-mini",
            "gpt-5-nano",
            "reason-openrouter",
            "reason-deepseek",
            "think-tags",
            "think-noopen",
            "keepalive",
            "length",
            "json",
            "tokens-50",
            "slow-20",
        ]
        data = [{"id": n, "object": "model", "created": 1700000000, "owned_by": "fake"} for n in names]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, denied = await self._read(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            return self._json_error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return self._json_error(400, "you must provide a model parameter", "invalid_request_error", None, "model")
        if not isinstance(messages, list) or not messages:
            return self._json_error(
                400, "'messages' must contain at least one message", "invalid_request_error", None, "messages"
            )
        stream = body.get("stream") is True
        if body.get("stream_options") is not None and not stream:
            return self._json_error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                None,
                "stream_options",
            )
        if model.startswith(("gpt-5", "o1", "o3", "o4")) and "max_tokens" in body:
            return self._json_error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this "
                "model. Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                "max_tokens",
            )

        if model == "error-400-echo":  # an upstream that repeats the prompt in its error message
            last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
            return self._json_error(400, f"Invalid prompt: {last}", "invalid_request_error", None)
        if model.startswith("error-"):
            failure = self._failure(model)
            if failure is not None:
                return failure
        if model.startswith(_FAULTS):
            fault = await self._fault(request, model, stream)
            if fault is not None:
                return fault
        if model.startswith("tools"):
            return await self._tools(request, model, body, messages, stream)
        reply = self._reply(model, body, messages)
        if stream:
            return await self._stream(request, model, body, reply)
        return self._complete(model, reply)

    def _json_error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return web.Response(
            status=status,
            body=_error_body(message, type_, code, param),
            content_type="application/json",
            headers=headers,
        )

    def _failure(self, model: str) -> web.Response | None:
        if model == "error-401":
            return self._json_error(
                401,
                "Incorrect API key provided: sk-fa**********cdef. You can find your "
                "API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if model == "error-404":
            return self._json_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if model == "error-429":
            return self._json_error(
                429,
                "Rate limit reached for requests. Please try again in 7s.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": "7"},
            )
        if model == "error-500":
            return self._json_error(
                500, "The server had an error while processing your request. Sorry about that!", "server_error", None
            )
        return None

    def _reply(self, model: str, body: dict, messages: list) -> _Reply:
        prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1].get("content") if users else ""
        r = _Reply(prompt_tokens=prompt_tokens)
        if model.startswith("tokens-"):
            n = int(model[7:] or 0)
            r.content = [f"tok{i} " if i < n - 1 else f"tok{i}" for i in range(n)]
        elif model.startswith("slow-"):
            parts = model[5:].split("-")
            r.delay = int(parts[0]) / 1000
            n = int(parts[1]) if len(parts) > 1 else 20
            r.content = [f"tok{i} " if i < n - 1 else f"tok{i}" for i in range(n)]
        elif model == "reason-openrouter":
            reasoning = body.get("reasoning")
            if not (isinstance(reasoning, dict) and reasoning.get("exclude")):
                r.reasoning = ["Let me ", "think about ", "this."]
            r.content = ["The answer ", "is 42."]
            r.style = "openrouter"
        elif model == "reason-deepseek":
            r.reasoning = ["Hmm, ", "the user wants ", "an answer."]
            r.content = ["Here it ", "is: 42."]
            r.style = "deepseek"
        elif model == "think-tags":
            r.content = ["<thi", "nk>Pondering ", "deeply.</th", "ink>", "\n\nThe answer", " is 42."]
        elif model == "think-noopen":
            r.content = ["Pondering ", "without an open tag.", "</think>", "\n\nThe answer is 42."]
        elif model == "json":
            r.content = _pieces(_dumps({"you_said": _text_of(last), "ok": True}).decode())
        elif model in ("error-midstream", "error-midstream-oneread"):
            r.content = ["Partial ", "answer "]
            r.midstream_error = True
        elif model == "error-truncate":
            r.content = ["Cut ", "short "]
            r.truncate = True
        else:
            text = "You said: " + _text_of(last)
            images = _images_in(last)
            if images:
                text += f" [{images} image{'s' if images > 1 else ''}]"
            stops = body.get("stop")
            if isinstance(stops, str):
                stops = [stops]
            for s in stops or ():
                if isinstance(s, str) and s and s in text:
                    text = text[: text.index(s)]
            pieces = _pieces(text)
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
            if isinstance(limit, int) and len(pieces) > limit:
                pieces = pieces[:limit]
                r.finish = "length"
            r.content = pieces
            if model == "keepalive":
                r.keepalive = 3
        if model == "length":
            r.finish = "length"
        r.logprobs = body.get("logprobs") is True
        top = body.get("top_logprobs")
        r.top_logprobs = top if isinstance(top, int) else 0
        r.completion_tokens = _words("".join(r.reasoning)) + _words("".join(r.content))
        return r

    def _usage(self, r: _Reply) -> dict:
        usage: dict[str, Any] = {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }
        if r.reasoning:  # as OpenAI's reasoning models and OpenRouter report them
            usage["completion_tokens_details"] = {"reasoning_tokens": _words("".join(r.reasoning))}
        return usage

    def _complete(self, model: str, r: _Reply) -> web.Response:
        if r.truncate:
            return web.Response(
                body=b'{"id":"chatcmpl-fake","object":"chat.completion","choices":[{"in',
                content_type="application/json",
            )
        if r.midstream_error:
            return web.Response(
                body=_dumps({"error": {"code": 502, "message": "Upstream provider crashed while generating"}}),
                content_type="application/json",
            )
        message: dict[str, Any] = {"role": "assistant", "content": "".join(r.content)}
        reasoning = "".join(r.reasoning)
        if r.style == "openrouter" and reasoning:
            message["reasoning"] = reasoning
            message["reasoning_details"] = [
                {"type": "reasoning.text", "text": reasoning, "format": "unknown", "index": 0}
            ]
        elif r.style == "deepseek":
            message["reasoning_content"] = reasoning
        message["refusal"] = None
        logprobs = (
            {"content": [_token_logprob(p, r.top_logprobs) for p in r.content], "refusal": None} if r.logprobs else None
        )
        out = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": r.finish}],
            "usage": self._usage(r),
            "system_fingerprint": "fp_fake",
        }
        return web.Response(body=_dumps(out), content_type="application/json")

    async def _stream(self, request: web.Request, model: str, body: dict, r: _Reply) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        head = (
            b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + _dumps(model)
            + b',"system_fingerprint":"fp_fake","choices":[{"index":0,"delta":'
        )
        tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
        write = resp.write
        if model.endswith("-oneread"):  # every event in one TCP write: the client reads them at once
            blob: list[bytes] = []

            async def write(data: bytes) -> None:  # noqa: F811
                blob.append(data)

            async def flush() -> None:
                await resp.write(b"".join(blob))

            resp_write_eof = resp.write_eof

            async def write_eof() -> None:
                await flush()
                await resp_write_eof()

            resp.write_eof = write_eof  # type: ignore[method-assign]
        try:
            for _ in range(r.keepalive):
                await write(b": OPENROUTER PROCESSING\n\n")
            first = True
            for piece in r.reasoning:
                if r.style == "openrouter":
                    delta: dict[str, Any] = {
                        "content": "",
                        "reasoning": piece,
                        "reasoning_details": [
                            {"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}
                        ],
                    }
                else:
                    delta = {"content": None, "reasoning_content": piece}
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                await write(head + _dumps(delta) + tail)
                if r.delay:
                    await asyncio.sleep(r.delay)

            def piece_tail(piece: str) -> bytes:
                if not r.logprobs:
                    return tail
                return (
                    b',"logprobs":'
                    + _dumps({"content": [_token_logprob(piece, r.top_logprobs)], "refusal": None})
                    + b',"finish_reason":null}]}\n\n'
                )

            if first:  # the role arrives with the first content piece
                await write(
                    head
                    + b'{"role":"assistant","content":'
                    + _dumps(r.content[0] if r.content else "")
                    + b"}"
                    + (piece_tail(r.content[0]) if r.content else tail)
                )
                pieces = r.content[1:]
                if r.delay:
                    await asyncio.sleep(r.delay)
            else:
                pieces = r.content
            reasoning_null = (
                b'"reasoning":null,'
                if r.style == "openrouter"
                else (b'"reasoning_content":null,' if r.style == "deepseek" else b"")
            )
            for piece in pieces:
                await write(head + b"{" + reasoning_null + b'"content":' + _dumps(piece) + b"}" + piece_tail(piece))
                if r.delay:
                    await asyncio.sleep(r.delay)
            if r.midstream_error:
                await write(
                    b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":'
                    + str(int(time.time())).encode()
                    + b',"model":'
                    + _dumps(model)
                    + b',"error":{"code":502,"message":"Upstream provider crashed while generating"},'
                    + b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
                )
                await resp.write_eof()
                return resp
            if r.truncate:
                await resp.write_eof()
                return resp
            await write(head + b"{}" + b',"logprobs":null,"finish_reason":' + _dumps(r.finish) + b"}]}\n\n")
            if include_usage:
                await write(
                    b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":'
                    + str(int(time.time())).encode()
                    + b',"model":'
                    + _dumps(model)
                    + b',"system_fingerprint":"fp_fake","choices":[],"usage":'
                    + _dumps(self._usage(r))
                    + b"}\n\n"
                )
            await write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream (reset, or lost while a write drained)
            self.disconnects += 1
            self.disconnect_times.append(time.monotonic())
        except asyncio.CancelledError:
            self.disconnects += 1
            self.disconnect_times.append(time.monotonic())
            raise
        return resp

    # -- faults ------------------------------------------------------------------------
    async def _fault(self, request: web.Request, model: str, stream: bool) -> web.StreamResponse | None:
        """The fault modes; None: go on and answer like echo."""
        n = self.attempts[model] = self.attempts.get(model, 0) + 1
        mode = model.split("@", 1)[0]
        if mode == "hang":
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.02)
            self.disconnects += 1
            self.disconnect_times.append(time.monotonic())
            return web.Response(status=499)
        if mode == "close-midstream":
            if stream:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
                await resp.prepare(request)
                for piece in ("Partial ", "answer ", "so far "):
                    await resp.write(
                        b"data: "
                        + _dumps(
                            {
                                "id": "chatcmpl-fake",
                                "object": "chat.completion.chunk",
                                "created": int(time.time()),
                                "model": model,
                                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                            }
                        )
                        + b"\n\n"
                    )
                    await asyncio.sleep(0.02)
            else:
                resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "400"})
                await resp.prepare(request)
                await resp.write(b'{"id":"chatcmpl-fake","object":"chat.completion","choices":[{"index":0,')
                await asyncio.sleep(0.02)
            request.transport.close()
            return resp
        if mode == "long-answer" and stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            piece = "y" * 65536
            try:
                for _ in range(96 * 16):  # 96 M characters in 64 KB deltas, then a normal end
                    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
                    chunk["choices"] = [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                    await resp.write(b"data: " + _dumps(chunk) + b"\n\n")
                chunk["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
                await resp.write(b"data: " + _dumps(chunk) + b"\n\ndata: [DONE]\n\n")
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                self.disconnects += 1
                self.disconnect_times.append(time.monotonic())
            return resp
        if mode == "giant-line" and stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            for piece in ("Partial ", "answer "):
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
                chunk["choices"] = [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                await resp.write(b"data: " + _dumps(chunk) + b"\n\n")
            await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"')
            block = b"x" * 4096
            gone = False
            try:
                for _ in range(96 * 256):  # 96 MB in 4 KB writes, no line end, unless the client goes
                    if request.transport is None or request.transport.is_closing():
                        gone = True
                        break
                    await resp.write(block)
            except (ConnectionError, RuntimeError):
                gone = True
            if gone:
                self.disconnects += 1
                self.disconnect_times.append(time.monotonic())
            return resp
        if mode == "echo-auth":
            return self._json_error(
                500, f"internal error while handling {request.headers.get('Authorization')}", "server_error", None
            )
        if mode == "garbage":
            if not stream:
                return web.Response(
                    status=200, body=b"<html><body>502 Bad Gateway</body></html>", content_type="application/json"
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            await resp.write(b'data: {"choices": [{"delta": \xff\xfe garbage \x00\x01 not json\n\n')
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        m = re.fullmatch(r"reset-(\d+)", mode)
        if m and n <= int(m.group(1)):
            request.transport.close()  # no status line at all: the client sees the connection drop
            return web.Response(status=499)
        m = re.fullmatch(r"retry-after(-ms)?-(\d+(?:\.\d+)?)(?:-(\d+))?", mode)
        if m and n <= int(m.group(3) or 1):
            name = "retry-after-ms" if m.group(1) else "retry-after"
            return self._json_error(
                429,
                "Rate limit reached for requests. Please try again shortly.",
                "requests",
                "rate_limit_exceeded",
                headers={name: m.group(2)},
            )
        m = re.fullmatch(r"burst503-(\d+)", mode)
        if m and n <= int(m.group(1)):
            return self._json_error(
                503, "The engine is currently overloaded, please try again later", "server_error", None
            )
        return None

    # -- tool calls and embeddings ------------------------------------------------
    @staticmethod
    def _arg_value(schema: Any, text: str) -> Any:
        kind = schema.get("type") if isinstance(schema, dict) else None
        return {"integer": 42, "number": 1.5, "boolean": True, "object": {}, "array": []}.get(kind, text)

    def _tool_problem(self, messages: list) -> str | None:
        ids: set[str] = set()
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                continue
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                if not isinstance(fn.get("arguments"), str):
                    return f"Invalid type for 'messages[{i}].tool_calls[0].function.arguments': expected a string"
                ids.add(tc.get("id"))
            if m.get("role") == "tool" and m.get("tool_call_id") not in ids:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'."
                )
        return None

    async def _tools(
        self, request: web.Request, model: str, body: dict, messages: list, stream: bool
    ) -> web.StreamResponse:
        problem = self._tool_problem(messages)
        if problem:
            return self._json_error(400, problem, "invalid_request_error", None, "messages")
        results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        tools = body.get("tools") or []
        if results or not tools:
            r = _Reply(content=_pieces("Tool results: " + "; ".join(str(m.get("content")) for m in results)))
            r.completion_tokens = _words("".join(r.content))
            return await self._stream(request, model, body, r) if stream else self._complete(model, r)
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = _text_of(users[-1].get("content")) if users else ""
        n = int(model[6:]) if model[6:].isdigit() else 1
        calls = []
        for i, tool in enumerate(tools[:n]):
            fn = tool.get("function") or {}
            props = (fn.get("parameters") or {}).get("properties") or {}
            args = {k: self._arg_value(v, text) for k, v in props.items()}
            raw = _dumps(args).decode()
            if model == "tools-bad-args":
                raw = raw[:-1] + ', "oops'
            calls.append(
                {"id": f"call_fake{i}", "type": "function", "function": {"name": fn.get("name"), "arguments": raw}}
            )
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}
            out = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}],
                "usage": usage,
            }
            return web.Response(body=_dumps(out), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return (
                b"data: "
                + _dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                )
                + b"\n\n"
            )

        await resp.write(chunk({"role": "assistant", "content": None}))
        for i, c in enumerate(calls):
            args = c["function"]["arguments"]
            await resp.write(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": c["id"],
                                "type": "function",
                                "function": {"name": c["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for j in range(0, len(args), 5):  # the arguments in 5-character pieces
                await resp.write(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 5]}}]}))
        await resp.write(chunk({}, "tool_calls"))
        if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
            await resp.write(
                b"data: "
                + _dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """Legacy text completions, with ``suffix`` for fill-in-the-middle."""
        body, denied = await self._read(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return self._json_error(400, "you must provide a model parameter", "invalid_request_error", None, "model")
        model = body["model"]
        prompt, suffix = body.get("prompt"), body.get("suffix")
        if not isinstance(prompt, str):
            return self._json_error(400, "'prompt' must be a string", "invalid_request_error", None, "prompt")
        if suffix is not None and not isinstance(suffix, str):
            return self._json_error(400, "'suffix' must be a string", "invalid_request_error", None, "suffix")
        if "messages" in body:
            return self._json_error(
                400, "Unrecognized request argument supplied: messages", "invalid_request_error", None
            )
        if model == "chat-only":
            return self._json_error(
                404,
                "This is a chat model and not supported in the v1/completions endpoint. "
                "Did you mean to use v1/chat/completions?",
                "invalid_request_error",
                None,
                "model",
            )
        if model.startswith("error-"):
            failure = self._failure(model)
            if failure is not None:
                return failure
        text = f"Inserted between: {prompt} | {suffix}" if suffix else f"You said: {prompt}"
        stops = body.get("stop")
        for s in [stops] if isinstance(stops, str) else stops or ():
            if isinstance(s, str) and s and s in text:
                text = text[: text.index(s)]
        pieces = _pieces(text)
        finish = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
        top = body.get("logprobs")
        usage = {
            "prompt_tokens": _words(prompt) + _words(suffix or ""),
            "completion_tokens": len(pieces),
            "total_tokens": _words(prompt) + _words(suffix or "") + len(pieces),
        }

        def logprobs(part: list[str], offset: int) -> dict | None:
            if not isinstance(top, int) or isinstance(top, bool):
                return None
            return {
                "tokens": part,
                "token_logprobs": [-0.25] * len(part),
                "top_logprobs": [{p: -0.25, **{f"alt{i}": -1.5 - i for i in range(1, top)}} for p in part],
                "text_offset": [offset + sum(len(x) for x in part[:i]) for i in range(len(part))],
            }

        def choice(part: list[str], offset: int, end: str | None) -> dict:
            return {"text": "".join(part), "index": 0, "logprobs": logprobs(part, offset), "finish_reason": end}

        if body.get("stream") is not True:
            out = {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice(pieces, 0, finish)],
                "usage": usage,
            }
            return web.Response(body=_dumps(out), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)

        def event(obj: dict) -> bytes:
            return (
                b"data: "
                + _dumps(
                    {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model, **obj}
                )
                + b"\n\n"
            )

        offset = 0
        for piece in pieces:
            await resp.write(event({"choices": [choice([piece], offset, None)]}))
            offset += len(piece)
        await resp.write(event({"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}]}))
        if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
            await resp.write(event({"choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        import base64
        import struct

        body, denied = await self._read(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._json_error(400, "you must provide a model parameter", "invalid_request_error", None, "model")
        model = body["model"]
        if model.startswith("error-"):
            failure = self._failure(model)
            if failure is not None:
                return failure
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            return self._json_error(
                400,
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "invalid_request_error",
                None,
            )
        dims = body.get("dimensions") or 16
        fmt = body.get("encoding_format") or "float"
        data = []
        for i, text in enumerate(inputs):
            vec = fake_vector(text, dims)
            emb: Any = vec
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(_words(t) for t in inputs)
        out = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=_dumps(out), content_type="application/json")


def _token_logprob(piece: str, top: int) -> dict:
    """The fake's log probability of a piece (one token), with ``top`` alternatives."""
    alts = [{"token": piece, "logprob": -0.25, "bytes": list(piece.encode())}]
    alts += [{"token": f"alt{i}", "logprob": -1.5 - i, "bytes": list(f"alt{i}".encode())} for i in range(1, top)]
    return {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()), "top_logprobs": alts[:top]}


def fake_vector(text: str, dims: int = 16) -> list[float]:
    """The vector the fake answers for ``text`` (before any normalisation)."""
    import hashlib

    digest = b""
    while len(digest) < dims:
        digest += hashlib.sha256(text.encode() + bytes([len(digest) % 251])).digest()
    return [(b - 128) / 16 for b in digest[:dims]]


try:
    openai_fake = session_fixture(
        FakeOpenAI, "openai_fake", "One fake OpenAI upstream for the session; it expects ``Bearer FAKE_KEY``."
    )
except ImportError:  # run as a script without pytest
    pass


if __name__ == "__main__":
    run_from_command_line(FakeOpenAI, "Fake OpenAI Chat Completions upstream on 127.0.0.1")
