"""gencli embed: turn text into vectors with an embedding model, printed as JSON."""

from __future__ import annotations

import sys

import orjson

from gencli.cli.pipes import read_stdin, stdin_piped
from gencli.core.errors import UsageError


def read_inputs(texts: tuple[str, ...], lines: bool) -> list[str]:
    """TEXT arguments are the inputs ('-' reads stdin); without them, stdin when it is piped.
    With ``lines``, each non-blank line of stdin is one input, else stdin is one input."""
    inputs: list[str] = []
    want_stdin = "-" in texts or (not texts and stdin_piped())
    for text in texts:
        if text == "-":
            continue
        inputs.append(text)
    if want_stdin:
        data = read_stdin()
        if lines:
            inputs.extend(line for line in data.splitlines() if line.strip())
        elif data.strip():
            inputs.append(data)
    if not inputs:
        raise UsageError(
            "nothing to embed: give TEXT arguments or pipe text on stdin "
            '(gencli embed "some text", or cat notes.txt | gencli embed --lines)'
        )
    return inputs


def run(
    texts: tuple[str, ...],
    model: str | None,
    lines: bool,
    dimensions: int | None,
    models_path: str | None,
    verbose: bool,
) -> None:
    from gencli.config.registry import Registry
    from gencli.engine.embeddings import execute_embed, prepare_embed
    from gencli.transports.cli import HttpxTransport

    inputs = read_inputs(texts, lines)
    registry = Registry.load(models_path)
    plan = prepare_embed(registry, model, inputs, dimensions)
    transport = HttpxTransport(timeout=plan.entry.timeout, tls=not plan.call.base_url.startswith("http://"))
    try:
        result = execute_embed(plan, transport)
    finally:
        transport.close()
    sys.stdout.buffer.write(orjson.dumps(result.embeddings) + b"\n")
    sys.stdout.flush()
    if verbose:
        dims = len(result.embeddings[0]) if result.embeddings else 0
        tokens = f", {result.prompt_tokens} tokens" if result.prompt_tokens is not None else ""
        sys.stderr.write(
            f"{result.model}: {len(result.embeddings)} vectors of {dims} dimensions{tokens}, "
            f"{result.total_duration / 1e6:.0f} ms\n"
        )
