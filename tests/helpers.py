"""Helpers the test modules share, each defined once: ports, posting JSON to a server, reading
NDJSON, the CLI's one-line errors, waiting for a condition with a deadline, and running a
plan through the engine over httpx (and through both engine loops, recording retry waits). (``gencli
serve`` as a subprocess is :class:`tests.server_fixture.ServeProcess`; the upstream fakes
are in ``tests/fakes/``; running the CLI is :func:`tests.conftest.run_gencli`.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released): for a server to take, or
    for a client to find closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(base: Any, path: str, body: Any, timeout: float = 60) -> httpx.Response:
    """POST ``body`` to ``base + path`` (``base``: a URL, or anything with ``.url`` such as a
    ServeProcess): a dict or list goes as JSON, bytes or a string as they are, both with
    ``Content-Type: application/json``."""
    url = (base if isinstance(base, str) else base.url) + path
    if isinstance(body, (bytes, str)):
        content = body.encode() if isinstance(body, str) else body
    else:
        content = json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=timeout)


def ndjson(resp: httpx.Response) -> list[dict]:
    """Every line of an NDJSON body, checking it ends with a newline, no line is blank and
    every line is a JSON object."""
    body = resp.text
    assert body.endswith("\n")
    lines = body[:-1].split("\n")
    assert all(lines), "blank line in NDJSON stream"
    objs = [json.loads(line) for line in lines]
    assert all(isinstance(o, dict) for o in objs)
    return objs


def one_line_error(p: subprocess.CompletedProcess, code: int) -> str:
    """The CLI's stderr, checked to be one ``gencli: error: ...`` line and exit ``code``."""
    text = p.stderr.decode("utf-8", "replace")
    assert p.returncode == code, (p.returncode, text)
    assert text.startswith("gencli: error: ") and text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something true or ``timeout`` seconds pass; its last
    value (falsy when the deadline passed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def execute(plan: Any, seen: list | None = None) -> list:
    """Every event of the engine's run of ``plan`` over a fresh httpx transport (closed after);
    each is appended to ``seen`` as it comes too, which keeps what came before an error."""
    from gencli import engine
    from gencli.transports.cli import HttpxTransport

    out = [] if seen is None else seen
    transport = HttpxTransport(tls=False)
    try:
        for ev in engine.execute(plan, transport):
            out.append(ev)
    finally:
        transport.close()
    return out


def generate(reg: Any, model: str, prompt: str | None = "hello world", **kw: Any) -> tuple[list, Any]:
    """One generation of ``model`` through the engine (no server, no CLI): the events before
    the Done, and the Done."""
    from gencli import engine
    from gencli.core.events import Done
    from gencli.core.request import GenerateRequest

    events = execute(engine.prepare(GenerateRequest(model=model, prompt=prompt, **kw), reg))
    assert isinstance(events[-1], Done)
    return events[:-1], events[-1]


def texts(events: list, kind: type) -> list[str]:
    """The text of the events of one kind (TextDelta, ReasoningDelta)."""
    return [e.text for e in events if isinstance(e, kind)]


def run_sync(reg: Any, name: str, stream: bool = True, waits: list | None = None, **kw: Any) -> list:
    """The engine's sync loop over httpx for ``name``; retry waits are recorded in ``waits``
    instead of slept. ``kw``: more GenerateRequest fields."""
    from gencli import engine
    from gencli.core.request import GenerateRequest
    from gencli.transports.cli import HttpxTransport

    plan = engine.prepare(GenerateRequest(model=name, prompt="hello there", stream=stream, **kw), reg)
    transport = HttpxTransport(tls=False)
    try:
        return list(engine.execute(plan, transport, transport, sleep=(waits if waits is not None else []).append))
    finally:
        transport.close()


def run_async(reg: Any, name: str, stream: bool = True, waits: list | None = None, **kw: Any) -> list:
    """The engine's async loop over the server's transport, likewise."""
    import asyncio

    from gencli import engine
    from gencli.core.request import GenerateRequest
    from gencli.transports.server import ServerTransport

    record = waits if waits is not None else []

    async def sleep(seconds: float) -> None:
        record.append(seconds)

    async def main() -> list:
        plan = engine.prepare(GenerateRequest(model=name, prompt="hello there", stream=stream, **kw), reg)
        transport = ServerTransport()
        try:
            return [ev async for ev in engine.aexecute(plan, transport, transport, sleep=sleep)]
        finally:
            await transport.close()

    return asyncio.run(main())


RUNNERS = {"sync": run_sync, "async": run_async}


def text_of(events: list) -> str:
    """The answer's text in ``events``."""
    from gencli.core.events import TextDelta

    return "".join(e.text for e in events if type(e) is TextDelta)
