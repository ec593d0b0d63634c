"""gencli serve: run the Ollama-compatible server on gencli's own HTTP/1.1 server.

The command validates every setting (flags, then environment; one line and exit code 2
for a bad value) and models.json, refuses to expose the server to the network without an
API key, raises the open-file limit, and binds the socket itself, so a bad registry or a
port in use is one line and exit code 1. Then it serves the socket in this process, or
with ``--workers N`` in N forked processes sharing it (``gencli.server.runner``).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from gencli.core.errors import GencliError

if TYPE_CHECKING:
    from gencli.server.asgi import Served

# descriptors kept for everything but client connections (upstream pools, model files, logs)
FD_RESERVE = 64


class ServeError(GencliError):
    exit_code = 1


class ExposureError(GencliError):
    exit_code = 2


EXPOSURE = (
    "refusing to serve on {host} without GENCLI_API_KEY: anyone who can reach it could spend your "
    "provider keys. Set GENCLI_API_KEY (clients then send 'Authorization: Bearer <key>') or issue keys "
    "with 'gencli keys add NAME', bind a loopback "
    "address (--host 127.0.0.1), or pass --insecure-no-auth to serve it without a key anyway"
)
INSECURE = (
    "warning: --insecure-no-auth: serving on {host} without an API key; anyone who can reach it "
    "can use your provider keys"
)


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
            raise ServeError(
                f"cannot listen on {host}:{port}: the port is already in use (is Ollama or "
                f"another gencli serve running? choose another with --port)"
            ) from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"cannot listen on {host}:{port}: permission denied (use a port above 1023)") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _multiprocess_metrics() -> str:
    """``--workers N`` with metrics: a fresh directory for prometheus_client's multiprocess
    mode, named in ``PROMETHEUS_MULTIPROC_DIR`` before the workers fork (the library reads it
    from the environment, at import, in each worker); removed when the server stops."""
    import tempfile

    path = tempfile.mkdtemp(prefix="gencli-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _dead_worker(pid: int) -> None:
    """A worker exited: its share of the live gauges (in-flight requests) leaves the sum."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped


def run(**flags: Any) -> None:
    """``flags``: the serve command's options by name (host, port, workers, allowed_origins,
    allowed_hosts, models_path, allow_private_images, insecure_no_auth and the numeric
    settings of ``gencli.server.config.NUMBERS``); None for an option not given."""
    from gencli.config.registry import Registry
    from gencli.config.settings import Settings
    from gencli.server.config import ServeConfig
    from gencli.server.guard import is_loopback_host

    # flags over the environment over ./.env, read once; a bad setting fails here: one line, exit 2
    settings = Settings.load(models_path=flags.get("models_path"))
    config = ServeConfig.load(flags, settings.env)
    settings = settings.with_(
        timeout=settings.timeout if config.timeout is None else config.timeout,
        retries=settings.retries if config.retries is None else config.retries,
    )
    registry = Registry.load(settings=settings)  # a bad models.json fails here, before binding
    if registry.source is not None:
        config.models_path = str(registry.source.resolve())
    people = 0
    if config.keys_file is not None:
        from pathlib import Path

        from gencli.config.keys import load

        people = len(load(Path(config.keys_file)))  # a malformed line fails here: exit 2 naming it
    host = config.host
    loopback = is_loopback_host(host)
    if not loopback and not config.api_key and config.keys_file is None and not config.insecure_no_auth:
        raise ExposureError(EXPOSURE.format(host=host))
    if config.workers > 1 and not hasattr(os, "fork"):
        raise ServeError("--workers above 1 needs fork(), which this system lacks; run one worker per port")

    from gencli.server.memory import system_malloc_argv

    argv = system_malloc_argv(sys.argv, os.environ)
    if argv is not None:  # the settings are valid: serve from Python running on glibc's malloc
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, {**os.environ, "PYTHONMALLOC": "malloc"})

    from gencli.server.runner import raise_fd_limit

    fds = raise_fd_limit()
    notes = []
    # each connection may hold an upstream connection too; image fetches need theirs
    room = max(1, (fds - FD_RESERVE - config.image_fetches) // 2)
    if config.max_connections > room:
        notes.append(
            f"note: --max-connections lowered from {config.max_connections} to {room} (the open-file limit is {fds})"
        )
        config.max_connections = room

    sock = _bind(host, config.port)
    port = sock.getsockname()[1]
    workers = config.workers

    ready = [e.name for e in registry.models.values() if registry.missing_key(e) is None]
    waiting = len(registry.models) - len(ready)
    lines = [
        f"gencli serve: listening on {_url(host, port)}"
        f" ({workers} worker{'s' if workers > 1 else ''}; Ollama API, OpenAI /v1 and Anthropic /v1/messages)"
    ]
    if ready:
        lines.append(f"ready models: {', '.join(ready)}")
    else:
        lines.append("ready models: none (set a provider key, e.g. OPENAI_API_KEY; see 'gencli models')")
    if waiting:
        lines.append(f"{waiting} more model{'s' if waiting > 1 else ''} need a key (see 'gencli models')")
    if config.keys_file is not None:
        from gencli.server.shared import shown_url

        where = f"Redis at {shown_url(config.redis_url)}" if config.redis_url else "this process"
        lines.append(
            f"keys: {people} from {config.keys_file}"
            + (" and GENCLI_API_KEY" if config.api_key else "")
            + f"; limits counted in {where}"
        )
        if workers > 1 and not config.redis_url:
            lines.append(f"note: each of the {workers} workers counts the per-key limits itself; use --redis to share")
    if config.redis_url:
        lines.append(f"stored responses: in Redis ({'fail open' if config.redis_fail_open else 'fail closed'})")
    if not loopback and not config.api_key and config.keys_file is None:
        lines.append(INSECURE.format(host=host))
    lines.extend(notes)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()

    from gencli.server.runner import serve_process, supervise

    def make_app() -> Served:
        from gencli.server.app import create_app

        # a forked worker shares the loaded registry; gencli's HTTP server writes the access log
        return create_app(config=config, registry=registry, server_log=True)

    limits = config.limits()
    if workers > 1:
        metrics_dir = _multiprocess_metrics() if config.metrics else None
        try:
            code = supervise(
                sock,
                workers,
                lambda: serve_process(sock, make_app, limits, config.grace),
                config.grace,
                reaped=_dead_worker if metrics_dir else None,
            )
        finally:
            if metrics_dir:
                import shutil

                shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        code = serve_process(sock, make_app, limits, config.grace)
    if code:
        raise ServeError("the server stopped after an error (see the messages above)")
