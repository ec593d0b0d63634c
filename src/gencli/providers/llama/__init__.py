"""GGUF models run in-process with llama-cpp-python (the optional ``gencli[local]`` extra):
the implementation of the ``local`` provider (its adapter is :mod:`gencli.providers.local`).

* :mod:`.files`: finding the model file (a path, or a file inside an installed
  package) and whether llama-cpp-python is installed; what ``gencli models`` needs.
* :mod:`.gguf`: the GGUF header reader (details for /api/tags and /api/show).
* :mod:`.gate`: one generation at a time per model, with a bounded FIFO queue.
* :mod:`.runner`: loading a model with its models.json load settings, and the token
  loop (:class:`~.runner.LocalRun`).
* :mod:`.embed`: embeddings with a GGUF embedding model.

Importing this package imports nothing else; llama_cpp is imported only when a model loads.
"""
