"""The ASGI app behind ``gencli serve``: Ollama's API (and OpenAI's /v1, Anthropic's
/v1/messages) on the engine. Each wire format beyond Ollama's lives in its own module
(``routes_openai``, ``responses``, ``anthropic``) and renders through :meth:`App.run`.

No framework: routes are a dict lookup on (method, path), JSON is orjson, and
replies are written straight to the ASGI ``send``. A generation runs
``engine.prepare`` (pure; a bad request becomes a status before anything is sent),
then pulls the first events from ``engine.abatches`` before the status line goes out,
so upstream failures (bad key, 429, 5xx, timeout) get their real status too. Once
streaming started, a failure becomes a final ``{"error": ...}`` line.

While a generation runs, a watcher waits for the client's ``http.disconnect``; when
it comes, the request task is cancelled, which closes the upstream connection at
once (see ``transport_async``).

Settings come from one :class:`gencli.server.config.ServeConfig` (``gencli serve`` builds
it from its flags and the environment; ``create_app()`` without one reads the environment:
``GENCLI_MODELS``, ``GENCLI_API_KEY``, ``GENCLI_ORIGINS``, ``GENCLI_MAX_BODY_MB``, ...).

Every failure is JSON in its API's error shape: a bad field is a 400 naming it, and
anything unexpected a 500 that names no internals (the traceback goes to the server log).
Error messages are bounded (``MAX_MESSAGE``): a request never gets a megabyte of itself back.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import sys
import time
import traceback
from typing import Any, Awaitable, Callable

import orjson

from gencli import __version__
from gencli import images as img
from gencli.engine import abatches, prepare
from gencli.errors import GencliError, ImageError, ModelNotFound, UsageError
from gencli.events import Done, Logprobs, ReasoningDelta, TextDelta
from gencli.registry import ModelEntry, Registry, context_length
from gencli.request import GenerateRequest, Message
from gencli.settings import Settings
from gencli.wire import generate_chunk, generate_final, load_reply, now_iso

OLLAMA_VERSION = "0.14.0"  # what /api/version reports: the first Ollama with /v1/responses and /v1/messages
KEEP_ALIVE = 300.0  # seconds a model stays loaded (listed in /api/ps; a local model in memory) after a request
FOREVER = "2318-01-01T00:00:00Z"  # /api/ps's expires_at for a negative keep_alive (Ollama shows a far date)
DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_MESSAGE = 1000  # characters of an error message sent to a client

dumps = orjson.dumps

H_JSON = (b"content-type", b"application/json; charset=utf-8")
H_NDJSON = (b"content-type", b"application/x-ndjson")
H_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
H_TEXT = (b"content-type", b"text/plain; charset=utf-8")
H_NOCACHE = (b"cache-control", b"no-cache")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

ROLES = ("system", "user", "assistant", "tool")


# -- small helpers --------------------------------------------------------------------

async def send_bytes(send: Send, status: int, body: bytes, headers: list, head: bool = False) -> None:
    headers = headers + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Send, status: int, obj: Any, head: bool = False, extra: list | None = None) -> None:
    headers = [H_JSON] if extra is None else [H_JSON, *extra]
    await send_bytes(send, status, dumps(obj), headers, head)


def local_details(entry: ModelEntry) -> dict | None:
    """A local model's real details from its GGUF metadata (None if the file is unavailable)."""
    if entry.provider != "local":
        return None
    from gencli.local_model.gguf import local_details as details

    try:
        return details(entry)
    except GencliError:
        return None


def error_headers(exc: GencliError) -> list:
    retry = getattr(exc, "retry_after", None)
    if retry is not None and exc.status in (429, 503):
        return [(b"retry-after", str(max(0, math.ceil(retry))).encode())]
    return []


def bounded(message: str) -> str:
    """An error message cut to ``MAX_MESSAGE`` characters (it may quote the request)."""
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def ollama_error(exc: GencliError) -> dict:
    return {"error": bounded(exc.message)}


def openai_error(exc: GencliError) -> dict:
    param = getattr(exc, "field", None)
    if param is not None:
        param = bounded(str(param))[:200]
    code = None
    if isinstance(exc, ModelNotFound):
        code = "model_not_found"
    elif exc.status == 429:
        code = "rate_limit_exceeded"
    return {"error": {"message": bounded(exc.message), "type": exc.kind, "param": param, "code": code}}


class Internal(GencliError):
    """An unexpected failure inside the server (the traceback goes to stderr, not the client)."""

    status = 500


def internal(exc: BaseException) -> GencliError:
    traceback.print_exception(exc, file=sys.stderr)
    return Internal("internal server error; see the server log")


def parse_json(body: bytes) -> dict:
    if not body:
        raise UsageError("request body is empty; send a JSON object", "body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        named = json_field_problem(body, exc)
        if named is not None:
            raise named from None
        reason = str(exc.args[0] if exc.args else "parse error")[:200]
        raise UsageError(f"request body is not valid JSON ({reason})", "body") from None
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object", "body")
    return data


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{},:]')
_LOCATE_TOKENS = 500_000  # structural tokens scanned to name a field (~0.1 s); past it, the offset is named
_KEY_SHOWN = 40


