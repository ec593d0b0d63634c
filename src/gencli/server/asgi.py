"""What every part of the server shares, each defined once: the ASGI types, writing a
reply, reading a JSON body, checking its fields, and the error bodies of the three wire
formats (Ollama's, OpenAI's, Anthropic's), chosen by the request's path.

Every failure is JSON in its API's error shape: a bad field is a 400 naming it, and
anything unexpected a 500 that names no internals (the traceback goes to the server log).
Error messages are bounded (``MAX_MESSAGE``): a request never gets a megabyte of itself back.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from gencli.core.errors import GencliError, ModelNotFound, UsageError

Scope = dict[str, Any]
Message = dict[str, Any]  # an ASGI event (http.request, http.response.start, ...)
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]  # one route
Headers = list[tuple[bytes, bytes]]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_MESSAGE = 1000  # characters of an error message sent to a client

dumps = orjson.dumps

H_JSON = (b"content-type", b"application/json; charset=utf-8")
H_NDJSON = (b"content-type", b"application/x-ndjson")
H_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
H_TEXT = (b"content-type", b"text/plain; charset=utf-8")
H_NOCACHE = (b"cache-control", b"no-cache")


# -- replies ------------------------------------------------------------------------------


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers, head: bool = False) -> None:
    headers = headers + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Send, status: int, obj: Any, head: bool = False, extra: Headers | None = None) -> None:
    headers = [H_JSON] if extra is None else [H_JSON, *extra]
    await send_bytes(send, status, dumps(obj), headers, head)


# -- errors -------------------------------------------------------------------------------


class Internal(GencliError):
    """An unexpected failure inside the server (the traceback goes to stderr, not the client)."""

    status = 500


def internal(exc: BaseException) -> GencliError:
    traceback.print_exception(exc, file=sys.stderr)
    return Internal("internal server error; see the server log")


def bounded(message: str) -> str:
    """An error message cut to ``MAX_MESSAGE`` characters (it may quote the request)."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def refusal(status: int, message: str, kind: str = "invalid_request_error") -> GencliError:
    """An error the server answers itself (a 404 route, the guard's 401/403/413)."""
    exc = GencliError(message)
    exc.status, exc.kind = status, kind
    return exc


def too_large(max_body: int) -> GencliError:
    """A body over the server's limit: 413."""
    mb = 1024 * 1024
    size = f"{max_body // mb} MB" if max_body >= mb and max_body % mb == 0 else f"{max_body} bytes"
    return refusal(413, f"request body is larger than the server's limit of {size}; raise it with --max-body-mb")


def ollama_error(exc: GencliError) -> dict[str, Any]:
    return {"error": bounded(exc.message)}


def openai_error(exc: GencliError, code: str | None = None) -> dict[str, Any]:
    param = getattr(exc, "field", None)
    if param is not None:
        param = bounded(str(param))[:200]
    if code is None:
        if isinstance(exc, ModelNotFound):
            code = "model_not_found"
        elif exc.status == 429:
            code = "rate_limit_exceeded"
    return {"error": {"message": bounded(exc.message), "type": exc.kind, "param": param, "code": code}}


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(exc: GencliError) -> dict[str, Any]:
    """Anthropic's error object for an error gencli answers with ``exc.status``."""
    kind = ANTHROPIC_TYPES.get(exc.status)
    if kind is None:
        kind = (
            "overloaded_error"
            if exc.kind == "overloaded_error"
            else ("invalid_request_error" if exc.status < 500 else "api_error")
        )
    return {"type": "error", "error": {"type": kind, "message": bounded(exc.message)}}


def error_body(path: str, exc: GencliError, code: str | None = None) -> dict[str, Any]:
    """The error in the shape of the API ``path`` belongs to: Anthropic's for /v1/messages,
    OpenAI's for the rest of /v1, Ollama's for everything else."""
    if path.startswith("/v1/messages"):
        return anthropic_error(exc)
    if path.startswith("/v1/") or path == "/v1":
        return openai_error(exc, code)
    return ollama_error(exc)


def error_headers(exc: GencliError) -> Headers:
    retry = getattr(exc, "retry_after", None)
    if retry is not None and exc.status in (429, 503):
        return [(b"retry-after", str(max(0, math.ceil(retry))).encode())]
    return []


