"""The local model's runs, in the parent process: llama.cpp itself runs in a runner process
per model file (:mod:`.worker`, driven through :mod:`.process`), so a crash there never takes
gencli down.

* A model file is loaded once by its runner, with its models.json entry's load settings
  (``num_ctx``, ``num_thread``, ``num_batch``, ``num_gpu``:
  :class:`gencli.providers.base.LocalModel`); requests never change them. Loading happens
  while holding the model's gate, so no generation uses a model being replaced.
* :class:`LocalRun` is the blocking iterator the engine drives (directly in the CLI, from
  a worker thread in the server, :mod:`gencli.engine.bridge`). It yields lists of events token
  by token as the runner sends them; ``close()`` (from any thread) tells the runner to
  stop before its next token and hands the model to the next waiter once the runner is
  done. Whoever starts a run closes it (the engine does, in a ``finally``).
* Unloading a model (``keep_alive``) ends its runner process, so its memory goes back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.core.errors import ConfigError
from gencli.core.events import Event, Finish, Loaded, Logprobs, TextDelta, TokenLogprob, Usage
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, LocalModel
from gencli.providers.llama import process
from gencli.providers.llama.files import extra_installed, gguf_path, missing_extra
from gencli.providers.llama.gate import Gate, gate_for
from gencli.providers.llama.gguf import read_gguf

DEFAULT_NUM_CTX = PROVIDERS["local"].context_length


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """How a file is loaded: the same for every request (from the models.json entry)."""

    n_ctx: int
    n_threads: int | None = None
    n_batch: int | None = None
    n_gpu_layers: int | None = None

    @classmethod
    def of(cls, local: LocalModel, path: Path) -> LoadSettings:
        n_ctx = local.num_ctx or DEFAULT_NUM_CTX
        meta = read_gguf(path)["metadata"]
        train_ctx = meta.get(f"{meta.get('general.architecture', '')}.context_length")
        if isinstance(train_ctx, int) and train_ctx > 0:
            n_ctx = min(n_ctx, train_ctx)
        return cls(n_ctx, local.num_thread, local.num_batch, local.num_gpu)

    def astuple(self) -> tuple[int, int | None, int | None, int | None]:
        return (self.n_ctx, self.n_threads, self.n_batch, self.n_gpu_layers)


_LOCK = threading.Lock()  # guards _EXPIRY and _USES
_EXPIRY: dict[str, tuple[threading.Timer, int]] = {}  # path -> (the idle timer, the use it was set after)
_USES: dict[str, int] = {}  # path -> runs started (a timer set before the latest run is stale)


def is_loaded(path: Path) -> bool:
    """Whether a runner holds the model of ``path`` loaded."""
    return process.loaded(path)


def _free(key: str) -> bool:
    """End the runner of the model file ``key`` (call it holding the file's gate)."""
    with _LOCK:
        timer = _EXPIRY.pop(key, None)
    if timer is not None:
        timer[0].cancel()
    return process.stop(Path(key), "gen")


def unload(path: Path, name: str, queue_limit: int) -> bool:
    """Free the model loaded from ``path`` once the generation running on it (and those queued
    before) ends: blocking; True when a model was loaded. Ollama's ``keep_alive: 0``."""
    gate = gate_for(path, name, queue_limit)
    ticket = gate.enter()
    try:
        gate.wait(ticket, threading.Event())
        return _free(str(path))
    finally:
        gate.leave(ticket)


def _expire(key: str, use: int, name: str, queue_limit: int) -> None:
    with _LOCK:
        current = _EXPIRY.get(key)
        if current is None or current[1] != use or _USES.get(key, 0) != use:
            return  # used again since: a later timer decides
    unload(Path(key), name, queue_limit)


def keep_loaded(path: Path, name: str, queue_limit: int, seconds: float | None) -> None:
    """After a run: free the model once it has been idle for ``seconds`` (0: now; None or
    negative: keep it loaded for the life of the process)."""
    if seconds is None or seconds < 0:
        return
    key = str(path)
    with _LOCK:
        use = _USES.get(key, 0)
        old = _EXPIRY.pop(key, None)
        timer = threading.Timer(seconds, _expire, (key, use, name, queue_limit))
        timer.daemon = True
        _EXPIRY[key] = (timer, use)
    if old is not None:
        old[0].cancel()
    timer.start()


def request(op: str, name: str, path: Path, load: LoadSettings, **fields: Any) -> dict[str, Any]:
    """A runner request for the model file ``path`` loaded with ``load``."""
    return {"op": op, "name": name, "path": str(path), "load": list(load.astuple()), **fields}


# -- a generation ----------------------------------------------------------------------------
class LocalRun:
    """One generation: iterate it for lists of events, token by token.

    Safe to ``close()``/``cancel()`` from any thread at any time: the runner stops before its
    next token and the model is handed to the next waiter once the runner is done with this
    run (in a thread of its own, so a caller on the event loop never waits for it). ``await
    run.ready()`` waits for the model on the event loop (the server); otherwise the first
    ``next()`` waits in its thread.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        load: LoadSettings,
        queue_limit: int,
        messages: list[dict[str, str]],
        options: dict[str, Any],
        fmt: Any,
        text: Text | None = None,
        keep_alive: float | None = None,
    ):
        self.name = name
        self.path = path
        self.keep_alive = keep_alive
        self.queue_limit = queue_limit
        text = text or Text()
        self.exchange = process.Exchange(
            path,
            "gen",
            request(
                "gen",
                name,
                path,
                load,
                messages=messages,
                options=options,
                format=fmt,
                text=[text.prompt, text.suffix, text.logprobs, text.top_logprobs],
            ),
        )
        self.cancelled = threading.Event()
        self.generated = 0  # tokens sampled so far
        self.gate: Gate = gate_for(path, name, queue_limit)
        self.ticket = self.gate.enter()  # ServerBusy (503) past the queue bound
        self._started = False
        self._loaded = False  # Loaded went out (once, also when a CPU variant is retried)
        self._step = threading.Lock()  # held while a next() runs
        self._finished = False

    async def ready(self) -> None:
        await self.gate.await_turn(self.ticket)

    def __iter__(self) -> LocalRun:
        return self

    def __next__(self) -> list[Event]:
        with self._step:
            if self._finished:
                raise StopIteration
            try:
                if not self._started:
                    if not self.gate.wait(self.ticket, self.cancelled):
                        self._finished = True
                        raise StopIteration
                    self._started = True
                    with _LOCK:
                        _USES[str(self.path)] = _USES.get(str(self.path), 0) + 1
                    self.exchange.start()
                if self.cancelled.is_set() or not self.exchange.open:
                    raise StopIteration
                return self._events()
            except KeyboardInterrupt:  # Ctrl-C: the CLI is ending, and its runner with it (end of stdin)
                self._finish(wait=False)
                raise
            except BaseException:  # the end, or an error
                self._finish()
                raise

    def _events(self) -> list[Event]:
        """The events of the runner's next message (skipping a repeated ``loaded``)."""
        while True:
            msg = self.exchange.next()
            kind = msg[0]
            if kind == "text":
                self.generated += 1
                return [TextDelta(msg[1])]
            if kind == "logprobs":
                return [Logprobs([_logprob(msg[1])])]
            if kind == "loaded":
                if self._loaded:
                    continue
                self._loaded = True
                return [Loaded()]
            if kind == "done":
                _, n_prompt, n, finish, stop_sequence, tail = msg
                self.generated = n
                last: list[Event] = [TextDelta(tail)] if tail else []
                return [*last, Usage(n_prompt, n), Finish(finish, stop_sequence)]
            raise StopIteration  # "end": cancelled

    def cancel(self) -> None:
        """Stop before the next token, from any thread, without waiting: when the runner was
        stopped early, the model goes to the next waiter once the runner has finished (a thread
        of its own waits for that), so an event loop can call this."""
        self._stop(wait=False)

    def close(self) -> None:
        """Stop before the next token (from any thread); when no ``next()`` is running, wait
        until the runner is done with this run (one token at most) and free the model."""
        self._stop(wait=True)

    def _stop(self, wait: bool) -> None:
        self.cancelled.set()
        self.exchange.cancel()
        if self._step.acquire(blocking=False):
            try:
                self._finish(wait)
            finally:
                self._step.release()

    def _finish(self, wait: bool = True) -> None:
        if self._finished:
            return
        self._finished = True
        if not self._started:
            self.gate.leave(self.ticket)
            return
        if self.exchange.open and not wait:  # the runner finishes the request, then the gate opens
            self.exchange.cancel()
            threading.Thread(target=self._release, daemon=True).start()
        else:
            self.exchange.cancel()
            self._release()

    def _release(self) -> None:
        try:
            self.exchange.drain()
            if self.keep_alive == 0:  # Ollama's keep_alive 0: free the model right after the answer
                _free(str(self.path))
        finally:
            self.gate.leave(self.ticket)
        if self.keep_alive:
            keep_loaded(self.path, self.name, self.queue_limit, self.keep_alive)


def _logprob(item: list[Any]) -> TokenLogprob:
    token, logprob, raw, top = item
    return TokenLogprob(token, logprob, raw, [_logprob(t) for t in top])


@dataclass(frozen=True, slots=True)
class Text:
    """A text completion's prompt (sent without the chat template), its fill-in-the-middle
    suffix, and the log probabilities asked for."""

    prompt: str | None = None
    suffix: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def _located(call: Call) -> tuple[LocalModel, Path]:
    local = call.local
    if local is None:
        raise ConfigError(f"model '{call.name}': not a local model")
    path = gguf_path(call.name, local.path, local.package)
    if not extra_installed():
        raise missing_extra(call.name)
    return local, path


def count_tokens(call: Call) -> int:
    """The prompt's length in the model's own tokens, its chat template applied (blocking: it
    takes its turn at the model like a generation, loading it if need be)."""
    local, path = _located(call)
    gate = gate_for(path, call.name, local.queue_limit)
    ticket = gate.enter()
    try:
        gate.wait(ticket, threading.Event())
        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        exchange = process.Exchange(
            path, "gen", request("count", call.name, path, LoadSettings.of(local, path), messages=messages)
        )
        exchange.start()
        while True:
            msg = exchange.next()
            if msg[0] == "count":
                return int(msg[1])
    finally:
        gate.leave(ticket)


def start(call: Call) -> LocalRun:
    """Check the file, take a place in the model's queue, and return the run."""
    local, path = _located(call)
    messages = [{"role": m.role, "content": m.content} for m in call.messages]
    text = Text(call.prompt, call.suffix, call.logprobs, call.top_logprobs)
    return LocalRun(
        call.name,
        path,
        LoadSettings.of(local, path),
        local.queue_limit,
        messages,
        dict(call.options),
        call.format,
        text,
        call.keep_alive,
    )
