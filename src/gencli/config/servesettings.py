"""The one table of ``gencli serve``'s numeric settings.

Each row names a setting once: its number rules (flag, environment variable, default and
range: a :class:`gencli.config.settings.Number`), the :class:`gencli.server.config.ServeConfig`
field it fills (``scale``: MB and KB become bytes there), and its help text, metavar and
help panel. Everything else is derived from it: the serve command's flags (``cli/app.py``),
the checks and ``ServeConfig`` (``server/config.py``), and the HTTP server's
``http11.Limits`` defaults. The rows are in the order of ``gencli serve --help``.

This module sits below the CLI and the server (the CLI may not import the server), and is
imported at CLI start-up: it imports nothing but :mod:`gencli.core.number`.
"""

from __future__ import annotations

from typing import NamedTuple

from gencli.core.number import RETRIES, TIMEOUT, Number

MB = 1024 * 1024
LIMITS, SERVER, NETWORK = "Limits", "Server", "Network"  # the help panels the rows go to


class Setting(NamedTuple):
    """One numeric setting of ``gencli serve``."""

    number: Number
    field: str  # the ServeConfig field it sets
    scale: int = 1  # the field holds value * scale (MB or KB to bytes)
    metavar: str = "N"
    help: str = ""  # "" : the command declares the flag itself (--port, --workers)
    panel: str = LIMITS

    def field_value(self, value: float) -> float:
        """The ServeConfig field's value for a setting's value (bytes for MB and KB)."""
        return value if self.scale == 1 else max(1, int(value * self.scale))


def _n(key: str, default: float, lo: float, hi: float, integer: bool = False, unit: str = "") -> Number:
    return Number(key, "--" + key.replace("_", "-"), "GENCLI_" + key.upper(), default, lo, hi, integer, unit)


SERVE: tuple[Setting, ...] = (
    Setting(Number("port", "--port", None, 11434, 0, 65535, True), "port", metavar="PORT", panel=NETWORK),
    Setting(Number("workers", "--workers", None, 1, 1, 256, True), "workers", panel=SERVER),
    Setting(
        _n("max_body_mb", 32, 0.001, 4096, unit="MB"),
        "max_body",
        MB,
        "MB",
        "Largest request body accepted, 413 above it",
    ),
    Setting(
        _n("max_connections", 1024, 1, 1_000_000, True),
        "max_connections",
        help="Open connections per worker; past it idle ones are closed, then new ones get 503",
    ),
    Setting(
        _n("max_header_kb", 64, 1, 1024, True, "KB"),
        "max_header_bytes",
        1024,
        "KB",
        "Largest request head, request line included, 431 above it",
    ),
    Setting(_n("max_headers", 100, 1, 10_000, True), "max_headers", help="Most request headers, 431 above it"),
    Setting(
        _n("header_timeout", 10, 0.1, 3600, unit="seconds"),
        "header_timeout",
        metavar="SECONDS",
        help="Time from connect to the end of the request headers, 408 after it",
    ),
    Setting(
        _n("body_timeout", 30, 0.1, 3600, unit="seconds"),
        "body_timeout",
        metavar="SECONDS",
        help="Longest pause in a request body (then 408) or in reading a response (then closed)",
    ),
    Setting(
        _n("keep_alive", 30, 0, 3600, unit="seconds"),
        "keep_alive",
        metavar="SECONDS",
        help="How long an idle connection stays open between requests",
    ),
    Setting(_n("max_images", 16, 0, 1000, True), "max_images", help="Images per request, 400 above it; 0 for none"),
    Setting(
        _n("max_images_mb", 50, 0.001, 4096, unit="MB"),
        "max_images_bytes",
        MB,
        "MB",
        "Image bytes per request, URLs and base64 together, 413 above it",
    ),
    Setting(
        _n("image_fetches", 8, 1, 1024, True),
        "image_fetches",
        help="Image URL downloads at once per worker, more wait their turn",
    ),
    Setting(
        _n("image_memory_mb", 256, 1, 65536, unit="MB"),
        "image_memory",
        MB,
        "MB",
        "Downloaded image bytes held at once per worker, 503 above it",
    ),
    Setting(
        _n("body_memory_mb", 512, 1, 65536, unit="MB"),
        "body_memory",
        MB,
        "MB",
        "Request body bytes held at once per worker, 503 above it",
    ),
    Setting(
        _n("responses_max", 1000, 1, 10_000_000, True),
        "responses_max",
        help="Stored responses (Responses API, store: true) kept in-process",
    ),
    Setting(
        _n("responses_mb", 64, 0.001, 65536, unit="MB"),
        "responses_bytes",
        MB,
        "MB",
        "Bytes of stored responses kept in-process, and most of one in Redis",
    ),
    Setting(
        _n("responses_ttl", 86400, 1, 366 * 86400, unit="seconds"),
        "responses_ttl",
        metavar="SECONDS",
        help="How long a stored response is kept",
    ),
    Setting(
        _n("grace", 30, 0, 3600, unit="seconds"),
        "grace",
        metavar="SECONDS",
        help="On SIGTERM, how long in-flight requests may take to finish",
        panel=SERVER,
    ),
    # the engine's settings (gencli.config.settings), here as serve's defaults for every model
    Setting(
        TIMEOUT,
        "timeout",
        metavar="SECONDS",
        help='Upstream read timeout for models without a "timeout" in models.json',
        panel=NETWORK,
    ),
    Setting(
        RETRIES,
        "retries",
        help='Retries of upstream requests that fail before any output, for models without "retries" in models.json',
        panel=NETWORK,
    ),
)
BY_FIELD = {s.field: s for s in SERVE}


def field_default(field: str) -> float:
    """The default of a ServeConfig field, from its row (bytes for the MB and KB settings)."""
    s = BY_FIELD[field]
    return s.field_value(s.number.default)