def error_reply(path: str, status: int, message: str) -> bytes:
    """The JSON body of an error the HTTP server answers itself (a malformed request, a
    timeout, the connection limit; ``path`` "" when none was read), in the shape of the API
    ``path`` belongs to: what ``gencli serve`` gives its transport (``http11.ServerState``)."""
    return dumps(error_body(path, refusal(status, message)))


async def send_error(
    scope: Scope, send: Send, exc: GencliError, extra: Headers | None = None, code: str | None = None
) -> None:
    """Answer ``exc`` (nothing was sent yet) in the shape of the request's API."""
    headers = error_headers(exc) + (extra or [])
    await send_json(
        send, exc.status, error_body(scope["path"], exc, code), head=scope["method"] == "HEAD", extra=headers
    )


# -- reading a JSON body ------------------------------------------------------------------


async def read_json(receive: Receive, max_body: int, charge: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The request body as a JSON object (at most ``max_body`` bytes: 413 past it); ``charge``
    is told the size of each piece as it arrives (and may refuse it). A client that leaves
    while it is read cancels the request."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise asyncio.CancelledError()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise too_large(max_body)
            if charge is not None:
                charge(len(chunk))
            chunks.append(chunk)
        more = msg.get("more_body", False)
    return parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks), max_json_values(max_body))


