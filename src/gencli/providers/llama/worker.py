"""The local model's runner process: ``python -m gencli.providers.llama.worker``.

llama.cpp runs here, never in gencli's own process, as Ollama's runners do: a crash, an
abort or the kernel's out-of-memory killer ends this process only, and the parent
(:mod:`gencli.providers.llama.process`) answers the request in flight with the cause and
starts a fresh runner for the next one.

The protocol is one JSON value per line. The parent writes requests to stdin
(``{"op": "gen" | "count" | "embed", ...}``) and ``{"op": "cancel"}``, which stops the
generation running before its next token; end of stdin ends the process at once (the
parent is gone or done with this runner). This process answers on stdout, one message
per line: ``["ready", variant]`` once, then for a request its events (``["loaded"]``,
``["text", s]``, ``["logprobs", ...]``) and exactly one last message (``["done", ...]``,
``["end"]`` when cancelled, ``["error", kind, message, field]``, ``["count", n]`` or
``["embed", vectors, tokens]``). Anything llama.cpp prints goes to stderr, which the
parent keeps the tail of to name the cause of a crash.

CPU kernels: a portable build of llama.cpp (``GGML_BACKEND_DL`` with
``GGML_CPU_ALL_VARIANTS``) ships one ``libggml-cpu-<variant>.so`` per x86-64 level. Before
llama.cpp loads, the variant that scores best on this CPU (ggml's own
``ggml_backend_score``: the CPUID bits it needs) is chosen, skipping those the parent
names in ``GENCLI_LLAMA_EXCLUDE`` (variants that died of SIGILL here: a CPU can advertise
an instruction, AMX on some virtual machines, that still faults), and named to ggml with
``GGML_BACKEND_PATH``. A build without variants (one ``libggml-cpu.so``) loads as it is.

``GENCLI_LLAMA_FAULT`` (tests only) makes this process die on demand:
``SIGNAME`` or ``SIGNAME@variant`` (the latter only while that variant is in use), raised
when a generation starts, where a CPU that cannot run the kernels faults.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import json
import os
import queue
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.core.errors import ConfigError, GencliError, UsageError

# Sampling defaults (Ollama's); a model entry's "options" and the request override them.
DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
}
EMBED_CTX = 2048  # the embedding context (mean pooling over the tokens)
VARIANT_PREFIX = "libggml-cpu-"

Send = Callable[[list[Any]], None]


# -- the CPU kernels ---------------------------------------------------------------------------
def library_dir() -> Path | None:
    """llama-cpp-python's ``lib`` folder (its shared libraries), without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def variants(lib: Path) -> list[Path]:
    """The CPU variants a portable build ships (none for a build for one CPU): beside the
    library, or where llama-cpp-python's wheel puts ggml's backend modules (CMake's
    ``bin``, which lands in site-packages)."""
    for where in (lib, lib.parent.parent / "bin"):
        found = sorted(where.glob(f"{VARIANT_PREFIX}*.so"))
        if found:
            return found
    return []


def variant_name(path: Path) -> str:
    return path.name[len(VARIANT_PREFIX) : -len(".so")]


def _preload_base(lib: Path) -> None:
    """Load ggml's base library from ``lib`` first: the variants need it (by its soname) and
    may not find it beside themselves."""
    for name in ("libggml-base.so.0", "libggml-base.so"):
        if (lib / name).exists():
            try:
                ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            return


