#!/usr/bin/env python3
"""Upstream HTTP clients side by side: the CPU each spends per request to the same upstream.

The fake OpenAI upstream (tests/fakes/openai_upstream.py, model ``tokens-N``) runs on one
CPU; each client runs in its own process on the other CPU and sends the same requests at
the same concurrency: non-streamed chat completions (the body read whole) and streamed
ones (N tokens, the body read as it arrives, chunk by chunk, as gencli's engine does). Each
worker warms up, then reports its process CPU time (all threads) per request and its
rate. Clients, each used as gencli would (one pool per process, keep-alive, no redirects):

  gencli     gencli.transports.httpclient (httptools' parser, what gencli serve uses)
  aiohttp    aiohttp.ClientSession (gencli serve's client before issue 14)
  httpx      httpx.AsyncClient (HTTP/1.1)
  aiosonic   aiosonic.HTTPClient
  rnet       rnet.Client (Rust: hyper on tokio threads)

A client whose package is missing is skipped. Rounds rotate the order; medians are shown,
with each client's CPU per request over gencli's. Usage:

    .venv/bin/python bench/bench_clients.py [--requests 3000] [--concurrency 16] [--rounds 3]
                                            [--tokens 50] [--clients gencli,aiohttp,...] [--json]

Exit code 0, or 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared process helpers)

CLIENTS = ("gencli", "aiohttp", "httpx", "aiosonic", "rnet")
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


# -- the workers (one client each, in its own process) -----------------------------------------


async def _gencli(url: str, body: bytes, stream: bool, n: int, conc: int) -> None:
    from gencli.transports.httpclient import Pool

    pool = Pool(trust_env=False)

    async def one() -> bytes:
        r = await pool.request("POST", url, HEADERS, body)
        try:
            if not stream:
                return await r.read()
            return b"".join([chunk async for chunk in r.iter_bytes()])
        finally:
            r.close()

    await _drive(one, n, conc)
    await pool.close()


async def _aiohttp(url: str, body: bytes, stream: bool, n: int, conc: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300),
        skip_auto_headers=("User-Agent",),
    ) as session:

        async def one() -> bytes:
            async with session.request("POST", url, headers=HEADERS, data=body, allow_redirects=False) as r:
                if not stream:
                    return await r.read()
                out = []
                while chunk := await r.content.readany():
                    out.append(chunk)
                return b"".join(out)

        await _drive(one, n, conc)


async def _httpx(url: str, body: bytes, stream: bool, n: int, conc: int) -> None:
    import httpx

    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=300,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    ) as c:

        async def one() -> bytes:
            async with c.stream("POST", url, headers=HEADERS, content=body) as r:
                if not stream:
                    return await r.aread()
                return b"".join([chunk async for chunk in r.aiter_raw()])

        await _drive(one, n, conc)


async def _aiosonic(url: str, body: bytes, stream: bool, n: int, conc: int) -> None:
    import aiosonic

    client = aiosonic.HTTPClient()

    async def one() -> bytes:
        r = await client.post(url, data=body, headers=HEADERS)
        if not stream:
            return await r.content()
        return b"".join([chunk async for chunk in r.read_chunks()])

    await _drive(one, n, conc)


async def _rnet(url: str, body: bytes, stream: bool, n: int, conc: int) -> None:
    import rnet

    client = rnet.Client()

    async def one() -> bytes:
        r = await client.post(url, body=body, headers=HEADERS)
        if not stream:
            return await r.bytes()
        async with r.stream() as chunks:
            return b"".join([bytes(chunk) async for chunk in chunks])

    await _drive(one, n, conc)


async def _drive(one, n: int, conc: int) -> None:
    left = [n]

    async def loop() -> None:
        while left[0] > 0:
            left[0] -= 1
            if b"tok" not in await one():
                raise RuntimeError("an answer without its tokens")

    await asyncio.gather(*(loop() for _ in range(conc)))


def worker(name: str, url: str, stream: bool, n: int, conc: int, tokens: int) -> dict:
    body = json.dumps(
        {"model": f"tokens-{tokens}", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    run = globals()["_" + name]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None

    async def main() -> dict:
        await run(url, body, stream, max(50, n // 10), conc)  # warm-up: pools, imports, caches
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run(url, body, stream, n, conc)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        return {"cpu_us": cpu * 1e6 / n, "rps": n / wall}

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


# -- the driver ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per measurement (default 3000)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--tokens", type=int, default=50, help="tokens per streamed answer (default 50)")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated, from: " + ", ".join(CLIENTS))
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.stream, args.requests, args.concurrency, args.tokens)))
        return 0

    names = []
    for name in args.clients.split(","):
        module = {"gencli": "gencli.transports.httpclient"}.get(name, name)
        probe = subprocess.run([bs._python(), "-c", f"import {module}"], capture_output=True)
        if name not in CLIENTS or probe.returncode:
            print(f"bench_clients: skipping {name} (not installed)", file=sys.stderr)
        else:
            names.append(name)
    cpus = sorted(bs.os.sched_getaffinity(0))
    mine, rest = (cpus[0], cpus[-1]) if len(cpus) >= 2 else (None, None)
    fake_port = bs._free_port()
    fake = subprocess.Popen(
        bs._taskset(rest) + [bs._python(), str(bs.FAKE), "--port", str(fake_port)],
        env=bs._env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, list]] = {}
    try:
        url = f"http://127.0.0.1:{fake_port}/v1/chat/completions"
        bs._wait_http(f"http://127.0.0.1:{fake_port}/v1/models", fake, "the fake upstream")
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for stream in (False, True):
                for name in order:
                    cmd = bs._taskset(mine) + [
                        bs._python(),
                        __file__,
                        "--worker",
                        name,
                        "--url",
                        url,
                        "--requests",
                        str(args.requests // (5 if stream else 1)),
                        "--concurrency",
                        str(args.concurrency),
                        "--tokens",
                        str(args.tokens),
                    ]
                    out = subprocess.run(
                        cmd + (["--stream"] if stream else []),
                        capture_output=True,
                        text=True,
                        timeout=600,
                        env=bs._env(),
                    )
                    if out.returncode:
                        raise RuntimeError(f"{name}: {out.stderr.strip()[-500:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    kind = "streamed" if stream else "non-streamed"
                    results.setdefault(kind, {}).setdefault(name, []).append(res)
                    print(
                        f"round {r + 1}/{args.rounds} {kind:<13} {name:<9} {res['rps']:8.0f} req/s  "
                        f"CPU {res['cpu_us']:6.0f} us/req",
                        file=sys.stderr,
                        flush=True,
                    )
    except Exception as exc:
        print(f"bench_clients: {exc}", file=sys.stderr)
        return 2
    finally:
        fake.terminate()
        fake.wait(10)

    print()
    print(
        f"Upstream clients, {args.concurrency} requests in flight, the fake upstream on CPU {rest}, each client "
        f"alone on CPU {mine}; medians of {args.rounds} rounds (streamed: {args.tokens} tokens)"
    )
    med = {
        kind: {name: {k: statistics.median(x[k] for x in runs) for k in ("cpu_us", "rps")} for name, runs in by.items()}
        for kind, by in results.items()
    }
    print(f"{'client':<10}" + "".join(f"{kind + ' CPU us/req':>28}{'req/s':>9}" for kind in med))
    for name in names:
        cells = ""
        for kind in med:
            m, ref = med[kind][name], med[kind].get("gencli")
            ratio = f" ({m['cpu_us'] / ref['cpu_us']:.2f}x)" if ref else ""
            cells += f"{m['cpu_us']:19.0f}{ratio:>9}{m['rps']:9.0f}"
        print(f"{name:<10}{cells}")
    if args.json:
        print(json.dumps({"medians": med, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
