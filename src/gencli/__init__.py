"""gencli: generate text with any model, from the terminal or as an Ollama-compatible server."""

__version__ = "0.1.0"