def score(path: Path) -> int:
    """ggml's own score of a CPU variant on this machine (0: it cannot run here)."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return 0
    try:
        fn = lib.ggml_backend_score
    except AttributeError:
        return 0
    fn.restype = ctypes.c_int
    fn.argtypes = []
    value = int(fn())
    import _ctypes

    _ctypes.dlclose(lib._handle)  # only the chosen one stays, loaded by ggml itself
    return value


def best_variant(lib: Path | None, exclude: set[str] = frozenset()) -> Path | None:  # type: ignore[assignment]
    """The CPU variant of a portable build that scores best here (None: no variants)."""
    if lib is None:
        return None
    found = variants(lib)
    if not found:
        return None
    _preload_base(lib)
    ranked = sorted(((score(p), p) for p in found if variant_name(p) not in exclude), key=lambda sp: -sp[0])
    return next((p for s, p in ranked if s > 0), None)


def choose_variant(lib: Path | None, exclude: set[str]) -> str | None:
    """Name the best CPU variant this machine runs to ggml (GGML_BACKEND_PATH); its name, or
    None for a build without variants. Exits with a message when every variant was excluded."""
    if lib is None or not variants(lib):
        return None
    best = best_variant(lib, exclude)
    if best is None:
        sys.stderr.write("gencli: no llama.cpp CPU variant runs on this machine\n")
        os._exit(3)
    os.environ["GGML_BACKEND_PATH"] = str(best)
    return variant_name(best)


# -- loading -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Model:
    """A loaded GGUF: the Llama, its load settings, its chat formatter and vocabulary."""

    llm: Any  # llama_cpp.Llama
    settings: tuple[Any, ...]
    formatter: Any  # a llama_cpp chat formatter
    vocab: Any  # llama_cpp.llama_vocab_p (for the end-of-generation check)


class Runner:
    """What this process holds: at most one model (the parent runs one process per file)."""

    def __init__(self) -> None:
        self.model: Model | None = None
        self.embedder: Any = None  # llama_cpp.Llama in embedding mode

    def load(self, path: str, name: str, settings: list[Any]) -> Model:
        """The model loaded with ``settings`` (n_ctx, n_threads, n_batch, n_gpu_layers); loaded
        once, reloaded only when the settings differ (another entry naming the same file)."""
        key = tuple(settings)
        if self.model is not None and self.model.settings == key:
            return self.model
        import llama_cpp

        if self.model is not None:
            self.model.llm.close()
            self.model = None
        n_ctx, n_threads, n_batch, n_gpu = settings
        kwargs: dict[str, Any] = {"model_path": path, "n_ctx": n_ctx, "verbose": False}
        if n_threads:
            kwargs["n_threads"] = kwargs["n_threads_batch"] = n_threads
        if n_batch:
            kwargs["n_batch"] = n_batch
        if n_gpu is not None:
            kwargs["n_gpu_layers"] = n_gpu
        try:
            llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"model '{name}': cannot load {path}: the GGUF file is corrupt or not supported "
                f"by this llama.cpp ({' '.join(str(exc).split())[:200]})"
            ) from None
        if "tokenizer.chat_template" in llm.metadata:
            llm.chat_format = "chat_template.default"  # the GGUF's own template, never a guessed one
        self.model = Model(llm, key, _formatter(llm), llama_cpp.llama_model_get_vocab(llm.model))
        return self.model

    def load_embedder(self, path: str, name: str) -> Any:
        if self.embedder is None:
            import llama_cpp

            try:
                self.embedder = llama_cpp.Llama(
                    model_path=path,
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=EMBED_CTX,
                    n_batch=EMBED_CTX,
                    n_ubatch=EMBED_CTX,
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                raise ConfigError(
                    f"model '{name}': cannot load {path} for embeddings ({' '.join(str(exc).split())[:200]})"
                ) from None
        return self.embedder


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


def text_tokens(model: Model, name: str, prompt_text: str | None, suffix: str | None) -> list[int]:
    """A raw prompt's tokens (special tokens in it read as such, as Ollama's raw mode does), or
    for fill-in-the-middle the GGUF's FIM tokens around prompt and suffix (prefix-suffix-middle)."""
    llm = model.llm
    prompt = (prompt_text or "").encode("utf-8")
    if suffix is None:
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
        + llm.tokenize(suffix.encode("utf-8"), add_bos=False, special=False)
        + [mid]
    )
    return fim


def _token_logprobs(llm: Any, token: int, top: int) -> list[Any]:
    """The chosen token's [text, log probability, bytes, top alternatives] from the logits it
    was sampled from: the last row the context computed (before the token is fed back)."""
    import llama_cpp
    import numpy as np

    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    peak = float(row.max())
    logsum = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    piece = bytes(llm.detokenize([token], special=True))
    alternatives: list[Any] = []
    if top:
        best = np.argpartition(row, -top)[-top:]
        for t in sorted(best.tolist(), key=lambda i: -row[i]):
            alt = bytes(llm.detokenize([t], special=True))
            alternatives.append([alt.decode("utf-8", "replace"), float(row[t]) - logsum, list(alt), []])
    return [piece.decode("utf-8", "replace"), float(row[token]) - logsum, list(piece), alternatives]


def _prefill(llm: Any, tokens: list[int]) -> None:
    """Evaluate all of the prompt but its last token (what the context does not hold yet), so
    that ``generate`` always evaluates the last token alone: the first logits are then the same
    whether the prompt was cached (the same prompt again, a longer chat) or not, and a seeded
    request repeats. (In one batch with the prompt, the last token's logits come out of
    another matrix kernel and differ in the last bits, enough to sample another token.)"""
    cached = llm.input_ids[: llm.n_tokens].tolist()  # what the context holds (the array runs on, stale)
    common = 0
    for a, b in zip(cached, tokens[:-1], strict=False):
        if a != b:
            break
        common += 1
    if common < len(tokens) - 1:
        llm.n_tokens = common
        llm.eval(tokens[common:-1])


def _safe_prefix(text: str, stops: list[str], keep: int) -> int:
    """How much of ``text`` can be emitted: all of it except a tail that could start a stop sequence."""
    start = max(0, len(text) - keep)
    for i in range(start, len(text)):
        tail = text[i:]
        if any(s.startswith(tail) for s in stops):
            return i
    return len(text)


