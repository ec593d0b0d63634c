"""The llama.cpp runner: load a GGUF once per process and generate token by token.

* A model file is loaded once, with its models.json entry's load settings (``num_ctx``,
  ``num_thread``, ``num_batch``, ``num_gpu``: :class:`gencli.providers.base.LocalModel`);
  requests never change them. Loading happens while holding the model's gate, so no
  generation uses a model being replaced.
* :class:`LocalRun` is the blocking iterator the engine drives (directly in the CLI, from
  a worker thread in the server, :mod:`gencli.bridge`). It yields lists of events token
  by token; ``close()`` (from any thread) stops generation before the next token and
  hands the model to the next waiter. Whoever starts a run closes it (the engine does,
  in a ``finally``).

llama_cpp is imported only when a model loads; only its public API is used.
"""

from __future__ import annotations

import codecs
import json
import random
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.errors import ConfigError, UsageError
from gencli.events import Event, Finish, Loaded, Logprobs, TextDelta, TokenLogprob, Usage
from gencli.providers import PROVIDERS
from gencli.providers.base import Call, LocalModel
from gencli.providers.llama.files import extra_installed, gguf_path, missing_extra
from gencli.providers.llama.gate import Gate, gate_for
from gencli.providers.llama.gguf import read_gguf

DEFAULT_NUM_CTX = PROVIDERS["local"].context_length

# Sampling defaults (Ollama's); a model entry's "options" and the request override them.
DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
}


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


@dataclass(slots=True)
class Model:
    """A loaded GGUF: the Llama, its load settings, its chat formatter and vocabulary."""

    llm: Any  # llama_cpp.Llama
    settings: LoadSettings
    formatter: Any  # a llama_cpp chat formatter
    vocab: Any  # llama_cpp.llama_vocab_p (for the end-of-generation check)


_LOADED: dict[str, Model] = {}  # path -> the loaded model
_LOCK = threading.Lock()  # guards _LOADED and _EXPIRY
_EXPIRY: dict[str, tuple[threading.Timer, int]] = {}  # path -> (the idle timer, the use it was set after)
_USES: dict[str, int] = {}  # path -> runs started (a timer set before the latest run is stale)


def is_loaded(path: Path) -> bool:
    with _LOCK:
        return str(path) in _LOADED


def _free(key: str) -> bool:
    """Close and forget the model loaded from ``key`` (call it holding the file's gate)."""
    with _LOCK:
        model = _LOADED.pop(key, None)
        timer = _EXPIRY.pop(key, None)
    if timer is not None:
        timer[0].cancel()
    if model is None:
        return False
    model.llm.close()
    return True


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


def load(path: Path, name: str, settings: LoadSettings) -> Model:
    """The model for ``path`` loaded with ``settings``; loaded once, reloaded only when the
    settings differ (another models.json entry naming the same file). Call it holding the gate."""
    key = str(path)
    with _LOCK:
        model = _LOADED.get(key)
        if model is not None and model.settings == settings:
            return model
    read_gguf(path)  # a clear error for a file that is not GGUF, before llama.cpp sees it
    try:
        import llama_cpp
    except ImportError:
        raise missing_extra(name) from None
    if model is not None:
        with _LOCK:
            _LOADED.pop(key, None)
        model.llm.close()
    kwargs: dict[str, Any] = {"model_path": key, "n_ctx": settings.n_ctx, "verbose": False}
    if settings.n_threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = settings.n_threads
    if settings.n_batch:
        kwargs["n_batch"] = settings.n_batch
    if settings.n_gpu_layers is not None:
        kwargs["n_gpu_layers"] = settings.n_gpu_layers
    try:
        llm = llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"model '{name}': cannot load {path}: the GGUF file is corrupt or not supported "
            f"by this llama.cpp ({' '.join(str(exc).split())[:200]})"
        ) from None
    if "tokenizer.chat_template" in llm.metadata:
        llm.chat_format = "chat_template.default"  # the GGUF's own template, never a guessed one
    model = Model(llm, settings, _formatter(llm), llama_cpp.llama_model_get_vocab(llm.model))
    with _LOCK:
        _LOADED[key] = model
    return model


def _token_text(llm: Any, token: int) -> str:
    return "" if token == -1 else bytes(llm.detokenize([token], special=True)).decode("utf-8", "replace")


