"""``gencli serve``: an Ollama-compatible (and OpenAI /v1) HTTP server on the engine.

``gencli.server.app:create_app`` builds the ASGI application from the environment;
``gencli.cli.commands.serve`` runs it on uvicorn.
"""
