"""GGUF models run by llama-cpp-python (the optional ``gencli[local]`` extra) in runner
processes: the implementation of the ``local`` provider (its adapter is
:mod:`gencli.providers.local`).

* :mod:`.files`: finding the model file (a path, or a file inside an installed
  package) and whether llama-cpp-python is installed; what ``gencli models`` needs.
* :mod:`.gguf`: the GGUF header reader (details for /api/tags and /api/show).
* :mod:`.gate`: one generation at a time per model, with a bounded FIFO queue.
* :mod:`.runner`: a generation (:class:`~.runner.LocalRun`), token counts, keep_alive and
  unloading, in gencli's process.
* :mod:`.embed`: embeddings with a GGUF embedding model.
* :mod:`.process`: the runner processes (one per model file and use), their protocol,
  crashes named by their cause, CPU variants that fault remembered.
* :mod:`.worker`: the runner process itself: chooses the CPU kernels, loads the model with
  its models.json load settings, runs the token loop.

Importing this package imports nothing else; llama_cpp is imported only in a runner process.
"""
