"""The model registry: models.json -> model entries -> providers with keys and base URLs.

Lookup: ``--models PATH`` or ``GENCLI_MODELS``; else ``./models.json``; else
``$XDG_CONFIG_HOME/gencli/models.json`` (``~/.config`` by default); the file found
is laid over the built-in models (an entry set to ``null`` removes a built-in).
Keys come from the environment, then from ``.env`` in the working directory.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gencli.errors import ConfigError, MissingKey, ModelNotFound

BUILTIN_PATH = Path(__file__).with_name("models.json")
LOCAL_DEFAULT = "smollm2"  # the default when no provider key is configured

PROVIDER_NAMES = ("openai", "openrouter", "openai-compatible", "google", "anthropic", "local")

# provider -> (key variables in order, base-URL variables in order, default base URL)
PROVIDER_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "openai": (("OPENAI_API_KEY",), ("OPENAI_BASE_URL",), "https://api.openai.com/v1"),
    "openrouter": (("OPENROUTER_API_KEY",), ("OPENROUTER_API_URL",), "https://openrouter.ai/api/v1"),
    "openai-compatible": ((), (), ""),
    "google": (
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        ("GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"),
        "https://generativelanguage.googleapis.com",
    ),
    "anthropic": (("ANTHROPIC_API_KEY",), ("ANTHROPIC_BASE_URL",), "https://api.anthropic.com"),
    "local": ((), (), ""),
}
# the context window a model has when its entry gives no options.num_ctx: the provider's usual one
DEFAULT_CONTEXT = {"openai": 128000, "openrouter": 131072, "google": 1048576, "openai-compatible": 32768,
                   "anthropic": 1000000, "local": 8192}

FIELDS = {
    "provider": str,
    "model": str,
    "base_url": str,
    "api_key_env": str,
    "headers": dict,
    "capabilities": list,
    "options": dict,
    "reasoning_tags": bool,
    "timeout": (int, float),
    "retries": int,
    "path": str,
    "package": str,
    "description": str,
}
CAPABILITIES = ("completion", "vision", "thinking", "tools", "embedding", "insert")


@dataclass(slots=True)
class ModelEntry:
    name: str
    provider: str
    model: str
    base_url: str = ""
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    options: dict[str, Any] = field(default_factory=dict)
    reasoning_tags: bool = False
    timeout: float | None = None
    retries: int | None = None
    path: str | None = None
    package: str | None = None  # local: 'path' is inside this installed Python package
    description: str = ""


def context_length(entry: ModelEntry) -> int:
    """``options.num_ctx`` from models.json, else the provider's usual window."""
    n = entry.options.get("num_ctx")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    return DEFAULT_CONTEXT.get(entry.provider, 32768)


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


def _local_path(value: str | None, package: str | None, source: str) -> str | None:
    """A local model's file: '~' expanded, relative paths taken from the models.json that names them."""
    if not value or package:
        return value
    p = Path(value).expanduser()
    if not p.is_absolute() and Path(source).is_file():
        p = Path(source).resolve().parent / p
    return str(p)


