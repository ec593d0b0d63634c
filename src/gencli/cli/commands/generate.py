"""gencli generate: read the prompt, build a request, render the events, keep the conversation."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from gencli.cli.pipes import read_stdin, stdin_piped
from gencli.core.errors import UsageError

if TYPE_CHECKING:
    from gencli.cli.turn import TurnOptions


def build_prompt(prompt: str | None, read_piped: bool = True, required: bool = True) -> str:
    """The prompt: the argument, piped stdin (unless ``-f -`` takes it), or both."""
    if prompt == "-":
        if not read_piped:
            raise UsageError("the prompt '-' and -f - both read stdin; use one of them")
        return read_stdin()
    if read_piped and stdin_piped():
        stdin = read_stdin()
        if prompt and stdin:
            return f"{prompt}\n\n{stdin}"
        return prompt or stdin
    if not prompt and required:
        raise UsageError(
            'no prompt: give one as an argument or pipe it on stdin (gencli generate "Why is the sky blue?"), '
            "or write it in your editor with -e"
        )
    return prompt or ""


def run(
    prompt: str | None,
    images: list[str] | None,
    fmt: str | None,
    hide_reasoning: bool,
    no_stream: bool,
    as_json: bool,
    extract: bool,
    extract_last: bool,
    edit: bool,
    turn: TurnOptions,
) -> None:
    from gencli.cli.turn import Composer, after_turn, make_renderer, read_format, read_images
    from gencli.core.request import GenerateRequest

    if as_json and (extract or extract_last):
        raise UsageError("--json prints the whole response; it cannot be combined with -x/--extract")
    composer = Composer(turn)
    stdin_fragment = "-" in (turn.fragments or ())
    if edit:
        from gencli.cli.editor import edit_prompt

        text = edit_prompt(build_prompt(prompt, not stdin_fragment, required=False))
    else:
        text = build_prompt(prompt, not stdin_fragment, required=not (turn.fragments or composer.takes_empty_input))
    if turn.fragments:
        from gencli.cli import fragments

        text = fragments.join(fragments.read_all(turn.fragments, turn.allow_private_fragments), text)
    text = composer.prompt(text)
    thread = turn.thread()
    req = GenerateRequest(
        model=composer.model() or "",
        prompt=text,
        system=composer.system(),
        images=read_images(images),
        options=composer.options(),
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
        try:
            thread.keep(plan.entry.name, done.context)
        finally:
            if turn.verbose:
                from gencli.cli.render import print_stats

                print_stats(done)
            after_turn(turn, plan, req, done, thread, "generate")
