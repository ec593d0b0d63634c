"""Provider adapters: sans-I/O code that turns a prepared call into an HTTP request
description and upstream bytes into events. Adapters never open sockets.

Adapters are looked up by provider name and imported lazily, so the CLI only
pays for the provider it uses.
"""

from __future__ import annotations

import importlib

# provider name -> module under gencli.providers
_MODULES = {
    "openai": "openai",
    "openrouter": "openai",
    "openai-compatible": "openai",
    "google": "google",
    "anthropic": "anthropic",
    "local": "local",
}

PROVIDERS = tuple(_MODULES)


def get_adapter(provider: str):
    """Return the adapter object for ``provider`` (each module exposes ``adapter(provider)``)."""
    module = importlib.import_module(f"gencli.providers.{_MODULES[provider]}")
    return module.adapter(provider)
