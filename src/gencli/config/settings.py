"""Settings: command-line flags, the environment and ``.env``, merged once at start.

:meth:`Settings.load` reads the process environment laid over ``.env`` in the working
directory, lays the flags given over that, and checks every value: a bad one is a
one-line :class:`SettingError` (exit 2) naming the flag or variable. The result is passed
down: to the registry (keys, base URLs, the default model), the engine (the timeout and
retries of each call) and the local model's queue bound. Nothing reads ``os.environ`` per
request and nothing writes it to pass a setting on. ``gencli serve`` reads its own
settings (limits, key, origins: :mod:`gencli.server.config`) from the same merged
environment, with the same number rules (:class:`Number`, :func:`parse_number`).

======================  =========================  =========================================
setting                 environment                flag
======================  =========================  =========================================
``models_path``         ``GENCLI_MODELS``          ``--models``
``model``               ``GENCLI_MODEL``           ``-m`` (per command)
``embed_model``         ``GENCLI_EMBED_MODEL``     ``embed -m`` (per command)
``timeout``             ``GENCLI_TIMEOUT``         ``serve --timeout`` (``generate --timeout``
                                                   overrides it per call)
``retries``             ``GENCLI_RETRIES``         ``serve --retries`` (likewise)
``local_queue``         ``GENCLI_LOCAL_QUEUE``
======================  =========================  =========================================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from gencli.core.errors import ConfigError, UsageError
from gencli.core.number import DEFAULT_RETRIES
from gencli.core.number import RETRIES as RETRIES  # the rules of numeric settings: gencli.core.number
from gencli.core.number import TIMEOUT as TIMEOUT
from gencli.core.number import Number as Number

LOCAL_QUEUE = 16  # generations waiting per local model, beyond the one running
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|password)")  # variables whose values are scrubbed


class SettingError(UsageError):
    """A bad flag or environment setting (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_number(spec: Number, raw: Any, source: str) -> float | int:
    """``raw`` (a flag's or variable's value) as ``spec`` allows it, or a SettingError
    naming ``source`` (the flag, or the variable)."""
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


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_flag(name: str, raw: Any) -> bool:
    """A yes/no setting (1/0, true/false, yes/no, on/off; empty is no)."""
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or text == "":
        return False
    raise SettingError(f"{name}={_shown(raw)} is not a yes/no setting (use 1 or 0); fix or unset it")


QUEUE = Number("local_queue", "", "GENCLI_LOCAL_QUEUE", LOCAL_QUEUE, 0, 100_000, True)


def _env_number(env: Mapping[str, str], spec: Number) -> float | int | None:
    assert spec.env is not None
    raw = env.get(spec.env, "")
    return parse_number(spec, raw, spec.env) if raw.strip() else None


def parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[7:].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def load_env(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment laid over ``.env`` in the working directory."""
    env: dict[str, str] = {}
    path = (cwd or Path.cwd()) / ".env"
    try:
        env.update(parse_dotenv(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    env.update(os.environ if environ is None else environ)
    return env


def secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of ``env``'s key-like variables (8 characters or more), longest first."""
    found = {v.strip() for k, v in env.items() if _SECRET_NAME.search(k) and len(v.strip()) >= 8}
    return tuple(sorted(found, key=len, reverse=True))


class Settings(NamedTuple):
    """Every process-wide setting of the engine, read once. ``env`` is the environment laid
    over ``.env``: the registry looks provider keys and base-URL variables up in it.
    (Immutable; a NamedTuple because this module is on the CLI's start-up path.)"""

    env: Mapping[str, str] = MappingProxyType({})  # holds keys: never printed
    models_path: str | None = None
    model: str | None = None
    embed_model: str | None = None
    timeout: float | None = None  # upstream read timeout for models without one; None: 300 s
    retries: int = DEFAULT_RETRIES  # for models without "retries" in models.json
    local_queue: int = LOCAL_QUEUE
    # the values of key-like variables (*_API_KEY, *_TOKEN, GENCLI_API_KEY, any api_key_env of
    # models.json, ...), longest first: scrubbed from every upstream message (never printed)
    secrets: tuple[str, ...] = ()

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        models_path: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Settings:
        """``environ`` None: the process environment over ``./.env``; else exactly ``environ``
        (tests). Flags given (not None) win over the environment."""
        env = load_env(cwd) if environ is None else dict(environ)
        return cls.from_env(env, models_path=models_path, timeout=timeout, retries=retries)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        models_path: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Settings:
        env_timeout = _env_number(env, TIMEOUT)
        env_retries = _env_number(env, RETRIES)
        queue = _env_number(env, QUEUE)
        return cls(
            env=dict(env),
            models_path=models_path or env.get("GENCLI_MODELS") or None,
            model=env.get("GENCLI_MODEL") or None,
            embed_model=env.get("GENCLI_EMBED_MODEL") or None,
            timeout=timeout if timeout is not None else (None if env_timeout is None else float(env_timeout)),
            retries=retries if retries is not None else (DEFAULT_RETRIES if env_retries is None else int(env_retries)),
            local_queue=LOCAL_QUEUE if queue is None else int(queue),
            secrets=secret_values(env),
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (e.g. the timeout given to ``serve``)."""
        return self._replace(**changes)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields if k not in ("env", "secrets"))
        return f"Settings({shown})"
