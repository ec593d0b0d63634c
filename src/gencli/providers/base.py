"""The adapter contract shared by every HTTP provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gencli.errors import GencliError
from gencli.events import Event
from gencli.request import Message


@dataclass(slots=True)
class HttpRequest:
    """A description of one HTTP request; transports send it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    stream: bool = False


@dataclass(slots=True)
class Call:
    """Everything an adapter needs to build a request: already validated and resolved."""

    model: str  # upstream model id
    name: str  # the registry name the user asked for
    base_url: str
    api_key: str | None
    key_env: str | None  # name of the variable the key came from (for error messages)
    headers: dict[str, str]
    messages: list[Message]
    options: dict[str, Any]
    format: Any = None
    think: bool | str | None = None
    stream: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None  # validated function tools (gencli.tools.validate_tools)
    # with tools: None (the upstream's default, auto) | "required" | {"name": tool} (gencli.tools.validate_tool_choice)
    tool_choice: Any = None


class SSEParser:
    """Base of the SSE stream parsers: subclasses implement ``_event(payload, out)`` and
    may override ``_end(out)`` (checks at the end of the stream).

    An error raised part-way through a read carries the events parsed before it in the
    same read as ``exc.partial``, so the engine keeps the partial answer."""

    __slots__ = ("adapter", "call", "sse")

    def __init__(self, adapter, call: Call):
        from gencli.sse import SSEDecoder

        self.adapter = adapter
        self.call = call
        self.sse = SSEDecoder()

    def feed(self, data: bytes) -> list[Event]:
        out: list = []
        try:
            for payload in self.sse.feed(data):
                self._event(payload, out)
        except GencliError as exc:
            exc.partial = out
            raise
        return out

    def close(self) -> list[Event]:
        out: list = []
        try:
            for payload in self.sse.close():
                self._event(payload, out)
            self._end(out)
        except GencliError as exc:
            exc.partial = out
            raise
        return out

    def _event(self, payload: bytes, out: list) -> None:
        raise NotImplementedError

    def _end(self, out: list) -> None:
        pass


class StreamParser(Protocol):
    def feed(self, data: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class Adapter(Protocol):
    provider: str

    def build(self, call: Call) -> HttpRequest: ...

    def stream_parser(self, call: Call) -> StreamParser: ...

    def parse_response(self, call: Call, body: bytes) -> list[Event]: ...

    def parse_error(self, call: Call, status: int, headers: dict[str, str], body: bytes) -> Exception: ...
