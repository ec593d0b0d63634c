"""gencli serve: run the Ollama-compatible server on uvicorn (uvloop + httptools).

The command validates models.json and binds the socket itself, so a bad registry or
a port in use is one line and exit code 1; then it hands the bound socket to uvicorn
(one process, or ``--workers N`` processes sharing it). Worker processes build the
app from ``gencli.server.app:create_app`` and the environment variables set here.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from gencli.errors import GencliError

APP = "gencli.server.app:create_app"


class ServeError(GencliError):
    exit_code = 1


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}: unknown address ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {host}:{port}: the port is already in use (is Ollama or "
                             f"another gencli serve running? choose another with --port)") from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"cannot listen on {host}:{port}: permission denied (use a port above 1023)") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(host: str, port: int, models_path: str | None, workers: int, allowed_origins: tuple[str, ...],
        max_body_mb: float, grace: float) -> None:
    from gencli.registry import Registry
    from gencli.server.guard import check_bind, parse_origins

    registry = Registry.load(models_path)  # a bad models.json fails here, before binding
    if registry.source is not None:
        os.environ["GENCLI_MODELS"] = str(registry.source.resolve())
    origins = parse_origins([os.environ.get("GENCLI_ORIGINS", ""), *allowed_origins])
    os.environ["GENCLI_ORIGINS"] = ",".join(origins)
    os.environ["GENCLI_MAX_BODY_MB"] = repr(float(max_body_mb))
    api_key = os.environ.get("GENCLI_API_KEY") or None

    sock = _bind(host, port)
    port = sock.getsockname()[1]

    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # Windows
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "gencli.server.protocol:CoalescingHttpToolsProtocol"
    except ImportError:  # pragma: no cover
        http = "h11"
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        loop=loop,
        http=http,
        lifespan="on",
        access_log=False,
        log_level="warning",
        workers=workers,
        timeout_graceful_shutdown=grace,
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # nothing reads the client address; saves a middleware per request
    )

    ready = [e.name for e in registry.models.values() if registry.missing_key(e) is None]
    waiting = len(registry.models) - len(ready)
    lines = [f"gencli serve: listening on {_url(host, port)}"
             f" ({workers} worker{'s' if workers > 1 else ''}; Ollama API, OpenAI /v1 and Anthropic /v1/messages)"]
    if ready:
        lines.append(f"ready models: {', '.join(ready)}")
    else:
        lines.append("ready models: none (set a provider key, e.g. OPENAI_API_KEY; see 'gencli models')")
    if waiting:
        lines.append(f"{waiting} more model{'s' if waiting > 1 else ''} need a key (see 'gencli models')")
    warning = check_bind(host, api_key)
    if warning:
        lines.append(warning)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()

    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
    else:
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler that
        # was in place before: make that a no-op so a clean shutdown exits 0, not -15/143
        # (before uvicorn's own handlers are in place, SIGTERM still ends the process).
        import signal

        def _after_uvicorn(*_):
            if not server.should_exit:
                sys.exit(128 + signal.SIGTERM)

        signal.signal(signal.SIGTERM, _after_uvicorn)
        server.run(sockets=[sock])
        if not server.started:
            raise ServeError("the server did not start (see the messages above)")
