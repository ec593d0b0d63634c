"""Embeddings with a local GGUF model, for the ``local`` provider.

llama.cpp embeds with a context opened in embedding mode, so each model file gets a second
runner process (:mod:`.worker`, use ``"embed"``) holding an embedding-only ``Llama`` (mean
pooling over the tokens: chat models such as SmolLM2 report no pooling of their own). It
starts on first use and is kept; calls are serialised per file (one request at a time per
runner). The engine L2-normalises the vectors, as for every provider.
"""

from __future__ import annotations

import threading

from gencli.core.errors import ConfigError
from gencli.providers.base import Call
from gencli.providers.llama import process

_LOCK = threading.Lock()
_SERIAL: dict[str, threading.Lock] = {}  # model file -> its embedding calls, one at a time


def embed(call: Call, inputs: list[str]) -> tuple[list[list[float]], int | None]:
    """(vectors, prompt tokens) for ``inputs``; an input longer than the context is a UsageError."""
    from gencli.providers.llama.files import extra_installed, gguf_path, missing_extra
    from gencli.providers.llama.gguf import read_gguf

    local = call.local
    if local is None:
        raise ConfigError(f"model '{call.name}': not a local model")
    path = gguf_path(call.name, local.path, local.package)
    read_gguf(path)  # a clear error for a file that is not GGUF
    if not extra_installed():
        raise missing_extra(call.name)
    exchange = process.Exchange(path, "embed", {"op": "embed", "name": call.name, "path": str(path), "inputs": inputs})
    with _LOCK:
        serial = _SERIAL.setdefault(str(path), threading.Lock())
    with serial:
        exchange.start()
        while True:
            msg = exchange.next()
            if msg[0] == "embed":
                return msg[1], msg[2]
