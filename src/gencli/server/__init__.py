"""``gencli serve``: an Ollama-compatible (and OpenAI /v1) HTTP server on the engine.

``gencli.server.app:create_app`` builds the ASGI application; ``gencli.cli.commands.serve``
runs it on gencli's own HTTP/1.1 server (``http11.py``, ``runner.py``).
"""