def json_field_problem(body: bytes, exc: orjson.JSONDecodeError | None = None) -> UsageError | None:
    """For a body orjson refused because of a NaN/Infinity (not JSON) or a lone surrogate
    ("\\ud800"), the error naming the field at fault; None for other errors.

    Linear in the body with a small constant: the error's offset comes from orjson, and one
    scan of the text before it keeps only the path of open containers (at most orjson's depth
    limit), never a string per node; keys are shown cut to a few dozen characters."""
    if exc is None:
        try:
            orjson.loads(body)
            return None
        except orjson.JSONDecodeError as e:
            exc = e
    reason = str(exc.args[0] if exc.args else "")
    pos = _byte_offset(body, exc.pos)
    if pos is None:
        return None
    surrogate = "surrogate" in reason
    if surrogate:
        what = None
    elif body.startswith(b"NaN", pos):
        what = "NaN"
    elif body.startswith(b"Infinity", pos):
        what = "-Infinity" if pos > 0 and body[pos - 1:pos] == b"-" else "Infinity"
    elif body.startswith(b"-Infinity", pos):
        what = "-Infinity"
    else:
        return None
    found = _path_at(body, pos)
    if found is None:
        where, in_key = f"the value at byte {pos} of the body", False
    else:
        where, in_key = found
        where = where or "body"
    if surrogate:
        if in_key:
            return UsageError(f"{where} has a key that is not valid Unicode (a lone surrogate)", where[:200])
        return UsageError(f"{where} is not valid Unicode (a lone surrogate such as \\ud800)", where[:200])
    return UsageError(f"{where} is {what}, which is not JSON; send a finite number", where[:200])


def _byte_offset(body: bytes, chars: int) -> int | None:
    """orjson reports a character offset; the byte offset of it in UTF-8 ``body``."""
    if chars < 0 or chars > len(body):
        return None
    if body.isascii():
        return chars
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    seen = 0
    step = 65536
    end = len(body)
    for start in range(0, end, step):
        n = len(decoder.decode(body[start:start + step]))
        if seen + n >= chars:
            # walk this block from its start: a lead byte and its continuation bytes are one character
            offset = start
            if 0x80 <= body[offset] < 0xC0:  # the end of a character that began in the last block
                while offset < end and 0x80 <= body[offset] < 0xC0:
                    offset += 1
                seen += 1
            while seen < chars and offset < end:
                offset += 1
                while offset < end and 0x80 <= body[offset] < 0xC0:
                    offset += 1
                seen += 1
            return offset
        seen += n
    return None


def _path_at(body: bytes, pos: int) -> tuple[str, bool] | None:
    """The JSON path of the value at byte ``pos`` (``messages[2].content``) and whether it is
    inside an object key; None when naming it would take more than ``_LOCATE_TOKENS`` tokens."""
    stack: list[list] = []  # [is_object, key or index, expecting a key]
    tokens = 0
    in_key = False
    for m in _TOKEN.finditer(body, 0, pos + 1):
        tokens += 1
        if tokens > _LOCATE_TOKENS:
            return None
        start = m.start()
        c = body[start]
        if c == 0x22:  # a string: a key when an object expects one
            in_key = bool(stack) and stack[-1][0] and stack[-1][2]
            if m.end() > pos:  # the bad spot is inside this string
                break
            if in_key:
                raw = body[start + 1:min(m.end() - 1, start + 1 + _KEY_SHOWN * 4)]
                key = raw.decode("utf-8", "replace")
                if len(key) > _KEY_SHOWN or m.end() - start - 2 > len(raw):
                    key = key[:_KEY_SHOWN] + "..."
                stack[-1][1] = key
                stack[-1][2] = False
            in_key = False
        elif c == 0x7B:  # {
            stack.append([True, None, True])
        elif c == 0x5B:  # [
            stack.append([False, 0, False])
        elif c in (0x7D, 0x5D):  # } ]
            if stack:
                stack.pop()
        elif c == 0x2C and stack:  # ,
            top = stack[-1]
            if top[0]:
                top[1], top[2] = None, True
            else:
                top[1] += 1
    parts: list[str] = []
    for is_object, key, _ in stack:
        if is_object:
            if key is not None:
                parts.append(("." if parts else "") + key)
        else:
            parts.append(f"[{key}]")
    path = "".join(parts)
    if len(path) > 200:
        path = "..." + path[-197:]
    return path, in_key


def field_str(data: dict, key: str, required: bool = False) -> str | None:
    v = data.get(key)
    if v is None:
        if required:
            raise UsageError(f"{key} is required", key)
        return None
    if not isinstance(v, str):
        raise UsageError(f"{key} must be a string", key)
    return v


def field_bool(data: dict, key: str, default: bool) -> bool:
    v = data.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise UsageError(f"{key} must be true or false", key)
    return v


def field_list(data: dict, key: str) -> list | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise UsageError(f"{key} must be an array", key)
    return v


