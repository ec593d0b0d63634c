"""The model registry: models.json -> model entries -> providers with keys and base URLs.

Lookup: ``--models PATH`` or ``GENCLI_MODELS``; else ``./models.json``; else
``$XDG_CONFIG_HOME/gencli/models.json`` (``~/.config`` by default); the file found
is laid over the built-in models (an entry set to ``null`` removes a built-in).
Keys come from the environment, then from ``.env`` in the working directory (both
read once, into :class:`gencli.settings.Settings`). What each provider needs (key and
base-URL variables, defaults) is its row in :data:`gencli.providers.PROVIDERS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gencli import options as opts
from gencli.errors import ConfigError, MissingKey, ModelNotFound, UsageError
from gencli.providers import PROVIDER_NAMES, PROVIDERS
from gencli.settings import Settings, load_env, parse_dotenv

__all__ = ["CAPABILITIES", "ModelEntry", "Registry", "find_models_file", "load_env", "parse_dotenv"]

BUILTIN_PATH = Path(__file__).with_name("models.json")
LOCAL_DEFAULT = "smollm2"  # the default when no provider key is configured

FIELDS: dict[str, type | tuple[type, ...]] = {
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
    "context_length": int,
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
    # checked against the provider's options (gencli.options): request defaults and load-time settings
    options: dict[str, Any] = field(default_factory=dict)
    reasoning_tags: bool = False
    timeout: float | None = None
    retries: int | None = None
    path: str | None = None
    package: str | None = None  # local: 'path' is inside this installed Python package
    description: str = ""
    context_length: int | None = None  # the model's window as models.json states it


def context_length(entry: ModelEntry) -> int:
    """The model's context window: models.json's ``context_length``, else its ``options.num_ctx``,
    else the provider's usual window (``ProviderSpec.context_length``; for a local model, the
    size it is loaded with)."""
    if entry.context_length:
        return entry.context_length
    n = entry.options.get("num_ctx")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    return PROVIDERS[entry.provider].context_length


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
        raise ConfigError(f'{where}: expected an object like {{"provider": "openai", "model": "gpt-4o-mini"}}')
    if "api_key" in raw:
        raise ConfigError(
            f"{where}: keys do not belong in models.json (it gets committed); put the key in an "
            f'environment variable or .env and name it with "api_key_env"'
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
    spec = PROVIDERS[provider]
    model = raw.get("model")
    if not model and not (spec.local and raw.get("path")):
        raise ConfigError(f"{where}: missing field 'model' (the upstream model id)")
    if spec.base_url_required and not raw.get("base_url"):
        raise ConfigError(f"{where}: provider '{provider}' needs a 'base_url' (e.g. http://localhost:8000/v1)")
    caps = raw.get("capabilities", list(spec.capabilities))
    for cap in caps:
        if cap not in CAPABILITIES:
            raise ConfigError(f"{where}: unknown capability '{cap}' (known: {', '.join(CAPABILITIES)})")
    if "insert" in caps and spec.completions_path is None and not spec.local:
        raise ConfigError(
            f"{where}: capability 'insert' (fill-in-the-middle) needs an upstream with a text-"
            f"completion endpoint, which {spec.label} does not have"
        )
    n_ctx = raw.get("context_length")
    if n_ctx is not None and not 1 <= n_ctx <= 100_000_000:
        raise ConfigError(f"{where}: field 'context_length' must be a number of tokens from 1 to 100000000")
    headers = raw.get("headers", {})
    if not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{where}: every value in 'headers' must be a string")
    try:
        options = opts.check_model(raw.get("options", {}), spec.entry_options)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return ModelEntry(
        name=name,
        provider=provider,
        model=model or "",
        base_url=raw.get("base_url", "").rstrip("/"),
        api_key_env=raw.get("api_key_env"),
        headers=headers,
        capabilities=list(caps),
        options=options,
        reasoning_tags=raw.get("reasoning_tags", False),
        timeout=raw.get("timeout"),
        retries=raw.get("retries"),
        path=_local_path(raw.get("path"), raw.get("package"), path),
        package=raw.get("package"),
        description=raw.get("description", ""),
        context_length=n_ctx,
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
        raise ConfigError(f'{path}: expected an object of models, like {{"name": {{"provider": ..., "model": ...}}}}')
    return data


def find_models_file(explicit: str | None, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """``explicit`` (the flag, or GENCLI_MODELS: see Settings.models_path), else ./models.json,
    else $XDG_CONFIG_HOME/gencli/models.json."""
    if explicit:
        return Path(explicit)
    local = (cwd or Path.cwd()) / "models.json"
    if local.is_file():
        return local
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    user = Path(base) / "gencli" / "models.json"
    if user.is_file():
        return user
    return None


class Registry:
    """Named model entries, and the settings that hold their keys (``settings.env``) and
    the process-wide defaults (timeout, retries, the default model)."""

    def __init__(
        self, models: dict[str, ModelEntry], settings: Settings, source: Path | None = None, default: str | None = None
    ):
        self.models = models
        self.settings = settings
        self.env = settings.env
        self.source = source
        self._default = default

    @classmethod
    def load(
        cls,
        path: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        settings: Settings | None = None,
    ) -> Registry:
        """The built-in models with models.json laid over them. ``settings`` as read at start;
        without them, read now from ``env`` (exactly that mapping) or the environment and .env."""
        if settings is None:
            settings = Settings.load(env, cwd)
        builtin = json.loads(BUILTIN_PATH.read_text(encoding="utf-8"))
        models = {name: _entry("built-in models", name, raw) for name, raw in builtin.items()}
        source = find_models_file(path or settings.models_path, settings.env, cwd)
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
        return cls(models, settings, source, default)

    # -- lookup ---------------------------------------------------------------
    def resolve(self, name: str | None) -> ModelEntry:
        if not name:
            name = self.default_name()
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(self.not_found_message(name), name)
        return entry

    def not_found_message(self, name: str) -> str:
        import difflib  # lazily: only an unknown name needs it (a few ms of every start-up)

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
        explicit = self.settings.model or self._default
        if explicit:
            return explicit
        for entry in self.models.values():
            if (
                not PROVIDERS[entry.provider].local
                and "completion" in entry.capabilities
                and self.missing_key(entry) is None
            ):
                return entry.name
        if LOCAL_DEFAULT in self.models:
            return LOCAL_DEFAULT
        return next(iter(self.models))

    # -- keys and URLs ---------------------------------------------------------
    def key_vars(self, entry: ModelEntry) -> tuple[str, ...]:
        if entry.api_key_env:
            return (entry.api_key_env,)
        return PROVIDERS[entry.provider].key_vars

    def key(self, entry: ModelEntry) -> tuple[str | None, str | None]:
        """(key, variable it came from); raises MissingKey if the provider needs one and none is set."""
        names = self.key_vars(entry)
        for var in names:
            value = self.env.get(var)
            if value:
                return value, var
        if names and (PROVIDERS[entry.provider].key_required or entry.api_key_env):
            # an optional key named with api_key_env must be set, too
            raise MissingKey(self.missing_message(entry), names[0])
        return None, None

    def missing_key(self, entry: ModelEntry) -> str | None:
        """The variable to set (for a local model: what to install), or None when the model is ready."""
        if PROVIDERS[entry.provider].local:
            from gencli.providers.llama.files import readiness

            return readiness(entry)
        try:
            self.key(entry)
        except MissingKey as exc:
            return exc.variable
        return None

    def missing_message(self, entry: ModelEntry) -> str:
        names = self.key_vars(entry)
        alt = f" (or {' or '.join(names[1:])})" if len(names) > 1 else ""
        return f"model '{entry.name}' needs an API key: set {names[0]}{alt} in the environment or in a .env file"

    def base_url(self, entry: ModelEntry) -> str:
        if entry.base_url:
            return entry.base_url
        spec = PROVIDERS[entry.provider]
        for var in spec.url_vars:
            if self.env.get(var):
                return self.env[var].rstrip("/")
        return spec.default_url
