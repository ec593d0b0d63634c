"""gencli generate: read the prompt, build a request, render the events, keep the conversation."""

from __future__ import annotations

import sys

from gencli.cli.pipes import read_stdin, stdin_piped
from gencli.errors import UsageError


def build_prompt(prompt: str | None) -> str:
    if prompt == "-":
        return read_stdin()
    if stdin_piped():
        stdin = read_stdin()
        if prompt and stdin:
            return f"{prompt}\n\n{stdin}"
        return prompt or stdin
    if not prompt:
        raise UsageError(
            'no prompt: give one as an argument or pipe it on stdin (gencli generate "Why is the sky blue?")'
        )
    return prompt


def run(
    prompt: str | None,
    model: str | None,
    system: str | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    num_predict: int | None,
    stop: list[str] | None,
    seed: int | None,
    images: list[str] | None,
    fmt: str | None,
    think: bool | None,
    hide_reasoning: bool,
    no_stream: bool,
    as_json: bool,
    extract: bool,
    extract_last: bool,
    verbose: bool,
    context_file: str | None,
    cont: bool,
    conversation: str | None,
    models_path: str | None,
    timeout: float | None = None,
    retries: int | None = None,
) -> None:
    from gencli.cli.turn import Runner, Thread, make_renderer, read_format, read_images, sampling_options
    from gencli.request import GenerateRequest

    if as_json and (extract or extract_last):
        raise UsageError("--json prints the whole response; it cannot be combined with -x/--extract")
    text = build_prompt(prompt)
    thread = Thread.open(context_file, cont, conversation)
    req = GenerateRequest(
        model=model or "",
        prompt=text,
        system=system,
        images=read_images(images),
        options=sampling_options(temperature, top_p, top_k, num_predict, seed, stop),
        format=read_format(fmt),
        think=think,
        context=thread.context,
        stream=not no_stream,
    )
    runner = Runner(models_path, timeout, retries)
    plan = runner.prepare(req)
    renderer = make_renderer(plan.entry.name, as_json, hide_reasoning, not no_stream, extract, extract_last)
    try:
        done = runner.run(plan, renderer)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        runner.close()
    if done is not None:
        thread.keep(plan.entry.name, done.context)
        if verbose:
            from gencli.cli.render import print_stats

            print_stats(done)
