"""Embeddings with a local GGUF model (llama-cpp-python), for the ``local`` provider.

llama.cpp embeds with a context opened in embedding mode, so each model file gets a
second, embedding-only ``Llama`` (mean pooling over the tokens: chat models such as
SmolLM2 report no pooling of their own). It is loaded on first use and kept; calls
are serialised per file (a llama.cpp context is not thread-safe). The engine
L2-normalises the vectors, as for every provider.
"""

from __future__ import annotations

import threading
from typing import Any

from gencli.errors import ConfigError, UsageError
from gencli.providers.base import Call

_LOCK = threading.Lock()
_MODELS: dict[str, tuple[Any, threading.Lock]] = {}
N_CTX = 2048


def _load(call: Call) -> tuple[Any, threading.Lock]:
    from gencli.providers.llama.files import gguf_path, missing_extra
    from gencli.providers.llama.gguf import read_gguf

    local = call.local
    if local is None:
        raise ConfigError(f"model '{call.name}': not a local model")
    path = gguf_path(call.name, local.path, local.package)
    key = str(path)
    with _LOCK:
        found = _MODELS.get(key)
        if found is not None:
            return found
        read_gguf(path)  # a clear error for a file that is not GGUF
        try:
            import llama_cpp
        except ImportError:
            raise missing_extra(call.name) from None
        try:
            llm = llama_cpp.Llama(
                model_path=key,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=N_CTX,
                n_batch=N_CTX,
                n_ubatch=N_CTX,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"model '{call.name}': cannot load {path} for embeddings ({' '.join(str(exc).split())[:200]})"
            ) from None
        found = _MODELS[key] = (llm, threading.Lock())
        return found


def embed(call: Call, inputs: list[str]) -> tuple[list[list[float]], int | None]:
    """(vectors, prompt tokens) for ``inputs``; an input longer than the context is a UsageError."""
    llm, lock = _load(call)
    with lock:
        for i, text in enumerate(inputs):
            n = len(llm.tokenize(text.encode("utf-8"), add_bos=True))
            if n > N_CTX:
                raise UsageError(f"input {i + 1} has {n} tokens; model '{call.name}' embeds at most {N_CTX}", "input")
        out = llm.create_embedding(inputs)
    vectors = [item["embedding"] for item in sorted(out["data"], key=lambda d: d["index"])]
    return vectors, out.get("usage", {}).get("prompt_tokens")
