"""gencli generate: read the prompt, build a request, render the events, keep the conversation."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from gencli.cli.pipes import read_stdin, stdin_piped
from gencli.errors import UsageError

if TYPE_CHECKING:
    from gencli.cli.turn import TurnOptions


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
    images: list[str] | None,
    fmt: str | None,
    hide_reasoning: bool,
    no_stream: bool,
    as_json: bool,
    extract: bool,
    extract_last: bool,
    turn: TurnOptions,
) -> None:
    from gencli.cli.turn import make_renderer, read_format, read_images
    from gencli.request import GenerateRequest

    if as_json and (extract or extract_last):
        raise UsageError("--json prints the whole response; it cannot be combined with -x/--extract")
    text = build_prompt(prompt)
    thread = turn.thread()
    req = GenerateRequest(
        model=turn.model or "",
        prompt=text,
        system=turn.system,
        images=read_images(images),
        options=turn.sampling(),
        format=read_format(fmt),
        think=turn.think,
        context=thread.context,
        stream=not no_stream,
    )
    runner = turn.runner()
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
        if turn.verbose:
            from gencli.cli.render import print_stats

            print_stats(done)
