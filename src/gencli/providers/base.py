"""The contracts between the engine, the adapters and the transports.

* :class:`Call`: everything an adapter needs for one generation, validated and
  resolved by :func:`gencli.engine.prepare` (immutable).
* :class:`HttpRequest`: what an HTTP adapter asks a transport to send.
* Adapters come in two kinds: :class:`HttpAdapter` (sans-I/O: ``build`` a request,
  ``parse_*`` the answer's bytes) and :class:`InProcessAdapter` (``run`` the model in
  this process: the local GGUF models). :data:`Adapter` is either.
* Transports have one method each, as httpx's ``BaseTransport`` has:
  :class:`SyncTransport` / :class:`AsyncTransport` ``open`` an HttpRequest and yield a
  response; image URLs are fetched by an :class:`ImageFetcher` / :class:`AsyncImageFetcher`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from gencli.core.errors import GencliError
from gencli.core.events import Event
from gencli.core.request import Format, Message, ToolChoice
from gencli.core.retry import DEFAULT_RETRIES
from gencli.core.sse import EventTooLarge, SSEDecoder

if TYPE_CHECKING:
    from gencli.core.images import ImageQuota


@dataclass(slots=True)
class HttpRequest:
    """A description of one HTTP request; transports send it."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)  # holds the key
    body: bytes | None = None
    stream: bool = False


class LocalModel(NamedTuple):
    """Where a local model's GGUF file is and how it is loaded: from its models.json entry
    and the process settings, never from a request (one process, one way to load a file)."""

    path: str | None
    package: str | None = None  # 'path' is inside this installed Python package
    num_ctx: int | None = None  # None: gencli's default context (ProviderSpec.context_length)
    num_thread: int | None = None  # None: llama.cpp's choice
    num_batch: int | None = None
    num_gpu: int | None = None  # layers offloaded to a GPU
    queue_limit: int = 16  # generations that may wait for the model (Settings.local_queue)


@dataclass(frozen=True, slots=True)
class Call:
    """Everything an adapter needs to run one generation: validated and resolved."""

    model: str  # upstream model id
    name: str  # the registry name the user asked for
    base_url: str
    api_key: str | None = field(repr=False)
    key_env: str | None  # name of the variable the key came from (for error messages)
    headers: Mapping[str, str]
    messages: list[Message]  # the engine adds the images downloaded from URLs to them before the run
    options: Mapping[str, Any]  # per-request options the provider takes (gencli.core.options)
    format: Format | None = None  # None | "json" | a JSON schema (dict)
    think: bool | str | None = None
    stream: bool = True
    tools: list[dict[str, Any]] | None = None  # validated function tools (gencli.core.tools.validate_tools)
    # with tools: None (the upstream's default, auto) | "required" | {"name": tool}
    # (gencli.core.tools.validate_tool_choice)
    tool_choice: ToolChoice | None = None
    capabilities: tuple[str, ...] = ("completion",)
    timeout: float | None = None  # upstream read timeout in seconds; None: the transport's default
    retries: int = DEFAULT_RETRIES  # retries of a failure before any output (gencli.core.retry)
    local: LocalModel | None = None  # the local provider's file and load settings
    # a JSON-schema format's name and strictness, as the caller gave them (OpenAI's json_schema)
    format_name: str | None = None
    format_strict: bool | None = None
    # text completion: ``prompt`` is sent as it is (no chat template; ``messages`` is empty);
    # with ``suffix``, fill-in-the-middle (the text between prompt and suffix)
    prompt: str | None = None
    suffix: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with logprobs
    keep_alive: float | None = None  # seconds a local model stays loaded after the run (<0: forever)
    # every configured key (Settings.secrets), scrubbed from upstream messages with api_key
    secrets: tuple[str, ...] = field(default=(), repr=False)


# -- adapters ---------------------------------------------------------------------------------


