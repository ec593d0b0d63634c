"""The ``local`` provider: GGUF models run in-process with llama-cpp-python.

Unlike the HTTP adapters it does not describe a request: it runs the model
(``in_process = True``). ``run(call)`` returns a :class:`gencli.local_model.LocalRun`,
a blocking iterator of event lists, one token at a time; the engine drives it
directly (CLI) or from a worker thread (server). The heavy lifting lives in
:mod:`gencli.local_model`; llama_cpp is imported only when a model loads.
"""

from __future__ import annotations

from gencli.local_model import LocalRun, start


class LocalAdapter:
    provider = "local"
    label = "the local model"
    in_process = True
    image_types: tuple[str, ...] = ()

    def run(self, call) -> LocalRun:
        return start(call)

    def embed(self, call, inputs: list[str]) -> tuple[list[list[float]], int | None]:
        """Embeddings for entries with the 'embedding' capability (gencli.local_embed)."""
        from gencli.local_embed import embed

        return embed(call, inputs)


def adapter(provider: str) -> LocalAdapter:
    return LocalAdapter()
