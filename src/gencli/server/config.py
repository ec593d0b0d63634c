"""Every setting of ``gencli serve``, read once and validated: flags first, then environment.

One table (``NUMBERS``) names each numeric setting's flag, environment variable, default and
range; a value out of range, not a number, ``inf`` or ``nan`` is a one-line error (exit
code 2) naming the flag or variable it came from. The app, the guard and the HTTP server
all take their limits from the one :class:`ServeConfig` built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from gencli.errors import UsageError

MB = 1024 * 1024


class SettingError(UsageError):
    """A bad flag or environment setting of ``gencli serve`` (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Number:
    key: str
    flag: str
    env: str | None
    default: float
    lo: float
    hi: float
    integer: bool = False
    unit: str = ""
    lo_open: bool = False  # lo itself is not allowed

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        lo = f"above {_fmt(self.lo)}" if self.lo_open else f"from {_fmt(self.lo)}"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{kind} {lo} to {_fmt(self.hi)}{unit}"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


NUMBERS: tuple[Number, ...] = (
    Number("port", "--port", None, 11434, 0, 65535, True),
    Number("workers", "--workers", None, 1, 1, 256, True),
    Number("grace", "--grace", "GENCLI_GRACE", 30, 0, 3600, unit="seconds"),
    Number("timeout", "--timeout", "GENCLI_TIMEOUT", 300, 0, 86400, unit="seconds", lo_open=True),
    Number("retries", "--retries", "GENCLI_RETRIES", 2, 0, 10, True),
    Number("max_body_mb", "--max-body-mb", "GENCLI_MAX_BODY_MB", 32, 0.001, 4096, unit="MB"),
    Number("max_connections", "--max-connections", "GENCLI_MAX_CONNECTIONS", 1024, 1, 1_000_000, True),
    Number("max_header_kb", "--max-header-kb", "GENCLI_MAX_HEADER_KB", 64, 1, 1024, True, "KB"),
    Number("max_headers", "--max-headers", "GENCLI_MAX_HEADERS", 100, 1, 10_000, True),
    Number("header_timeout", "--header-timeout", "GENCLI_HEADER_TIMEOUT", 10, 0.1, 3600, unit="seconds"),
    Number("body_timeout", "--body-timeout", "GENCLI_BODY_TIMEOUT", 30, 0.1, 3600, unit="seconds"),
    Number("keep_alive", "--keep-alive", "GENCLI_KEEP_ALIVE", 30, 0, 3600, unit="seconds"),
    Number("max_images", "--max-images", "GENCLI_MAX_IMAGES", 16, 0, 1000, True),
    Number("max_images_mb", "--max-images-mb", "GENCLI_MAX_IMAGES_MB", 50, 0.001, 4096, unit="MB"),
    Number("image_fetches", "--image-fetches", "GENCLI_IMAGE_FETCHES", 8, 1, 1024, True),
    Number("image_memory_mb", "--image-memory-mb", "GENCLI_IMAGE_MEMORY_MB", 256, 1, 65536, unit="MB"),
)
BY_KEY = {n.key: n for n in NUMBERS}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_number(spec: Number, raw: Any, source: str) -> float | int:
    """``raw`` (a flag's or variable's value) as ``spec`` allows it, or a SettingError."""
    where = f"{source}={_shown(raw)}" if source.startswith("GENCLI_") else f"{source} {_shown(raw)}"
    fix = "; fix or unset it" if source.startswith("GENCLI_") else ""
    problem = SettingError(f"{where} is not {spec.describe()}{fix}")
    if isinstance(raw, bool):
        raise problem
    if isinstance(raw, (int, float)):
        value: float | int = raw
    else:
        text = str(raw).strip()
        try:
            value = int(text) if spec.integer else float(text)
        except ValueError:
            raise problem from None
    if spec.integer and (not isinstance(value, int) and not float(value).is_integer()):
        raise problem
    if not math.isfinite(value) or value < spec.lo or value > spec.hi or (spec.lo_open and value <= spec.lo):
        raise problem
    return int(value) if spec.integer else float(value)


def parse_flag(name: str, raw: Any) -> bool:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or text == "":
        return False
    raise SettingError(f"{name}={_shown(raw)} is not a yes/no setting (use 1 or 0); fix or unset it")


def _items(values: Any) -> list[str]:
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            if part not in out:
                out.append(part)
    return out


@dataclass(slots=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 11434
    workers: int = 1
    grace: float = 30.0
    timeout: float | None = None  # None: the engine's default (models.json may set one per model)
    retries: int | None = None
    max_body: int = 32 * MB
    max_connections: int = 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 30.0
    max_images: int = 16
    max_images_bytes: int = 50 * MB
    image_fetches: int = 8
    image_memory: int = 256 * MB
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    access_log: bool = True
    allow_private_images: bool = False
    insecure_no_auth: bool = False
    models_path: str | None = None

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> ServeConfig:
        """Flags (by key, None when not given) win over the environment, which wins over defaults."""
        import os

        flags = flags or {}
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for spec in NUMBERS:
            raw = flags.get(spec.key)
            if raw is not None:
                values[spec.key] = parse_number(spec, raw, spec.flag)
            elif spec.env and env.get(spec.env, "").strip():
                values[spec.key] = parse_number(spec, env[spec.env], spec.env)
        cfg = cls()
        for key in ("port", "workers", "grace", "max_connections", "max_headers", "header_timeout",
                    "body_timeout", "keep_alive", "max_images", "image_fetches", "timeout", "retries"):
            if key in values:
                setattr(cfg, key, values[key])
        if "max_body_mb" in values:
            cfg.max_body = max(1, int(values["max_body_mb"] * MB))
        if "max_header_kb" in values:
            cfg.max_header_bytes = values["max_header_kb"] * 1024
        if "max_images_mb" in values:
            cfg.max_images_bytes = max(1, int(values["max_images_mb"] * MB))
        if "image_memory_mb" in values:
            cfg.image_memory = int(values["image_memory_mb"] * MB)
        if flags.get("host"):
            cfg.host = str(flags["host"])
        cfg.api_key = (env.get("GENCLI_API_KEY") or "").strip() or None
        cfg.allowed_origins = _items([env.get("GENCLI_ORIGINS", ""), *(flags.get("allowed_origins") or ())])
        cfg.allowed_hosts = _items([env.get("GENCLI_ALLOWED_HOSTS", ""), *(flags.get("allowed_hosts") or ())])
        cfg.access_log = parse_flag("GENCLI_ACCESS_LOG", env.get("GENCLI_ACCESS_LOG", "1") or "1")
        cfg.allow_private_images = (bool(flags.get("allow_private_images"))
                                    or parse_flag("GENCLI_ALLOW_PRIVATE_IMAGES",
                                                  env.get("GENCLI_ALLOW_PRIVATE_IMAGES", "")))
        cfg.insecure_no_auth = bool(flags.get("insecure_no_auth"))
        cfg.models_path = flags.get("models_path") or env.get("GENCLI_MODELS") or None
        return cfg

    def limits(self):
        from gencli.server.http11 import Limits

        return Limits(max_connections=self.max_connections, max_header_bytes=self.max_header_bytes,
                      max_headers=self.max_headers, header_timeout=self.header_timeout,
                      body_timeout=self.body_timeout, keep_alive=self.keep_alive)

    def export(self, env: dict) -> None:
        """Write the settings the engine reads from the environment (timeout, retries; see
        gencli.retry) so that every worker sees the same values."""
        if self.timeout is not None:
            env["GENCLI_TIMEOUT"] = repr(float(self.timeout))
        if self.retries is not None:
            env["GENCLI_RETRIES"] = str(self.retries)
