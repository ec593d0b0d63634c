"""Generation options: an allowlist per provider, each option with its type and range.

Names are Ollama's. Two kinds:

* **Per-request options** (sampling: ``temperature``, ``top_p``, ``num_predict``,
  ``stop``, ...): a request may set those its provider takes (``ProviderSpec.options``);
  a models.json entry may give defaults for them.
* **Per-model options** (``num_ctx``, ``num_thread``, ``num_batch``, ``num_gpu``): how a
  model is loaded, shared by every request in the process. They are set only in the
  models.json entry (``ProviderSpec.model_options``), never by a request: one client's
  request never changes what the next client gets.

A request's unknown keys, keys its provider does not take and per-model keys are
ignored, as Ollama ignores unknown options, and reported in one bounded warning line
(:func:`ignored_message`). A known option with a wrong type or out of its range is a
:class:`gencli.core.errors.UsageError` (HTTP 400, exit 2) naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gencli.core.errors import UsageError

INT64 = 2**63
MAX_STOPS = 16
MAX_STOP_CHARS = 1000


class Option:
    """One option: ``kind`` is "number", "integer" or "stop" (a string or a list of strings);
    ``drop``: integer values that mean "the default" (Ollama's -1 and -2 for num_predict).
    (A plain class: this module is on the CLI's start-up path, and a dataclass costs ~1 ms.)"""

    __slots__ = ("kind", "lo", "hi", "drop")

    def __init__(self, kind: str, lo: float = 0, hi: float = 0, drop: tuple[int, ...] = ()):
        self.kind = kind
        self.lo = lo
        self.hi = hi
        self.drop = drop

    def check(self, key: str, value: Any) -> Any:
        """The value, normalised; UsageError naming ``options.<key>`` when it is not allowed."""
        name = f"options.{key}"
        if self.kind == "stop":
            return _stop(value, name)
        if self.kind == "integer":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be an integer", name)
            if not self.lo <= value <= self.hi:
                raise UsageError(f"{name} is {value}; it must be from {self.lo:.0f} to {self.hi:.0f}", name)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{name} must be a number from {self.lo:g} to {self.hi:g}", name)
        if not self.lo <= value <= self.hi:
            raise UsageError(f"{name} is {value:g}; it must be from {self.lo:g} to {self.hi:g}", name)
        return value


def _stop(value: Any, name: str) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise UsageError(f"{name} must be a string or a list of strings", name)
    stops = [s for s in value if s]
    if len(stops) > MAX_STOPS:
        raise UsageError(f"{name} has {len(stops)} entries; at most {MAX_STOPS}", name)
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise UsageError(f"{name} entries must be at most {MAX_STOP_CHARS} characters", name)
    return stops or None


# -- the options gencli knows (Ollama's names) ---------------------------------------------
TEMPERATURE = Option("number", 0, 2)
TOP_P = Option("number", 0, 1)
MIN_P = Option("number", 0, 1)
TYPICAL_P = Option("number", 0, 1)
TOP_K = Option("integer", 0, 100_000)
SEED = Option("integer", -INT64, INT64 - 1)
NUM_PREDICT = Option("integer", -2, 10_000_000, drop=(-2, -1, 0))  # Ollama: -1 infinite, -2 fill the context
REPEAT_PENALTY = Option("number", 0, 10)
PRESENCE_PENALTY = Option("number", -2, 2)
FREQUENCY_PENALTY = Option("number", -2, 2)
STOP = Option("stop")

# per-model (load-time) options; the ranges bound a models.json typo, not an attacker
NUM_CTX = Option("integer", 1, 10_000_000)
NUM_THREAD = Option("integer", 1, 1024)
NUM_BATCH = Option("integer", 1, 1 << 20)
NUM_GPU = Option("integer", -1, 100_000)  # layers offloaded to a GPU; -1: all

#: Ollama's load-time ("runner") options: set per model, never per request
RUNNER_NAMES = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_thread",
        "num_gpu",
        "main_gpu",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
    }
)

COMMON: dict[str, Option] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "num_predict": NUM_PREDICT,
    "stop": STOP,
    "seed": SEED,
    "presence_penalty": PRESENCE_PENALTY,
    "frequency_penalty": FREQUENCY_PENALTY,
}

#: every per-request option some provider takes (each provider's own list: ProviderSpec.options)
KNOWN: dict[str, Option] = {
    **COMMON,
    "top_k": TOP_K,
    "min_p": MIN_P,
    "typical_p": TYPICAL_P,
    "repeat_penalty": REPEAT_PENALTY,
}


def check(raw: Any, allowed: Mapping[str, Option]) -> tuple[dict[str, Any], list[str]]:
    """A request's ``options`` -> (the allowed options, normalised; the names ignored).

    Unknown names and names not in ``allowed`` are ignored (listed, never an error); an
    allowed option with a bad value raises UsageError. ``null`` values are dropped."""
    if not raw and (raw is None or raw == {}):
        return {}, []
    if not isinstance(raw, dict):
        raise UsageError('options must be an object, e.g. {"temperature": 0.7}', "options")
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        spec = allowed.get(key)
        if spec is None:
            ignored.append(key)
            continue
        if value is None:
            continue
        value = spec.check(key, value)
        if value is None or (spec.drop and value in spec.drop):
            continue
        out[key] = value
    return out, ignored


MAX_NAMES_SHOWN = 8
MAX_NAME_CHARS = 40


def _shown(name: str) -> str:
    """An option name as it may appear in a log line: short, printable."""
    cut = name[:MAX_NAME_CHARS]
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return text + ("..." if len(name) > MAX_NAME_CHARS else "")


def ignored_message(model: str, label: str, names: list[str]) -> str:
    """One bounded line naming the ignored options (at most a few names, each cut short)."""
    runner = [n for n in names if n in RUNNER_NAMES]
    other = [n for n in names if n not in RUNNER_NAMES]
    parts = []
    if runner:
        parts.append(
            f"{_list(runner)} {'is' if len(runner) == 1 else 'are'} set per model in models.json, not per request"
        )
    if other:
        parts.append(f"{_list(other)} {'is' if len(other) == 1 else 'are'} not an option {label} takes")
    return f"model '{_shown(model)}': ignored options: {'; '.join(parts)}"


def _list(names: list[str]) -> str:
    shown = ", ".join(_shown(n) for n in names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_model(options: Mapping[str, Any], allowed: Mapping[str, Option]) -> dict[str, Any]:
    """A models.json entry's ``options``: every name must be one the provider takes (per
    request or per model); returns them normalised. Raises UsageError (the registry makes
    it a ConfigError naming the file and the entry)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        spec = allowed.get(key)
        if spec is None:
            known = ", ".join(sorted(allowed))
            raise UsageError(f"unknown option '{_shown(key)}' for this provider (known: {known})", "options")
        if value is None:
            continue
        value = spec.check(key, value)
        if value is not None and not (spec.drop and value in spec.drop):
            out[key] = value
    return out
