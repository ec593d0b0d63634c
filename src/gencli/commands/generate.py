"""gencli generate: read the prompt, build a request, render the events."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gencli.errors import GencliError, UsageError


def read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin is not UTF-8 text (invalid byte at offset {exc.start}); "
                         f"convert it first, e.g. with iconv -t UTF-8") from None


def build_prompt(prompt: str | None) -> str:
    piped = not sys.stdin.isatty() if sys.stdin else False
    if prompt == "-":
        return read_stdin()
    if piped:
        stdin = read_stdin()
        if prompt and stdin:
            return f"{prompt}\n\n{stdin}"
        return prompt or stdin
    if not prompt:
        raise UsageError("no prompt: give one as an argument or pipe it on stdin "
                         "(gencli generate \"Why is the sky blue?\")")
    return prompt


def read_images(values: tuple[str, ...]) -> list:
    from gencli.images import is_url

    out: list = []
    for value in values:
        if is_url(value):
            out.append(value)
            continue
        try:
            out.append(Path(value).read_bytes())
        except FileNotFoundError:
            raise UsageError(f"image {value}: no such file") from None
        except OSError as exc:
            raise UsageError(f"image {value}: cannot read it ({exc.strerror})") from None
    return out


def read_format(fmt: str | None):
    if fmt is None or fmt == "json":
        return fmt
    try:
        schema = json.loads(Path(fmt).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--format: '{fmt}' is neither 'json' nor a schema file that exists") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--format: {fmt} is not a JSON schema file ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--format: {fmt} must hold a JSON object (a JSON schema)")
    return schema


def read_context(path: str | None) -> list[int] | None:
    if not path:
        return None
    p = Path(path)
    if not p.parent.is_dir():  # refuse before spending a call whose context could not be saved
        raise UsageError(f"--context {path}: the directory {p.parent} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None  # a new conversation
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--context {path}: cannot read it ({exc})") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"--context {path}: not a gencli context file (invalid JSON)") from None
    if isinstance(data, dict):
        data = data.get("context")
    if not isinstance(data, list):
        raise UsageError(f"--context {path}: not a gencli context file (expected a JSON array)")
    return data


def write_context(path: str, context: list[int]) -> None:
    tmp = Path(path + ".tmp")
    try:
        tmp.write_text(json.dumps(context, separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise GencliError(f"--context {path}: cannot save the conversation ({exc.strerror or exc})") from None


def run(**kw) -> None:
    try:
        _run(**kw)
    except BrokenPipeError:
        # stdout was closed (``| head``): stop quietly. Handled here because click turns an
        # EPIPE escaping a command into exit 1.
        from gencli.cli import _quiet_pipe

        _quiet_pipe()
        sys.exit(0)


def _run(prompt, model, system, temperature, top_p, top_k, num_predict, stop, seed, images, fmt, think,
         hide_reasoning, no_stream, as_json, verbose, context_file, models_path, timeout=None,
         retries=None) -> None:
    from gencli.request import GenerateRequest

    text = build_prompt(prompt)
    options = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                                 ("num_predict", num_predict), ("seed", seed)) if v is not None}
    if stop:
        options["stop"] = list(stop)
    req = GenerateRequest(
        model=model or "",
        prompt=text,
        system=system,
        images=read_images(images),
        options=options,
        format=read_format(fmt),
        think=think,
        context=read_context(context_file),
        stream=not no_stream,
    )

    from gencli import engine
    from gencli.registry import Registry

    registry = Registry.load(models_path)
    from gencli.retry import settings

    plan = engine.prepare(req, registry)
    if timeout is not None:  # the flags win over models.json
        plan.call.extra["timeout"] = timeout
    if retries is not None:
        plan.call.extra["retries"] = retries
    renderer = _renderer(plan.entry.name, as_json, hide_reasoning, not no_stream)
    transport = None  # a local model runs in-process: no HTTP client (importing httpx costs ~0.3 s)
    if not getattr(plan.adapter, "in_process", False):
        from gencli.transport_httpx import HttpxTransport

        transport = HttpxTransport(timeout=settings(plan.call)[0], tls=not plan.call.base_url.startswith("http://"))
    done = None
    try:
        for event in engine.execute(plan, transport):
            done = renderer.event(event) or done
    except KeyboardInterrupt:
        renderer.interrupted()
        sys.exit(130)
    except GencliError:
        renderer.failed()
        raise
    finally:
        if transport is not None:
            transport.close()
    renderer.finish()
    if done is not None:
        if context_file:
            write_context(context_file, done.context)
        if verbose:
            from gencli.render import print_stats

            print_stats(done)


def _renderer(model: str, as_json: bool, hide_reasoning: bool, stream: bool):
    from gencli import render

    if as_json:
        return render.JsonRenderer(model, stream)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        from gencli.render_rich import RichRenderer

        return RichRenderer(hide_reasoning)
    return render.PlainRenderer(hide_reasoning)
