"""Every setting of ``gencli serve``, read once and validated: flags first, then environment
(``gencli serve`` passes the environment laid over ``.env``: gencli.settings.Settings.env).

One table (``NUMBERS``) names each numeric setting's flag, environment variable, default and
range (the number rules, and the timeout and retries rows, are gencli.settings'); a value out
of range, not a number, ``inf`` or ``nan`` is a one-line error (exit code 2) naming the flag
or variable it came from. The app, the guard and the HTTP server
all take their limits from the one :class:`ServeConfig` built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gencli.settings import RETRIES, TIMEOUT, Number, SettingError, parse_flag, parse_number

if TYPE_CHECKING:
    from gencli.server.http11 import Limits

__all__ = ["BY_KEY", "MB", "NUMBERS", "Number", "ServeConfig", "SettingError", "parse_flag", "parse_number"]

MB = 1024 * 1024
LOG_FORMATS = ("text", "json")


NUMBERS: tuple[Number, ...] = (
    Number("port", "--port", None, 11434, 0, 65535, True),
    Number("workers", "--workers", None, 1, 1, 256, True),
    Number("grace", "--grace", "GENCLI_GRACE", 30, 0, 3600, unit="seconds"),
    TIMEOUT,  # the engine's settings (gencli.settings), here as serve's defaults for every model
    RETRIES,
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
    Number("body_memory_mb", "--body-memory-mb", "GENCLI_BODY_MEMORY_MB", 512, 1, 65536, unit="MB"),
    Number("responses_max", "--responses-max", "GENCLI_RESPONSES_MAX", 1000, 1, 10_000_000, True),
    Number("responses_mb", "--responses-mb", "GENCLI_RESPONSES_MB", 64, 0.001, 65536, unit="MB"),
    Number("responses_ttl", "--responses-ttl", "GENCLI_RESPONSES_TTL", 86400, 1, 366 * 86400, unit="seconds"),
)
BY_KEY = {n.key: n for n in NUMBERS}


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
    body_memory: int = 512 * MB
    responses_max: int = 1000  # stored responses kept in-process (count, bytes, seconds)
    responses_bytes: int = 64 * MB
    responses_ttl: float = 86400.0
    keys_file: str | None = None  # the keys file gencli serve reads (gencli.keys); None: none
    redis_url: str | None = None  # limits and stored responses in Redis (gencli.server.shared)
    redis_fail_open: bool = True  # Redis down: admit requests uncounted (True) or 503 (False)
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    access_log: bool = True
    allow_private_images: bool = False
    insecure_no_auth: bool = False
    models_path: str | None = None
    metrics: bool = True  # GET /metrics and the counting behind it (--no-metrics, GENCLI_METRICS=0)
    log_format: str = "text"  # the access log's lines: text or json (--log-format, GENCLI_LOG_FORMAT)

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
        for key in (
            "port",
            "workers",
            "grace",
            "max_connections",
            "max_headers",
            "header_timeout",
            "body_timeout",
            "keep_alive",
            "max_images",
            "image_fetches",
            "responses_max",
            "responses_ttl",
            "timeout",
            "retries",
        ):
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
        if "body_memory_mb" in values:
            cfg.body_memory = int(values["body_memory_mb"] * MB)
        if "responses_mb" in values:
            cfg.responses_bytes = max(1, int(values["responses_mb"] * MB))
        if cfg.body_memory < cfg.max_body:
            raise SettingError(
                f"--body-memory-mb ({cfg.body_memory // MB} MB) is smaller than --max-body-mb "
                f"({cfg.max_body / MB:g} MB): one request body must fit; raise --body-memory-mb"
            )
        if flags.get("host"):
            cfg.host = str(flags["host"])
        cfg.api_key = (env.get("GENCLI_API_KEY") or "").strip() or None
        cfg.allowed_origins = _items([env.get("GENCLI_ORIGINS", ""), *(flags.get("allowed_origins") or ())])
        cfg.allowed_hosts = _items([env.get("GENCLI_ALLOWED_HOSTS", ""), *(flags.get("allowed_hosts") or ())])
        cfg.access_log = parse_flag("GENCLI_ACCESS_LOG", env.get("GENCLI_ACCESS_LOG", "1") or "1")
        cfg.allow_private_images = bool(flags.get("allow_private_images")) or parse_flag(
            "GENCLI_ALLOW_PRIVATE_IMAGES", env.get("GENCLI_ALLOW_PRIVATE_IMAGES", "")
        )
        cfg.insecure_no_auth = bool(flags.get("insecure_no_auth"))
        cfg.models_path = flags.get("models_path") or env.get("GENCLI_MODELS") or None
        metrics = flags.get("metrics")
        cfg.metrics = (
            bool(metrics)
            if metrics is not None
            else parse_flag("GENCLI_METRICS", env.get("GENCLI_METRICS", "1") or "1")
        )
        fmt, where = flags.get("log_format"), "--log-format"
        if fmt is None:
            fmt, where = (env.get("GENCLI_LOG_FORMAT") or "text").strip().lower(), "GENCLI_LOG_FORMAT"
        if fmt not in LOG_FORMATS:
            raise SettingError(f"{where} must be one of {', '.join(LOG_FORMATS)} (not {str(fmt)[:40]!r})")
        cfg.log_format = fmt
        from gencli.keys import resolve_path

        keys_path, named = resolve_path(flags.get("keys_file"), env)
        if keys_path.exists():
            cfg.keys_file = str(keys_path)
        elif named:
            where = "--keys-file" if flags.get("keys_file") else "GENCLI_KEYS_FILE"
            raise SettingError(
                f"{where}: the keys file {keys_path} does not exist; create it with 'gencli keys add NAME'"
            )
        redis_url = (flags.get("redis") or env.get("GENCLI_REDIS_URL") or "").strip()
        if redis_url:
            from gencli.server.shared import check_url

            cfg.redis_url = check_url(redis_url)
        policy = flags.get("redis_fail")
        where = "--redis-fail"
        if policy is None:
            policy, where = env.get("GENCLI_REDIS_FAIL", "") or "open", "GENCLI_REDIS_FAIL"
        policy = str(policy).strip().lower()
        if policy not in ("open", "closed"):
            raise SettingError(
                f"{where}={str(policy)[:40]!r}: use open (admit requests uncounted while Redis is down) or closed (503)"
            )
        cfg.redis_fail_open = policy == "open"
        return cfg

    def limits(self) -> Limits:
        from gencli.server.http11 import Limits

        return Limits(
            max_connections=self.max_connections,
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            keep_alive=self.keep_alive,
        )