# -- the requests ------------------------------------------------------------------------------
def generate(runner: Runner, req: dict[str, Any], cancelled: threading.Event, send: Send, fault: Fault) -> None:
    """The token loop: sends ["loaded"], ["text", s] as text arrives, then ["done", ...] (or
    ["end"] when cancelled)."""
    name = req["name"]
    if cancelled.is_set():  # cancelled while it waited for its turn
        send(["end"])
        return
    model = runner.load(req["path"], name, req["load"])
    send(["loaded"])  # the time so far is load_duration
    fault.strike()
    o = {**DEFAULTS, **req["options"]}
    llm, n_ctx = model.llm, req["load"][0]
    grammar = grammar_for(req.get("format"))
    prompt_text, suffix, logprobs, top_logprobs = req["text"]
    if prompt_text is None:
        tokens = prompt_tokens(model, req["messages"])
    else:
        tokens = text_tokens(model, name, prompt_text, suffix)
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
    _prefill(llm, tokens)
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
            if logprobs:  # per token, before its text (which a stop sequence may hold back)
                send(["logprobs", _token_logprobs(llm, token, top_logprobs)])
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
                        send(["text", out])
                else:
                    send(["text", piece])
            if n >= max_tokens:
                break
            if cancelled.is_set():
                send(["end"])
                return
    finally:
        source.close()
    tail = pending + decoder.decode(b"", final=True)
    send(["done", n_prompt, n, finish, stop_sequence, tail])


def count(runner: Runner, req: dict[str, Any], send: Send) -> None:
    model = runner.load(req["path"], req["name"], req["load"])
    send(["count", len(prompt_tokens(model, req["messages"]))])


def embed(runner: Runner, req: dict[str, Any], send: Send) -> None:
    """Vectors for the inputs (an input longer than the context is a UsageError)."""
    name, inputs = req["name"], req["inputs"]
    llm = runner.load_embedder(req["path"], name)
    for i, text in enumerate(inputs):
        n = len(llm.tokenize(text.encode("utf-8"), add_bos=True))
        if n > EMBED_CTX:
            raise UsageError(f"input {i + 1} has {n} tokens; model '{name}' embeds at most {EMBED_CTX}", "input")
    out = llm.create_embedding(inputs)
    vectors = [item["embedding"] for item in sorted(out["data"], key=lambda d: d["index"])]
    send(["embed", vectors, out.get("usage", {}).get("prompt_tokens")])


# -- fault injection (tests) -------------------------------------------------------------------
class Fault:
    """``GENCLI_LLAMA_FAULT=SIGNAME[@variant]``: die by that signal when a generation starts."""

    def __init__(self, spec: str, variant: str | None):
        self.signal: int | None = None
        if spec:
            sig, _, only = spec.partition("@")
            if not only or only == variant:
                self.signal = int(getattr(signal, sig.upper()))

    def strike(self) -> None:
        if self.signal is not None:
            signal.signal(self.signal, signal.SIG_DFL)
            os.kill(os.getpid(), self.signal)


# -- the process -------------------------------------------------------------------------------
class Inbox:
    """Reads stdin in a thread: requests are queued, a cancel stops the request running."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.requests: queue.Queue[tuple[dict[str, Any], threading.Event]] = queue.Queue()
        self.current = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in iter(self.stream.readline, b""):
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") == "cancel":
                self.current.set()
            else:
                self.current = threading.Event()
                self.requests.put((msg, self.current))
        os._exit(0)  # the parent closed our stdin: it is gone or done with this runner

    def __iter__(self) -> Iterator[tuple[dict[str, Any], threading.Event]]:
        while True:
            yield self.requests.get()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it sends a cancel
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # whatever llama.cpp prints to stdout goes to stderr, not into the protocol
    lock = threading.Lock()

    def send(msg: list[Any]) -> None:
        line = json.dumps(msg, ensure_ascii=False)
        with lock:
            out.write(line + "\n")

    exclude = {v for v in os.environ.get("GENCLI_LLAMA_EXCLUDE", "").split(",") if v}
    variant = choose_variant(library_dir(), exclude)
    send(["ready", variant])
    fault = Fault(os.environ.get("GENCLI_LLAMA_FAULT", ""), variant)
    runner = Runner()
    for req, cancelled in Inbox(sys.stdin.buffer):
        try:
            op = req.get("op")
            if op == "gen":
                generate(runner, req, cancelled, send, fault)
            elif op == "count":
                count(runner, req, send)
            elif op == "embed":
                embed(runner, req, send)
            else:
                send(["error", "config", f"unknown runner request {op!r}", None])
        except UsageError as exc:
            send(["error", "usage", exc.message, exc.field])
        except GencliError as exc:
            send(["error", "config", exc.message, None])
        except Exception as exc:  # a Python-level failure in llama_cpp: the request fails, the runner stays
            send(["error", "config", f"the local model failed: {' '.join(str(exc).split())[:300]}", None])


def describe() -> str:
    """Which CPU kernels a runner would load here (``python -m gencli.providers.llama.worker --variant``)."""
    lib = library_dir()
    if lib is None:
        return "llama-cpp-python is not installed"
    found = variants(lib)
    best = best_variant(lib)
    if best is None:
        return f"llama.cpp in {lib}: one build for one CPU (no runtime CPU dispatch)"
    return f"llama.cpp in {lib}: {len(found)} CPU variants; this CPU runs '{variant_name(best)}'"


if __name__ == "__main__":
    if sys.argv[1:] == ["--variant"]:
        print(describe())
    elif sys.argv[1:] == ["--backend-path"]:  # for other programs on this llama-cpp-python: GGML_BACKEND_PATH
        print(best_variant(library_dir()) or "")
    else:
        main()
