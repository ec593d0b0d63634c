#!/usr/bin/env python3
"""What the gateway features cost, side by side in one run.

``gencli serve`` (one worker each) in front of the fake OpenAI upstream
(tests/fakes/openai_upstream.py):

  (a) **Metrics**: the same server with metrics on (the default) and with ``--no-metrics``,
      measured alternately in the same rounds with wrk: non-streamed and streamed
      /api/generate at 32 connections. Reported: both rates, on/off, and the CPU per
      request each spends (the overhead in µs). Target: on >= 0.95x of off.
  (b) **A fallback taken**: model ``a`` fails upstream before any output (HTTP 500, no
      retries) and falls back to ``b``; model ``dead`` has no upstream listening
      (connection refused) and falls back to ``b``. At one connection, the p50 latency of
      ``a`` and ``dead`` against ``b`` asked directly is what a fallback adds (requests sent
      one at a time, the kinds interleaved, medians of ``--samples`` each); it is set
      beside the failing upstream's own failure time: the same failing model without a
      fallback asked through gencli (its error reply), and the bare failure (the fake's 500
      asked directly; a refused connection timed alone). Target: the added latency is at
      most the failure time through gencli plus 0.5 ms (a fallback costs the failure and
      one more request, nothing more).

Each round measures every scenario once; the medians over ``--rounds`` are reported. By
default the fake is pinned to one CPU and the gencli servers to another.

Needs wrk. Usage:

    .venv/bin/python bench/bench_gateway.py [--duration 5] [--rounds 3] [--connections 32]
                                            [--tokens 50] [--no-pin] [--json]

Exit code: 0 when every target holds, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import socket
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
    _post,
    _taskset,
    _wait_http,
    _wrk,
    check_alive,
    have_wrk,
    pinned_cpus,
    print_tail,
    start_fake,
    stop_all,
    wrk_arguments,
)

TARGET_METRICS = 0.95
FALLBACK_SLACK_MS = 0.5


def interleaved(requests: dict[str, tuple[str, int, str, bytes]], n: int) -> dict[str, float]:
    """The median milliseconds of each request, sent one at a time over kept-alive
    connections (one per request kind), the kinds interleaved so that any drift in the
    machine's load touches them all alike. ``requests``: name -> (host, port, path, body)."""
    import http.client

    conns = {name: http.client.HTTPConnection(host, port, timeout=30) for name, (host, port, _, _) in requests.items()}
    times: dict[str, list[float]] = {name: [] for name in requests}
    headers = {"Content-Type": "application/json"}
    try:
        for i in range(n + 20):  # the first 20 rounds warm up
            for name, (_, _, path, body) in requests.items():
                conn = conns[name]
                t0 = time.perf_counter()
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                resp.read()
                if i >= 20:
                    times[name].append(time.perf_counter() - t0)
    finally:
        for conn in conns.values():
            conn.close()
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def refused_ms(port: int, n: int = 300) -> float:
    """The median time for a connection to a closed loopback port to be refused."""
    times = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter()
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            times.append(time.perf_counter() - t0)
        else:
            raise RuntimeError(f"127.0.0.1:{port} accepted a connection; it should be closed")
        finally:
            s.close()
    return statistics.median(times) * 1000


