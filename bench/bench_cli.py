#!/usr/bin/env python3
"""Benchmark the gencli command line: start-up, `chat` ready for input, and a whole
`generate` run next to `llm`.

(a) Start-up: the median wall time of `gencli --help` and `gencli --version` (target
    < 0.25 s each) and `gencli models` (target < 0.3 s).
(b) `gencli chat` ready for input: from starting `gencli chat -m m` on a pseudo-terminal
    until its `>>> ` prompt arrives (target < 0.4 s); Ctrl-D then ends it.
(c) Imports, side by side: `python -c pass`, `python -c "import typer"` and
    `python -c "import gencli.cli.app"` (the app with its options, no command run), so
    Typer's own import and what the app adds to it can be read off.
(d) `gencli generate` against the local fake OpenAI-compatible upstream
    (tests/fakes/openai_upstream.py, model ``tokens-50``: 50 streamed tokens), stdout
    piped, side by side in the same run with Simon Willison's `llm` CLI pointed at the
    same fake (an isolated LLM_USER_PATH with extra-openai-models.yaml). Runs alternate
    between the two (and alternate which goes first) so machine noise hits both alike.
    Reported: both medians and the ratio gencli/llm (target <= 0.3).
(e) The log's cost: the same `gencli generate` with `--no-log`, alternating with (d) in the
    same run; the difference of the medians is what writing the SQLite log adds to a run
    (the first run creates and migrates the database; the timed ones append a row).
(f) The log write alone, timed inside a fresh process that has imported what a `generate`
    run has (the app, the turn): importing the log (sqlite3) and writing one row with
    ``logdb.record``, which commits it to disk (SQLite's default synchronous=FULL: the
    fsyncs are most of it, and depend on the disk). End-to-end, (e) is within the noise of
    a whole run; (f) is the figure to read.

`llm` is given its fastest configuration: no plugins (LLM_LOAD_PLUGINS=''), no logging
(--no-log). Nothing leaves 127.0.0.1.

With ``--ref GENCLI`` (another installation's ``gencli``, e.g. ``/work/main/.venv/bin/gencli``
for the code before a change) the start-up commands and ``generate`` of both are measured
alternately in the same run, and the ratios this/reference are printed: an A/B side by side.
The reference runs without ``PYTHONPATH``, so that it imports its own installation while this
one may run a work tree (``PYTHONPATH=src``).

Usage:

    .venv/bin/python bench/bench_cli.py [--runs 20] [--ref GENCLI] [--json]

Exit code: 0 when every target holds, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_upstream import FAKE_KEY, FakeOpenAI  # noqa: E402

BIN = Path(sys.executable).parent
STARTUP_TARGET = 0.25  # --help, --version
MODELS_TARGET = 0.3
CHAT_TARGET = 0.4
RATIO_TARGET = 0.3
TOKENS = 50

_SCRUB = (
    "OPENAI_",
    "GEMINI_",
    "GOOGLE_",
    "OPENROUTER_",
    "GENCLI_",
    "OLLAMA_",
    "LLM_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(
        HOME=str(tmp / "home"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


LOG_WRITE = """
import time
import gencli.cli.app, gencli.cli.turn  # what a generate run has imported before its log write
t0 = time.perf_counter()
from gencli.cli import logdb
t1 = time.perf_counter()
ok = logdb.record(logdb.Entry(model="m", prompt="why is the sky blue? " * 10, answer="tok " * 50, prompt_tokens=9,
                              answer_tokens=50, options={"temperature": 0.5}, conversation="last"))
