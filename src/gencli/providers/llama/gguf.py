"""The GGUF header reader (no llama.cpp needed): metadata for /api/tags and /api/show
(family, parameter size, quantization, context length) and a check that a file is GGUF
before llama.cpp sees it. The vocabulary arrays are skipped, not read."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import IO, Any

from gencli.core.errors import ConfigError
from gencli.providers.llama.files import Located, gguf_path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}
_META_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


class _Reader:
    """Reads the GGUF header out of a memory map (fast: the vocabulary arrays are skipped, not read)."""

    __slots__ = ("buf", "pos", "path")

    def __init__(self, buf: mmap.mmap, path: Path):
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
        return bytes(self.buf[at : at + n])

    def scalar(self, kind: int) -> Any:
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, self.buf, self._need(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar(10)
        if n > 1 << 26:
            raise ConfigError(f"{self.path}: not a valid GGUF file (string of {n} bytes)")
        return self.read(n).decode("utf-8", "replace")

    def value(self, kind: int, keep: bool = True) -> Any:
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


def _map(f: IO[bytes], p: Path) -> mmap.mmap:
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
    info = {
        "version": version,
        "metadata": meta,
        "parameter_count": params,
        "size": st.st_size,
        "modified": st.st_mtime,
    }
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
    model_info = {
        k: v for k, v in meta.items() if not k.startswith("tokenizer.") and isinstance(v, (int, float, str, bool))
    }
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


def local_details(entry: Located) -> dict[str, Any]:
    """Details of a local model entry for /api/tags and /api/show (see :func:`gguf_details`).

    Raises ConfigError (naming the path or the package to install) when the file is missing or corrupt.
    """
    return gguf_details(gguf_path(entry.name, entry.path, entry.package))
