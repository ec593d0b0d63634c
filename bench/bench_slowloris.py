#!/usr/bin/env python3
"""Normal traffic while 500 slow-drip connections are held open, side by side with none.

``gencli serve`` (one worker) in front of the fake OpenAI upstream. A drip client (a
separate asyncio process) holds N connections (default 500) that each send one byte every
few seconds: half drip a request head (the server cuts them at ``--header-timeout`` and
the drip client reopens them at once, so N stay open), half send a complete head and then
drip the body (kept open: each pause is under ``--body-timeout``). The connections open
over 8 s, so the cut ones come back spread out rather than in one burst. Meanwhile wrk sends
normal non-streamed /api/generate requests at 8 connections. Each round measures a window
without the drip, then one with it; the medians and the ratios with/without are reported
(targets: p50 and p99 with the drip at most 1.5x and 2x without; rate at least 0.7x; no
wrk socket errors).

With ``--ref REF`` the same is measured for gencli built from that git commit (e.g.
``main``), in the same rounds, for comparison.

Needs wrk. Usage:

    .venv/bin/python bench/bench_slowloris.py [--drip 500] [--interval 2] [--duration 12]
                                              [--rounds 3] [--ref REF] [--json]

Exit code: 0 when every target holds, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import (  # noqa: E402
    _check_answers,
    _env,
    _free_port,
    _gencli,
    _lua,
    _python,
    _taskset,
    _wait_http,
    _wrk,
    have_wrk,
    ref_command,
    start_fake,
    stop_all,
)

TARGET_P50 = 1.5
TARGET_P99 = 2.0
TARGET_RATE = 0.7
SPREAD = 8.0  # seconds over which the drip connections open


# -- the drip client (a separate process: python bench_slowloris.py --drip-client ...) -----------


async def drip_client(port: int, count: int, interval: float, stats_path: Path) -> None:
    stats = {"open": 0, "opened": 0, "cut": 0, "failed": 0, "refused": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def one(i: int) -> None:
        body_drip = i % 2 == 1
        await asyncio.sleep(random.random() * SPREAD)  # staggered, so cut connections do not reopen in one burst
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["failed"] += 1
                await asyncio.sleep(0.2)
                continue
            stats["open"] += 1
            stats["opened"] += 1
            try:
                if body_drip:
                    writer.write(
                        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
                    )
                else:
                    writer.write(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Drip: ")
                closed = asyncio.ensure_future(reader.read(65536))
                while not stop.is_set():
                    done, _ = await asyncio.wait([closed], timeout=interval * (0.5 + random.random()))
                    if done:
                        data = closed.result() if not closed.exception() else b""
                        if data.startswith(b"HTTP/1.1 503"):
                            stats["refused"] += 1
                        else:
                            stats["cut"] += 1
                        break
                    writer.write(b" " if body_drip else b"z")
                    await writer.drain()
                closed.cancel()
            except (ConnectionError, OSError):
                stats["cut"] += 1
            finally:
                stats["open"] -= 1
                writer.close()
            stats_path.write_text(json.dumps(stats))

    async def report() -> None:
        while not stop.is_set():
            stats_path.write_text(json.dumps(stats))
            await asyncio.sleep(0.2)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)] + [asyncio.ensure_future(report())]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats_path.write_text(json.dumps(stats))


# -- the benchmark --------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _window(
    url: str, script: Path, pid: int, duration: float, drip: subprocess.Popen | None, stats_path: Path, want: int
) -> dict:
    if drip is not None:
        deadline = time.monotonic() + SPREAD + 30
        while True:  # wait until the drip connections are open
            try:
                stats = json.loads(stats_path.read_text())
            except (OSError, ValueError):
                stats = {"open": 0}
            if stats["open"] >= want * 0.95:
                break
            if time.monotonic() > deadline or drip.poll() is not None:
                raise RuntimeError(f"the drip client opened only {stats['open']} of {want} connections")
            time.sleep(0.1)
    res = _wrk(url, script, 8, duration, pid)
    res["rss_mb"] = _rss_mb(pid)
    if drip is not None:
        stats = json.loads(stats_path.read_text())
        res["drip_open"] = stats["open"]
        res["drip_cut"] = stats["cut"]
        res["drip_refused"] = stats["refused"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drip", type=int, default=500, help="slow-drip connections (default 500)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between a connection's bytes (default 2)")
    ap.add_argument("--duration", type=float, default=12, help="seconds per measured window (default 12)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--ref", metavar="REF", help="also measure gencli from this git commit/branch")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--drip-client", nargs=3, metavar=("PORT", "COUNT", "STATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drip_client:
        port, count, stats = args.drip_client
        asyncio.run(drip_client(int(port), int(count), args.interval, Path(stats)))
        return 0

    if not have_wrk("bench_slowloris"):
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    pin = shutil.which("taskset") is not None and len(cpus) >= 2
    server_cpu, other_cpu = (cpus[0], cpus[-1]) if pin else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="gencli-slowloris-"))
    procs: list[subprocess.Popen] = []
    runs: dict[str, list[dict]] = {}
    try:
        model = "tokens-50"
        _, models = start_fake(tmp, other_cpu, model, procs)
        servers: dict[str, tuple[str, int]] = {}
        variants = [("gencli", _gencli(), _env())]
        if args.ref:
            command, env = ref_command(args.ref, tmp / "ref")
            variants.append(("ref", command, env))
        for name, command, env in variants:
            port = _free_port()
            env = {**env, "GENCLI_ACCESS_LOG": "0"}
            p = subprocess.Popen(
                _taskset(server_cpu) + command + ["serve", "--port", str(port), "--models", str(models)],
                env=env,
                cwd=tmp,
                stdout=open(tmp / f"{name}.log", "wb"),
                stderr=subprocess.STDOUT,
            )
            procs.append(p)
            _wait_http(f"http://127.0.0.1:{port}/", p, f"gencli serve ({name})")
            _check_answers(f"http://127.0.0.1:{port}", model, 50)
            servers[name] = (f"http://127.0.0.1:{port}/api/generate", p.pid)
        script = _lua(tmp / "plain.lua", {"model": model, "prompt": "hi", "stream": False})
        for url, pid in servers.values():
            _wrk(url, script, 8, 1, pid)  # warm-up
        for r in range(args.rounds):
            for name, (url, pid) in servers.items():
                for drip_on in (False, True):
                    drip = None
                    stats_path = tmp / f"drip-{name}-{r}.json"
                    if drip_on:
                        port = url.split(":")[2].split("/")[0]
                        drip = subprocess.Popen(
                            _taskset(other_cpu)
                            + [
                                _python(),
                                __file__,
                                "--interval",
                                str(args.interval),
                                "--drip-client",
                                port,
                                str(args.drip),
                                str(stats_path),
                            ],
                            env=_env(),
                        )
                        procs.append(drip)
                    try:
                        res = _window(url, script, pid, args.duration, drip, stats_path, args.drip)
                    finally:
                        if drip is not None:
                            drip.send_signal(signal.SIGTERM)
                            drip.wait(30)
                            procs.remove(drip)
                    key = f"{name}_{'drip' if drip_on else 'quiet'}"
                    runs.setdefault(key, []).append(res)
                    extra = (
                        f"  drip open {res['drip_open']}, cut+reopened {res['drip_cut']}, refused {res['drip_refused']}"
                        if drip_on
                        else ""
                    )
                    print(
                        f"round {r + 1}/{args.rounds} {key:<12} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:7.3f} ms"
                        f"  p99 {res['p99_ms']:8.3f} ms  socket errors {res['socket_errors']}  RSS "
                        f"{res['rss_mb']:.0f} MB{extra}",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(1)
    except Exception as exc:
        print(f"bench_slowloris: {exc}", file=sys.stderr)
        return 2
    finally:
        stop_all(procs, 15)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, m: str) -> float:
        return statistics.median(x[m] for x in runs[key])

    ok = True
    results: dict = {"drip": args.drip, "interval_s": args.interval, "rounds": args.rounds, "runs": runs}
    print()
    print(
        f"normal traffic (wrk, 8 connections, non-streamed /api/generate) with and without {args.drip} slow-drip "
        f"connections; medians of {args.rounds} rounds of {args.duration:g}s"
    )
    print(f"{'server':<8} {'':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>9} {'sock err':>9} {'RSS MB':>7}")
    for name in servers:
        for state in ("quiet", "drip"):
            k = f"{name}_{state}"
            print(
                f"{name:<8} {state:<6} {med(k, 'rps'):8.1f} {med(k, 'p50_ms'):8.3f} {med(k, 'p99_ms'):9.3f} "
                f"{sum(x['socket_errors'] for x in runs[k]):9d} {med(k, 'rss_mb'):7.0f}"
            )
    print()
    print(f"{'server':<8} {'p50 drip/quiet':>15} {'p99 drip/quiet':>15} {'rate drip/quiet':>16}")
    for name in servers:
        p50 = med(f"{name}_drip", "p50_ms") / med(f"{name}_quiet", "p50_ms")
        p99 = med(f"{name}_drip", "p99_ms") / med(f"{name}_quiet", "p99_ms")
        rate = med(f"{name}_drip", "rps") / med(f"{name}_quiet", "rps")
        errors = sum(x["socket_errors"] for x in runs[f"{name}_drip"])
        results[f"{name}_ratios"] = {"p50": p50, "p99": p99, "rate": rate, "socket_errors": errors}
        good = p50 <= TARGET_P50 and p99 <= TARGET_P99 and rate >= TARGET_RATE and errors == 0
        if name == "gencli":
            ok &= good
        print(
            f"{name:<8} {p50:14.2f}x {p99:14.2f}x {rate:15.2f}x   "
            + (
                ("ok" if good else "MISSED") + f" (targets <= {TARGET_P50}x, <= {TARGET_P99}x, >= {TARGET_RATE}x, "
                "no socket errors)"
                if name == "gencli"
                else ""
            )
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
