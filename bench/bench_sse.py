#!/usr/bin/env python3
"""The SSE decoder (``gencli.core.sse``) on its own: microseconds per MB of upstream stream, for the
ways an upstream's bytes arrive, this checkout next to another commit's decoder (``--ref``,
default ``main``) in the same run, alternating.

Streams: 2000 OpenAI ``chat.completion.chunk`` events (one token each), read as

- ``whole``: one read holding the whole stream;
- ``64k``: 64 KB reads (a fast upstream: many events per read);
- ``event``: one read per event (a slow upstream: a token at a time);
- ``16b``: 16-byte reads (events cut everywhere);
- ``long-line``: one 1 MB ``data`` line in 64-byte reads (the case that was quadratic).

Targets: the reads an upstream's stream really comes in (``whole``, ``64k``, ``event``) no
slower than the reference by more than 10 % (a ratio <= 1.10), and ``long-line`` faster
(linear). ``16b`` (every event cut in ten) is shown, not targeted. Usage:

    .venv/bin/python bench/bench_sse.py [--ref main] [--rounds 7] [--json]

Exit code 0, 1 when the target is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def load(source: str, name: str):
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def streams() -> dict[str, list[bytes]]:
    events = [event(i) for i in range(2000)]
    whole = b"".join(events) + b"data: [DONE]\n\n"
    line = b"data: " + b"x" * (1024 * 1024) + b"\n\n"
    return {
        "whole": [whole],
        "64k": split(whole, 65536),
        "event": events,
        "16b": split(whole, 16),
        "long-line": split(line, 64),
    }


def run(decoder_class, reads: list[bytes]) -> float:
    """Seconds to decode ``reads`` once (the best of a few passes)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dec = decoder_class()
        n = 0
        for r in reads:
            n += len(dec.feed(r))
        n += len(dec.close())
        best = min(best, time.perf_counter() - t)
        assert n > 0
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="main")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        ref_source = subprocess.run(
            ["git", "show", f"{args.ref}:src/gencli/core/sse.py"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        print(f"bench_sse: cannot read src/gencli/core/sse.py at {args.ref}: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    this = load((ROOT / "src/gencli/core/sse.py").read_text(), "sse_this").SSEDecoder
    ref = load(ref_source, "sse_ref").SSEDecoder
    results = {}
    for name, reads in streams().items():
        mb = sum(map(len, reads)) / (1024 * 1024)
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):  # alternating, so both sides see the same machine
            a.append(run(this, reads))
            b.append(run(ref, reads))
        ta, tb = statistics.median(a), statistics.median(b)
        results[name] = {"this_us_per_mb": ta / mb * 1e6, "ref_us_per_mb": tb / mb * 1e6, "ratio": ta / tb}
    ok = all(results[n]["ratio"] <= 1.10 for n in ("whole", "64k", "event")) and results["long-line"]["ratio"] < 1
    if args.json:
        print(json.dumps({"ref": args.ref, "streams": results, "ok": ok}))
    else:
        print(f"SSE decoder, us per MB of stream (median of {args.rounds}); ratio this/{args.ref}")
        for name, r in results.items():
            this_us, ref_us = r["this_us_per_mb"], r["ref_us_per_mb"]
            print(f"  {name:10} this {this_us:10.0f}   {args.ref} {ref_us:10.0f}   {r['ratio']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
