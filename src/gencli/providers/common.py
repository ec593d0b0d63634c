"""Helpers shared by the HTTP adapters: JSON, error mapping, header parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gencli.core.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, HttpRequest

loads = orjson.loads
dumps = orjson.dumps


def upstream_json(call: Call, label: str, body: bytes, what: str = "a response") -> Any:
    """An upstream's reply read as JSON; one that is not JSON is an UpstreamError naming ``what``."""
    try:
        return loads(body)
    except ValueError:
        raise UpstreamError(f"{call.name}: {label} sent {what} that is not JSON") from None


def json_post(
    call: Call,
    url: str,
    body: Any,
    key_header: str,
    key_prefix: str = "",
    stream: bool = False,
    extra: Mapping[str, str] | None = None,
) -> HttpRequest:
    """A POST of ``body`` as JSON to an upstream, asking for an SSE stream when ``stream``
    (else JSON): the key, when there is one, in ``key_header`` after ``key_prefix``, then the
    ``extra`` headers, then the model's own ``headers`` from models.json, which win."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if call.api_key:
        headers[key_header] = key_prefix + call.api_key
    headers.update(extra or {})
    headers.update(call.headers)
    return HttpRequest("POST", url, headers, dumps(body), stream)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts and multidicts."""
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        for k, v in headers.items():
            if k.lower() == lname:
                return v
    return value


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds form)."""
    ms = header(headers, "retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = header(headers, "retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            import time
            from email.utils import parsedate_to_datetime

            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


# Key-shaped tokens, in any case: OpenAI/OpenRouter/Anthropic (sk-...), Gemini (AIza...),
# Groq, xAI, GitHub, Hugging Face, Perplexity.
_SECRETISH = re.compile(r"(?i)(?:sk-|aiza|gsk_|xai-|ghp_|hf_|pplx-)[a-z0-9_\-*]{6,}")
# credentials after an auth scheme, and in query parameters that carry keys
_AUTH = re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20|\+)[a-z0-9._~+/=\-]{8,}")
_QUERY = re.compile(r"(?i)([?&](?:key|api[_-]?key|access[_-]?token|token)=)[^&\s\"'<>]+")
_B64 = re.compile(r"[A-Za-z0-9+/_\-]{12,}={0,2}")
_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization"})
SCRUB_WINDOW = 64 * 1024  # characters of an upstream message scrubbed (the shown part is far shorter)
SHOWN = 500
REDACTED = "[redacted]"

_patterns: dict[frozenset[str], re.Pattern[str] | None] = {}


def _forms(secret: str) -> set[str]:
    """A secret as it may be echoed: plain, URL-encoded, base64 (standard and URL-safe, with and
    without padding)."""
    import base64
    from urllib.parse import quote, quote_plus

    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    return {f for f in forms if f}


def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    pattern = _patterns.get(secrets)
    if pattern is None and secrets not in _patterns:
        forms: set[str] = set()
        for secret in secrets:
            forms |= _forms(secret)
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        pattern = re.compile(alternatives, re.IGNORECASE) if alternatives else None
        if len(_patterns) > 64:
            _patterns.clear()
        _patterns[secrets] = pattern
    return pattern


def _b64_hides(token: str, secrets: frozenset[str]) -> bool:
    """True when a base64-looking token decodes to bytes holding a secret or a key-shaped
    string (e.g. a Basic credential ``user:key`` echoed back)."""
    import base64
    import binascii

    text = token.rstrip("=")
    for alphabet in (None, b"-_"):
        try:
            padded = text + "=" * (-len(text) % 4)
            raw = base64.b64decode(padded, altchars=alphabet, validate=alphabet is None)
        except (binascii.Error, ValueError):
            continue
        decoded = raw.decode("latin-1")
        if any(s in decoded for s in secrets) or _SECRETISH.search(decoded):
            return True
    return False


def scrub(message: str, key: str | None = None, extra: tuple[str, ...] = ()) -> str:
    """Remove secrets from an upstream's message and make it one short line: the call's key and
    the ``extra`` secrets (:func:`call_secrets`: its auth headers and every configured key) in any
    form (plain, URL-encoded, base64, any case), key-shaped tokens, credentials after
    ``Bearer``/``Basic`` and in key query parameters; only then is it cut to ``SHOWN`` characters."""
    secrets = frozenset(s for s in (key, *extra) if s and len(s) >= 4)
    text = " ".join(message.split())
    if len(text) > SCRUB_WINDOW:
        # a secret cut by the window would survive as a fragment: drop the tail it could be in
        longest = max((len(f) for s in secrets for f in _forms(s)), default=0)
        text = text[: SCRUB_WINDOW - longest]
    pattern = _pattern(secrets)
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _AUTH.sub(lambda m: m.group(1) + " " + REDACTED, text)
    text = _QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _SECRETISH.sub(REDACTED, text)
    text = _B64.sub(lambda m: REDACTED if _b64_hides(m.group(), secrets) else m.group(), text)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def call_secrets(call: Call) -> tuple[str, ...]:
    """The secrets a call carries besides its key: the values of its auth headers, and every
    configured key (``call.secrets``, from the settings: the environment and ``.env``)."""
    headers = getattr(call, "headers", None) or {}
    out = []
    for name, value in headers.items():
        if name.lower() in _AUTH_HEADERS and value:
            out.append(value)
            scheme, _, rest = value.partition(" ")
            if rest and scheme.lower() in ("bearer", "basic", "token"):
                out.append(rest.strip())
    return (*out, *call.secrets)


def error_message(body: bytes) -> str:
    """The human message inside an upstream error body (OpenAI or Google shape), uncut: the
    caller scrubs it before cutting it short."""
    try:
        data: Any = loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("status") or ""
            return str(msg)
        if isinstance(err, str):
            return err
    return ""


def http_error(
    call: Call,
    provider: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    auth_statuses: tuple[int, ...] = (401, 403),
) -> UpstreamError:
    """Map an upstream HTTP error to a typed error with a clear, key-free message."""
    label = PROVIDERS[provider].label if provider in PROVIDERS else provider
    detail = scrub(error_message(body), call.api_key, call_secrets(call))
    if status in auth_statuses:
        var = call.key_env or "the provider's API key variable"
        return UpstreamAuthError(
            f"{call.name}: {label} rejected the API key (HTTP {status}); check {var}",
            upstream_status=status,
        )
    suffix = f": {detail}" if detail else ""
    if status == 429:
        wait = retry_after(headers)
        return UpstreamRateLimited(
            f"{call.name}: {label} is rate limiting requests (HTTP 429){suffix}",
            upstream_status=429,
            retry_after=wait,
        )
    if status in (400, 404, 413, 422):
        mapped = 404 if status == 404 else 400
        what = "does not know the model" if status == 404 and not detail else "rejected the request"
        return UpstreamError(
            f"{call.name}: {label} {what} (HTTP {status}){suffix}",
            upstream_status=status,
            status=mapped if status != 404 else 502,
        )
    return UpstreamError(
        f"{call.name}: {label} returned HTTP {status}{suffix}", upstream_status=status, retry_after=retry_after(headers)
    )
