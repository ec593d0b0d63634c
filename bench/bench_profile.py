#!/usr/bin/env python3
"""Where ``gencli serve`` spends its CPU, per request, per route: a profile in microseconds.

One gencli worker (CPU 0, alone) in front of the fake OpenAI upstream (model ``tokens-N``),
with the fake, wrk and the sampler on CPU 1, so that every CPU sample of gencli is its own
work (no other process on its core to be preempted by). For each route, non-streamed and
streamed (N tokens per answer), at 32 connections:

  1. wrk for ``--duration`` seconds, ``--rounds`` times (with ``--ref``, the two sides
     alternating): gencli's CPU time per request from /proc (user+system), the median;
  2. wrk again while py-spy samples gencli (``--rate`` Hz, non-blocking): the share of the
     samples each part of the server takes (by the innermost frame of each sample, see
     ``CATEGORIES``), applied to the CPU time per request of step 1.

The routes: ``/api/generate``, ``/api/chat``, ``/v1/chat/completions`` (``--routes all``
adds ``/v1/responses`` and ``/v1/messages``). With ``--ref REF`` the same scenarios run on
gencli from another commit, in the same run, and a before/after column shows both.

Needs wrk and py-spy (``pip install py-spy``; without it only the CPU per request is shown).
Usage:

    .venv/bin/python bench/bench_profile.py [--duration 6] [--rate 400] [--routes all]
                                            [--tokens 50] [--ref REF] [--top N] [--json]

Exit code 0, or 2 when the run failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared wrk / process helpers)

# (file suffix, function or None, category): the first rule matching a sample's innermost
# frame names its category. Native code (orjson, zlib, httptools, uvloop, the socket calls)
# has no frame of its own: it counts for the Python line that called it.
CATEGORIES = [
    ("gencli/server/http11.py", "flush", "server: socket writes"),
    ("gencli/server/http11.py", "write", "server: socket writes"),
    ("gencli/server/http11.py", "data_received", "server: HTTP parsing (httptools)"),
    ("gencli/server/http11.py", "_feed", "server: HTTP parsing (httptools)"),
    ("gencli/server/http11.py", "on_", "server: HTTP parsing (httptools)"),
    ("gencli/server/http11.py", None, "server: connection, cycle, ASGI calls"),
    ("gencli/server/accesslog.py", None, "access log"),
    ("threading.py", None, "access log"),
    ("gencli/server/guard.py", None, "guard (host, origin, key, body cap)"),
    ("gencli/server/asgi.py", "parse_json", "request JSON parse"),
    ("gencli/server/asgi.py", "read_json", "request body read"),
    ("gencli/server/asgi.py", "send_", "reply: headers and send"),
    ("gencli/server/asgi.py", None, "app: validation, run loop"),
    ("gencli/server/state.py", "read_json", "request body read"),
    ("gencli/server/state.py", None, "app: validation, run loop"),
    ("gencli/server/api/streaming.py", "Disconnect", "disconnect watcher"),
    ("gencli/server/api/streaming.py", None, "app: validation, run loop"),
    ("gencli/server/app.py", None, "routing"),
    ("gencli/server/api/ollama.py", "Ollama", "reply: JSON building"),
    ("gencli/server/api/ollama.py", None, "app: validation, run loop"),
    ("gencli/server/api/openai.py", "OpenAI", "reply: JSON building"),
    ("gencli/server/api/openai.py", None, "app: validation, run loop"),
    ("gencli/server/api/responses.py", None, "reply: JSON building"),
    ("gencli/server/api/anthropic.py", None, "reply: JSON building"),
    ("gencli/core/replies.py", None, "reply: JSON building"),
    ("gencli/core/context.py", "encode", "context encoding"),
    ("gencli/engine/__init__.py", None, "engine: prepare, events, retries"),
    ("gencli/core/retry.py", None, "engine: prepare, events, retries"),
    ("gencli/config/registry.py", None, "engine: prepare, events, retries"),
    ("gencli/core/think.py", None, "engine: prepare, events, retries"),
    ("gencli/core/tools.py", None, "engine: prepare, events, retries"),
    ("gencli/providers/", None, "adapter: upstream JSON and SSE"),
    ("gencli/core/sse.py", None, "adapter: upstream JSON and SSE"),
    ("gencli/transport_aiohttp.py", None, "upstream client"),
    ("gencli/transports/server.py", None, "upstream client"),
    ("gencli/transports/httpclient.py", None, "upstream client"),
    ("aiohttp/", None, "upstream client"),
    ("yarl/", None, "upstream client"),
    ("multidict/", None, "upstream client"),
    ("asyncio/runners.py", None, "event loop (uvloop, callbacks)"),
    ("asyncio/", None, "event loop (uvloop, callbacks)"),
    ("contextlib.py", None, "event loop (uvloop, callbacks)"),
    ("_weakrefset.py", None, "event loop (uvloop, callbacks)"),
    ("<string>", None, "event loop (uvloop, callbacks)"),
]
_FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")
# A thread waiting (the access-log writer between its writes) is not spending CPU; py-spy
# may still sample it: such samples are left out.
IDLE = ("Condition.wait (threading.py", "Event.wait (threading.py", "LogWriter._run (")


def categorize(frames: list[str]) -> str:
    """The category of one sample (its frames, outermost first)."""
    leaf = frames[-1] if frames else ""
    m = _FRAME.match(leaf)
    func, path = (m.group(1), m.group(2)) if m else (leaf, leaf)
    for suffix, fname, cat in CATEGORIES:
        if suffix in path and (fname is None or fname in func):
            return cat
    return "other: " + (path.rsplit("site-packages/", 1)[-1] if path else "?")


def shares(raw: Path) -> tuple[dict[str, float], int]:
    """Category -> share of the samples in a py-spy ``--format raw`` file; and the sample count."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or stack.rsplit(";", 1)[-1].startswith(IDLE):
            continue
        counts[categorize(stack.split(";"))] += int(n)
        total += int(n)
    return ({k: v / total for k, v in counts.items()} if total else {}), total


