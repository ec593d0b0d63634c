"""Request guard for ``gencli serve``: Host, browser origins (CORS), API key and the body cap.

A pure ASGI middleware. The server holds the user's provider keys, so a web page
open in the user's browser must not be able to spend them through localhost:
browser requests carry an ``Origin`` header, and only allowed origins (localhost
pages by default, plus ``--allowed-origins`` / ``GENCLI_ORIGINS``) get through
and get CORS headers. Requests without ``Origin`` (curl, SDKs, IDE plugins) are
not affected by the origin rule.

DNS rebinding: a page on ``attacker.example`` whose name later resolves to 127.0.0.1
is same-origin with itself, so it sends no foreign ``Origin``; its requests still carry
``Host: attacker.example``. On a loopback bind (as Ollama does) only loopback names and
addresses (``localhost``, ``*.localhost``, ``127.0.0.1``, ``[::1]``, any port) and the
``--allowed-hosts`` / ``GENCLI_ALLOWED_HOSTS`` list are served; any other Host gets 403.
On other binds the API key (required there) guards the server.

The common case (no ``Origin``, no key configured, a ``Content-Length`` body)
costs one pass over the request headers and no wrappers.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from gencli.server.asgi import (
    DEFAULT_MAX_BODY,
    ASGIApp,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    refusal,
    send_error,
    too_large,
)

if TYPE_CHECKING:
    from gencli.config.keys import KeyRecord, Keyring

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_LOCAL_ORIGIN_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_PREFLIGHT_METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS"
_PREFLIGHT_MAX_AGE = b"7200"
_ORIGIN_CACHE_MAX = 512

_HOST_CACHE_MAX = 512
PUBLIC_PATHS = frozenset({"/", "/health", "/ready"})  # answered without the API key (probes)
# the reason a refusal is counted under (gencli_rejected_requests_total), by its error code
_REASONS = {
    "invalid_api_key": "auth",
    "host_not_allowed": "forbidden",
    "origin_not_allowed": "forbidden",
    "request_too_large": "size",
    "rate_limit_exceeded": "limit",
}


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a bind address or name) only accepts connections from this machine.

    Unknown host names are not resolved and count as not loopback (the safe answer);
    ``0.0.0.0`` and ``::`` listen on every interface and are not loopback.
    """
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in _LOOPBACK_NAMES or h.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def host_name(value: str) -> str:
    """The name or address in a ``Host`` header value, without the port, lower case."""
    h = value.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h


