"""Helpers shared by the HTTP adapters: JSON, error mapping, header parsing."""

from __future__ import annotations

import re
from typing import Any, Mapping

import orjson

from gencli.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)

loads = orjson.loads
dumps = orjson.dumps

PROVIDER_LABELS = {
    "openai": "OpenAI",
    "openrouter": "OpenRouter",
    "openai-compatible": "the OpenAI-compatible server",
    "google": "Gemini",
    "anthropic": "Anthropic",
    "local": "the local model",
}


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
            from email.utils import parsedate_to_datetime
            import time

            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


_SECRETISH = re.compile(r"(sk-|AIza|sk-or-)[A-Za-z0-9_\-*]{6,}")


def scrub(message: str, key: str | None) -> str:
    """Remove the key (and anything key-shaped) from an upstream's message; one line."""
    if key:
        message = message.replace(key, "[redacted]")
    message = _SECRETISH.sub("[redacted]", message)
    return " ".join(message.split())[:500]


def error_message(body: bytes) -> str:
    """The human message inside an upstream error body (OpenAI or Google shape)."""
    try:
        data: Any = loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] if text else ""
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


def http_error(call, provider: str, status: int, headers: Mapping[str, str], body: bytes,
               auth_statuses: tuple[int, ...] = (401, 403)) -> UpstreamError:
    """Map an upstream HTTP error to a typed error with a clear, key-free message."""
    label = PROVIDER_LABELS.get(provider, provider)
    detail = scrub(error_message(body), call.api_key)
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
        return UpstreamError(f"{call.name}: {label} {what} (HTTP {status}){suffix}",
                             upstream_status=status, status=mapped if status != 404 else 502)
    return UpstreamError(f"{call.name}: {label} returned HTTP {status}{suffix}", upstream_status=status,
                         retry_after=retry_after(headers))
