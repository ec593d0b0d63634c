"""Memory handed back to the system when ``gencli serve`` goes quiet.

A burst (hundreds of concurrent streams) leaves the process's heap at its high-water mark:
the objects are freed, but the allocators keep the pages. When the server has had no
upstream request in progress for a moment, the upstream pool closes its idle connections
(:mod:`gencli.transports.httpclient`) and calls :func:`trim`: a full garbage collection (the burst's
reference cycles and Python's free lists), then glibc's ``malloc_trim(0)``, which returns
the free pages anywhere in the heap to the system.

Python's own small-object allocator (pymalloc) keeps 1 MB arenas for as long as one object
in them lives; after a burst, a few long-lived objects scattered over the burst's arenas
keep most of them (measured: idle 43 MB, 54 MB at the peak of 500 streams, 50-52 MB after
trimming). So ``gencli serve`` runs Python with ``PYTHONMALLOC=malloc`` where glibc's
``malloc_trim`` exists (:func:`system_malloc_argv`): every object then comes from glibc,
whose free pages trimming returns (45 MB after the same burst), for some CPU per request
(bench/README.md, "Memory"). A ``PYTHONMALLOC`` already set is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable, Mapping

_trim: Callable[[int], int] | None = None
_looked = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _trim = libc.malloc_trim  # glibc only (musl has no malloc_trim)
                _trim.argtypes = [ctypes.c_size_t]
                _trim.restype = ctypes.c_int
            except (OSError, AttributeError):
                _trim = None
    return _trim


def can_trim() -> bool:
    """True where ``malloc_trim`` exists (glibc)."""
    return _malloc_trim() is not None


def trim() -> None:
    """Collect the garbage, then return free heap pages to the system (glibc)."""
    gc.collect()
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


def system_malloc_argv(argv: list[str], environ: Mapping[str, str]) -> list[str] | None:
    """The command line that runs this gencli command again with ``PYTHONMALLOC=malloc``, or
    None when it should run as it is (already set, set otherwise by the user, or no glibc)."""
    if environ.get("PYTHONMALLOC") or not can_trim():
        return None
    return [sys.executable, "-m", "gencli", *argv[1:]]
