"""What a caller asks for, independent of CLI or HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gencli.core.events import ToolCall

# a response format: "json", or a JSON schema (an object)
Format = str | dict[str, Any]
# a tool choice: a word ("auto", "none", "required") or an object naming a function (the
# request's wire shape; the engine reduces it to None | "auto" | "none" | "required" | {"name": tool})
ToolChoice = str | dict[str, Any]


@dataclass(slots=True)
class Image:
    """An image ready for an upstream: its MIME type (sniffed from the bytes) and base64 data."""

    mime: str
    data: str  # standard base64, no data: prefix

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.data}"


@dataclass(slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    images: list[Image] = field(default_factory=list)
    # assistant turns that called tools: the calls (gencli.core.events.ToolCall: id, name, arguments dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    # role "tool": the result of a call, naming the tool and/or the call's id
    tool_name: str | None = None
    tool_call_id: str | None = None


@dataclass(slots=True)
class GenerateRequest:
    """One generation. Either ``prompt`` (with optional ``context``) or ``messages``.

    Images come raw (base64, data URLs, http(s) URLs, or ``bytes``) and the engine checks
    them (the model's vision capability, format, size, a server's limits), decodes them and
    downloads the URLs, turning each into an :class:`Image` on its message: ``images`` go
    to the last message (the prompt), ``message_images`` to the message each names (a chat
    route's messages; the same objects as in ``messages``), in the order given.
    """

    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    images: list[Any] = field(default_factory=list)
    message_images: list[tuple[Message, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    format: Format | None = None  # None | "json" | dict (JSON schema)
    think: bool | str | None = None
    context: list[int] | None = None
    stream: bool = True
    # function tools, Ollama/OpenAI shape: [{"type": "function", "function": {name, description?, parameters?}}]
    tools: list[Any] | None = None
    # OpenAI's tool_choice forms: "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
    tool_choice: ToolChoice | None = None
    # a JSON-schema ``format``'s name and strictness (OpenAI's response_format.json_schema)
    format_name: str | None = None
    format_strict: bool | None = None
    # text completion instead of chat: ``raw`` sends ``prompt`` as it is (no system, context or
    # chat template); ``suffix`` asks for the text between ``prompt`` and it (fill-in-the-middle,
    # models with the 'insert' capability); ``template``: Ollama's prompt template (see engine)
    suffix: str | None = None
    raw: bool = False
    template: str | None = None
    # log probabilities of the answer's tokens, and how many alternatives per token (0-20)
    logprobs: bool = False
    top_logprobs: int = 0
    # seconds a local model stays loaded after this run (None: the process's choice; <0: forever)
    keep_alive: float | None = None
