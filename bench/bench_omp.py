#!/usr/bin/env python3
"""Benchmark llama.cpp's OpenMP wait policy for the local model: ``gencli generate -m smollm2``
with llama.cpp's OpenMP threads as libgomp has them by default (they spin 300000 times before
they sleep: ``GOMP_SPINCOUNT=300000``, which takes precedence over ``OMP_WAIT_POLICY``) and
``passive`` (they sleep at once; gencli's runner default), alternating in one run, a fresh
process each time (the model load counts).

Reports per setting the median tokens per second (eval_count / eval_duration), the load and
prompt time (load_duration + prompt_eval_duration) and the wall time of the command, and the
ratios passive / default. ``--load`` adds two busy loops for the run, as on a machine whose
cores other work shares.

    .venv/bin/python bench/bench_omp.py [--rounds 6] [--tokens 64] [--load]

Needs the local extra (scripts/install.sh). Exit code: 0, or 2 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("default", "passive")
PROMPT = "Write a short story about a lighthouse keeper."


def run(gencli: str, side: str, tokens: int) -> tuple[float, float, float]:
    """(tok/s, load + prompt seconds, wall seconds) of one generation."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_WAIT_POLICY"] = "passive"
    if side == "default":  # libgomp's own: spin 300000 times, then sleep (GOMP_SPINCOUNT wins over the policy)
        env["GOMP_SPINCOUNT"] = "300000"
    argv = [gencli, "generate", "-m", "smollm2", "--seed", "1", "--num-predict", str(tokens), "--no-log", "--json"]
    argv.append(PROMPT)
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True)
    wall = time.perf_counter() - start
    done = json.loads(out.stdout.strip().splitlines()[-1])
    return (
        done["eval_count"] / (done["eval_duration"] / 1e9),
        (done["load_duration"] + done["prompt_eval_duration"]) / 1e9,
        wall,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--load", action="store_true", help="two busy loops run meanwhile")
    args = parser.parse_args()
    gencli = str(Path(sys.executable).with_name("gencli"))
    figures: dict[str, list[tuple[float, float, float]]] = {s: [] for s in SIDES}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if args.load else 0)]
    try:
        for r in range(args.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                figures[side].append(run(gencli, side, args.tokens))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        print(f"bench_omp: a run failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for h in hogs:
            h.kill()
    med = {s: [statistics.median(f[i] for f in figures[s]) for i in range(3)] for s in SIDES}
    print(f"{'setting':10s} {'tok/s':>7s} {'load+prompt':>12s} {'wall':>7s}   ({args.rounds} rounds)")
    for s in SIDES:
        print(f"{s:10s} {med[s][0]:7.1f} {med[s][1]:11.3f}s {med[s][2]:6.2f}s")
    ratios = [med["passive"][i] / med["default"][i] for i in range(3)]
    print(f"passive/default: tok/s {ratios[0]:.3f}, load+prompt {ratios[1]:.3f}, wall {ratios[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