def field_model(data: dict, key: str = "model") -> str:
    v = data.get(key)
    if v is None or v == "":
        raise UsageError(f"{key} is required", key)
    if not isinstance(v, str):
        raise UsageError(f"{key} must be a string", key)
    return v


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_KEEP_ALIVE = 10 * 365 * 86400.0  # beyond ten years a duration means "forever"


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a Go duration ("5m", "1h30m", "-1s"),
    or a number in a string; negative: forever. None when absent."""
    if value is None:
        return None
    where = "keep_alive must be a number of seconds or a duration such as \"5m\" (negative: keep loaded)"
    if isinstance(value, bool):
        raise UsageError(where, "keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise UsageError(where, "keep_alive") from None
            seconds = sign * sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise UsageError(where, "keep_alive")
    if not math.isfinite(seconds):
        raise UsageError(where, "keep_alive")
    return -1.0 if seconds < 0 or seconds > MAX_KEEP_ALIVE else seconds


def tagged(name: str) -> str:
    """The name as Ollama lists it: always with a tag (``llama3.1`` -> ``llama3.1:latest``)."""
    return name if ":" in name else name + ":latest"


def show_template(entry: ModelEntry) -> str:
    """The Go template /api/show reports: what gencli sends for this model. Clients read
    capabilities from it: LiteLLM "tools" in it (tools), Continue ``.Suffix`` (fill-in-the-middle)."""
    caps = entry.capabilities
    chat = ("{{- if .System }}system: {{ .System }}\n{{ end }}"
            + ("{{- if .Tools }}tools: {{ range .Tools }}{{ . }}\n{{ end }}{{ end }}" if "tools" in caps else "")
            + "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}{{ .Prompt }}")
    if "insert" in caps:
        return "{{- if .Suffix }}{{ .Prompt }}<|fill-in-the-middle|>{{ .Suffix }}{{- else }}" + chat + "{{- end }}"
    return chat


def show_parameters(entry: ModelEntry, context: int) -> str:
    """/api/show's ``parameters``, as Ollama writes them: one ``name value`` line each, strings quoted."""
    lines = [f"{'num_ctx':<30} {context}"]
    for key, value in entry.options.items():
        if key == "num_ctx":
            continue
        if key == "stop" and isinstance(value, list):
            lines.extend(f"{'stop':<30} {orjson.dumps(s).decode()}" for s in value)
        elif not isinstance(value, (dict, list)):
            lines.append(f"{key:<30} {value}")
    return "\n".join(lines)


class Disconnect:
    """Waits for the client's http.disconnect while a reply is produced; on it, cancels
    the request task (which closes the upstream connection).

    On gencli's own server the connection calls back when the client leaves (the ASGI
    extension ``gencli.on_disconnect``): no task, no timer. On another ASGI server a watcher
    task starts when the reply takes longer than ``DELAY`` seconds: fast replies (most
    non-streamed ones) pay for a timer handle, not a task. A client that left earlier is
    still seen, since ``receive()`` then returns http.disconnect at once.
    """

    DELAY = 0.02

    __slots__ = ("gone", "finished", "_task", "_watch", "_timer", "_receive", "_hook")

    def __init__(self, receive: Receive, scope: Scope | None = None):
        self.gone = False
        self.finished = False
        self._task = asyncio.current_task()
        self._receive = receive
        self._watch: asyncio.Future | None = None
        self._timer = None
        extensions = scope.get("extensions") if scope is not None else None
        self._hook = extensions.get("gencli.on_disconnect") if extensions else None
        if self._hook is not None:
            self._hook(self._left)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.DELAY, self._start)

    def _left(self) -> None:
        if not self.finished:
            self.gone = True
            self._task.cancel()

    def _start(self) -> None:
        if not self.finished:
            self._watch = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                self._left()
                return

    def stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._hook is not None:
            self._hook(None)
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


# -- the app -----------------------------------------------------------------------------

