"""The ``local`` provider: GGUF models run by llama-cpp-python in a runner process per model.

Unlike the HTTP adapters it does not describe a request: it runs the model (an
:class:`~gencli.providers.base.InProcessAdapter`). ``run(call)`` returns a
:class:`gencli.providers.llama.runner.LocalRun`, a blocking iterator of event lists, one
token at a time; the engine drives it directly (CLI) or from a worker thread (server).
The heavy lifting lives in :mod:`gencli.providers.llama`; llama_cpp is imported only by the
runner process (:mod:`gencli.providers.llama.worker`), never by gencli itself, so a crash
in llama.cpp fails a request, not the CLI or the server.
"""

from __future__ import annotations

from typing import Literal

from gencli.providers import PROVIDERS
from gencli.providers.base import Call, InProcessAdapter, LocalModel
from gencli.providers.llama.runner import LocalRun, start


class LocalAdapter:
    in_process: Literal[True] = True
    provider = "local"
    label = PROVIDERS["local"].label
    image_types: tuple[str, ...] = ()
    embed_batch = 256

    def run(self, call: Call) -> LocalRun:
        return start(call)

    def unload(self, local: LocalModel, name: str) -> bool:
        """Free the model (after the generations running or queued on it); True if it was loaded."""
        from gencli.providers.llama.files import gguf_path
        from gencli.providers.llama.runner import unload

        return unload(gguf_path(name, local.path, local.package), name, local.queue_limit)

    def embed(self, call: Call, inputs: list[str]) -> tuple[list[list[float]], int | None]:
        """Embeddings for entries with the 'embedding' capability (gencli.providers.llama.embed)."""
        from gencli.providers.llama.embed import embed

        return embed(call, inputs)


def adapter(provider: str) -> InProcessAdapter:  # typed as the Protocol: mypy checks the class conforms
    return LocalAdapter()