def _formatter(llm: Any) -> Any:
    """The GGUF's own chat template as a llama_cpp formatter (ChatML when the file has none)."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:  # no template in the file: ChatML, the most common format
        return llama_chat_format.format_chatml
    eos, bos = llm.token_eos(), llm.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=_token_text(llm, eos), bos_token=_token_text(llm, bos), stop_token_ids=[eos]
    )


def prompt_tokens(model: Model, messages: list[dict[str, str]]) -> list[int]:
    """Apply the GGUF's chat template (or llama_cpp's fallback format) and tokenize."""
    result = model.formatter(messages=messages)
    tokens: list[int] = model.llm.tokenize(
        result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
    )
    return tokens


def grammar_for(fmt: Any) -> Any:
    """A llama.cpp grammar for ``format``: "json" (any JSON object) or a JSON schema."""
    if fmt is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception as exc:  # llama_cpp raises plain Exceptions for schemas it cannot convert
        raise UsageError(
            f"format: this JSON schema cannot be turned into a grammar ({' '.join(str(exc).split())[:200]})", "format"
        ) from None


# -- a generation ----------------------------------------------------------------------------
class LocalRun:
    """One generation: iterate it for lists of events, token by token.

    Safe to ``close()``/``cancel()`` from any thread at any time: generation stops before the
    next token and the model is handed to the next waiter. ``await run.ready()`` waits for the
    model on the event loop (the server); otherwise the first ``next()`` waits in its thread.
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
        self.load = load
        self.messages = messages
        self.options = options
        self.format = fmt
        self.text = text or Text()
        self.keep_alive = keep_alive
        self.queue_limit = queue_limit
        self.state = _State()  # shared with the token loop, which must not refer back to self (no cycle)
        self.cancelled = self.state.cancelled
        self.gate: Gate = gate_for(path, name, queue_limit)
        self.ticket = self.gate.enter()  # ServerBusy (503) past the queue bound
        self._gen: Generator[list[Event], None, None] | None = None
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
                if self._gen is None:
                    if not self.gate.wait(self.ticket, self.cancelled):
                        self._finished = True
                        raise StopIteration
                    with _LOCK:
                        _USES[str(self.path)] = _USES.get(str(self.path), 0) + 1
                    self._gen = _generate(
                        self.state, self.name, self.path, self.load, self.messages, self.options, self.format, self.text
                    )
                if self.cancelled.is_set():
                    self._finish()
                    raise StopIteration
                return next(self._gen)
            except StopIteration:
                self._finish()
                raise
            except BaseException:  # an error, or Ctrl-C inside llama.cpp's loop
                self._finish()
                raise

    @property
    def generated(self) -> int:
        """Tokens sampled so far."""
        return self.state.generated

    def cancel(self) -> None:
        """Stop before the next token (from any thread)."""
        self.cancelled.set()
        if self._step.acquire(blocking=False):
            try:
                self._finish()
            finally:
                self._step.release()

    close = cancel

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        gen, self._gen = self._gen, None
        try:
            if gen is not None:
                gen.close()
                if self.keep_alive == 0:  # Ollama's keep_alive 0: free the model right after the answer
                    _free(str(self.path))
        finally:
            self.gate.leave(self.ticket)
        if gen is not None and self.keep_alive:
            keep_loaded(self.path, self.name, self.queue_limit, self.keep_alive)


@dataclass(frozen=True, slots=True)
class Text:
    """A text completion's prompt (sent without the chat template), its fill-in-the-middle
    suffix, and the log probabilities asked for."""

    prompt: str | None = None
    suffix: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class _State:
    __slots__ = ("cancelled", "generated")

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.generated = 0


def text_tokens(model: Model, name: str, text: Text) -> list[int]:
    """A raw prompt's tokens (special tokens in it read as such, as Ollama's raw mode does), or
    for fill-in-the-middle the GGUF's FIM tokens around prompt and suffix (prefix-suffix-middle)."""
    llm = model.llm
    prompt = (text.prompt or "").encode("utf-8")
    if text.suffix is None:
        tokens: list[int] = llm.tokenize(prompt, add_bos=True, special=True)
        return tokens
    import llama_cpp

    pre, suf, mid = (
        llama_cpp.llama_vocab_fim_pre(model.vocab),
        llama_cpp.llama_vocab_fim_suf(model.vocab),
        llama_cpp.llama_vocab_fim_mid(model.vocab),
    )
    if min(pre, suf, mid) < 0:
        raise UsageError(
            f"model '{name}' does not support insert: its GGUF file has no fill-in-the-middle "
            f"tokens (remove 'insert' from its capabilities in models.json)",
            "suffix",
        )
    bos: list[int] = [llm.token_bos()] if llama_cpp.llama_vocab_get_add_bos(model.vocab) else []
    fim: list[int] = (
        bos
        + [pre]
        + llm.tokenize(prompt, add_bos=False, special=False)
        + [suf]
        + llm.tokenize(text.suffix.encode("utf-8"), add_bos=False, special=False)
        + [mid]
    )
    return fim


