"""Load: 500 concurrent streamed /api/generate requests over loopback to the real
``gencli serve`` in front of a slow fake upstream (its own process), held open for
about 10 s, then a second wave on the same server.

Zero errors; every stream gets all its tokens and its final line; all 500 are open at
once; the server's resident memory (VmRSS) is measured before, during (peak) and
after, and must come back within 15% of its idle level and not climb from wave to wave. The
driver is bench/bench_soak.py (which runs the full 60 s soak).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 500
HOLD = 10.0  # seconds each stream of the first wave is held open
INTERVAL_MS = 500


def _bench():
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "bench_soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for VmRSS")
def test_500_streams_held_then_memory_returns(tmp_path):
    import asyncio

    bench = _bench()
    assert bench.raise_fd_limit(4 * STREAMS + 256) >= 2 * STREAMS + 64  # client + server sockets
    tokens = round(HOLD * 1000 / INTERVAL_MS)
    procs = bench.Procs(tmp_path, INTERVAL_MS, tokens)
    try:
        first = asyncio.run(bench.drive(procs.url, procs.serve.pid, STREAMS, tokens))
        second = asyncio.run(bench.drive(procs.url, procs.serve.pid, STREAMS, tokens))
        alive = procs.serve.poll() is None
        log = procs.stderr()
    finally:
        procs.stop()
    print(f"\nwave 1: {first}\nwave 2: {second}")
    for wave in (first, second):
        assert wave["errors"] == 0, wave["error_samples"]
        assert wave["completed"] == STREAMS
        assert wave["held_concurrently"] == STREAMS  # all open at the same time
        assert wave["stream_seconds_min"] >= HOLD * 0.9  # held, not buffered and flushed at once
    assert alive
    assert "Traceback" not in log and "internal server error" not in log
    before, peak, after = first["rss_before_mb"], first["rss_peak_mb"], first["rss_after_mb"]
    assert peak > before  # the measurement sees the load
    # memory goes back: once the clients are gone the server goes quiet, closes its idle upstream
    # connections and trims its heap (gencli.server.memory): within 15% of the idle level
    assert after <= before * 1.15, first
    assert peak <= before + 200, first  # about 0.4 MB a stream at most
    # no leak: a second identical wave does not raise the level it returns to
    assert second["rss_after_mb"] <= after + 8, (first, second)