def scenarios(model: str, routes: str) -> list[tuple[str, str, dict]]:
    """(name, path, body) for each route, non-streamed and streamed."""
    msgs = [{"role": "user", "content": "hi"}]
    base = [
        ("generate", "/api/generate", {"model": model, "prompt": "hi"}),
        ("chat", "/api/chat", {"model": model, "messages": msgs}),
        ("openai", "/v1/chat/completions", {"model": model, "messages": msgs}),
    ]
    if routes == "all":
        base += [
            ("responses", "/v1/responses", {"model": model, "input": "hi"}),
            ("messages", "/v1/messages", {"model": model, "max_tokens": 1000, "messages": msgs}),
        ]
    out = []
    for stream in (False, True):
        for name, path, body in base:
            out.append((f"{name}{' streamed' if stream else ''}", path, {**body, "stream": stream}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=6, help="seconds per wrk run (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="CPU measurements per side; medians (default 3)")
    ap.add_argument("--rate", type=int, default=400, help="py-spy samples per second (default 400)")
    ap.add_argument("--tokens", type=int, default=50, help="tokens per answer (default 50)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    ap.add_argument(
        "--routes",
        choices=("main", "all"),
        default="main",
        help="main: generate, chat, chat completions; all: also /v1/responses, /v1/messages",
    )
    ap.add_argument("--ref", metavar="REF", help="also profile gencli from this git commit/branch (before/after)")
    ap.add_argument("--top", type=int, default=12, help="categories shown per scenario (default 12)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    if not bs.have_wrk("bench_profile"):
        return 2
    spy = shutil.which("py-spy") or str(Path(bs._python()).with_name("py-spy"))
    if not Path(spy).exists():
        spy = None
        print("bench_profile: py-spy not found (pip install py-spy): CPU per request only", file=sys.stderr)
    cpus = sorted(bs.os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("bench_profile: needs 2 CPUs (gencli alone on one)", file=sys.stderr)
        return 2
    mine, rest = cpus[0], cpus[-1]

    tmp = Path(tempfile.mkdtemp(prefix="gencli-profile-"))
    procs: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        model = f"tokens-{args.tokens}"
        _, models = bs.start_fake(tmp, rest, model, procs)
        sides = {"this": (bs._gencli(), bs._env())}
        if args.ref:
            sides[args.ref] = bs.ref_command(args.ref, tmp / "ref")
        servers = {}
        for side, (command, env) in sides.items():
            port = bs._free_port()
            proc = subprocess.Popen(
                bs._taskset(mine)
                + command
                + ["serve", "--host", "127.0.0.1", "--port", str(port), "--models", str(models), "--workers", "1"],
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"{len(servers)}.log", "wb"),
            )
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            bs._wait_http(f"{url}/", proc, f"gencli serve ({side})")
            bs._check_answers(url, model, args.tokens)
            servers[side] = (url, proc.pid)

        def wrk(url: str, script: Path, duration: float, pid: int) -> dict:
            cpu0 = bs._cpu_seconds(pid)
            cmd = bs._taskset(rest) + [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{duration:g}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
            cpu = bs._cpu_seconds(pid) - cpu0
            m = re.search(r"BENCH (.*)", out.stdout)
            if out.returncode != 0 or not m:
                raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
            f = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
            if f["status_errors"] or not f["requests"]:
                raise RuntimeError(f"{url}: {f['status_errors']} non-2xx answers out of {f['requests']}")
            return {"rps": f["requests"] / (f["duration_us"] / 1e6), "cpu_us": cpu * 1e6 / f["requests"]}

        for name, path, body in scenarios(model, args.routes):
            script = bs._lua(tmp / (re.sub(r"\W", "_", name) + ".lua"), body)
            for url, pid in servers.values():
                wrk(url + path, script, 1, pid)  # warm-up
            cpu: dict[str, list[dict]] = {side: [] for side in servers}
            for r in range(args.rounds):  # the sides alternate, and which goes first
                order = list(servers.items())
                for side, (url, pid) in order if r % 2 == 0 else order[::-1]:
                    cpu[side].append(wrk(url + path, script, args.duration, pid))
            for side, (url, pid) in servers.items():
                res = {
                    "rps": statistics.median(x["rps"] for x in cpu[side]),
                    "cpu_us": statistics.median(x["cpu_us"] for x in cpu[side]),
                    "cpu_us_rounds": [round(x["cpu_us"]) for x in cpu[side]],
                }
                if spy:
                    raw = tmp / "spy.raw"
                    sampler = subprocess.Popen(
                        bs._taskset(rest)
                        + [
                            spy,
                            "record",
                            "-p",
                            str(pid),
                            "-r",
                            str(args.rate),
                            "-d",
                            f"{max(1, int(args.duration) - 1)}",
                            "-f",
                            "raw",
                            "-o",
                            str(raw),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    wrk(url + path, script, args.duration, pid)
                    sampler.wait(timeout=args.duration + 30)
                    res["shares"], res["samples"] = shares(raw) if raw.exists() else ({}, 0)
                results.setdefault(name, {})[side] = res
                print(
                    f"{name:<22} {side:<8} {res['rps']:8.0f} req/s  CPU {res['cpu_us']:6.0f} us/req "
                    f"{res['cpu_us_rounds']}" + (f"  ({res.get('samples', 0)} samples)" if spy else ""),
                    file=sys.stderr,
                    flush=True,
                )
        bs.check_alive(procs)
    except Exception as exc:
        print(f"bench_profile: {exc}", file=sys.stderr)
        for log in sorted(tmp.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-10:]
            if tail:
                print(f"{log.name} (tail):\n  " + "\n  ".join(tail), file=sys.stderr)
        return 2
    finally:
        bs.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    sides_order = list(next(iter(results.values())).keys())
    print()
    print(
        f"CPU per request in gencli serve (us, from /proc), {args.connections} connections, {args.tokens} tokens;"
        f" gencli alone on CPU {mine}"
    )
    print(f"{'scenario':<24}" + "".join(f"{s:>12}" for s in sides_order))
    for name, by in results.items():
        print(f"{name:<24}" + "".join(f"{by[s]['cpu_us']:12.0f}" for s in sides_order))
    if spy:
        for name, by in results.items():
            print()
            print(f"{name}: where the CPU per request goes (us; share of samples)")
            first = by[sides_order[-1] if args.ref else sides_order[0]]
            cats = sorted(
                {c for s in sides_order for c in by[s].get("shares", {})},
                key=lambda c: -first.get("shares", {}).get(c, 0),
            )
            for c in cats[: args.top]:
                cells = "".join(
                    f"{by[s]['cpu_us'] * by[s].get('shares', {}).get(c, 0):9.0f} us"
                    f" {100 * by[s].get('shares', {}).get(c, 0):4.0f}%"
                    for s in sides_order
                )
                print(f"  {c:<40}{cells}")
            rest_share = {s: 1 - sum(by[s].get("shares", {}).get(c, 0) for c in cats[: args.top]) for s in sides_order}
            print(
                f"  {'(the rest)':<40}"
                + "".join(f"{by[s]['cpu_us'] * rest_share[s]:9.0f} us {100 * rest_share[s]:4.0f}%" for s in sides_order)
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