def start_gencli(tmp: Path, name: str, models: Path, args: list[str], cpu: int | None, procs: list) -> str:
    port = _free_port()
    proc = subprocess.Popen(
        _taskset(cpu) + _gencli() + ["serve", "--port", str(port), "--models", str(models), *args],
        env={**_env(), "GENCLI_ACCESS_LOG": "0"},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{name}.log", "wb"),
    )
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/", proc, f"gencli serve ({name})")
    return url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    wrk_arguments(ap)
    ap.add_argument("--samples", type=int, default=300, help="requests of each kind per round for (b) (default 300)")
    args = ap.parse_args()
    if not have_wrk("bench_gateway"):
        return 2
    fake_cpu, gencli_cpu = pinned_cpus(args.no_pin)
    model = f"tokens-{args.tokens}"
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        fake, _ = start_fake(tmp, fake_cpu, model, procs)
        closed = _free_port()
        upstream = {"provider": "openai-compatible", "base_url": f"{fake}/v1"}
        models = tmp / "gateway-models.json"
        models.write_text(
            json.dumps(
                {
                    model: {**upstream, "model": model},
                    "b": {**upstream, "model": model},
                    "a": {**upstream, "model": "error-500", "retries": 0, "fallbacks": ["b"]},
                    "a-alone": {**upstream, "model": "error-500", "retries": 0},
                    "dead-alone": {
                        **upstream,
                        "base_url": f"http://127.0.0.1:{closed}/v1",
                        "model": model,
                        "retries": 0,
                    },
                    "dead": {
                        **upstream,
                        "base_url": f"http://127.0.0.1:{closed}/v1",
                        "model": model,
                        "retries": 0,
                        "fallbacks": ["b"],
                    },
                }
            )
        )
        on = start_gencli(tmp, "metrics-on", models, [], gencli_cpu, procs)
        off = start_gencli(tmp, "metrics-off", models, ["--no-metrics"], gencli_cpu, procs)
        pids = {on: procs[-2].pid, off: procs[-1].pid}
        for url in (on, off):
            _check_answers(url, model, args.tokens)
        for name in ("a", "dead"):
            got = json.loads(_post(f"{on}/api/generate", {"model": name, "prompt": "hi"}))
            if got.get("model") != name or len(got.get("response", "").split()) != args.tokens:
                raise RuntimeError(f"the fallback of {name} did not answer: {str(got)[:200]}")
        scripts = {
            "plain": _lua(tmp / "plain.lua", {"model": model, "prompt": "hi", "stream": False}),
            "stream": _lua(tmp / "stream.lua", {"model": model, "prompt": "hi", "stream": True}),
        }
        gencli_port, fake_port = int(on.rsplit(":", 1)[1]), int(fake.rsplit(":", 1)[1])

        def ask(name: str) -> tuple[str, int, str, bytes]:
            return ("127.0.0.1", gencli_port, "/api/generate", json.dumps({"model": name, "prompt": "hi"}).encode())

        failing = json.dumps({"model": "error-500", "messages": [{"role": "user", "content": "hi"}]}).encode()
        latency = {name: ask(name) for name in ("b", "a", "a-alone", "dead", "dead-alone")}
        latency["fail"] = ("127.0.0.1", fake_port, "/v1/chat/completions", failing)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):
            for kind in ("plain", "stream"):
                for label, url in (("on", on), ("off", off)):
                    r = _wrk(f"{url}/api/generate", scripts[kind], args.connections, args.duration, pids[url])
                    runs.setdefault(f"{kind}-{label}", []).append(r)
                    check_alive(procs)
            for name, ms in interleaved(latency, args.samples).items():
                runs.setdefault(f"latency-{name}", []).append({"p50_ms": ms})
            runs.setdefault("refused", []).append({"p50_ms": refused_ms(closed)})
            check_alive(procs)

        def med(key: str, field: str) -> float:
            return statistics.median(r[field] for r in runs[key])

        results: dict[str, float] = {}
        ok = True
        print(f"gencli serve, 1 worker, {args.connections} connections, {args.tokens} tokens, {args.rounds} rounds")
        print(f"{'(a) metrics':<28}{'on rps':>10}{'off rps':>10}{'on/off':>9}{'on cpu/req':>12}{'off cpu/req':>12}")
        for kind in ("plain", "stream"):
            r_on, r_off = med(f"{kind}-on", "rps"), med(f"{kind}-off", "rps")
            c_on, c_off = med(f"{kind}-on", "cpu_us"), med(f"{kind}-off", "cpu_us")
            ratio = r_on / r_off
            ok &= ratio >= TARGET_METRICS
            results.update({f"{kind}_on_rps": r_on, f"{kind}_off_rps": r_off, f"{kind}_ratio": ratio})
            results.update({f"{kind}_on_cpu_us": c_on, f"{kind}_off_cpu_us": c_off})
            print(
                f"  /api/generate {kind:<13}{r_on:>10.0f}{r_off:>10.0f}{ratio:>8.3f}x{c_on:>10.0f}µs{c_off:>10.0f}µs"
                f"   overhead {c_on - c_off:+.0f} µs/request (target on/off >= {TARGET_METRICS})"
            )
        direct = med("latency-b", "p50_ms")
        print(
            f"{'(b) a fallback taken':<28}{'p50 ms':>10}{'added':>9}{'failure':>9}{'bare':>8}{'beyond':>9}"
            "   (ms; failure: the model alone through gencli; bare: the upstream's failure alone)"
        )
        print(f"  {'b asked directly':<26}{direct:>10.3f}")
        for name, bare_key, what in (("a", "latency-fail", "HTTP 500"), ("dead", "refused", "refused")):
            p50 = med(f"latency-{name}", "p50_ms")
            failure = med(f"latency-{name}-alone", "p50_ms")
            bare = med(bare_key, "p50_ms")
            added = p50 - direct
            beyond = added - failure
            ok &= beyond <= FALLBACK_SLACK_MS
            results.update({f"fallback_{name}_p50_ms": p50, f"fallback_{name}_added_ms": added})
            results.update({f"fallback_{name}_failure_ms": failure, f"fallback_{name}_beyond_ms": beyond})
            results[f"fallback_{name}_bare_failure_ms"] = bare
            print(
                f"  {name + ' (' + what + ') -> b':<26}{p50:>10.3f}{added:>9.3f}{failure:>9.3f}{bare:>8.3f}"
                f"{beyond:>9.3f}   added/failure {added / failure if failure else float('inf'):.2f}x"
                f" (target: beyond <= {FALLBACK_SLACK_MS} ms)"
            )
        results["direct_b_p50_ms"] = direct
        if args.json:
            print(json.dumps(results, indent=1))
        return 0 if ok else 1
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench_gateway: {exc}", file=sys.stderr)
        for log in sorted(tmp.glob("*.log")):
            print_tail(log)
        return 2
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
