#!/usr/bin/env python3
"""Soak ``gencli serve``: many concurrent streams held open against a slow upstream.

The fake OpenAI upstream (tests/fakes/openai_upstream.py, its own process) answers
model ``slow-N-M``: M tokens, one every N ms. ``gencli serve`` (its own process) sits in
front of it; this script opens STREAMS streamed /api/generate requests at once over
loopback, each held for about HOLD seconds (M = HOLD / interval tokens), and checks
every stream gets all its tokens and a final ``done`` line, with no error line.

The server's resident memory (VmRSS from /proc/PID/status) is sampled before (idle,
after a warm-up), during (peak) and after (all streams closed). Prints the figures;
``--json`` prints them as one JSON object. tests/test_load.py runs a shorter version.

    .venv/bin/python bench/bench_soak.py [--streams 500] [--hold 60] [--interval-ms 500] [--json]

Exit code: 0 when every stream completed without error, 1 otherwise, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fakes" / "openai_upstream.py"
GENCLI = str(Path(sys.executable).with_name("gencli"))
_SCRUB = (
    "OPENAI_",
    "GEMINI_",
    "GOOGLE_",
    "OPENROUTER_",
    "GENCLI_",
    "OLLAMA_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def raise_fd_limit(wanted: int = 8192) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(HOME=str(tmp), NO_COLOR="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


class Procs:
    """The fake upstream and ``gencli serve``, each a subprocess with a raised fd limit."""

    def __init__(self, tmp: Path, interval_ms: int, tokens: int):
        self.tmp = tmp
        self.fake = subprocess.Popen(
            [sys.executable, str(FAKE), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=_env(tmp),
            preexec_fn=raise_fd_limit,
            cwd=ROOT,
        )
        line = self.fake.stdout.readline().decode()
        if "upstream on " not in line:
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        base = line.split("upstream on ", 1)[1].strip()
        common = {"provider": "openai-compatible", "base_url": base, "api_key_env": "SOAK_KEY"}
        models = {"slow": {**common, "model": f"slow-{interval_ms}-{tokens}"}, "quick": {**common, "model": "tokens-5"}}
        (tmp / "models.json").write_text(json.dumps(models))
        self.err = tmp / "serve.err"
        self.serve = subprocess.Popen(
            [GENCLI, "serve", "--port", "0", "--models", str(tmp / "models.json")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.err, "wb"),
            stdin=subprocess.DEVNULL,
            env=_env(tmp, SOAK_KEY="soak-key"),
            preexec_fn=raise_fd_limit,
            cwd=tmp,
        )
        self.url = ""
        deadline = time.monotonic() + 30
        while not self.url:
            for text in self.err.read_text(errors="replace").splitlines():
                if "listening on http://" in text:
                    self.url = text.split("listening on ", 1)[1].split()[0]
            if self.serve.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gencli serve did not start: {self.err.read_text(errors='replace')}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> None:
        for p in (getattr(self, "serve", None), self.fake):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


async def _stream(session, url: str, model: str, tokens: int, state: dict) -> None:
    import orjson

    got = 0
    started = time.monotonic()
    try:
        async with session.post(url + "/api/generate", json={"model": model, "prompt": "soak", "stream": True}) as r:
            if r.status != 200:
                state["errors"].append(f"HTTP {r.status}: {(await r.text())[:200]}")
                return
            done = False
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    obj = orjson.loads(line)
                    if "error" in obj:
                        state["errors"].append(f"error line: {obj['error'][:200]}")
                        return
                    if obj.get("response"):
                        if got == 0:
                            state["open"] += 1
                        got += 1
                    if obj.get("done"):
                        done = True
            if got:
                state["open"] -= 1
            if not done:
                state["errors"].append("stream ended without a done line")
            elif got != tokens:
                state["errors"].append(f"stream got {got} of {tokens} tokens")
            else:
                state["ok"] += 1
                state["durations"].append(time.monotonic() - started)
    except Exception as exc:  # any client-side failure is an error of the run
        if got:
            state["open"] -= 1
        state["errors"].append(f"{exc.__class__.__name__}: {str(exc)[:200]}")


async def drive(url: str, pid: int, streams: int, tokens: int, sample_s: float = 0.25, settle_s: float = 5.0) -> dict:
    """One wave: warm up, measure idle RSS, hold ``streams`` streams of ``tokens`` tokens, measure after."""
    import aiohttp

    state = {"ok": 0, "open": 0, "errors": [], "durations": [], "held_max": 0}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up: code paths, connection pools, first allocations
        for _ in range(3):
            await asyncio.gather(
                *[
                    _stream(session, url, "quick", 5, {"ok": 0, "open": 0, "errors": [], "durations": []})
                    for _ in range(20)
                ]
            )
        await asyncio.sleep(1.0)
        before = rss_kb(pid)
        peak = before
        tasks = [asyncio.ensure_future(_stream(session, url, "slow", tokens, state)) for _ in range(streams)]
        t0 = time.monotonic()
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=sample_s)
            peak = max(peak, rss_kb(pid))
            state["held_max"] = max(state["held_max"], state["open"])
        elapsed = time.monotonic() - t0
    # after: every stream closed; the server goes quiet (2 s with no upstream request), closes
    # its idle upstream connections and trims its heap: take the level it returns to
    after_samples = []
    for _ in range(int(settle_s / 0.3)):
        await asyncio.sleep(0.3)
        after_samples.append(rss_kb(pid))
    return {
        "streams": streams,
        "completed": state["ok"],
        "held_concurrently": state["held_max"],
        "errors": len(state["errors"]),
        "error_samples": sorted(set(state["errors"]))[:5],
        "tokens_per_stream": tokens,
        "seconds": round(elapsed, 1),
        "stream_seconds_min": round(min(state["durations"]), 1) if state["durations"] else None,
        "stream_seconds_max": round(max(state["durations"]), 1) if state["durations"] else None,
        "rss_before_mb": round(before / 1024, 1),
        "rss_peak_mb": round(peak / 1024, 1),
        "rss_after_mb": round(after_samples[-1] / 1024, 1),
    }


def run_soak(
    streams: int = 500, hold: float = 60.0, interval_ms: int = 500, waves: int = 1, sample_s: float = 0.25
) -> list[dict]:
    """Run ``waves`` soaks one after the other on one server; the figures of each."""
    raise_fd_limit(max(8192, 4 * streams + 256))
    tokens = max(2, round(hold * 1000 / interval_ms))
    with tempfile.TemporaryDirectory(prefix="gencli-soak-") as tmp:
        procs = Procs(Path(tmp), interval_ms, tokens)
        try:
            results = []
            for _ in range(waves):
                result = asyncio.run(drive(procs.url, procs.serve.pid, streams, tokens, sample_s))
                result["server_alive"] = procs.serve.poll() is None
                result["server_log_errors"] = sum(
                    1 for line in procs.stderr().splitlines() if "Traceback" in line or "internal server error" in line
                )
                results.append(result)
            return results
        finally:
            procs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each stream is held open")
    parser.add_argument("--interval-ms", type=int, default=500, help="ms between upstream tokens")
    parser.add_argument(
        "--waves",
        type=int,
        default=2,
        help="soaks in a row on one server (a leak grows the after-level from wave to wave)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        results = run_soak(args.streams, args.hold, args.interval_ms, args.waves)
    except Exception as exc:
        print(f"bench_soak: run failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
        return 0 if all(r["errors"] == 0 and r["completed"] == r["streams"] for r in results) else 1
    for n, r in enumerate(results, 1):
        print(f"-- wave {n}")
        print(
            f"streams held concurrently: {r['held_concurrently']} of {r['streams']} "
            f"({r['tokens_per_stream']} tokens each, {r['stream_seconds_min']}-{r['stream_seconds_max']} s a stream, "
            f"{r['seconds']} s in all)"
        )
        print(
            f"completed: {r['completed']}   errors: {r['errors']}"
            + (f"   e.g. {r['error_samples']}" if r["errors"] else "")
        )
        print(f"server RSS: before {r['rss_before_mb']} MB   peak {r['rss_peak_mb']} MB   after {r['rss_after_mb']} MB")
    return 0 if all(r["errors"] == 0 and r["completed"] == r["streams"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
