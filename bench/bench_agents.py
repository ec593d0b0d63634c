#!/usr/bin/env python3
"""Benchmark the agent protocols of ``gencli serve`` beside OpenAI Chat Completions.

One gencli worker in front of one fake OpenAI upstream (tests/fakes/openai_upstream.py,
model ``tokens-N``). wrk drives the same streamed generation, N tokens per answer, through
three client protocols of the same server in the same run:

  /v1/chat/completions  (the reference)
  /v1/responses         (OpenAI's Responses API: created/in_progress/item/part events, a
                         delta event per token, done events, response.completed)
  /v1/messages          (Anthropic's Messages API: message_start, ping, block events, a
                         delta event per token, message_delta, message_stop)

Each round runs the three in turn (their order rotating round to round); the medians are
reported with each protocol's ratio to chat completions. Target: each >= 0.8x (within 20%).
Before measuring, one answer per protocol is read and checked (N tokens, the right final
event). The fake and gencli are pinned to separate CPUs with taskset (wrk floats).

Needs wrk (Debian: apt-get install -y wrk). Usage:

    .venv/bin/python bench/bench_agents.py [--duration 5] [--rounds 3] [--connections 32]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared wrk / process helpers)

TARGET = 0.8


def bodies(model: str) -> dict[str, tuple[str, dict]]:
    """protocol -> (path, streamed request body)."""
    return {
        "chat": (
            "/v1/chat/completions",
            {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ),
        "responses": ("/v1/responses", {"model": model, "stream": True, "input": "hi"}),
        "messages": (
            "/v1/messages",
            {"model": model, "stream": True, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]},
        ),
    }


def check(url: str, model: str, tokens: int) -> None:
    """One streamed answer per protocol, read and checked, so the benchmark measures real answers."""
    for name, (path, body) in bodies(model).items():
        raw = bs._post(url + path, body).decode()
        datas = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
        if name == "chat":
            chunks = [json.loads(d) for d in datas if d != "[DONE]"]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
            last = datas[-1] == "[DONE]"
        elif name == "responses":
            events = [json.loads(d) for d in datas]
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            last = events[-1]["type"] == "response.completed"
        else:
            events = [json.loads(d) for d in datas]
            text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
            last = events[-1]["type"] == "message_stop"
        if len(text.split()) != tokens or not last:
            raise RuntimeError(f"unexpected {name} answer: {len(text.split())} tokens, {raw[-300:]!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bs.wrk_arguments(ap)
    args = ap.parse_args()

    if not bs.have_wrk("bench_agents"):
        return 2
    fake_cpu, gencli_cpu = bs.pinned_cpus(args.no_pin)
    pin = fake_cpu is not None

    tmp = Path(tempfile.mkdtemp(prefix="gencli-bench-agents-"))
    procs: list[subprocess.Popen] = []
    names = list(bodies("x"))
    try:
        gencli_port = bs._free_port()
        model = f"tokens-{args.tokens}"
        _, models = bs.start_fake(tmp, fake_cpu, model, procs)
        log = open(tmp / "gencli.log", "wb")
        gencli = subprocess.Popen(
            bs._taskset(gencli_cpu)
            + bs._gencli()
            + ["serve", "--host", "127.0.0.1", "--port", str(gencli_port), "--models", str(models), "--workers", "1"],
            env={**bs._env(), "GENCLI_ACCESS_LOG": "0"},
            cwd=tmp,
            stdout=log,
            stderr=log,
        )
        procs.append(gencli)
        url = f"http://127.0.0.1:{gencli_port}"
        bs._wait_http(f"{url}/", gencli, "gencli serve")
        check(url, model, args.tokens)
        scripts = {
            name: (url + path, bs._lua(tmp / f"{name}.lua", body)) for name, (path, body) in bodies(model).items()
        }
        for name in names:  # warm-up, unmeasured
            bs._wrk(scripts[name][0], scripts[name][1], args.connections, 1, gencli.pid)
        runs: dict[str, list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                res = bs._wrk(scripts[name][0], scripts[name][1], args.connections, args.duration, gencli.pid)
                runs.setdefault(name, []).append(res)
                print(
                    f"round {r + 1}/{args.rounds} {name:<10} {res['rps']:9.1f} req/s  p50 {res['p50_ms']:7.3f} ms"
                    f"  CPU {res['cpu_us']:6.0f} us/req",
                    file=sys.stderr,
                    flush=True,
                )
        if gencli.poll() is not None:
            raise RuntimeError(f"gencli serve exited with code {gencli.returncode} during the run")
    except Exception as exc:
        print(f"bench_agents: {exc}", file=sys.stderr)
        bs.print_tail(tmp / "gencli.log")
        return 2
    finally:
        bs.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms", "cpu_us")} for k, v in runs.items()}
    ref = med["chat"]
    ok = True
    results = {
        "connections": args.connections,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "runs": runs,
        "medians": med,
    }
    print()
    print(
        f"gencli serve, streamed {args.tokens} tokens from one fake upstream — 1 worker, {args.connections} "
        f"connections, {args.rounds} round(s) of {args.duration:g}s, medians; "
        + (f"fake on CPU {fake_cpu}, gencli on CPU {gencli_cpu}" if pin else "not pinned")
    )
    print(f"{'protocol':<22} {'req/s':>9} {'ratio':>7} {'target':>8}  ok  {'CPU us/req':>11} {'CPU ratio':>9}")
    for name in names:
        ratio = med[name]["rps"] / ref["rps"]
        cpu_ratio = ref["cpu_us"] / med[name]["cpu_us"]  # requests per CPU-second, relative to chat
        good = name == "chat" or ratio >= TARGET
        ok &= good
        results[f"{name}_ratio"] = ratio
        results[f"{name}_cpu_ratio"] = cpu_ratio
        print(
            f"{bodies(model)[name][0]:<22} {med[name]['rps']:9.1f} {ratio:6.3f}x "
            f"{'' if name == 'chat' else '>=' + format(TARGET, 'g') + 'x':>8}  "
            f"{'  ' if name == 'chat' else 'yes' if good else 'NO '} {med[name]['cpu_us']:11.0f} {cpu_ratio:8.3f}x"
        )
    print(
        "(CPU ratio: chat's CPU time per request over the protocol's, the server process only; "
        "less sensitive to other load on the machine)"
    )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
