"""Renderers for piped output (plain text), --json and -x/--extract. The Rich terminal
renderer lives in render_rich so that piped runs never import Rich.

A renderer takes the engine's events one at a time (``event`` returns the Done event when
it sees one), then exactly one of ``finish``, ``interrupted`` (Ctrl-C) or ``failed``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Protocol

from gencli.core.events import Done, ReasoningDelta, TextDelta

if TYPE_CHECKING:
    from gencli.core.events import Event


class Renderer(Protocol):
    """What a turn renders its events with (this module's renderers, render_rich.RichRenderer)."""

    def event(self, ev: Event) -> Done | None: ...

    def finish(self) -> None: ...

    def interrupted(self) -> None: ...

    def failed(self) -> None: ...


class PlainRenderer:
    """Answer on stdout as plain text, flushed per delta; reasoning on stderr."""

    def __init__(self, hide_reasoning: bool):
        self.hide_reasoning = hide_reasoning
        self.out = sys.stdout
        self.err = sys.stderr
        self.in_reasoning = False
        self.last = ""

    def event(self, ev: Event) -> Done | None:
        if type(ev) is TextDelta:
            if self.in_reasoning:
                self._end_reasoning()
            self.out.write(ev.text)
            self.out.flush()
            self.last = ev.text
        elif type(ev) is ReasoningDelta:
            if not self.hide_reasoning:
                self.in_reasoning = True
                self.err.write(ev.text)
                self.err.flush()
        elif type(ev) is Done:
            return ev
        return None

    def _end_reasoning(self) -> None:
        self.in_reasoning = False
        self.err.write("\n\n")
        self.err.flush()

    def finish(self) -> None:
        if self.in_reasoning:
            self._end_reasoning()
        if self.last and not self.last.endswith("\n"):
            self.out.write("\n")
        self.out.flush()

    def interrupted(self) -> None:
        self.finish()

    def failed(self) -> None:
        self.finish()


class ExtractRenderer(PlainRenderer):
    """-x/--extract: the answer is collected and, at the end, only its first (``last``: its
    last) fenced code block is printed; an answer without one is printed whole. Reasoning
    goes to stderr as with PlainRenderer. After a failure or Ctrl-C the same rule applies
    to what arrived (the exit code tells scripts it is partial)."""

    def __init__(self, hide_reasoning: bool, last: bool):
        super().__init__(hide_reasoning)
        self.take_last = last
        self.parts: list[str] = []

    def event(self, ev: Event) -> Done | None:
        if type(ev) is TextDelta:
            if self.in_reasoning:
                self._end_reasoning()
            self.parts.append(ev.text)
            return None
        return super().event(ev)

    def finish(self) -> None:
        from gencli.cli.fences import extract

        if self.in_reasoning:
            self._end_reasoning()
        answer = "".join(self.parts)
        self.parts = []
        code = extract(answer, self.take_last) if answer.strip() else ""
        if code:
            self.out.write(code if code.endswith("\n") else code + "\n")
        self.out.flush()


class JsonRenderer:
    """Exactly the objects /api/generate returns: NDJSON lines when streaming, else one object."""

    def __init__(self, model: str, stream: bool):
        from gencli.core import replies

        self.replies = replies
        self.model = model
        self.stream = stream
        self.out = sys.stdout

    def _line(self, obj: dict[str, Any]) -> None:
        import json

        self.out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def event(self, ev: Event) -> Done | None:
        if type(ev) is Done:
            self._line(self.replies.generate_final(ev, self.stream))
            return ev
        if self.stream:
            if type(ev) is TextDelta:
                self._line(self.replies.generate_chunk(self.model, ev.text))
            elif type(ev) is ReasoningDelta:
                self._line(self.replies.generate_chunk(self.model, "", ev.text))
        return None

    def finish(self) -> None:
        pass

    def interrupted(self) -> None:
        pass

    def failed(self) -> None:
        pass


def _dur(ns: int) -> str:
    s = ns / 1e9
    if s >= 1:
        return f"{s:.6g}s"
    return f"{ns / 1e6:.6g}ms"


def print_stats(done: Done) -> None:
    """Ollama-style --verbose statistics on stderr."""
    lines = [f"total duration:       {_dur(done.total_duration)}", f"load duration:        {_dur(done.load_duration)}"]
    if done.prompt_eval_count is not None:
        lines.append(f"prompt eval count:    {done.prompt_eval_count} token(s)")
    lines.append(f"prompt eval duration: {_dur(done.prompt_eval_duration)}")
    if done.prompt_eval_count and done.prompt_eval_duration:
        lines.append(f"prompt eval rate:     {done.prompt_eval_count / (done.prompt_eval_duration / 1e9):.2f} tokens/s")
    if done.eval_count is not None:
        lines.append(f"eval count:           {done.eval_count} token(s)")
    lines.append(f"eval duration:        {_dur(done.eval_duration)}")
    if done.eval_count and done.eval_duration:
        lines.append(f"eval rate:            {done.eval_count / (done.eval_duration / 1e9):.2f} tokens/s")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def usage_line(done: Done, cost: float | None) -> str:
    """-u/--usage: the tokens the upstream reported (and the cost when models.json prices the model)."""
    parts = []
    if done.prompt_eval_count is not None:
        parts.append(f"{done.prompt_eval_count} in")
    if done.eval_count is not None:
        parts.append(f"{done.eval_count} out")
    if done.reasoning_count:  # OpenAI reports 0 for models that do not reason: not shown
        parts.append(f"{done.reasoning_count} reasoning")
    text = "usage: " + (", ".join(parts) + " tokens" if parts else "the upstream reported no token counts")
    if cost is not None:
        text += f", ${cost:.6f}"
    return text


def print_usage(done: Done, cost: float | None) -> None:
    sys.stderr.write(usage_line(done, cost) + "\n")
    sys.stderr.flush()
