#!/usr/bin/env python3
"""HTTP servers for gencli serve side by side: the CPU each spends per request.

Each server runs alone on one CPU (wrk and the fake upstream on the other) with one
worker, and wrk drives it at 32 connections:

  tiny      a minimal app on each server: POST, the body read, a fixed 60-byte JSON
            answer. What the HTTP layer itself costs.
  generate  gencli's whole app (POST /api/generate, non-streamed, in front of the fake
            upstream, model tokens-N), on the servers that run an ASGI app; the access
            log on as ``gencli serve`` has it. What a user gets.

Servers: ``http11`` (gencli's own, httptools + uvloop, what ``gencli serve`` runs),
``uvicorn`` (httptools + uvloop), ``granian`` (Rust, its ASGI interface) and
``granian-rsgi`` (granian's own interface: the tiny app only, as gencli's app is ASGI).
A server whose package is missing is skipped. CPU time is that of the server's whole
process tree (granian runs its worker in a child process), from /proc.

    .venv/bin/python bench/bench_servers.py [--duration 4] [--rounds 3] [--json]

Exit code 0, or 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared wrk / process helpers)

TINY = """
import os, socket, sys

ANSWER = b'{"model":"m","response":"ok","done":true,"done_reason":"stop"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        m = await receive()
        more = m.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


RSGI_HEADERS = [("content-type", "application/json")]


async def rsgi(scope, proto):
    await proto()
    proto.response_bytes(200, RSGI_HEADERS, ANSWER)


def gencli_app():
    from gencli.server.app import create_app
    return create_app()


def http11(port, app_name):
    from gencli.server.http11 import Limits
    from gencli.server.runner import serve_process
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    if app_name == "tiny":
        make = lambda: asgi
    else:
        def make():
            from gencli.server.app import create_app
            return create_app(server_log=True)  # as gencli serve runs it
    sys.exit(serve_process(sock, make, Limits(), 5.0))


if __name__ == "__main__":
    http11(int(sys.argv[1]), sys.argv[2])
"""


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += bs._cpu_seconds(p)
        except OSError:
            pass
        todo.extend(children.get(p, ()))
    return total


def commands(server: str, app: str, port: int) -> list[str] | None:
    py = bs._python()
    if server == "http11":
        return [py, "tinyapps.py", str(port), app]
    if server == "uvicorn":
        target = ["tinyapps:asgi"] if app == "tiny" else ["--factory", "tinyapps:gencli_app"]
        return [
            py,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            *target,
        ]
    if server.startswith("granian"):
        rsgi = server == "granian-rsgi"
        if rsgi and app != "tiny":
            return None
        target = (
            ["tinyapps:rsgi" if rsgi else "tinyapps:asgi"] if app == "tiny" else ["--factory", "tinyapps:gencli_app"]
        )
        return [
            py,
            "-m",
            "granian",
            "--interface",
            "rsgi" if rsgi else "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--loop",
            "uvloop",
            "--no-ws",
            "--log-level",
            "warning",
            *target,
        ]
    raise ValueError(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4, help="seconds per wrk run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--tokens", type=int, default=50, help="tokens per answer (default 50)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    if not bs.have_wrk("bench_servers"):
        return 2
    servers = ["http11"]
    for name, module in (("uvicorn", "uvicorn"), ("granian", "granian"), ("granian-rsgi", "granian")):
        if subprocess.run([bs._python(), "-c", f"import {module}"], capture_output=True).returncode == 0:
            servers.append(name)
        else:
            print(f"bench_servers: skipping {name} ({module} is not installed)", file=sys.stderr)
    cpus = sorted(os.sched_getaffinity(0))
    mine, rest = cpus[0], cpus[-1]
    tmp = Path(tempfile.mkdtemp(prefix="gencli-servers-"))
    (tmp / "tinyapps.py").write_text(TINY)
    procs: list[subprocess.Popen] = []
    results: dict[str, dict[str, list]] = {}
    try:
        model = f"tokens-{args.tokens}"
        _, models = bs.start_fake(tmp, rest, model, procs)
        env = {**bs._env(), "PYTHONPATH": str(tmp), "GENCLI_MODELS": str(models)}
        script = bs._lua(tmp / "generate.lua", {"model": model, "prompt": "hi", "stream": False})
        for r in range(args.rounds):
            for app in ("tiny", "generate"):
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                for server in order:
                    cmd = commands(server, app, 0)
                    if cmd is None:
                        continue
                    port = bs._free_port()
                    proc = subprocess.Popen(
                        bs._taskset(mine) + commands(server, app, port),
                        cwd=tmp,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=open(tmp / f"{server}.log", "ab"),
                        start_new_session=True,
                    )
                    procs.append(proc)
                    url = f"http://127.0.0.1:{port}/api/generate"
                    try:
                        bs._wait_http(
                            f"http://127.0.0.1:{port}/", proc, server, timeout=30
                        ) if app == "generate" else _wait_port(port, proc, server)
                        run = lambda d, url=url, proc=proc: _wrk(url, script, d, proc.pid, rest)  # noqa: E731
                        run(1)  # warm-up
                        res = run(args.duration)
                    finally:
                        os.killpg(proc.pid, signal.SIGTERM)
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            os.killpg(proc.pid, signal.SIGKILL)
                        procs.remove(proc)
                    results.setdefault(app, {}).setdefault(server, []).append(res)
                    print(
                        f"round {r + 1}/{args.rounds} {app:<9} {server:<13} {res['rps']:8.0f} req/s  "
                        f"CPU {res['cpu_us']:6.0f} us/req",
                        file=sys.stderr,
                        flush=True,
                    )
    except Exception as exc:
        print(f"bench_servers: {exc}", file=sys.stderr)
        for log in tmp.glob("*.log"):
            print(f"{log.name}: {log.read_text(errors='replace')[-800:]}", file=sys.stderr)
        return 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {
        app: {s: {k: statistics.median(x[k] for x in v) for k in ("rps", "cpu_us")} for s, v in by.items()}
        for app, by in results.items()
    }
    print()
    print(
        f"HTTP servers, 1 worker on CPU {mine} alone, wrk (32 connections) and the fake upstream on CPU {rest}; "
        f"medians of {args.rounds} rounds of {args.duration:g} s"
    )
    print(f"{'server':<14}" + "".join(f"{app + ' req/s':>16}{'CPU us/req':>12}{'vs http11':>10}" for app in med))
    for server in servers:
        row = f"{server:<14}"
        for app in med:
            m = med[app].get(server)
            if m is None:
                row += f"{'-':>16}{'-':>12}{'':>10}"
                continue
            ref = med[app]["http11"]["cpu_us"]
            row += f"{m['rps']:16.0f}{m['cpu_us']:12.0f}{m['cpu_us'] / ref:9.2f}x"
        print(row)
    if args.json:
        print(json.dumps({"medians": med, "runs": results}, indent=2))
    return 0


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(0.3)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _wrk(url: str, script: Path, duration: float, pid: int, cpu: int) -> dict:
    cpu0 = _tree_cpu(pid)
    out = subprocess.run(
        bs._taskset(cpu) + ["wrk", "-t1", "-c32", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    used = _tree_cpu(pid) - cpu0
    m = re.search(r"BENCH (.*)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    if f["status_errors"] or not f["requests"]:
        raise RuntimeError(f"{url}: {f['status_errors']} non-2xx answers out of {f['requests']}")
    return {"rps": f["requests"] / (f["duration_us"] / 1e6), "cpu_us": used * 1e6 / f["requests"]}


if __name__ == "__main__":
    sys.exit(main())
