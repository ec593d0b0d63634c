"""Provider adapters, and the one table of what gencli knows about each provider.

An adapter is sans-I/O code (:mod:`gencli.providers.base` declares the two kinds): an
HTTP adapter turns a prepared :class:`~gencli.providers.base.Call` into an
:class:`~gencli.providers.base.HttpRequest` description and upstream bytes into events;
an in-process adapter (the local model) runs the model itself. Adapters never open sockets.

:data:`PROVIDERS` holds one :class:`ProviderSpec` per provider name: its adapter module,
the label used in messages, where its key and base URL come from, its default
capabilities and context window, and the options it accepts. The registry, the engine
and the server read it; nothing else lists providers. A new upstream is one adapter
module and one row here. Adapters are imported lazily (:func:`get_adapter`), so the CLI
only pays for the provider it uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from gencli.core import options as o

if TYPE_CHECKING:
    from gencli.providers.base import Adapter


class ProviderSpec(NamedTuple):
    """One provider's row (a NamedTuple: immutable, and cheaper to define than a dataclass
    on the CLI's start-up path)."""

    name: str
    module: str  # the adapter module under gencli.providers (it exposes ``adapter(provider)``)
    label: str  # how messages name the upstream ("OpenAI rejected the API key ...")
    key_vars: tuple[str, ...] = ()  # where the API key is looked up, in order
    url_vars: tuple[str, ...] = ()  # where a base URL override is looked up, in order
    default_url: str = ""
    key_required: bool = True  # False: a key is sent only when one is configured
    base_url_required: bool = False  # every models.json entry must give a base_url
    local: bool = False  # runs in this process (no key, no URL; "ready" means installed)
    capabilities: tuple[str, ...] = ("completion",)  # a models.json entry's default
    context_length: int = 32768  # the window /api/show reports without context_length or options.num_ctx
    # the upstream's text-completion endpoint (a path under the base URL): raw prompts, and
    # fill-in-the-middle with a suffix for entries with the 'insert' capability; None: it has none
    completions_path: str | None = None
    logprobs: bool = False  # the upstream can return the answer's token log probabilities
    options: Mapping[str, o.Option] = MappingProxyType({})  # what a request may set
    model_options: Mapping[str, o.Option] = MappingProxyType({})  # models.json only (load-time)

    @property
    def entry_options(self) -> dict[str, o.Option]:
        """What a models.json entry's ``options`` may hold: request defaults and load-time options."""
        return {**self.options, **self.model_options}


def _options(**extra: o.Option) -> Mapping[str, o.Option]:
    return MappingProxyType({**o.COMMON, **extra})


_OPENAI_LIKE = _options(top_k=o.TOP_K, min_p=o.MIN_P, repeat_penalty=o.REPEAT_PENALTY)
_WINDOW = MappingProxyType({"num_ctx": o.NUM_CTX})  # a remote model's num_ctx is only what /api/show reports

PROVIDERS: Mapping[str, ProviderSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ProviderSpec(
                "openai",
                "openai",
                "OpenAI",
                ("OPENAI_API_KEY",),
                ("OPENAI_BASE_URL",),
                "https://api.openai.com/v1",
                context_length=128000,
                completions_path="/completions",
                logprobs=True,
                options=_options(),
                model_options=_WINDOW,
            ),
            ProviderSpec(
                "openrouter",
                "openai",
                "OpenRouter",
                ("OPENROUTER_API_KEY",),
                ("OPENROUTER_API_URL",),
                "https://openrouter.ai/api/v1",
                context_length=131072,
                completions_path="/completions",
                logprobs=True,
                options=_OPENAI_LIKE,
                model_options=_WINDOW,
            ),
            ProviderSpec(
                "openai-compatible",
                "openai",
                "the OpenAI-compatible server",
                key_required=False,
                base_url_required=True,
                context_length=32768,
                completions_path="/completions",
                logprobs=True,
                options=_OPENAI_LIKE,
                model_options=_WINDOW,
            ),
            ProviderSpec(
                "google",
                "google",
                "Gemini",
                ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
                ("GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"),
                "https://generativelanguage.googleapis.com",
                context_length=1048576,
                logprobs=True,
                options=_options(top_k=o.TOP_K),
                model_options=_WINDOW,
            ),
            ProviderSpec(
                "anthropic",
                "anthropic",
                "Anthropic",
                ("ANTHROPIC_API_KEY",),
                ("ANTHROPIC_BASE_URL",),
                "https://api.anthropic.com",
                context_length=1000000,
                # temperature 0-1 is checked by the adapter (the Messages API's range)
                options=MappingProxyType(
                    {
                        "temperature": o.TEMPERATURE,
                        "top_p": o.TOP_P,
                        "top_k": o.TOP_K,
                        "num_predict": o.NUM_PREDICT,
                        "stop": o.STOP,
                    }
                ),
                model_options=_WINDOW,
            ),
            ProviderSpec(
                "local",
                "local",
                "the local model",
                key_required=False,
                local=True,
                context_length=2048,  # what a GGUF is loaded with when models.json sets no num_ctx
                logprobs=True,
                options=_options(top_k=o.TOP_K, min_p=o.MIN_P, typical_p=o.TYPICAL_P, repeat_penalty=o.REPEAT_PENALTY),
                model_options=MappingProxyType(
                    {"num_ctx": o.NUM_CTX, "num_thread": o.NUM_THREAD, "num_batch": o.NUM_BATCH, "num_gpu": o.NUM_GPU}
                ),
            ),
        )
    }
)

PROVIDER_NAMES = tuple(PROVIDERS)


def spec(provider: str) -> ProviderSpec:
    return PROVIDERS[provider]


_ADAPTERS: dict[str, Adapter] = {}  # adapters hold no per-call state: one per provider


def get_adapter(provider: str) -> Adapter:
    """The adapter object for ``provider`` (each module exposes ``adapter(provider)``)."""
    found = _ADAPTERS.get(provider)
    if found is None:
        module = importlib.import_module(f"gencli.providers.{PROVIDERS[provider].module}")
        found = _ADAPTERS[provider] = module.adapter(provider)
    return found
