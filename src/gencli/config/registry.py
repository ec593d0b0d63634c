"""The model registry: models.json -> model entries -> providers with keys and base URLs.

Lookup: ``--models PATH`` or ``GENCLI_MODELS``; else ``./models.json``; else
``$XDG_CONFIG_HOME/gencli/models.json`` (``~/.config`` by default); the file found
is laid over the built-in models (an entry set to ``null`` removes a built-in).
Keys come from the environment, then from ``.env`` in the working directory (both
read once, into :class:`gencli.config.settings.Settings`). What each provider needs (key and
base-URL variables, defaults) is its row in :data:`gencli.providers.PROVIDERS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gencli.config.settings import Settings, load_env, parse_dotenv
from gencli.core import options as opts
from gencli.core.errors import ConfigError, MissingKey, ModelNotFound, UsageError
from gencli.providers import PROVIDER_NAMES, PROVIDERS

if TYPE_CHECKING:  # imported when a local model's endpoint is made: `gencli models` and the like need it not
    from gencli.providers.base import LocalModel

__all__ = ["CAPABILITIES", "Endpoint", "ModelEntry", "Registry", "find_models_file", "load_env", "parse_dotenv"]

BUILTIN_PATH = Path(__file__).parent.parent / "models.json"  # src/gencli/models.json, the embedded registry
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
    "fallbacks": list,
    "deployments": list,
    "routing": str,
    "prices": dict,
}
DEPLOYMENT_FIELDS: dict[str, type] = {"name": str, "base_url": str, "api_key_env": str, "model": str, "headers": dict}
ROUTING = ("round-robin", "least-busy")
MAX_DEPLOYMENTS = 64
MAX_FALLBACKS = 16
PRICES = ("input", "output")  # US dollars per million tokens, as the provider's price list says
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
    # checked against the provider's options (gencli.core.options): request defaults and load-time settings
    options: dict[str, Any] = field(default_factory=dict)
    reasoning_tags: bool = False
    timeout: float | None = None
    retries: int | None = None
    path: str | None = None
    package: str | None = None  # local: 'path' is inside this installed Python package
    description: str = ""
    context_length: int | None = None  # the model's window as models.json states it
    fallbacks: list[str] = field(default_factory=list)  # other entries tried when this one fails (in order)
    deployments: list[ModelEntry] = field(default_factory=list)  # variants of this entry to spread load over
    routing: str = "round-robin"  # how a request picks among the deployments (ROUTING)
    deployment: str = ""  # a deployment variant's own name ("" for an entry itself)
    prices: dict[str, float] = field(default_factory=dict)  # per million tokens: "input", "output"

    @property
    def label(self) -> str:
        """The name of what answered: the entry's name, with its deployment's after a slash."""
        return f"{self.name}/{self.deployment}" if self.deployment else self.name


class Endpoint(NamedTuple):
    """Where and how one model entry is reached, as :meth:`Registry.endpoint` resolved it from
    models.json, the environment and the settings: the upstream model id, base URL, key (and
    the variable it came from), headers, timeout and retries, and for a local model its file
    and load settings. A :class:`~gencli.providers.base.Call` is an endpoint plus a request:
    ``Call(**endpoint._asdict(), messages=..., ...)``. A tuple: made in a microsecond."""

    model: str
    name: str
    base_url: str
    api_key: str | None
    key_env: str | None
    headers: Mapping[str, str]
    capabilities: tuple[str, ...]
    timeout: float | None  # None: the transport's default
    retries: int
    local: LocalModel | None
    secrets: tuple[str, ...]

    def __repr__(self) -> str:  # never the key, nor the other configured keys
        return f"Endpoint(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, key={self.key_env!r})"


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
    deployed = raw.get("deployments")
    if (
        spec.base_url_required
        and not raw.get("base_url")
        and not (deployed and all(isinstance(d, dict) and d.get("base_url") for d in deployed))
    ):
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
    prices: dict[str, float] = {}
    for kind, price in raw.get("prices", {}).items():
        if kind not in PRICES:
            raise ConfigError(f"{where}: unknown price '{kind}' (known: {', '.join(PRICES)}, per million tokens)")
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < 1e9:
            raise ConfigError(f"{where}: price '{kind}' must be a number of dollars per million tokens, 0 or more")
        prices[kind] = float(price)
    try:
        options = opts.check_model(raw.get("options", {}), spec.entry_options)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    fallbacks = raw.get("fallbacks", [])
    if not all(isinstance(f, str) and f for f in fallbacks):
        raise ConfigError(f"{where}: 'fallbacks' must be a list of model names from this registry")
    if len(fallbacks) > MAX_FALLBACKS or len(set(fallbacks)) != len(fallbacks):
        raise ConfigError(f"{where}: 'fallbacks' names each model once, at most {MAX_FALLBACKS} of them")
    routing = raw.get("routing", "round-robin")
    if routing not in ROUTING:
        raise ConfigError(f"{where}: field 'routing' must be one of {', '.join(ROUTING)} (not {routing!r})")
    entry = ModelEntry(
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
        fallbacks=list(fallbacks),
        routing=routing,
        prices=prices,
    )
    entry.deployments = _deployments(where, entry, raw.get("deployments", []))
    return entry


def _deployments(where: str, entry: ModelEntry, raw: list[Any]) -> list[ModelEntry]:
    """A model's ``deployments``: each an object overriding some of ``base_url``,
    ``api_key_env``, ``model`` and ``headers``, named by ``name`` (default: its number)."""
    if not raw:
        return []
    if PROVIDERS[entry.provider].local:
        raise ConfigError(f"{where}: a local model has no deployments (they spread requests over upstreams)")
    if len(raw) > MAX_DEPLOYMENTS:
        raise ConfigError(f"{where}: at most {MAX_DEPLOYMENTS} deployments")
    out: list[ModelEntry] = []
    for n, item in enumerate(raw, 1):
        at = f"{where}: deployment {n}"
        if not isinstance(item, dict) or not item:
            raise ConfigError(
                f'{at}: expected an object like {{"name": "east", "base_url": "https://...", "api_key_env": "KEY_2"}}'
            )
        if "api_key" in item:
            raise ConfigError(f'{at}: keys do not belong in models.json; name the variable with "api_key_env"')
        for key, value in item.items():
            want = DEPLOYMENT_FIELDS.get(key)
            if want is None:
                raise ConfigError(f"{at}: unknown field '{key}' (known fields: {', '.join(DEPLOYMENT_FIELDS)})")
            if not isinstance(value, want) or (want is str and not value):
                raise ConfigError(
                    f"{at}: field '{key}' must be a {'non-empty string' if want is str else want.__name__}"
                )
        headers = {**entry.headers, **item.get("headers", {})}
        if not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{at}: every value in 'headers' must be a string")
        name = item.get("name", str(n))
        if not name.isprintable() or len(name) > 64 or any(d.deployment == name for d in out):
            raise ConfigError(
                f"{at}: 'name' must be unique among the model's deployments, printable, at most 64 characters"
            )
        out.append(
            replace(
                entry,
                base_url=item.get("base_url", entry.base_url).rstrip("/"),
                api_key_env=item.get("api_key_env", entry.api_key_env),
                model=item.get("model", entry.model),
                headers=headers,
                deployments=[],
                deployment=name,
            )
        )
    return out


def _check_fallbacks(models: dict[str, ModelEntry], source: str) -> None:
    """Every fallback names a model of the registry, and no chain of fallbacks comes back to
    where it started (a -> b -> a): refused at load, naming the entries."""
    for entry in models.values():
        for name in entry.fallbacks:
            if name not in models:
                raise ConfigError(f"{source}: model '{entry.name}': fallback '{name}' is not a model in the registry")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = " -> ".join([*path[path.index(name) :], name])
            raise ConfigError(f"{source}: fallback loop: {loop}; remove one of these fallbacks")
        if name in done:
            return
        path.append(name)
        for nxt in models[name].fallbacks:
            visit(nxt, path)
        path.pop()
        done.add(name)

    for name in models:
        visit(name, [])


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


class Router:
    """Picks the order a model's deployments are tried in, one request after another:
    ``round-robin`` starts each request at the next deployment; ``least-busy`` starts at the
    one with the fewest requests running on it now (:meth:`begin` / :meth:`end`, which the
    engine calls around each attempt), ties taken in turn. The rest follow in their order,
    so a deployment that fails is followed by the others. Per process (each ``--workers``
    worker routes its own requests)."""

    __slots__ = ("deployments", "least_busy", "turn", "busy")

    def __init__(self, entry: ModelEntry):
        self.deployments = entry.deployments
        self.least_busy = entry.routing == "least-busy"
        self.turn = 0
        self.busy = [0] * len(entry.deployments)

    def order(self) -> list[ModelEntry]:
        d = self.deployments
        n = len(d)
        start = self.turn % n
        self.turn = start + 1
        if self.least_busy:
            busy = self.busy
            start = min(range(n), key=lambda i: (busy[i], (i - start) % n))
        return d[start:] + d[:start]

    def begin(self, entry: ModelEntry) -> None:
        for i, d in enumerate(self.deployments):
            if d is entry:
                self.busy[i] += 1

    def end(self, entry: ModelEntry) -> None:
        for i, d in enumerate(self.deployments):
            if d is entry and self.busy[i] > 0:
                self.busy[i] -= 1


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
        self.routers: dict[str, Router] = {}  # model name -> its deployments' router (made on first use)

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
        _check_fallbacks(models, str(source or "built-in models"))
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

    def router(self, entry: ModelEntry) -> Router | None:
        """The router of a model with deployments (None without)."""
        if not entry.deployments:
            return None
        router = self.routers.get(entry.name)
        if router is None or router.deployments is not entry.deployments:
            router = self.routers[entry.name] = Router(entry)
        return router

    def route(self, entry: ModelEntry) -> list[ModelEntry]:
        """What a request for ``entry`` tries, in order: its deployments (as its router orders
        them; the entry itself without any), then each of its fallbacks the same way, a
        fallback's own fallbacks right after it; each model once."""
        out: list[ModelEntry] = []
        seen: set[str] = set()

        def add(e: ModelEntry) -> None:
            if e.name in seen:
                return
            seen.add(e.name)
            router = self.router(e)
            out.extend(router.order() if router is not None else (e,))
            for name in e.fallbacks:
                nxt = self.models.get(name)
                if nxt is not None:
                    add(nxt)

        add(entry)
        return out

    # -- keys and URLs ---------------------------------------------------------
    def endpoint(self, entry: ModelEntry, *, timeout: float | None = None, retries: int | None = None) -> Endpoint:
        """How to reach ``entry``: its key (a MissingKey saying what to set when it needs one
        and none is set), base URL, headers, and its timeout and retries: ``timeout`` and
        ``retries`` when given (a command's flags), else the entry's (models.json), else the
        settings'."""
        key, key_env = self.key(entry)
        settings = self.settings
        local = None
        if PROVIDERS[entry.provider].local:
            from gencli.providers.base import LocalModel

            o = entry.options
            local = LocalModel(
                path=entry.path,
                package=entry.package,
                num_ctx=o.get("num_ctx"),
                num_thread=o.get("num_thread"),
                num_batch=o.get("num_batch"),
                num_gpu=o.get("num_gpu"),
                queue_limit=settings.local_queue,
            )
        if timeout is None:
            timeout = entry.timeout if entry.timeout is not None else settings.timeout
        if retries is None:
            retries = entry.retries if entry.retries is not None else settings.retries
        return Endpoint(  # by position: the fields' order
            entry.model,
            entry.name,
            self.base_url(entry),
            key,
            key_env,
            entry.headers,
            tuple(entry.capabilities),
            timeout,
            retries,
            local,
            settings.secrets,
        )

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
        """The variable to set (for a local model: what to install), or None when the model is
        ready (a model with deployments: when one of them has its key)."""
        if entry.deployments:
            missing = [self.missing_key(d) for d in entry.deployments]
            return None if None in missing else missing[0]
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
