#!/usr/bin/env python3
"""Benchmark what per-key limits cost ``gencli serve``: the same server with them off, with a
key of the keys file whose limits are counted in-process, and counted in Redis, side by side.

Three gencli workers from this tree (one process each, measured one at a time on the same
CPU) sit in front of one fake OpenAI upstream (tests/fakes/openai_upstream.py, model
``tokens-N``), answering non-streamed /v1/chat/completions:

  off     no keys file, no key
  local   a keys file; each request sends a key with rpm and tpm limits (too high to be hit),
          counted in the worker (--redis not given)
  redis   the same key and limits counted in a real redis-server (--redis), one Lua script
          per request and one per answer's tokens

wrk drives each at 32 connections; each round measures the three in turn (the order
rotating), medians are reported: requests per second, the ratio to ``off``, and the
overhead per request in microseconds (1e6/rate - 1e6/rate_off, and gencli's own CPU time per
request minus off's). Targets (issue 20): local within 5% of off (ratio >= 0.95), Redis
within 15% (>= 0.85). The fake and Redis share one CPU, the gencli servers another (taskset).

Needs wrk and redis-server (Debian: apt-get install -y wrk redis-server). Usage:

    .venv/bin/python bench/bench_keys.py [--duration 5] [--rounds 3] [--connections 32]
                                         [--tokens 50] [--no-pin] [--json]

Exit code: 0 when every target holds, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared wrk / process helpers)

TARGETS = {"local": 0.95, "redis": 0.85}
WHO = ("off", "local", "redis")


def lua(path: Path, body: dict, key: str | None) -> Path:
    header = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        + header
        + f"wrk.body = {json.dumps(json.dumps(body, separators=(',', ':')))}\n"
        + bs._DONE_LUA
    )
    return path


def start_redis(tmp: Path, cpu: int | None, procs: list[subprocess.Popen]) -> str:
    port = bs._free_port()
    redis = subprocess.Popen(
        bs._taskset(cpu)
        + ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=open(tmp / "redis.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    procs.append(redis)
    deadline = time.monotonic() + 15
    import socket

    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if redis.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def check(url: str, body: dict, key: str | None, tokens: int) -> None:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        answer = json.loads(r.read())
    text = answer["choices"][0]["message"]["content"]
    if len(text.split()) != tokens:
        raise RuntimeError(f"unexpected answer from {url}: {str(answer)[:200]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bs.wrk_arguments(ap)
    args = ap.parse_args()
    if not bs.have_wrk("bench_keys"):
        return 2
    if shutil.which("redis-server") is None:
        print(
            "bench_keys: redis-server not found; install it (Debian: apt-get install -y redis-server)", file=sys.stderr
        )
        return 2
    fake_cpu, gencli_cpu = bs.pinned_cpus(args.no_pin)

    tmp = Path(tempfile.mkdtemp(prefix="gencli-bench-keys-"))
    procs: list[subprocess.Popen] = []
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        model = f"tokens-{args.tokens}"
        _, models = bs.start_fake(tmp, fake_cpu, model, procs)
        redis_url = start_redis(tmp, fake_cpu, procs)
        keys_file = tmp / "keys.jsonl"
        env = {**bs._env(), "XDG_CONFIG_HOME": str(tmp / "config")}
        added = subprocess.run(
            bs._gencli()
            + ["keys", "add", "bench", "--rpm", "100000000", "--tpm", "1000000000000", "--keys-file", str(keys_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if added.returncode != 0:
            raise RuntimeError(f"gencli keys add: {added.stderr.strip()}")
        key = added.stdout.strip()
        extra = {
            "off": [],
            "local": ["--keys-file", str(keys_file)],
            "redis": ["--keys-file", str(keys_file), "--redis", redis_url],
        }
        urls, pids = {}, {}
        for who in WHO:
            port = bs._free_port()
            p = subprocess.Popen(
                bs._taskset(gencli_cpu)
                + bs._gencli()
                + ["serve", "--port", str(port), "--models", str(models), "--workers", "1", *extra[who]],
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"{who}.log", "wb"),
            )
            procs.append(p)
            urls[who], pids[who] = f"http://127.0.0.1:{port}/v1/chat/completions", p.pid
            bs._wait_http(f"http://127.0.0.1:{port}/", p, f"gencli serve ({who})")
        body = {"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
        scripts = {who: lua(tmp / f"{who}.lua", body, None if who == "off" else key) for who in WHO}
        for who in WHO:
            check(urls[who], body, None if who == "off" else key, args.tokens)
            bs._wrk(urls[who], scripts[who], args.connections, 1, pids[who])  # warm-up, unmeasured
        for r in range(args.rounds):
            order = WHO[r % 3 :] + WHO[: r % 3]
            for who in order:
                res = bs._wrk(urls[who], scripts[who], args.connections, args.duration, pids[who])
                runs.setdefault(who, []).append(res)
                print(
                    f"round {r + 1}/{args.rounds} {who:<6} {res['rps']:9.1f} req/s  p50 {res['p50_ms']:7.3f} ms  "
                    f"CPU {res['cpu_us']:6.0f} us/req",
                    file=sys.stderr,
                    flush=True,
                )
        bs.check_alive(procs)
        import redis

        if not redis.Redis.from_url(redis_url).hlen("gencli:{limits}:bench:r"):
            raise RuntimeError("Redis counted no requests: the redis run did not use it")
    except Exception as exc:
        print(f"bench_keys: {exc}", file=sys.stderr)
        for who in WHO:
            bs.print_tail(tmp / f"{who}.log")
        return 2
    finally:
        bs.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {w: {m: statistics.median(x[m] for x in runs[w]) for m in ("rps", "p50_ms", "cpu_us")} for w in WHO}
    off = med["off"]
    results: dict = {"connections": args.connections, "tokens": args.tokens, "rounds": args.rounds, "scenarios": {}}
    ok = True
    print(f"\nnon-streamed /v1/chat/completions, {args.connections} connections, medians of {args.rounds} rounds")
    print(f"{'':8}{'req/s':>10}{'ratio':>8}{'+us/req (wall)':>16}{'+us/req (CPU)':>15}{'target':>9}")
    for who in WHO:
        m = med[who]
        ratio = m["rps"] / off["rps"]
        wall = 1e6 / m["rps"] - 1e6 / off["rps"]
        cpu = m["cpu_us"] - off["cpu_us"]
        target = TARGETS.get(who)
        met = target is None or ratio >= target
        ok &= met
        mark = "" if target is None else f">={target:.2f} {'ok' if met else 'MISSED'}"
        print(f"{who:<8}{m['rps']:10.1f}{ratio:8.3f}{wall:16.1f}{cpu:15.1f}  {mark}")
        results["scenarios"][who] = {**m, "ratio": ratio, "overhead_wall_us": wall, "overhead_cpu_us": cpu}
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
