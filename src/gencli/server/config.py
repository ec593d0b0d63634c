"""Every setting of ``gencli serve``, read once and validated: flags first, then environment
(``gencli serve`` passes the environment laid over ``.env``: gencli.config.settings.Settings.env).

One table (:data:`gencli.config.servesettings.SERVE`) names each numeric setting once: its flag,
environment variable, default and range (the number rules, and the timeout and retries rows,
are gencli.config.settings'), the ServeConfig field it fills and its help; ``NUMBERS``, the
defaults of :class:`ServeConfig` and of ``http11.Limits``, and the serve command's flags are
derived from it. A value out of range, not a number, ``inf`` or ``nan`` is a one-line error
(exit code 2) naming the flag or variable it came from. The app, the guard and the HTTP
server all take their limits from the one :class:`ServeConfig` built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from gencli.config.servesettings import MB, SERVE, field_default
from gencli.config.settings import Number, SettingError, parse_flag, parse_number

if TYPE_CHECKING:
    from gencli.server.http11 import Limits

__all__ = ["BY_KEY", "MB", "NUMBERS", "Number", "ServeConfig", "SettingError", "parse_flag", "parse_number"]

LOG_FORMATS = ("text", "json")

NUMBERS: tuple[Number, ...] = tuple(row.number for row in SERVE)
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
    """What ``gencli serve`` runs with. The numeric fields' defaults are the rows of
    gencli.config.servesettings.SERVE (``field_default``)."""

    host: str = "127.0.0.1"
    port: int = int(field_default("port"))
    workers: int = int(field_default("workers"))
    grace: float = field_default("grace")
    timeout: float | None = None  # None: the engine's default (models.json may set one per model)
    retries: int | None = None
    max_body: int = int(field_default("max_body"))
    max_connections: int = int(field_default("max_connections"))
    max_header_bytes: int = int(field_default("max_header_bytes"))
    max_headers: int = int(field_default("max_headers"))
    header_timeout: float = field_default("header_timeout")
    body_timeout: float = field_default("body_timeout")
    keep_alive: float = field_default("keep_alive")
    max_images: int = int(field_default("max_images"))
    max_images_bytes: int = int(field_default("max_images_bytes"))
    image_fetches: int = int(field_default("image_fetches"))
    image_memory: int = int(field_default("image_memory"))
    body_memory: int = int(field_default("body_memory"))
    responses_max: int = int(field_default("responses_max"))  # stored responses kept in-process (count, bytes, seconds)
    responses_bytes: int = int(field_default("responses_bytes"))
    responses_ttl: float = field_default("responses_ttl")
    keys_file: str | None = None  # the keys file gencli serve reads (gencli.config.keys); None: none
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
        cfg = cls()
        for row in SERVE:
            spec = row.number
            raw = flags.get(spec.key)
            if raw is not None:
                value = parse_number(spec, raw, spec.flag)
            elif spec.env and env.get(spec.env, "").strip():
                value = parse_number(spec, env[spec.env], spec.env)
            else:
                continue
            setattr(cfg, row.field, row.field_value(value))
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
        from gencli.config.keys import resolve_path

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
        """The HTTP server's bounds: the fields of ``http11.Limits``, by name, from this config."""
        from gencli.server.http11 import Limits

        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})
