"""The fold: one attempt's adapter events in, the events callers see out (text and reasoning
deltas with ``<think>`` split out, tool calls, log probabilities), then the final
:class:`~gencli.core.events.Done` with its usage, finish reason, timings and ``context``.
Pure: no I/O; both engine loops (:mod:`gencli.engine.loop`) feed it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gencli.core import context as ctx
from gencli.core.errors import UpstreamError
from gencli.core.events import (
    Done,
    Event,
    Finish,
    Loaded,
    Logprobs,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    Usage,
)
from gencli.core.request import Message
from gencli.core.think import ThinkSplitter, split_complete

if TYPE_CHECKING:
    from gencli.engine.plan import Candidate, Plan

# Characters of answer (text and reasoning) one generation may gather: far above any model's
# output, and below what the upstream body cap (128 MB) would let an upstream make a process
# hold (the pieces, then the joined answer, up to 4 bytes a character).
MAX_ANSWER = 32 * 1024 * 1024


class AnswerTooLong(UpstreamError):
    """The upstream's answer passed MAX_ANSWER characters."""


class Run:
    """Folds adapter events into engine events and the final Done (timings, context)."""

    __slots__ = (
        "plan",
        "splitter",
        "text",
        "reasoning",
        "first",
        "sent",
        "usage",
        "finish",
        "stream",
        "tool_calls",
        "stop_sequence",
        "logprobs",
        "hide_reasoning",
        "size",
        "served",
        "over",
    )

    def __init__(self, plan: Plan, served: Candidate | None = None) -> None:
        self.plan = plan
        self.served = served.entry if served is not None else plan.entry
        self.stream = plan.call.stream
        self.splitter = ThinkSplitter(implicit_open=self.served.reasoning_tags)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.first = 0
        self.sent = 0
        self.usage = Usage()
        self.finish = "stop"
        self.tool_calls: list[ToolCall] = []
        self.stop_sequence: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if plan.call.logprobs else None
        self.hide_reasoning = plan.call.think is False  # an upstream that reasons anyway: dropped here
        self.size = 0  # characters of text and reasoning gathered (at most MAX_ANSWER)
        self.over: UpstreamError | None = None  # the answer cap was reached: raised on the next call

    def request_sent(self) -> None:
        self.sent = time.perf_counter_ns()

    def feed(self, events: list[Event]) -> list[Event]:
        """The engine events of ``events``. When the answer cap is reached, the events before
        it are returned and the cap's error is raised by the next ``feed`` or ``done``, so the
        answer up to the cap is kept (streamed, or in the error's reply)."""
        if self.over is not None:
            raise self.over
        out: list[Event] = []
        try:
            self._fold(events, out)
        except AnswerTooLong as exc:
            self.over = exc
        return out

    def _fold(self, events: list[Event], out: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, TextDelta):
                if not ev.text:
                    continue
                if self.stream:
                    r, x = self.splitter.feed(ev.text)
                else:
                    r, x = split_complete(ev.text)
                self._emit(r, x, out)
            elif isinstance(ev, ReasoningDelta):
                if ev.text:
                    self._emit(ev.text, "", out)
            elif isinstance(ev, Usage):
                if ev.prompt_tokens is not None:
                    self.usage.prompt_tokens = ev.prompt_tokens
                if ev.completion_tokens is not None:
                    self.usage.completion_tokens = ev.completion_tokens
                if ev.reasoning_tokens is not None:
                    self.usage.reasoning_tokens = ev.reasoning_tokens
            elif isinstance(ev, Finish):
                self.finish = ev.reason
                self.stop_sequence = ev.stop_sequence
            elif isinstance(ev, ToolCall):
                if not self.first:
                    self.first = time.perf_counter_ns()
                self.tool_calls.append(ev)
                out.append(ev)
            elif isinstance(ev, Logprobs):
                if self.logprobs is not None and ev.tokens:
                    self.logprobs.extend(ev.tokens)
                    out.append(ev)
            elif isinstance(ev, Loaded):
                self.sent = time.perf_counter_ns()

    def _emit(self, r: str, x: str, out: list[Event]) -> None:
        if self.hide_reasoning:
            r = ""
        if not self.first and (r or x):
            self.first = time.perf_counter_ns()
        self.size += len(r) + len(x)
        if self.size > MAX_ANSWER:
            raise AnswerTooLong(
                f"{self.served.name}: the upstream sent an answer longer than {MAX_ANSWER // (1024 * 1024)} M "
                "characters; it was stopped there"
            )
        if r:
            self.reasoning.append(r)
            out.append(ReasoningDelta(r))
        if x:
            self.text.append(x)
            out.append(TextDelta(x))

    def done(self) -> list[Event]:
        if self.over is not None:
            raise self.over
        out: list[Event] = []
        r, x = self.splitter.close()
        self._emit(r, x, out)
        end = time.perf_counter_ns()
        started = self.plan.started
        sent = self.sent or started
        first = self.first or end
        text = "".join(self.text)
        context: list[int] = []
        if self.plan.want_context:
            context = ctx.encode(self.plan.history + [Message("assistant", text)])
        finish = self.finish
        if self.tool_calls and finish == "stop":
            finish = "tool_calls"  # Gemini says STOP; OpenAI-compatible servers vary
        out.append(
            Done(
                model=self.plan.entry.name,
                done_reason=finish,
                text=text,
                reasoning="".join(self.reasoning),
                prompt_eval_count=self.usage.prompt_tokens,
                eval_count=self.usage.completion_tokens,
                reasoning_count=self.usage.reasoning_tokens,
                total_duration=end - started,
                load_duration=sent - started,
                prompt_eval_duration=first - sent,
                eval_duration=end - first,
                context=context,
                tool_calls=self.tool_calls,
                stop_sequence=self.stop_sequence,
                logprobs=self.logprobs,
                served=self.served.label,
            )
        )
        return out