# Parsed JSON costs up to ~100 bytes of Python objects per value ("{}," is 3 bytes of body and
# an empty dict with its slot and the parser's work, ~100 bytes): 32 MB of them took 1.2 GB.
# A body may hold one value per 16 bytes of the body limit (at least MIN_JSON_VALUES): a
# context array of 24-bit numbers (~9 bytes each) still fits, and the parsed body stays
# within a few times the body limit.
MIN_JSON_VALUES = 10_000
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def max_json_values(max_body: int) -> int:
    """How many JSON values a body may hold under a body limit of ``max_body``."""
    return max(MIN_JSON_VALUES, max_body // 16)


def _starts(text: bytes) -> int:
    """The ``,``, ``[`` and ``{`` in ``text``: the bytes that start or separate JSON values."""
    return text.count(b",") + text.count(b"[") + text.count(b"{")


def json_values_over(body: bytes, limit: int) -> bool:
    """True when ``body`` holds more than ``limit`` JSON values, judged before parsing, in
    O(body) with a small constant. Values are counted by the ``,``, ``[`` and ``{`` that start
    or separate them. The cheap count (those bytes anywhere, ~2 ms a MB) settles almost every
    body; only past the limit are the strings, whose commas and brackets are not values,
    left out, unless there are too many strings already (a value has at most two: a key and
    itself)."""
    if _starts(body) <= limit:
        return False
    strings = (body.count(b'"') - body.count(b'\\"')) // 2  # an escaped quote may be a closing one: fewer
    if strings > 2 * limit:
        return True
    outside = _STRING.sub(b'""', body)  # at most 2 * limit matches: cheap per match
    return _starts(outside) > limit


def parse_json(body: bytes, max_values: int | None = None) -> dict[str, Any]:
    if not body:
        raise UsageError("request body is empty; send a JSON object", "body")
    if max_values is not None and json_values_over(body, max_values):
        raise refusal(
            413,
            f"request body holds more than {max_values} JSON values; send fewer per request"
            " (the server allows one per 16 bytes of --max-body-mb)",
        )
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
        what = "-Infinity" if pos > 0 and body[pos - 1 : pos] == b"-" else "Infinity"
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
        n = len(decoder.decode(body[start : start + step]))
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


class _Open:
    """An open container while :func:`_path_at` scans: an object (its current key, whether
    a key comes next) or an array (its current index)."""

    __slots__ = ("is_object", "key", "index", "expects_key")

    def __init__(self, is_object: bool):
        self.is_object = is_object
        self.key: str | None = None
        self.index = 0
        self.expects_key = is_object


def _path_at(body: bytes, pos: int) -> tuple[str, bool] | None:
    """The JSON path of the value at byte ``pos`` (``messages[2].content``) and whether it is
    inside an object key; None when naming it would take more than ``_LOCATE_TOKENS`` tokens."""
    stack: list[_Open] = []
    tokens = 0
    in_key = False
    for m in _TOKEN.finditer(body, 0, pos + 1):
        tokens += 1
        if tokens > _LOCATE_TOKENS:
            return None
        start = m.start()
        c = body[start]
        if c == 0x22:  # a string: a key when an object expects one
            in_key = bool(stack) and stack[-1].is_object and stack[-1].expects_key
            if m.end() > pos:  # the bad spot is inside this string
                break
            if in_key:
                raw = body[start + 1 : min(m.end() - 1, start + 1 + _KEY_SHOWN * 4)]
                key = raw.decode("utf-8", "replace")
                if len(key) > _KEY_SHOWN or m.end() - start - 2 > len(raw):
                    key = key[:_KEY_SHOWN] + "..."
                stack[-1].key = key
                stack[-1].expects_key = False
            in_key = False
        elif c == 0x7B:  # {
            stack.append(_Open(True))
        elif c == 0x5B:  # [
            stack.append(_Open(False))
        elif c in (0x7D, 0x5D):  # } ]
            if stack:
                stack.pop()
        elif c == 0x2C and stack:  # ,
            top = stack[-1]
            if top.is_object:
                top.key, top.expects_key = None, True
            else:
                top.index += 1
    parts: list[str] = []
    for open_ in stack:
        if open_.is_object:
            if open_.key is not None:
                parts.append(("." if parts else "") + open_.key)
        else:
            parts.append(f"[{open_.index}]")
    path = "".join(parts)
    if len(path) > 200:
        path = "..." + path[-197:]
    return path, in_key


# -- fields -------------------------------------------------------------------------------


def field_str(data: dict[str, Any], key: str, required: bool = False) -> str | None:
    v = data.get(key)
    if v is None:
        if required:
            raise UsageError(f"{key} is required", key)
        return None
    if not isinstance(v, str):
        raise UsageError(f"{key} must be a string", key)
    return v


def field_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    v = data.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise UsageError(f"{key} must be true or false", key)
    return v


def field_list(data: dict[str, Any], key: str) -> list[Any] | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise UsageError(f"{key} must be an array", key)
    return v


MAX_TOKENS_LIMIT = 10_000_000  # the largest answer length in tokens a request may ask for


def field_int(data: dict[str, Any], key: str, lo: int = 1, hi: int = MAX_TOKENS_LIMIT) -> int | None:
    """An integer field from ``lo`` to ``hi`` (a whole float such as 100.0 counts; a bool does
    not), or None when absent."""
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise UsageError(f"{key} must be an integer from {lo} to {hi}", key)
    return v


def field_model(data: dict[str, Any], key: str = "model") -> str:
    v = data.get(key)
    if v is None or v == "":
        raise UsageError(f"{key} is required", key)
    if not isinstance(v, str):
        raise UsageError(f"{key} must be a string", key)
    return v


def optional_str(raw: dict[str, Any], key: str, where: str, field: str = "messages") -> str | None:
    """An optional string field of a nested object (``messages[2].tool_call_id``); "" is None."""
    v = raw.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise UsageError(f"{where}.{key} must be a string", field)
    return v


# -- the app as the HTTP server runs it ---------------------------------------------------


class RequestLog(Protocol):
    """What records each request as the HTTP server ends it (gencli.server.accesslog.LogWriter)."""

    def request(self, scope: Scope, status: int, seconds: float) -> None: ...


class Served:
    """The ASGI app ``gencli.server.app.build`` makes: lifespan events go to ``app``, HTTP
    requests to ``http`` (the app behind the guard and the access log). For gencli's own HTTP
    server it also carries ``access_log`` (the server records each request itself; None when
    the access log is off or the ASGI middleware writes it), ``flush`` (the log's last lines,
    at shutdown) and ``errors`` (the bodies of the server's own refusals, in the API's shape)."""

    __slots__ = ("access_log", "app", "flush", "http")

    errors = staticmethod(error_reply)

    def __init__(self, app: ASGIApp, http: ASGIApp, access_log: RequestLog | None, flush: Callable[[], None]) -> None:
        self.app = app
        self.http = http
        self.access_log = access_log
        self.flush = flush

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)