t2 = time.perf_counter()
assert ok
print(f"{t1 - t0} {t2 - t1}")
"""


def log_write(env: dict[str, str], cwd: Path, runs: int) -> tuple[float, float]:
    """Medians (seconds) of importing the log and of writing one row, each in a fresh process."""
    imports, writes = [], []
    for i in range(runs + 1):
        out = subprocess.run(
            [sys.executable, "-c", LOG_WRITE], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise BenchError(f"the log write failed: {out.stderr.strip()[-400:]}")
        if i:  # the first creates and migrates the database
            a, b = out.stdout.split()
            imports.append(float(a))
            writes.append(float(b))
    return statistics.median(imports), statistics.median(writes)


class BenchError(Exception):
    """The run failed (as opposed to a missed target)."""


def find(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"'{name}' not found (pip install -e '.[test]' in .venv)")
    return found


class Case:
    def __init__(self, label: str, argv: list[str], env: dict[str, str], cwd: Path, expect: str | None = None):
        self.label, self.argv, self.env, self.cwd, self.expect = label, argv, env, cwd, expect
        self.times: list[float] = []

    def run(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        out = subprocess.run(
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
        )
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise BenchError(
                f"{self.label} failed (exit {out.returncode}): {out.stderr.decode(errors='replace').strip()[-400:]}"
            )
        if self.expect is not None and self.expect not in out.stdout.decode(errors="replace"):
            raise BenchError(f"{self.label} printed {out.stdout[:200]!r}, expected {self.expect!r}")
        if record:
            self.times.append(elapsed)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


class ChatCase(Case):
    """`gencli chat` on a pseudo-terminal: the time until its prompt shows."""

    def run(self, record: bool = True) -> None:
        import pty
        import select

        t0 = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:  # the child: gencli on the terminal
            try:
                os.chdir(self.cwd)
                os.execve(self.argv[0], self.argv, self.env)
            finally:
                os._exit(127)
        seen = b""
        elapsed = None
        try:
            deadline = t0 + 30
            while elapsed is None and time.perf_counter() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    continue
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if self.expect.encode() in seen:
                    elapsed = time.perf_counter() - t0
            os.write(fd, b"\x04")  # Ctrl-D: leave
            end = time.perf_counter() + 10
            while time.perf_counter() < end:  # drain until the child closes the terminal
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    try:
                        if not os.read(fd, 4096):
                            break
                    except OSError:
                        break
        finally:
            _, status = os.waitpid(pid, 0)
            os.close(fd)
        if elapsed is None or os.waitstatus_to_exitcode(status) != 0:
            raise BenchError(
                f"{self.label}: no prompt or a failed exit ({os.waitstatus_to_exitcode(status)}): {seen[-400:]!r}"
            )
        if record:
            self.times.append(elapsed)


def alternate(cases: list[Case], runs: int, warmup: int = 2) -> None:
    for case in cases:
        for _ in range(warmup):
            case.run(record=False)
    for i in range(runs):
        order = cases if i % 2 == 0 else cases[::-1]
        for case in order:
            case.run()


def main() -> int:
    parser = argparse.ArgumentParser(description="gencli start-up and generate-vs-llm benchmark")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--ref", metavar="GENCLI", help="also measure this gencli executable (A/B)")
    args = parser.parse_args()

    gencli, llm = find("gencli"), find("llm")
    fake = FakeOpenAI(api_key=FAKE_KEY).start()
    tmp = Path(tempfile.mkdtemp(prefix="gencli-bench-"))
    try:
        work = tmp / "work"
        work.mkdir()
        (work / "models.json").write_text(
            json.dumps(
                {
                    "m": {
                        "provider": "openai-compatible",
                        "model": f"tokens-{TOKENS}",
                        "base_url": fake.base_url,
                        "api_key_env": "BENCH_FAKE_KEY",
                    }
                }
            )
        )
        llm_home = tmp / "llm"
        llm_home.mkdir()
        (llm_home / "extra-openai-models.yaml").write_text(
            f'- model_id: fake{TOKENS}\n  model_name: tokens-{TOKENS}\n  api_base: "{fake.base_url}"\n'
            f"  api_key_name: benchfake\n"
        )
        genv = clean_env(tmp, BENCH_FAKE_KEY=FAKE_KEY)
        lenv = clean_env(tmp, LLM_USER_PATH=str(llm_home), LLM_LOAD_PLUGINS="")
        subprocess.run(
            [llm, "keys", "set", "benchfake", "--value", FAKE_KEY],
            env=lenv,
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        last = f"tok{TOKENS - 1}"

        startup = [
            Case("gencli --help", [gencli, "--help"], genv, work, "Usage"),
            Case("gencli --version", [gencli, "--version"], genv, work, "gencli"),
            Case("gencli models", [gencli, "models"], genv, work, "m"),
        ]
        pairs: list[tuple[Case, Case]] = []  # (this, reference) with --ref
        renv = {k: v for k, v in genv.items() if k != "PYTHONPATH"}  # the reference imports its own code
        if args.ref:
            refs = [Case(c.label + " (ref)", [args.ref, *c.argv[1:]], renv, work, c.expect) for c in startup]
            pairs = list(zip(startup, refs, strict=True))
            alternate([c for pair in pairs for c in pair], args.runs)
        else:
            alternate(startup, args.runs)
        chat = ChatCase(
            "gencli chat (ready for input)",
            [gencli, "chat", "-m", "m"],
            dict(genv, TERM="xterm-256color"),
            work,
            ">>> ",
        )
        alternate([chat], args.runs)
        python = sys.executable
        imports = [
            Case("python -c pass", [python, "-c", "pass"], genv, work),
            Case("python -c 'import typer'", [python, "-c", "import typer"], genv, work),
            Case("python -c 'import gencli.cli.app'", [python, "-c", "import gencli.cli.app"], genv, work),
        ]
        alternate(imports, args.runs)

        gen = Case(f"gencli generate ({TOKENS} tokens)", [gencli, "generate", "-m", "m", "hi"], genv, work, last)
        ref = Case(
            f"llm prompt ({TOKENS} tokens)", [llm, "prompt", "--no-log", "-m", f"fake{TOKENS}", "hi"], lenv, work, last
        )
        nolog = Case(gen.label + " --no-log", [*gen.argv[:2], "--no-log", *gen.argv[2:]], genv, work, last)
        if args.ref:
            gen_ref = Case(gen.label + " (ref)", [args.ref, *gen.argv[1:]], renv, work, last)
            pairs.append((gen, gen_ref))
            alternate([gen, nolog, ref, gen_ref], args.runs)
        else:
            alternate([gen, nolog, ref], args.runs)
        before = len(fake.requests)
        log_import, log_row = log_write(clean_env(tmp, XDG_DATA_HOME=str(tmp / "logdata")), work, args.runs)
    finally:
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = gen.median / ref.median
    targets = {
        "gencli --help": STARTUP_TARGET,
        "gencli --version": STARTUP_TARGET,
        "gencli models": MODELS_TARGET,
        chat.label: CHAT_TARGET,
    }
    rows = [
        (c.label, c.median, min(c.times), f"< {targets[c.label]} s", c.median < targets[c.label])
        for c in (*startup, chat)
    ]
    rows += [(c.label, c.median, min(c.times), "", True) for c in (*imports, gen, nolog, ref)]
    log_cost = gen.median - nolog.median
    typer_cost = imports[1].median - imports[0].median
    app_cost = imports[2].median - imports[1].median
    ok = all(r[4] for r in rows) and ratio <= RATIO_TARGET
    if args.json:
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "upstream_requests": before,
                    "median_s": {c.label: round(c.median, 4) for c in (*startup, chat, *imports, gen, nolog, ref)},
                    "log_write_s": round(log_cost, 4),
                    "log_import_alone_s": round(log_import, 5),
                    "log_row_alone_s": round(log_row, 5),
                    "ratio_log_nolog": round(gen.median / nolog.median, 3),
                    "typer_import_s": round(typer_cost, 4),
                    "app_adds_s": round(app_cost, 4),
                    "ratio_gencli_llm": round(ratio, 3),
                    "ratio_this_ref": {a.label: round(a.median / b.median, 3) for a, b in pairs},
                    "ok": ok,
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    print(
        f"gencli CLI benchmark: {args.runs} runs each after 2 warm-ups; "
        f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}"
    )
    print(f"{'command':38} {'median':>9} {'min':>9}  target")
    for label, med, best, target, good in rows:
        mark = "" if not target else ("  ok" if good else "  MISSED")
        print(f"{label:38} {med * 1000:7.1f}ms {best * 1000:7.1f}ms  {target}{mark}")
    print(f"{'typer import (import typer - pass)':38} {typer_cost * 1000:7.1f}ms")
    print(f"{'the app adds (app - import typer)':38} {app_cost * 1000:7.1f}ms")
    print(
        f"{'the log write adds (generate - --no-log)':38} {log_cost * 1000:7.1f}ms"
        f"  ratio {gen.median / nolog.median:.3f}"
    )
    print(f"{'the log alone: import sqlite3 + logdb':38} {log_import * 1000:7.1f}ms")
    print(f"{'the log alone: write one row (commit)':38} {log_row * 1000:7.1f}ms")
    mark = "ok" if ratio <= RATIO_TARGET else "MISSED"
    print(f"{'ratio gencli/llm (generate)':38} {ratio:9.3f}            <= {RATIO_TARGET}  {mark}")
    if pairs:
        print(f"\nA/B with {args.ref} (medians, same run, alternating):")
        print(f"{'command':38} {'this':>9} {'ref':>9}  this/ref")
        for a, b in pairs:
            print(f"{a.label:38} {a.median * 1000:7.1f}ms {b.median * 1000:7.1f}ms  {a.median / b.median:8.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:  # a failed run, not a missed target
        print(f"bench_cli: {exc}", file=sys.stderr)
        sys.exit(2)