def _entry(path: str, name: str, raw: Any) -> ModelEntry:
    where = f"{path}: model '{name}'"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object like {{\"provider\": \"openai\", \"model\": \"gpt-4o-mini\"}}")
    if "api_key" in raw:
        raise ConfigError(
            f"{where}: keys do not belong in models.json (it gets committed); put the key in an "
            f"environment variable or .env and name it with \"api_key_env\""
        )
    for key, value in raw.items():
        if key not in FIELDS:
            known = ", ".join(FIELDS)
            raise ConfigError(f"{where}: unknown field '{key}' (known fields: {known})")
        want = FIELDS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            kind = want.__name__ if isinstance(want, type) else "number"
            raise ConfigError(f"{where}: field '{key}' must be a {kind}")
    provider = raw.get("provider")
    if provider is None:
        raise ConfigError(f"{where}: missing field 'provider' (one of {', '.join(PROVIDER_NAMES)})")
    if provider not in PROVIDER_NAMES:
        raise ConfigError(f"{where}: unknown provider '{provider}' (one of {', '.join(PROVIDER_NAMES)})")
    model = raw.get("model")
    if not model and not (provider == "local" and raw.get("path")):
        raise ConfigError(f"{where}: missing field 'model' (the upstream model id)")
    if provider == "openai-compatible" and not raw.get("base_url"):
        raise ConfigError(f"{where}: provider 'openai-compatible' needs a 'base_url' (e.g. http://localhost:8000/v1)")
    caps = raw.get("capabilities", ["completion"])
    for cap in caps:
        if cap not in CAPABILITIES:
            raise ConfigError(f"{where}: unknown capability '{cap}' (known: {', '.join(CAPABILITIES)})")
    headers = raw.get("headers", {})
    if not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{where}: every value in 'headers' must be a string")
    return ModelEntry(
        name=name,
        provider=provider,
        model=model or "",
        base_url=raw.get("base_url", "").rstrip("/"),
        api_key_env=raw.get("api_key_env"),
        headers=headers,
        capabilities=list(caps),
        options=raw.get("options", {}),
        reasoning_tags=raw.get("reasoning_tags", False),
        timeout=raw.get("timeout"),
        retries=raw.get("retries"),
        path=_local_path(raw.get("path"), raw.get("package"), path),
        package=raw.get("package"),
        description=raw.get("description", ""),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of models, like {{\"name\": {{\"provider\": ..., \"model\": ...}}}}")
    return data


def find_models_file(explicit: str | None, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("GENCLI_MODELS"):
        return Path(env["GENCLI_MODELS"])
    local = (cwd or Path.cwd()) / "models.json"
    if local.is_file():
        return local
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    user = Path(base) / "gencli" / "models.json"
    if user.is_file():
        return user
    return None


class Registry:
    """Named model entries plus the environment that holds their keys."""

    def __init__(self, models: dict[str, ModelEntry], env: Mapping[str, str], source: Path | None = None,
                 default: str | None = None):
        self.models = models
        self.env = env
        self.source = source
        self._default = default

    @classmethod
    def load(cls, path: str | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> "Registry":
        env = load_env(cwd) if env is None else env
        builtin = json.loads(BUILTIN_PATH.read_text(encoding="utf-8"))
        models = {name: _entry("built-in models", name, raw) for name, raw in builtin.items()}
        source = find_models_file(path, env, cwd)
        default = None
        if source is not None:
            for name, raw in _read(source).items():
                if name == "default":
                    if not isinstance(raw, str):
                        raise ConfigError(f"{source}: 'default' must be the name of a model")
                    default = raw
                elif raw is None:
                    models.pop(name, None)
                else:
                    models[name] = _entry(str(source), name, raw)
            if default is not None and default not in models:
                raise ConfigError(f"{source}: 'default' names '{default}', which is not a model in the registry")
        return cls(models, env, source, default)

    # -- lookup ---------------------------------------------------------------
    def resolve(self, name: str | None) -> ModelEntry:
        if not name:
            name = self.default_name()
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(self.not_found_message(name), name)
        return entry

    def not_found_message(self, name: str) -> str:
        close: list[str] = []
        if len(name) <= 200:  # a name this long is not a typo of a registered one
            close = difflib.get_close_matches(name, self.models, n=3, cutoff=0.5)
            close += [n for n in self.models if name and name.lower() in n.lower() and n not in close][: 3 - len(close)]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(self.models)}"
        shown = name if len(name) <= 80 else name[:77] + "..."  # one short line, whatever was sent
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
        return f"model '{shown}' not found{hint} (run 'gencli models' to list them)"

    def default_name(self) -> str:
        """``GENCLI_MODEL``, else models.json's ``default``, else the first ready remote model,
        else (no provider key configured) the built-in local model ``smollm2``."""
        explicit = self.env.get("GENCLI_MODEL") or self._default
        if explicit:
            return explicit
        for entry in self.models.values():
            if entry.provider != "local" and "completion" in entry.capabilities and self.missing_key(entry) is None:
                return entry.name
        if LOCAL_DEFAULT in self.models:
            return LOCAL_DEFAULT
        return next(iter(self.models))

    # -- keys and URLs ---------------------------------------------------------
    def key_vars(self, entry: ModelEntry) -> tuple[str, ...]:
        if entry.api_key_env:
            return (entry.api_key_env,)
        return PROVIDER_DEFAULTS[entry.provider][0]

    def key(self, entry: ModelEntry) -> tuple[str | None, str | None]:
        """(key, variable it came from); raises MissingKey if the provider needs one and none is set."""
        names = self.key_vars(entry)
        for var in names:
            value = self.env.get(var)
            if value:
                return value, var
        if names and entry.provider != "openai-compatible":
            raise MissingKey(self.missing_message(entry), names[0])
        if entry.api_key_env:  # openai-compatible with an explicit variable that is unset
            raise MissingKey(self.missing_message(entry), names[0])
        return None, None

    def missing_key(self, entry: ModelEntry) -> str | None:
        """The variable to set (for a local model: what to install), or None when the model is ready."""
        if entry.provider == "local":
            from gencli.local_model import readiness

            return readiness(entry)
        try:
            self.key(entry)
        except MissingKey as exc:
            return exc.variable
        return None

    def missing_message(self, entry: ModelEntry) -> str:
        names = self.key_vars(entry)
        alt = f" (or {' or '.join(names[1:])})" if len(names) > 1 else ""
        return (f"model '{entry.name}' needs an API key: set {names[0]}{alt} in the environment "
                f"or in a .env file")

    def base_url(self, entry: ModelEntry) -> str:
        if entry.base_url:
            return entry.base_url
        _, url_vars, default = PROVIDER_DEFAULTS[entry.provider]
        for var in url_vars:
            if self.env.get(var):
                return self.env[var].rstrip("/")
        return default