def _token_logprobs(llm: Any, token: int, top: int) -> TokenLogprob:
    """The chosen token's log probability (and the ``top`` most likely alternatives) from the
    logits it was sampled from: the last row the context computed (before the token is fed back)."""
    import llama_cpp
    import numpy as np

    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    peak = float(row.max())
    logsum = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    piece = bytes(llm.detokenize([token], special=True))
    out = TokenLogprob(piece.decode("utf-8", "replace"), float(row[token]) - logsum, list(piece))
    if top:
        best = np.argpartition(row, -top)[-top:]
        for t in sorted(best.tolist(), key=lambda i: -row[i]):
            alt = bytes(llm.detokenize([t], special=True))
            out.top.append(TokenLogprob(alt.decode("utf-8", "replace"), float(row[t]) - logsum, list(alt)))
    return out


def _generate(
    state: _State,
    name: str,
    path: Path,
    load_settings: LoadSettings,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    fmt: Any,
    text: Text,
) -> Generator[list[Event], None, None]:
    """The token loop: yields [TextDelta] as text arrives, then [.., Usage, Finish]."""
    o = {**DEFAULTS, **options}
    model = load(path, name, load_settings)
    llm, n_ctx = model.llm, load_settings.n_ctx
    yield [Loaded()]  # the time so far is load_duration
    grammar = grammar_for(fmt)
    tokens = prompt_tokens(model, messages) if text.prompt is None else text_tokens(model, name, text)
    n_prompt = len(tokens)
    if n_prompt >= n_ctx:
        raise UsageError(
            f"model '{name}': the prompt is {n_prompt} tokens, more than the context "
            f"window of {n_ctx}; shorten it, or raise options.num_ctx in the model's "
            f"models.json entry",
            "prompt",
        )
    room = n_ctx - n_prompt
    max_tokens = o.get("num_predict")
    max_tokens = room if not max_tokens or max_tokens < 0 else min(max_tokens, room)
    seed = o.get("seed")
    llm.set_seed(seed % 2**32 if seed is not None else random.randint(0, 2**32 - 1))

    stops = [s for s in (o.get("stop") or []) if s]
    keep = max((len(s) for s in stops), default=1) - 1
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    from llama_cpp import llama_vocab_is_eog

    vocab = model.vocab
    detok = llm.detokenize
    finish = "length"
    stop_sequence = None
    pending = ""
    n = 0
    source = llm.generate(
        tokens,
        top_k=o["top_k"],
        top_p=o["top_p"],
        min_p=o["min_p"],
        typical_p=o["typical_p"],
        temp=o["temperature"],
        repeat_penalty=o["repeat_penalty"],
        frequency_penalty=o.get("frequency_penalty", 0.0),
        presence_penalty=o.get("presence_penalty", 0.0),
        grammar=grammar,
    )
    try:
        for token in source:
            if llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            n += 1
            state.generated = n
            if text.logprobs:  # per token, before its text (which a stop sequence may hold back)
                yield [Logprobs([_token_logprobs(llm, token, text.top_logprobs)])]
            piece = decoder.decode(detok([token]))
            if piece:
                if stops:
                    pending += piece
                    hit, matched = min(((i, s) for s in stops if (i := pending.find(s)) >= 0), default=(-1, None))
                    if hit >= 0:
                        pending = pending[:hit]
                        finish, stop_sequence = "stop", matched
                        break
                    cut = _safe_prefix(pending, stops, keep)
                    if cut:
                        out, pending = pending[:cut], pending[cut:]
                        yield [TextDelta(out)]
                else:
                    yield [TextDelta(piece)]
            if n >= max_tokens:
                break
            if state.cancelled.is_set():
                return
    finally:
        source.close()
    tail = pending + decoder.decode(b"", final=True)
    last: list[Event] = [TextDelta(tail)] if tail else []
    yield [*last, Usage(n_prompt, n), Finish(finish, stop_sequence)]


def _safe_prefix(text: str, stops: list[str], keep: int) -> int:
    """How much of ``text`` can be emitted: all of it except a tail that could start a stop sequence."""
    start = max(0, len(text) - keep)
    for i in range(start, len(text)):
        tail = text[i:]
        if any(s.startswith(tail) for s in stops):
            return i
    return len(text)


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
        model = load(path, call.name, LoadSettings.of(local, path))
        return len(prompt_tokens(model, [{"role": m.role, "content": m.content} for m in call.messages]))
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