class StreamParser(Protocol):
    """Turns a streamed response body into events, chunk by chunk (any chunk boundaries)."""

    def feed(self, data: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class HttpAdapter(Protocol):
    """A provider reached over HTTP. Pure: no sockets, no clocks, no environment."""

    in_process: Literal[False]  # the tag the engine dispatches on (an attribute read, not an isinstance)
    provider: str
    label: str
    image_types: tuple[str, ...]  # MIME types the upstream accepts

    def build(self, call: Call) -> HttpRequest: ...

    def stream_parser(self, call: Call) -> StreamParser: ...

    def parse_response(self, call: Call, body: bytes) -> list[Event]: ...

    def parse_error(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> GencliError: ...


class LocalRun(Protocol):
    """A generation running in this process: iterate it for lists of events; ``close()``
    (from any thread) stops it before its next step and frees the model; ``await
    ready()`` waits on the event loop until the model is free (the server)."""

    def __iter__(self) -> Iterator[list[Event]]: ...

    def __next__(self) -> list[Event]: ...

    def close(self) -> None: ...

    def cancel(self) -> None:
        """Like ``close()``, but never waits (an event loop may call it)."""
        ...

    async def ready(self) -> None: ...


class InProcessAdapter(Protocol):
    """A provider that runs the model itself (the local GGUF models)."""

    in_process: Literal[True]
    provider: str
    label: str
    image_types: tuple[str, ...]

    def run(self, call: Call) -> LocalRun: ...

    def unload(self, local: LocalModel, name: str) -> bool:
        """Free the model now (after what runs or waits on it); True if it was loaded."""
        ...


Adapter = HttpAdapter | InProcessAdapter


@runtime_checkable
class HttpEmbedder(Protocol):
    """An HTTP adapter that also embeds (OpenAI's /embeddings, Gemini's batchEmbedContents)."""

    in_process: Literal[False]
    embed_batch: int  # inputs per request

    def build_embed(self, call: Call, inputs: list[str]) -> HttpRequest: ...

    def parse_embed(self, call: Call, body: bytes) -> tuple[list[list[float]], int | None]: ...

    def parse_error(self, call: Call, status: int, headers: Mapping[str, str], body: bytes) -> GencliError: ...


@runtime_checkable
class InProcessEmbedder(Protocol):
    """An in-process adapter that embeds: (vectors, prompt tokens)."""

    in_process: Literal[True]
    embed_batch: int

    def embed(self, call: Call, inputs: list[str]) -> tuple[list[list[float]], int | None]: ...


# -- transports -------------------------------------------------------------------------------


class SyncResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def read(self) -> bytes: ...

    def iter_bytes(self) -> Iterator[bytes]: ...


class AsyncResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...


class SyncTransport(Protocol):
    """Sends an HttpRequest (the CLI: httpx). Failures are typed errors (UpstreamTimeout,
    UpstreamUnreachable); ``call.timeout`` is the read timeout."""

    def open(self, request: HttpRequest, call: Call) -> AbstractContextManager[SyncResponse]: ...


class AsyncTransport(Protocol):
    """Sends an HttpRequest on the event loop (the server: gencli.transports.server)."""

    def open(self, request: HttpRequest, call: Call) -> AbstractAsyncContextManager[AsyncResponse]: ...


class ImageFetcher(Protocol):
    """Downloads an image URL named in a request (bytes; ImageError when it cannot)."""

    def fetch_image(self, url: str) -> bytes: ...


class AsyncImageFetcher(Protocol):
    """Downloads an image URL on the event loop (the server), its bytes counted by the
    request's ``quota`` as they arrive (and charged to the process's image budget)."""

    async def fetch_image(self, url: str, quota: ImageQuota | None = None) -> bytes: ...


# -- a base for SSE stream parsers -------------------------------------------------------------

A = TypeVar("A")


class SSEParser(Generic[A]):
    """Base of the SSE stream parsers (``A``: the adapter class): subclasses implement ``_event(payload, out)`` and
    may override ``_end(out)`` (checks at the end of the stream).

    An error raised part-way through a read carries the events parsed before it in the
    same read as ``exc.partial``, so the engine keeps the partial answer."""

    __slots__ = ("adapter", "call", "sse")

    def __init__(self, adapter: A, call: Call):
        self.adapter = adapter
        self.call = call
        self.sse: SSEDecoder = SSEDecoder()

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        try:
            try:
                payloads = self.sse.feed(data)
            except EventTooLarge as exc:  # the events completed before the one too large are kept
                for payload in exc.payloads:
                    self._event(payload, out)
                raise
            for payload in payloads:
                self._event(payload, out)
        except GencliError as exc:
            exc.partial = out
            raise
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        try:
            for payload in self.sse.close():
                self._event(payload, out)
            self._end(out)
        except GencliError as exc:
            exc.partial = out
            raise
        return out

    def _event(self, payload: bytes, out: list[Event]) -> None:
        raise NotImplementedError

    def _end(self, out: list[Event]) -> None:
        pass
