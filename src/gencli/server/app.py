"""The ASGI app behind ``gencli serve``: a table of routes, each wire format in its own
module, all on the engine.

- :mod:`~gencli.server.api.ollama`: Ollama's API (/api/generate, /api/chat, /api/tags, ...)
- :mod:`~gencli.server.api.openai`: OpenAI's /v1/chat/completions and /v1/models
- :mod:`~gencli.server.api.responses`: OpenAI's Responses API (/v1/responses)
- :mod:`~gencli.server.api.anthropic`: Anthropic's Messages API (/v1/messages)
- :mod:`~gencli.server.api.embed`: embeddings (/api/embed, /api/embeddings, /v1/embeddings)

They share :mod:`~gencli.server.asgi` (reading JSON, fields, error bodies), the process's
:class:`~gencli.server.state.State` (settings, registry, transport) and the runner in
:mod:`~gencli.server.api.streaming`; none imports this module.

No framework: routes are a dict lookup on (method, path), JSON is orjson, and replies are
written straight to the ASGI ``send``. A route that raises before it sent anything gets
its error in its API's shape (a bug: a 500 naming no internals, the traceback in the log).

Settings come from one :class:`gencli.server.config.ServeConfig` (``gencli serve`` builds
it from its flags and the environment; ``create_app()`` without one reads the environment:
``GENCLI_MODELS``, ``GENCLI_API_KEY``, ``GENCLI_ORIGINS``, ``GENCLI_MAX_BODY_MB``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gencli.config.registry import Registry
from gencli.config.settings import Settings
from gencli.core.errors import GencliError
from gencli.server import observe
from gencli.server.api import anthropic, embed, ollama, openai, responses
from gencli.server.asgi import (
    DEFAULT_MAX_BODY,
    H_JSON,
    ASGIApp,
    Handler,
    Receive,
    Scope,
    Send,
    Served,
    internal,
    refusal,
    send_bytes,
    send_error,
)
from gencli.server.config import ServeConfig
from gencli.server.shared import RedisDown
from gencli.server.state import State

if TYPE_CHECKING:
    from gencli.config.keys import Keyring


class App:
    def __init__(
        self,
        registry: Registry | None = None,
        models_path: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        allow_private_images: bool = False,
        config: ServeConfig | None = None,
    ):
        if config is None:
            config = ServeConfig(max_body=max_body, allow_private_images=allow_private_images, models_path=models_path)
        self.config = config
        self.state = state = State(config, registry)
        self.registry = state.registry
        self._openapi: bytes | None = None
        self.routes: dict[tuple[str, str], Handler] = {
            **ollama.routes(state),
            ("GET", "/openapi.json"): self.openapi,
            **openai.routes(state),
            **responses.routes(state),
            **anthropic.routes(state),
            **embed.routes(state),
            **observe.routes(state),
        }
        # routes with a parameter in the path: (method, prefix, handler)
        self.prefixes: list[tuple[str, str, Handler]] = [
            *ollama.prefix_routes(state),
            *openai.prefix_routes(state),
            *responses.prefix_routes(state),
        ]
        # what a prefix route serves below its id: (method, prefix) -> suffixes (/input_items)
        self.subpaths: dict[tuple[str, str], tuple[str, ...]] = dict(responses.SUBPATHS)
        self.paths: dict[str, list[str]] = {}
        for method, path in self.routes:
            self.paths.setdefault(path, []).append(method)
        self.labels: dict[tuple[str, str], tuple[str, str]] = {key: (key[1], key[0]) for key in self.routes}

    def route_of(self, method: str, path: str) -> tuple[str, str]:
        """The (route, method) a request is counted under: a path of the route table (a
        prefix route's with ``{id}``), else ``other``: never the request's own text."""
        label = self.labels.get((method, path))
        if label is not None:
            return label
        for m, prefix, _ in self.prefixes:
            if m == method and path.startswith(prefix) and len(path) > len(prefix):
                for sub in self.subpaths.get((m, prefix), ()):  # /v1/responses/{id}/input_items
                    if path.endswith(sub) and len(path) > len(prefix) + len(sub):
                        return prefix + "{id}" + sub, m
                return prefix + "{id}", m
        return "other", "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is None:
                handler = self.prefixed(scope["method"], scope["path"])
            if handler is None:
                await self.no_route(scope, send)
                return
            try:
                await handler(scope, receive, send)
            except GencliError as exc:  # raised before anything was sent
                if isinstance(exc, RedisDown):  # stored responses (or limits) need a Redis that is down
                    info = scope.get("gencli")
                    if info is None:
                        info = scope["gencli"] = {}
                    info.setdefault("rejected", "redis")
                await send_error(scope, send, exc)
            except Exception as exc:  # a bug: a JSON 500 in the route's shape, the details in the log
                await send_error(scope, send, internal(exc))
            finally:
                held = scope.get("gencli.body")
                if held:  # the body read by State.read_json, held until the request ends
                    self.state.bodies.release(held)
                record = scope.get("gencli.key")
                if record is not None and record.tpm:  # a person's key: its tokens count
                    self.state.spend(record, scope)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        transport = self.state.transport
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await transport.start()
                except Exception as exc:  # pragma: no cover - the pool's creation does not fail
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await transport.close()
                await self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def prefixed(self, method: str, path: str) -> Handler | None:
        for m, prefix, handler in self.prefixes:
            if m == method and path.startswith(prefix) and len(path) > len(prefix):
                return handler
        return None

    async def no_route(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        methods = self.paths.get(path)
        if methods is None:
            found = sorted({m for m, prefix, _ in self.prefixes if path.startswith(prefix) and len(path) > len(prefix)})
            methods = found or None
        if methods is None:
            await send_error(
                scope, send, refusal(404, f"404 page not found: {scope['method']} {path}", "not_found_error")
            )
            return
        allowed = ", ".join(sorted(methods))
        await send_error(
            scope,
            send,
            refusal(405, f"method {scope['method']} not allowed on {path} (use {allowed})"),
            [(b"allow", allowed.encode())],
        )

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The OpenAPI document of this API (src/gencli/server/openapi.json, package data)."""
        doc = self._openapi
        if doc is None:
            from importlib.resources import files

            doc = self._openapi = files("gencli.server").joinpath("openapi.json").read_bytes()
        await send_bytes(send, 200, doc, [H_JSON])


def _keyring(config: ServeConfig) -> Keyring | None:
    if config.keys_file is None:
        return None
    from pathlib import Path

    from gencli.config.keys import Keyring

    return Keyring(Path(config.keys_file))


def build(app: App, config: ServeConfig | None = None, server_log: bool = False) -> Served:
    """Wrap the app in the guard (Host, origins, key, body cap), the request id and metrics
    (:class:`gencli.server.observe.Observe`) and the access log. Lifespan
    events go straight to the app. ``server_log``: the HTTP server records each request
    itself in ``asgi.access_log`` (gencli's own server), instead of the ASGI middleware."""
    from gencli.server.guard import Guard, is_loopback_host

    config = config or app.config
    wrapped: ASGIApp = Guard(
        app,
        api_key=config.api_key,
        allowed_origins=config.allowed_origins,
        max_body=config.max_body,
        allowed_hosts=config.allowed_hosts,
        check_hosts=is_loopback_host(config.host),
        keyring=_keyring(config),
    )
    from gencli.server.observe import Observe

    wrapped = Observe(wrapped, app.state, app.route_of)  # outermost: the guard's refusals are counted too
    writer = None
    if config.access_log:
        from gencli.server.accesslog import AccessLog, LogWriter

        writer = LogWriter(
            json_lines=config.log_format == "json",
            route_of=app.route_of,
        )
        if not server_log:
            wrapped = AccessLog(wrapped, writer=writer)

    return Served(app, wrapped, writer if server_log else None, writer.flush if writer is not None else _nothing)


def _nothing() -> None:
    return None


def create_app(
    environ: dict[str, str] | None = None,
    config: ServeConfig | None = None,
    registry: Registry | None = None,
    server_log: bool = False,
) -> Served:
    """The ASGI application. ``config``: a :class:`gencli.server.config.ServeConfig`
    (``gencli serve`` passes its own, and the registry it loaded); without one it is read,
    with the registry's settings, from ``environ`` (default: the environment over ./.env),
    so other ASGI servers can run ``gencli.server.app:create_app`` as a factory.
    ``server_log``: see :func:`build`."""
    if config is None:
        settings = Settings.load(environ)
        config = ServeConfig.load({}, settings.env)
        if registry is None:
            registry = Registry.load(config.models_path, settings=settings)
    return build(App(registry=registry, config=config), config, server_log)