class App:
    def __init__(self, registry: Registry | None = None, models_path: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, allow_private_images: bool = False, config=None):
        from gencli import context
        from gencli.server.config import ServeConfig
        from gencli.transport_async import ServerTransport

        if config is None:
            config = ServeConfig(max_body=max_body, allow_private_images=allow_private_images,
                                 models_path=models_path)
        self.config = config
        self.registry = registry if registry is not None else Registry.load(config.models_path)
        from gencli.server.memory import trim

        self.transport = ServerTransport(allow_private_images=config.allow_private_images,
                                         image_fetches=config.image_fetches, image_memory=config.image_memory,
                                         on_quiet=trim)  # quiet: idle upstream connections closed, memory trimmed
        self.max_body = config.max_body
        context.set_limit(self.max_body)  # a conversation in `context` is no larger than a body
        self.started = time.time()
        self.last_used: dict[str, int] = {}  # model name -> time.time_ns() of its last request
        self.expires: dict[str, float] = {}  # model name -> when /api/ps stops listing it (time.time(); inf: never)
        mtime = self.started
        if self.registry.source is not None:
            try:
                mtime = os.stat(self.registry.source).st_mtime
            except OSError:
                pass
        self.modified_ts = int(mtime)
        self.modified_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        from gencli.server import anthropic as an
        from gencli.server import responses as rs
        from gencli.server import routes_embed
        from gencli.server import routes_openai as oa

        self.routes: dict[tuple[str, str], Callable] = {
            ("GET", "/"): self.root,
            ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version,
            ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("HEAD", "/api/tags"): self.tags,
            ("POST", "/api/show"): self.show,
            ("GET", "/api/ps"): self.ps,
            ("GET", "/openapi.json"): self.openapi,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/v1/chat/completions"): lambda s, r, w: oa.chat_completions(self, s, r, w),
            ("GET", "/v1/models"): lambda s, r, w: oa.models(self, s, r, w),
            ("POST", "/v1/responses"): lambda s, r, w: rs.responses(self, s, r, w),
            ("POST", "/v1/messages"): lambda s, r, w: an.messages(self, s, r, w),
            ("POST", "/v1/messages/count_tokens"): lambda s, r, w: an.count_tokens(self, s, r, w),
            **routes_embed.routes(self),
            ("POST", "/api/pull"): self.pull,
            ("POST", "/v1/completions"): lambda s, r, w: oa.completions(self, s, r, w),
        }
        for path in ("/api/push", "/api/create", "/api/copy"):
            self.routes[("POST", path)] = self.not_here
        self.routes[("DELETE", "/api/delete")] = self.not_here
        # routes with a parameter in the path: (method, prefix) -> handler
        self.prefixes: list[tuple[str, str, Callable]] = [
            ("GET", "/v1/models/", lambda s, r, w: oa.model(self, s, r, w)),
            ("POST", "/api/blobs/", self.not_here),
            ("HEAD", "/api/blobs/", self.not_here),
        ]
        self.paths: dict[str, list[str]] = {}
        for method, path in self.routes:
            self.paths.setdefault(path, []).append(method)

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is None:
                handler = self.prefixed(scope["method"], scope["path"])
            if handler is None:
                await self.no_route(scope, send)
                return
            try:
                await handler(scope, receive, send)
            except GencliError as exc:  # raised before anything was sent
                await self.fail(scope, send, exc)
            except Exception as exc:  # a bug: a JSON 500 in the route's shape, the details in the log
                await self.fail(scope, send, internal(exc))
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.transport.start()
                except Exception as exc:  # pragma: no cover - aiohttp session creation does not fail
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.transport.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def prefixed(self, method: str, path: str) -> Callable | None:
        for m, prefix, handler in self.prefixes:
            if m == method and path.startswith(prefix) and len(path) > len(prefix):
                return handler
        return None

    async def no_route(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        methods = self.paths.get(path)
        if methods is None:
            found = sorted({m for m, prefix, _ in self.prefixes if path.startswith(prefix) and len(path) > len(prefix)})
            methods = found or None
        if methods is None:
            exc = GencliError(f"404 page not found: {scope['method']} {path}")
            exc.status, exc.kind = 404, "not_found_error"
            await self.fail(scope, send, exc)
            return
        exc = GencliError(f"method {scope['method']} not allowed on {path} (use {', '.join(sorted(methods))})")
        exc.status, exc.kind = 405, "invalid_request_error"
        await self.fail(scope, send, exc, [(b"allow", ", ".join(sorted(methods)).encode())])

    async def fail(self, scope: Scope, send: Send, exc: GencliError, extra: list | None = None) -> None:
        path = scope["path"]
        if path.startswith("/v1/messages"):
            from gencli.server.anthropic import error_body

            body = error_body(exc)
        else:
            body = openai_error(exc) if path.startswith("/v1/") else ollama_error(exc)
        headers = error_headers(exc) + (extra or [])
        await send_json(send, exc.status, body, head=scope["method"] == "HEAD", extra=headers)

    async def read_json(self, receive: Receive) -> dict:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise asyncio.CancelledError()
            chunk = msg.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body:
                    exc = UsageError(f"request body is over the {self.max_body // 1048576} MB limit", "body")
                    exc.status = 413
                    raise exc
            more = msg.get("more_body", False)
        return parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    # -- model metadata ---------------------------------------------------------------------
    def ready_models(self) -> list[ModelEntry]:
        return [e for e in self.registry.models.values() if self.registry.missing_key(e) is None]

    def resolve(self, name: str) -> ModelEntry:
        return self.registry.resolve(self.model_name(name))

    def model_name(self, name: str) -> str:
        """The registry name for a requested name (Ollama lists ``NAME:latest``; both resolve)."""
        if name not in self.registry.models and name.endswith(":latest") and name[:-7] in self.registry.models:
            return name[:-7]
        return name

    @staticmethod
    def details(entry: ModelEntry) -> dict:
        local = local_details(entry)
        if local:
            return {"parent_model": "", "format": "gguf", "family": local["family"], "families": local["families"],
                    "parameter_size": local["parameter_size"], "quantization_level": local["quantization_level"]}
        return {
            "parent_model": "",
            "format": "gguf" if entry.provider == "local" else "api",
            "family": entry.provider,
            "families": [entry.provider],
            "parameter_size": "",
            "quantization_level": "",
        }

    @staticmethod
    def digest(entry: ModelEntry) -> str:
        ident = f"{entry.name}\0{entry.provider}\0{entry.model}\0{entry.base_url}".encode()
        return hashlib.sha256(ident).hexdigest()

    context_length = staticmethod(context_length)  # options.num_ctx, else the provider's usual window

    def tag(self, entry: ModelEntry) -> dict:
        name = tagged(entry.name)
        return {
            "name": name,
            "model": name,
            "modified_at": self.modified_at,
            "size": (local_details(entry) or {}).get("size", 0),
            "digest": self.digest(entry),
            "details": self.details(entry),
            "capabilities": list(entry.capabilities),
        }

    def touch(self, name: str, keep_alive: float | None = None) -> None:
        """A request used the model: /api/ps lists it for ``keep_alive`` seconds (the default
        when None; negative: for good; 0: not after this request)."""
        now = time.time_ns()
        self.last_used[name] = now
        seconds = KEEP_ALIVE if keep_alive is None else keep_alive
        self.expires[name] = math.inf if seconds < 0 else now / 1e9 + seconds

    def keep_alive(self, data: dict) -> float:
        """The request's keep_alive in seconds, the server's default when absent (negative: forever)."""
        seconds = keep_alive_seconds(data.get("keep_alive"))
        return KEEP_ALIVE if seconds is None else seconds

    async def unload(self, entry: ModelEntry) -> None:
        """Ollama's unload (keep_alive 0, nothing to generate): a local model's memory is freed
        (after what runs on it) and the model leaves /api/ps."""
        from gencli.engine import unload

        self.last_used.pop(entry.name, None)
        self.expires.pop(entry.name, None)
        await asyncio.to_thread(unload, entry, self.registry)

    # -- simple routes ------------------------------------------------------------------------
    async def root(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b"Ollama is running", [H_TEXT], scope["method"] == "HEAD")

    async def version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"version": OLLAMA_VERSION}, scope["method"] == "HEAD")

    async def tags(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = [self.tag(e) for e in self.ready_models()]
        await send_json(send, 200, {"models": models}, scope["method"] == "HEAD")

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The OpenAPI document of this API (src/gencli/server/openapi.json, package data)."""
        doc = getattr(self, "_openapi", None)
        if doc is None:
            from importlib.resources import files

            doc = self._openapi = files("gencli.server").joinpath("openapi.json").read_bytes()
        await send_bytes(send, 200, doc, [H_JSON])

    async def ps(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.time()
        out = []
        for name, used in sorted(self.last_used.items(), key=lambda kv: -kv[1]):
            entry = self.registry.models.get(name)
            expires = self.expires.get(name, 0.0)
            if entry is None or expires <= now:
                continue
            item = self.tag(entry)
            item["expires_at"] = FOREVER if expires == math.inf else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            item["size_vram"] = 0
            item["context_length"] = self.context_length(entry)
            out.append(item)
        await send_json(send, 200, {"models": out})

    async def show(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await self.read_json(receive)
        name = data.get("model") or data.get("name")
        if not name:
            raise UsageError("model is required", "model")
        if not isinstance(name, str):
            raise UsageError("model must be a string", "model")
        entry = self.resolve(name)
        scope.setdefault("gencli", {})["model"] = entry.name
        arch = entry.provider
        window = self.context_length(entry)
        info: dict[str, Any] = {"general.architecture": arch, "general.basename": entry.model or entry.name}
        local = local_details(entry)
        if local:  # the GGUF's own metadata: architecture, parameter count, ...
            info = dict(local["model_info"])
            arch = str(info.get("general.architecture") or arch)
            info.setdefault("general.architecture", arch)
            info.setdefault("general.basename", entry.name)
            trained = local.get("context_length")
            if isinstance(trained, int) and trained > 0 and not entry.context_length:
                window = min(window, trained)  # what the model is loaded with (gencli.local_model.runner)
        info[f"{arch}.context_length"] = window  # VS Code Copilot sizes its prompts from this
        missing = self.registry.missing_key(entry)
        reply = {
            "modelfile": f"# served by gencli {__version__}: {entry.provider} model {entry.model or entry.path}\n"
                         f"FROM {entry.model or entry.path}\n",
            "parameters": show_parameters(entry, window),
            "template": show_template(entry),
            "license": "",
            "details": self.details(entry),
            "model_info": info,
            "capabilities": list(entry.capabilities),
            "modified_at": self.modified_at,
        }
        if entry.description:
            reply["description"] = entry.description
        if missing:
            reply["ready"] = False
            reply["missing_key"] = missing
        await send_json(send, 200, reply)

    # -- model management ---------------------------------------------------------------------
    async def pull(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ollama's pull: a model named in models.json is already here, so the pull succeeds at
        once in Ollama's progress shape (streamed unless ``stream: false``); any other name is
        a 404 saying where models come from."""
        data = await self.read_json(receive)
        name = data.get("model") or data.get("name")
        if not name:
            raise UsageError("model is required", "model")
        if not isinstance(name, str):
            raise UsageError("model must be a string", "model")
        stream = field_bool(data, "stream", True)
        try:
            entry = self.resolve(name)
        except ModelNotFound:
            shown = bounded(name)[:200]
            exc = ModelNotFound(f"model '{shown}' cannot be pulled: gencli serves the models named in its "
                                f"models.json (run 'gencli models' to list them); add an entry there instead", name)
            raise exc from None
        scope.setdefault("gencli", {})["model"] = entry.name
        if stream:
            lines = [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"},
                     {"status": "writing manifest"}, {"status": "success"}]
            await send_bytes(send, 200, b"".join(dumps(line) + b"\n" for line in lines), [H_NDJSON])
        else:
            await send_json(send, 200, {"status": "success"})

    async def not_here(self, scope: Scope, receive: Receive, send: Send) -> None:
        """push, create, copy, delete and blobs: models are entries in models.json, not files here."""
        path = scope["path"]
        what = path.split("/")[2] if path.count("/") >= 2 else path
        exc = UsageError(f"{what} is not supported by gencli serve: its models are the entries of models.json "
                         f"(edit that file to add, copy or remove one)", None)
        await self.fail(scope, send, exc)

    # -- generation ---------------------------------------------------------------------------
    async def generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await self.read_json(receive)
        model = self.model_name(field_model(data))
        info = scope.setdefault("gencli", {})
        info["model"] = model
        stream = field_bool(data, "stream", False)
        prompt = field_str(data, "prompt")
        images = field_list(data, "images")
        keep_alive = self.keep_alive(data)
        quota = self.image_quota()
        if images:
            quota.check_count(len(images))
        if not prompt and not images:
            entry = self.resolve(model)
            if keep_alive == 0:  # Ollama's unload (Open WebUI's unload button)
                await self.unload(entry)
                await self.send_load(send, {**load_reply(entry.name), "done_reason": "unload"}, stream)
                return
            self.touch(entry.name, keep_alive)
            await self.send_load(send, load_reply(entry.name), stream)
            return
        logprobs, top = ollama_logprobs(data)
        req = GenerateRequest(
            model=model,
            prompt=prompt or "",
            system=data.get("system"),
            images=images or [],
            options=data.get("options"),
            format=data.get("format"),
            think=data.get("think"),
            context=data.get("context"),
            stream=stream,
            suffix=field_str(data, "suffix"),
            raw=field_bool(data, "raw", False),
            template=field_str(data, "template"),
            logprobs=logprobs,
            top_logprobs=top,
            keep_alive=keep_alive,
        )
        plan = prepare(req, self.registry, model_default=False)
        try:
            await self.attach_images(plan, [], quota)
            self.touch(plan.entry.name, keep_alive)
            await self.run(scope, receive, send, plan, stream, OllamaGenerate(plan.entry.name, stream))
        finally:
            quota.release()

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = await self.read_json(receive)
        model = self.model_name(field_model(data))
        info = scope.setdefault("gencli", {})
        info["model"] = model
        stream = field_bool(data, "stream", True)  # Ollama streams chat unless told not to (the seed only covers generate)
        raw_messages = field_list(data, "messages")
        keep_alive = self.keep_alive(data)
        if not raw_messages:
            entry = self.resolve(model)
            reply = {"model": entry.name, "created_at": now_iso(),
                     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"}
            if keep_alive == 0:  # Ollama's unload (Open WebUI's unload button)
                await self.unload(entry)
                reply["done_reason"] = "unload"
            else:
                self.touch(entry.name, keep_alive)
            await self.send_load(send, reply, stream)
            return
        logprobs, top = ollama_logprobs(data)
        messages, pending = ollama_messages(raw_messages)
        quota = self.image_quota()
        quota.check_count(len(pending))
        req = GenerateRequest(
            model=model,
            messages=messages,
            options=data.get("options"),
            format=data.get("format"),
            think=data.get("think"),
            stream=stream,
            tools=data.get("tools"),
            logprobs=logprobs,
            top_logprobs=top,
            keep_alive=keep_alive,
        )
        plan = prepare(req, self.registry, model_default=False)
        try:
            await self.attach_images(plan, pending, quota)
            self.touch(plan.entry.name, keep_alive)
            await self.run(scope, receive, send, plan, stream, OllamaChat(plan.entry.name, stream))
        finally:
            quota.release()

    def image_quota(self) -> img.ImageQuota:
        """A request's image limits (count, bytes) and its share of the process's image budget."""
        c = self.config
        return img.ImageQuota(c.max_images, c.max_images_bytes, self.transport.images)

    async def attach_images(self, plan, pending: list[tuple[Message, int, Any]], quota: img.ImageQuota) -> None:
        """Count the images the engine decoded, fetch its image URLs, and decode (or fetch)
        the images of chat messages: checked against the model and the request's quota."""
        for message in plan.call.messages:
            for image in message.images:
                quota.add(img.decoded_size(image))
        if plan.image_urls:  # fetched here, within the quota, rather than by the engine
            urls, plan.image_urls = plan.image_urls, []
            for index, url in urls:
                plan.add_image(index, await self.transport.fetch_image(url, quota))
        if not pending:
            return
        if "vision" not in plan.entry.capabilities:
            raise UsageError(f"model '{plan.entry.name}' does not take images (no 'vision' capability)", "images")
        types = plan.adapter.image_types
        for n, (message, _index, raw) in enumerate(pending):
            where = f"image {n + 1}"
            if not isinstance(raw, str) or not raw:
                raise ImageError(f"{where} must be a base64 string or an http(s) URL")
            if img.is_url(raw):
                data = await self.transport.fetch_image(raw, quota)
            else:
                data = img.decode_base64(raw, where)
                quota.add(len(data))
            message.images.append(img.from_bytes(data, where, types))

    async def send_load(self, send: Send, reply: dict, stream: bool) -> None:
        if stream:
            await send_bytes(send, 200, dumps(reply) + b"\n", [H_NDJSON])
        else:
            await send_json(send, 200, reply)

    async def run(self, scope: Scope, receive: Receive, send: Send, plan, stream: bool, shape) -> None:
        """Run a plan and write it with ``shape`` (Ollama generate/chat or OpenAI). The events
        of one read from the upstream are written at once (:func:`gencli.engine.abatches`)."""
        agen = abatches(plan, self.transport, self.transport)
        watch = Disconnect(receive, scope)
        info = scope.setdefault("gencli", {})
        started = False
        try:
            try:
                batch = await agen.__anext__()
            except GencliError as exc:
                watch.stop()
                await shape.fail_before(self, scope, send, exc)
                return
            except (StopAsyncIteration, asyncio.CancelledError):
                raise
            except Exception as exc:
                watch.stop()
                await shape.fail_before(self, scope, send, internal(exc))
                return
            if not stream:
                while type(batch[-1]) is not Done:
                    batch = await agen.__anext__()
                event = batch[-1]
                info["tokens"] = {"prompt": event.prompt_eval_count, "completion": event.eval_count}
                watch.stop()
                await send_json(send, 200, shape.whole(event))
                return
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": shape.headers})
            try:
                while True:
                    parts = []
                    for event in batch:
                        t = type(event)
                        if t is TextDelta:
                            body = shape.text(event.text)
                        elif t is ReasoningDelta:
                            body = shape.reasoning(event.text)
                        elif t is Logprobs:
                            body = shape.logprobs(event.tokens)
                        elif t is Done:
                            info["tokens"] = {"prompt": event.prompt_eval_count, "completion": event.eval_count}
                            watch.stop()
                            parts.append(shape.final(event))
                            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                            return
                        else:
                            continue
                        if body:
                            parts.append(body)
                    if parts:
                        await send({"type": "http.response.body", "body": parts[0] if len(parts) == 1
                                    else b"".join(parts), "more_body": True})
                    batch = await agen.__anext__()
            except GencliError as exc:
                watch.stop()
                await send({"type": "http.response.body", "body": shape.error_line(exc), "more_body": False})
            except (StopAsyncIteration, asyncio.CancelledError):
                raise
            except Exception as exc:
                watch.stop()
                await send({"type": "http.response.body", "body": shape.error_line(internal(exc)),
                            "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except GencliError as exc:  # non-streamed: failed after the first event
            if started:
                raise
            await shape.fail_before(self, scope, send, exc)
        except Exception as exc:
            if started:
                raise
            await shape.fail_before(self, scope, send, internal(exc))
        finally:
            watch.stop()
            await agen.aclose()


# -- reply shapes ------------------------------------------------------------------------------

class OllamaGenerate:
    headers = [H_NDJSON]

    __slots__ = ("model", "stream", "_prefix")

    def __init__(self, model: str, stream: bool):
        self.model = model
        self.stream = stream
        self._prefix = b'{"model":' + dumps(model) + b',"created_at":"'

    def text(self, text: str) -> bytes:  # the bytes of dumps(generate_chunk(model, text)), spliced
        return b"".join((self._prefix, now_iso().encode(), b'","response":', dumps(text), b',"done":false}\n'))

    def reasoning(self, text: str) -> bytes:
        return dumps(generate_chunk(self.model, "", text)) + b"\n"

    def logprobs(self, tokens: list) -> bytes:
        return dumps({**generate_chunk(self.model), "logprobs": ollama_logprob_list(tokens)}) + b"\n"

    def final(self, done: Done) -> bytes:
        return dumps(generate_final(done, True)) + b"\n"

    def whole(self, done: Done) -> dict:
        out = generate_final(done, False)
        if done.logprobs is not None:
            out["logprobs"] = ollama_logprob_list(done.logprobs)
        return out

    def error_line(self, exc: GencliError) -> bytes:
        return dumps({"error": exc.message}) + b"\n"

    async def fail_before(self, app: App, scope: Scope, send: Send, exc: GencliError) -> None:
        await app.fail(scope, send, exc)


class OllamaChat(OllamaGenerate):
    __slots__ = ()

    def text(self, text: str) -> bytes:  # as dumps() of the object Ollama streams, spliced
        return b"".join((self._prefix, now_iso().encode(), b'","message":{"role":"assistant","content":',
                         dumps(text), b'},"done":false}\n'))

    def reasoning(self, text: str) -> bytes:
        return dumps({"model": self.model, "created_at": now_iso(),
                      "message": {"role": "assistant", "content": "", "thinking": text}, "done": False}) + b"\n"

    def logprobs(self, tokens: list) -> bytes:
        return dumps({"model": self.model, "created_at": now_iso(), "message": {"role": "assistant", "content": ""},
                      "done": False, "logprobs": ollama_logprob_list(tokens)}) + b"\n"

    def _final(self, done: Done, content: str, thinking: bool) -> dict:
        message = {"role": "assistant", "content": content}
        if thinking and done.reasoning:
            message["thinking"] = done.reasoning
        if thinking and done.tool_calls:
            from gencli.tools import ollama_calls_out

            message["tool_calls"] = ollama_calls_out(done.tool_calls)
        obj = {"model": self.model, "created_at": now_iso(), "message": message, "done": True,
               "done_reason": done.done_reason}
        obj.update(done.stats())
        return obj

    def final(self, done: Done) -> bytes:
        line = dumps(self._final(done, "", False)) + b"\n"
        if done.tool_calls:  # as Ollama streams them: one line with the calls before the final line
            from gencli.tools import ollama_calls_out

            calls = {"model": self.model, "created_at": now_iso(), "done": False, "message": {
                "role": "assistant", "content": "", "tool_calls": ollama_calls_out(done.tool_calls)}}
            line = dumps(calls) + b"\n" + line
        return line

    def whole(self, done: Done) -> dict:
        out = self._final(done, done.text, True)
        if done.logprobs is not None:
            out["logprobs"] = ollama_logprob_list(done.logprobs)
        return out


def ollama_logprobs(data: dict) -> tuple[bool, int]:
    """``logprobs`` and ``top_logprobs`` of an Ollama request (0-20, as Ollama checks)."""
    logprobs = field_bool(data, "logprobs", False)
    top = data.get("top_logprobs")
    if top is None:
        return logprobs, 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise UsageError("top_logprobs must be between 0 and 20", "top_logprobs")
    return logprobs, top


def ollama_logprob_list(tokens: list) -> list[dict]:
    """Log probabilities in Ollama's shape: ``[{token, logprob, bytes?, top_logprobs?}]``."""
    out = []
    for t in tokens:
        item: dict[str, Any] = {"token": t.token, "logprob": t.logprob}
        if t.bytes is not None:
            item["bytes"] = t.bytes
        if t.top:
            item["top_logprobs"] = [{"token": a.token, "logprob": a.logprob, **({"bytes": a.bytes} if a.bytes
                                                                               is not None else {})} for a in t.top]
        out.append(item)
    return out


def ollama_messages(raw: list) -> tuple[list[Message], list[tuple[Message, int, Any]]]:
    """Ollama chat messages -> engine Messages, plus the images still to decode."""
    messages: list[Message] = []
    pending: list[tuple[Message, int, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UsageError(f"{where} must be an object with role and content", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise UsageError(f"{where}.role must be one of {', '.join(ROLES)}", "messages")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise UsageError(f"{where}.content must be a string", "messages")
        if "\x00" in content:
            raise UsageError(f"{where}.content contains a NUL character", "messages")
        message = Message(role, content)
        images = m.get("images")
        if images:
            if not isinstance(images, list):
                raise UsageError(f"{where}.images must be an array of base64 strings", "images")
            for raw_image in images:
                pending.append((message, i, raw_image))
        if role == "tool" or m.get("tool_calls"):
            from gencli.tools import ollama_message_tools

            ollama_message_tools(message, m, where)
        messages.append(message)
    return messages, pending


# -- assembly ---------------------------------------------------------------------------------

def build(app: App, config=None, server_log: bool = False):
    """Wrap the app in the guard (Host, origins, key, body cap) and the access log. Lifespan
    events go straight to the app. ``server_log``: the HTTP server records each request
    itself in ``asgi.access_log`` (gencli's own server), instead of the ASGI middleware."""
    from gencli.server.guard import Guard, is_loopback_host

    config = config or app.config
    wrapped: Any = Guard(app, api_key=config.api_key, allowed_origins=config.allowed_origins,
                         max_body=config.max_body, allowed_hosts=config.allowed_hosts,
                         check_hosts=is_loopback_host(config.host))
    writer = None
    if config.access_log:
        from gencli.server.accesslog import AccessLog, LogWriter

        writer = LogWriter()
        if not server_log:
            wrapped = AccessLog(wrapped, writer=writer)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await wrapped(scope, receive, send)
        else:
            await app(scope, receive, send)

    asgi.app = app  # type: ignore[attr-defined]
    asgi.http = wrapped  # type: ignore[attr-defined]  # what an HTTP request goes to
    asgi.access_log = writer if server_log else None  # type: ignore[attr-defined]
    asgi.flush = writer.flush if writer is not None else (lambda: None)  # type: ignore[attr-defined]
    return asgi


def create_app(environ: dict | None = None, config=None, registry: Registry | None = None,
               server_log: bool = False):
    """The ASGI application. ``config``: a :class:`gencli.server.config.ServeConfig`
    (``gencli serve`` passes its own, and the registry it loaded); without one it is read,
    with the registry's settings, from ``environ`` (default: the environment over ./.env),
    so other ASGI servers can run ``gencli.server.app:create_app`` as a factory.
    ``server_log``: see :func:`build`."""
    from gencli.server.config import ServeConfig

    if config is None:
        settings = Settings.load(environ)
        config = ServeConfig.load({}, settings.env)
        if registry is None:
            registry = Registry.load(config.models_path, settings=settings)
    return build(App(registry=registry, config=config), config, server_log)