def loopback_host_header(name: str) -> bool:
    """True when a Host name (from :func:`host_name`) names this machine's loopback:
    ``localhost``, ``*.localhost``, a 127/8 address, ``[::1]``."""
    if name == "localhost" or name.endswith(".localhost") or name in ("localhost.", "[::1]"):
        return True
    if name.startswith("["):
        name = name[1:-1]
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def parse_origins(value: str | Iterable[str] | None) -> list[str]:
    """Origins from ``GENCLI_ORIGINS`` / ``--allowed-origins``: comma- or space-separated,
    repeatable; ``*`` allows every origin, ``*`` inside an entry is a wildcard
    (``chrome-extension://*``, ``https://*.example.com``)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in item.replace(",", " ").split():
            part = _normalise_origin(part)
            if part and part not in out:
                out.append(part)
    return out


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _is_local_origin(origin: str) -> bool:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    if rest.startswith("["):
        host, _, port = rest.partition("]")
        host += "]"
        if port and not (port.startswith(":") and port[1:].isdigit()):
            return False
    else:
        host, _, port = rest.partition(":")
        if port and not port.isdigit():
            return False
    return host in _LOCAL_ORIGIN_HOSTS


class Guard:
    """ASGI middleware: ``Guard(app, api_key=..., allowed_origins=[...], max_body=bytes)``.

    - ``api_key``: when set, every HTTP route except ``/``, ``/health`` and ``/ready`` needs
      ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Anthropic's header) (401 otherwise;
      compared in constant time).
    - ``keyring``: the keys file's keys (``gencli keys``), accepted besides ``api_key`` (a key
      is needed then even without ``api_key``); the request's :class:`gencli.config.keys.KeyRecord`
      goes on ``scope["gencli.key"]`` for its model and limit checks (the operator's key: none).
    - ``allowed_origins``: origins allowed besides the localhost ones; ``*`` allows all.
      A request whose ``Origin`` is not allowed gets 403 and no CORS headers; an allowed
      one gets ``Access-Control-Allow-Origin`` (its own origin) and ``Vary: Origin``, and
      its preflight ``OPTIONS`` is answered 204.
    - ``max_body``: a larger ``Content-Length`` gets 413 before the body is read; a
      chunked body is counted as it arrives and gets 413 when it passes the cap.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None = None,
        allowed_origins: Iterable[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
        allowed_hosts: Iterable[str] = (),
        check_hosts: bool = True,
        keyring: Keyring | None = None,
    ):
        self.app = app
        self.keyring = keyring
        self.check_hosts = check_hosts
        hosts = [host_name(h) for h in parse_origins(list(allowed_hosts))]
        self._hosts_all = "*" in hosts
        self._hosts_exact = frozenset(h for h in hosts if "*" not in h)
        self._hosts_patterns = tuple(h for h in hosts if "*" in h and h != "*")
        self._host_cache: dict[bytes, bool] = {}
        self._key = ("Bearer " + api_key).encode() if api_key else None
        origins = parse_origins(list(allowed_origins))
        self._allow_all = "*" in origins
        self._exact = frozenset(o for o in origins if "*" not in o)
        self._patterns = tuple(o for o in origins if "*" in o and o != "*")
        self._origin_cache: dict[bytes, bool] = {}
        self.max_body = int(max_body)

    # -- decisions -----------------------------------------------------------------------

    def origin_allowed(self, origin: bytes) -> bool:
        cached = self._origin_cache.get(origin)
        if cached is not None:
            return cached
        try:
            o = _normalise_origin(origin.decode("latin-1"))
        except Exception:  # pragma: no cover - latin-1 decodes every byte string
            o = ""
        ok = bool(o) and (
            self._allow_all or _is_local_origin(o) or o in self._exact or any(fnmatchcase(o, p) for p in self._patterns)
        )
        if len(self._origin_cache) >= _ORIGIN_CACHE_MAX:
            self._origin_cache.clear()
        self._origin_cache[origin] = ok
        return ok

    def host_allowed(self, host: bytes | None) -> bool:
        """The DNS-rebinding rule for a ``Host`` header (see the module docstring)."""
        if host is None or not self.check_hosts or self._hosts_all:
            return True  # no Host (HTTP/1.0 tools; browsers always send one)
        cached = self._host_cache.get(host)
        if cached is not None:
            return cached
        name = host_name(host.decode("latin-1"))
        ok = (
            loopback_host_header(name)
            or name in self._hosts_exact
            or any(fnmatchcase(name, p) for p in self._hosts_patterns)
        )
        if len(self._host_cache) >= _HOST_CACHE_MAX:
            self._host_cache.clear()
        self._host_cache[host] = ok
        return ok

    def _key_ok(self, authorization: bytes | None) -> bool:
        key = self._key
        if authorization is None or key is None:
            return False
        # The scheme is case-insensitive ("bearer KEY" is fine); the key is compared in constant time.
        if authorization[:7].lower() == b"bearer ":
            authorization = b"Bearer " + authorization[7:].strip()
        return hmac.compare_digest(authorization, key)

    def _who(self, authorization: bytes | None, x_api_key: bytes | None) -> str | KeyRecord | None:
        """Who the request's key is: ``"operator"`` (the server's API key), a key of the keys file
        (its record), or None (no key, or not one of these)."""
        if self._key is not None and (
            self._key_ok(authorization)
            or (x_api_key is not None and self._key_ok(b"Bearer " + x_api_key))  # Anthropic clients' header
        ):
            return "operator"
        keyring = self.keyring
        if keyring is None:
            return None
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip()
            if token:
                record = keyring.find(token)
                if record is not None:
                    return record
        if x_api_key is not None:
            token = x_api_key.strip()
            if token:
                return keyring.find(token)
        return None

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        origin = authorization = length = x_api_key = host = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"transfer-encoding":
                chunked = True

        if host is not None and not self.host_allowed(host):
            shown = host.decode("latin-1")
            shown = shown if len(shown) <= 100 else shown[:97] + "..."
            await _reject(
                send,
                scope,
                403,
                f"host not allowed: {shown!r}; this server answers only to localhost "
                "names unless it is started with --allowed-hosts (or GENCLI_ALLOWED_HOSTS)",
                "permission_error",
                "host_not_allowed",
                None,
            )
            return

        cors: list[tuple[bytes, bytes]] | None = None
        if origin is not None:
            if not self.origin_allowed(origin):
                await _reject(
                    send,
                    scope,
                    403,
                    "origin not allowed: "
                    + origin.decode("latin-1")[:200]
                    + "; start the server with --allowed-origins (or GENCLI_ORIGINS) to allow it",
                    "permission_error",
                    "origin_not_allowed",
                    None,
                )
                return
            cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":
                await self._preflight(scope, send, cors)
                return

        if (self._key is not None or self.keyring is not None) and scope["path"] not in PUBLIC_PATHS:
            who = self._who(authorization, x_api_key)
            if who is None:
                message = (
                    "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' (the server's "
                    "GENCLI_API_KEY, or a key from 'gencli keys add')"
                    if authorization is None and x_api_key is None
                    else "invalid API key"
                )
                await _reject(
                    send,
                    scope,
                    401,
                    message,
                    "invalid_request_error",
                    "invalid_api_key",
                    cors,
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
            # the key's name (never the key), for the access log and the metrics: a person's key
            # by its name in the keys file (its record on the scope, for its model and limit
            # checks), the server's API key as "operator"
            info = scope.get("gencli")
            if info is None:
                info = scope["gencli"] = {}
            if isinstance(who, str):
                info["key"] = who
            else:
                scope["gencli.key"] = who
                info["key"] = who.name

        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                await _reject(send, scope, 400, "bad Content-Length header", "invalid_request_error", None, cors)
                return
            if n > self.max_body:
                await _reject(
                    send,
                    scope,
                    413,
                    too_large(self.max_body).message,
                    "invalid_request_error",
                    "request_too_large",
                    cors,
                )
                return
        elif chunked:
            receive, send = _Capped(self, scope, receive, send, cors).pair()
            cors = None  # _Capped's send adds them

        if cors is not None:
            send = _with_headers(send, cors)
        await self.app(scope, receive, send)

    async def _preflight(self, scope: Scope, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        headers = list(cors)
        requested = b""
        private = False
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                requested = value
            elif name == b"access-control-request-private-network":
                private = value.lower() == b"true"
        headers.append((b"access-control-allow-methods", _PREFLIGHT_METHODS))
        headers.append((b"access-control-allow-headers", requested or b"Authorization, Content-Type"))
        headers.append((b"access-control-max-age", _PREFLIGHT_MAX_AGE))
        if private:
            headers.append((b"access-control-allow-private-network", b"true"))
        headers.append((b"content-length", b"0"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def _reject(
    send: Send,
    scope: Scope,
    status: int,
    message: str,
    kind: str,
    code: str | None,
    cors: Headers | None,
    extra: Headers | None = None,
) -> None:
    reason = _REASONS.get(code or "")
    if reason is not None:
        scope.setdefault("gencli", {})["rejected"] = reason
    await send_error(scope, send, refusal(status, message, kind), [*(extra or ()), *(cors or ())], code)


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return wrapped


class _Capped:
    """receive/send for a body of unknown length: counts bytes as they arrive; past the cap
    it answers 413 itself (when nothing was sent yet), tells the app the client left, and
    drops whatever the app still sends."""

    __slots__ = ("guard", "scope", "_receive", "_send", "cors", "seen", "started", "closed")

    def __init__(
        self, guard: Guard, scope: Scope, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]] | None
    ):
        self.guard, self.scope, self._receive, self._send, self.cors = guard, scope, receive, send, cors
        self.seen = 0
        self.started = self.closed = False

    def pair(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        if self.closed:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.guard.max_body:
                self.closed = True
                if not self.started:
                    self.started = True
                    await _reject(
                        self._send,
                        self.scope,
                        413,
                        too_large(self.guard.max_body).message,
                        "invalid_request_error",
                        "request_too_large",
                        self.cors,
                    )
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.started = True
            if self.cors:
                message["headers"] = [*message.get("headers", ()), *self.cors]
        await self._send(message)
