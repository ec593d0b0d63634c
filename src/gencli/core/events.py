"""Events an engine run yields. The CLI and the server only render these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCall:
    """The model asks to call a tool. ``arguments`` is always a dict (parsed from the upstream's JSON)."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TokenLogprob:
    """One token's log probability: ``bytes`` its UTF-8 bytes when the upstream gives them,
    ``top`` the most likely alternatives at its position (when asked for)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass(slots=True)
class Logprobs:
    """Log probabilities of the tokens of the text that came before (in order)."""

    tokens: list[TokenLogprob]


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them (adapters emit this; the engine folds it into Done)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None  # of completion_tokens, those spent reasoning (when reported)


@dataclass(slots=True)
class Loaded:
    """An in-process model is loaded and about to read the prompt: the time before this
    is Ollama's ``load_duration`` (HTTP adapters never emit it: sending is their start)."""


@dataclass(slots=True)
class Finish:
    """The upstream's finish reason, normalised to stop | length | tool_calls | content_filter;
    ``stop_sequence`` names the caller's stop sequence that ended the answer, when the
    upstream says which (Anthropic and the local model do)."""

    reason: str
    stop_sequence: str | None = None


@dataclass(slots=True)
class Done:
    """The end of a run: what Ollama's final line carries.

    Durations are integer nanoseconds. ``context`` encodes the conversation so far.
    """

    model: str
    done_reason: str = "stop"
    text: str = ""
    reasoning: str = ""
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    reasoning_count: int | None = None  # of eval_count, the reasoning tokens, when the upstream says
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    context: list[int] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_sequence: str | None = None  # the stop sequence that ended the answer, when known
    logprobs: list[TokenLogprob] | None = None  # when the request asked for them
    served: str = ""  # what answered: the model (a fallback's name) and deployment ("name/deployment")

    def stats(self) -> dict[str, int]:
        out = {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
        }
        if self.prompt_eval_count is not None:
            out["prompt_eval_count"] = self.prompt_eval_count
        out["prompt_eval_duration"] = self.prompt_eval_duration
        if self.eval_count is not None:
            out["eval_count"] = self.eval_count
        out["eval_duration"] = self.eval_duration
        return out


Event = TextDelta | ReasoningDelta | ToolCall | Logprobs | Usage | Finish | Loaded | Done
