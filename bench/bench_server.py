#!/usr/bin/env python3
"""Benchmark ``gencli serve`` against the fake upstream it sits in front of, side by side.

One gencli worker proxies /api/generate to the fake OpenAI upstream
(tests/fakes/openai_upstream.py, model ``tokens-N``); wrk drives both in the same
run and the script prints both rates and their ratios:

  (a) non-streamed /api/generate vs the fake's own non-streamed /v1/chat/completions
      at 32 connections (target >= 0.30x);
  (b) streamed /api/generate, N tokens per answer, vs the fake's own streamed rate
      (target >= 0.35x);
  (c) /api/chat and /v1/chat/completions, non-streamed and streamed, within 10% of
      /api/generate's rate (target: each >= 0.90x of generate's);
  (d) at one connection, the latency gencli adds (gencli - fake): p50 < 0.5 ms, p99 < 2 ms.

Each round measures the fake, then gencli, for each scenario; with several rounds the
median of each is reported. By default the fake is pinned to one CPU and gencli to
another with taskset (wrk floats), so neither steals the other's core.

With ``--ref REF`` (a git commit or branch, e.g. ``main``) a second gencli serve, run from
that commit's source (``git archive``), is measured in the same rounds on the same CPU, and
the table adds this code's rates over the reference's: an A/B of two versions side by side.

Needs wrk (Debian: apt-get install -y wrk). Usage:

    .venv/bin/python bench/bench_server.py [--duration 5] [--rounds 3] [--connections 32]
                                           [--tokens 50] [--no-pin] [--ref REF] [--json]

Exit code: 0 when every target holds, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fakes" / "openai_upstream.py"

TARGET_PLAIN = 0.30
TARGET_STREAM = 0.35
TARGET_ROUTES = 0.90  # /api/chat and /v1/chat/completions vs /api/generate
TARGET_ADDED_MS = 0.5  # p50 at one connection
TARGET_ADDED_P99_MS = 2.0

_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d status_errors=%d "
    .. "socket_errors=%d\\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _gencli() -> list[str]:
    exe = Path(_python()).with_name("gencli")
    return [str(exe)] if exe.exists() else [_python(), "-m", "gencli"]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "GEMINI_", "GOOGLE_", "OPENROUTER_", "GENCLI_", "OLLAMA_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:g}s")


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}")
        return r.read()


def _lua(path: Path, body: dict) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body, separators=(',', ':')))}\n" + _DONE_LUA
    )
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report CPU per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, script: Path, connections: int, duration: float, pid: int) -> dict[str, float]:
    cpu0 = _cpu_seconds(pid)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu = _cpu_seconds(pid) - cpu0
    m = re.search(r"BENCH (.*)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    if f["status_errors"] or f["requests"] == 0:
        raise RuntimeError(f"{url}: {f['status_errors']} non-2xx answers out of {f['requests']}")
    return {
        "rps": f["requests"] / (f["duration_us"] / 1e6),
        "p50_ms": f["p50_us"] / 1000,
        "p99_ms": f["p99_us"] / 1000,
        "requests": f["requests"],
        "socket_errors": f["socket_errors"],
        "cpu_us": cpu * 1e6 / f["requests"],
    }


def _check_answers(gencli: str, model: str, tokens: int) -> None:
    """One request of each kind, checked, so the benchmark measures real answers."""
    plain = json.loads(_post(f"{gencli}/api/generate", {"model": model, "prompt": "hi", "stream": False}))
    if not plain.get("done") or len(plain.get("response", "").split()) != tokens:
        raise RuntimeError(f"unexpected non-streamed answer from gencli: {str(plain)[:300]}")
    lines = _post(f"{gencli}/api/generate", {"model": model, "prompt": "hi", "stream": True}).split(b"\n")
    objs = [json.loads(line) for line in lines if line]
    text = "".join(o.get("response", "") for o in objs)
    if not objs or not objs[-1].get("done") or len(text.split()) != tokens or b"" in lines[:-1]:
        raise RuntimeError(f"unexpected streamed answer from gencli: {len(objs)} lines, {text[:200]!r}")


def ref_command(ref: str, into: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``gencli`` from commit ``ref``'s source, extracted
    into ``into`` (the installed dependencies are shared). Used by the other bench scripts too."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {ref}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    env = _env()
    env["PYTHONPATH"] = str(into / "src")
    check = subprocess.run(
        [_python(), "-c", "import gencli; print(gencli.__file__)"], env=env, capture_output=True, text=True, timeout=60
    )
    if not check.stdout.startswith(str(into)):
        raise RuntimeError(f"the reference source is not the one imported: {check.stdout.strip()}")
    return [_python(), "-c", "import sys; sys.argv[0] = 'gencli'; from gencli.cli import main; main()"], env


def _taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def start_fake(tmp: Path, cpu: int | None, model: str, procs: list[subprocess.Popen]) -> tuple[str, Path]:
    """Start the fake OpenAI upstream (FAKE) on a free port, pinned to ``cpu`` (stderr to
    tmp/fake.log), wait for it, and write tmp/models.json naming ``model`` on it (an
    openai-compatible entry). Returns (the fake's URL, the models.json)."""
    port = _free_port()
    fake = subprocess.Popen(
        _taskset(cpu) + [_python(), str(FAKE), "--port", str(port)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "fake.log", "wb"),
    )
    procs.append(fake)
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/v1/models", fake, "the fake upstream")
    models = tmp / "models.json"
    models.write_text(json.dumps({model: {"provider": "openai-compatible", "model": model, "base_url": f"{url}/v1"}}))
    return url, models


def stop_all(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM to each process still running (the last started first), then wait ``timeout``
    seconds for each; one that has not ended is killed."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def have_wrk(bench: str) -> bool:
    """Whether wrk is installed; if not, says how to install it (the caller exits with 2)."""
    if shutil.which("wrk"):
        return True
    print(f"{bench}: wrk not found; install it (Debian: apt-get install -y wrk)", file=sys.stderr)
    return False


def check_alive(procs: list[subprocess.Popen]) -> None:
    """RuntimeError when one of ``procs`` (the fake, gencli) exited during the run."""
    for p in procs:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args[-8:]} exited with code {p.returncode} during the run")


def print_tail(log: Path, lines: int = 15) -> None:
    """The last ``lines`` of a server's log on stderr, when it has any (after a failed run)."""
    if log.exists():
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            print(f"{log.name} (tail):\n  " + "\n  ".join(tail), file=sys.stderr)


def wrk_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of the wrk benchmarks (bench_server, bench_agents)."""
    ap.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    ap.add_argument("--tokens", type=int, default=50, help="tokens per answer (default 50)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the fake and gencli to separate CPUs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")


def pinned_cpus(no_pin: bool) -> tuple[int | None, int | None]:
    """(the fake's CPU, gencli's CPU): separate CPUs with taskset, else (None, None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or shutil.which("taskset") is None or len(cpus) < 2:
        return None, None
    return cpus[-1], cpus[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    wrk_arguments(ap)
    ap.add_argument("--keep-log", metavar="FILE", help="copy gencli's stderr (access log) to FILE")
    ap.add_argument("--ref", metavar="REF", help="also measure gencli from this git commit/branch (A/B)")
    args = ap.parse_args()

    if not have_wrk("bench_server"):
        return 2
    fake_cpu, gencli_cpu = pinned_cpus(args.no_pin)
    pin = fake_cpu is not None

    tmp = Path(tempfile.mkdtemp(prefix="gencli-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        gencli_port = _free_port()
        model = f"tokens-{args.tokens}"
        fake_url, models = start_fake(tmp, fake_cpu, model, procs)
        fake = procs[-1]
        log = open(tmp / "gencli.log", "wb")
        gencli = subprocess.Popen(
            _taskset(gencli_cpu)
            + _gencli()
            + ["serve", "--host", "127.0.0.1", "--port", str(gencli_port), "--models", str(models), "--workers", "1"],
            env=_env(),
            cwd=tmp,
            stdout=log,
            stderr=log,
        )
        procs.append(gencli)
        gencli_url = f"http://127.0.0.1:{gencli_port}"
        _wait_http(f"{gencli_url}/", gencli, "gencli serve")
        _check_answers(gencli_url, model, args.tokens)
        who_all = ["fake", "gencli"]
        urls = {"fake": f"{fake_url}/v1/chat/completions", "gencli": f"{gencli_url}/api/generate"}
        pids = {"fake": fake.pid, "gencli": gencli.pid}
        if args.ref:
            command, ref_env = ref_command(args.ref, tmp / "ref")
            ref_port = _free_port()
            ref = subprocess.Popen(
                _taskset(gencli_cpu)
                + command
                + ["serve", "--host", "127.0.0.1", "--port", str(ref_port), "--models", str(models), "--workers", "1"],
                env=ref_env,
                cwd=tmp,
                stdout=open(tmp / "ref.log", "wb"),
                stderr=subprocess.STDOUT,
            )
            procs.append(ref)
            ref_url = f"http://127.0.0.1:{ref_port}"
            _wait_http(f"{ref_url}/", ref, f"gencli serve ({args.ref})")
            _check_answers(ref_url, model, args.tokens)
            who_all.append("ref")
            urls["ref"] = f"{ref_url}/api/generate"
            pids["ref"] = ref.pid

        scripts = {
            "fake_plain": _lua(
                tmp / "fake_plain.lua",
                {"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
            ),
            "fake_stream": _lua(
                tmp / "fake_stream.lua",
                {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            ),
            "gencli_plain": _lua(tmp / "gencli_plain.lua", {"model": model, "prompt": "hi", "stream": False}),
            "gencli_stream": _lua(tmp / "gencli_stream.lua", {"model": model, "prompt": "hi", "stream": True}),
        }
        scripts["ref_plain"], scripts["ref_stream"] = scripts["gencli_plain"], scripts["gencli_stream"]
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        for route, path in (("chat", "/api/chat"), ("openai", "/v1/chat/completions")):
            for kind, stream in (("plain", False), ("stream", True)):
                scripts[f"{route}_{kind}"] = _lua(tmp / f"{route}_{kind}.lua", {**chat, "stream": stream})
            urls[route], pids[route] = gencli_url + path, gencli.pid

        # Warm them up (connection pools, caches), unmeasured.
        for who in who_all:
            _wrk(urls[who], scripts[f"{who}_plain"], args.connections, 1, pids[who])

        runs: dict[str, list[dict[str, float]]] = {}
        plan = [
            (f"{who}_{kind}", who, kind, conns)
            for kind, conns in (("plain", args.connections), ("stream", args.connections), ("plain", 1))
            for who in who_all + (["chat", "openai"] if conns > 1 else [])
        ]
        for r in range(args.rounds):
            for key, who, _kind, conns in plan:
                name = f"{key}_c{conns}"
                res = _wrk(urls[who], scripts[key], conns, args.duration, pids[who])
                runs.setdefault(name, []).append(res)
                print(
                    f"round {r + 1}/{args.rounds} {name:<20} {res['rps']:9.1f} req/s  "
                    f"p50 {res['p50_ms']:7.3f} ms  p99 {res['p99_ms']:7.3f} ms  CPU {res['cpu_us']:6.0f} us/req",
                    file=sys.stderr,
                    flush=True,
                )
        check_alive(procs)
    except Exception as exc:
        print(f"bench_server: {exc}", file=sys.stderr)
        print_tail(tmp / "gencli.log")
        return 2
    finally:
        stop_all(procs)
        if args.keep_log and (tmp / "gencli.log").exists():
            shutil.copy(tmp / "gencli.log", args.keep_log)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {
        k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms", "p99_ms", "cpu_us")}
        for k, v in runs.items()
    }
    c = args.connections
    rows = [
        ("non-streamed rate", f"fake_plain_c{c}", f"gencli_plain_c{c}", TARGET_PLAIN),
        (f"streamed rate ({args.tokens} tokens)", f"fake_stream_c{c}", f"gencli_stream_c{c}", TARGET_STREAM),
    ]
    results = {
        "connections": c,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "pinned": {"fake_cpu": fake_cpu, "gencli_cpu": gencli_cpu} if pin else None,
        "runs": runs,
    }
    ok = True
    print()
    print(
        f"gencli serve vs fake upstream — 1 worker, {c} connections, {args.rounds} round(s) of "
        f"{args.duration:g}s, medians; "
        + (f"fake on CPU {fake_cpu}, gencli on CPU {gencli_cpu}" if pin else "not pinned")
    )
    print(
        f"{'scenario':<28} {'fake req/s':>11} {'gencli req/s':>13} {'ratio':>7} {'target':>8}  ok"
        "   (routes: /api/generate's rate, then the route's)"
    )
    for label, fk, gk, target in rows:
        ratio = med[gk]["rps"] / med[fk]["rps"]
        good = ratio >= target
        ok &= good
        results[gk.rsplit("_", 1)[0] + "_ratio"] = ratio
        wanted = ">=" + format(target, "g") + "x"
        print(
            f"{label:<28} {med[fk]['rps']:11.1f} {med[gk]['rps']:13.1f} {ratio:6.3f}x {wanted:>8}"
            f"  {'yes' if good else 'NO'}"
        )
    for label, kind in (("non-streamed", "plain"), ("streamed", "stream")):
        base = med[f"gencli_{kind}_c{c}"]["rps"]
        for route, name in (("chat", "/api/chat"), ("openai", "/v1/chat/completions")):
            ratio = med[f"{route}_{kind}_c{c}"]["rps"] / base
            good = ratio >= TARGET_ROUTES
            ok &= good
            results[f"{route}_{kind}_vs_generate"] = ratio
            print(
                f"{name + ', ' + label:<28} {base:11.1f} {med[f'{route}_{kind}_c{c}']['rps']:13.1f} "
                f"{ratio:6.3f}x {'>=' + format(TARGET_ROUTES, 'g') + 'x':>8}  {'yes' if good else 'NO'}"
            )
    for pct, target in (("p50", TARGET_ADDED_MS), ("p99", TARGET_ADDED_P99_MS)):
        added = med["gencli_plain_c1"][f"{pct}_ms"] - med["fake_plain_c1"][f"{pct}_ms"]
        good = added < target
        ok &= good
        results[f"added_{pct}_ms"] = added
        print(
            f"{pct + ' latency, 1 connection':<28} {med['fake_plain_c1'][f'{pct}_ms']:8.3f} ms "
            f"{med['gencli_plain_c1'][f'{pct}_ms']:10.3f} ms {format(added, '+.3f'):>7} "
            f"{'<' + format(target, 'g') + ' ms':>8}  {'yes' if good else 'NO'}"
        )
    print()
    print("CPU time per request (the server process only; less sensitive to other load on the machine):")
    print(f"{'scenario':<28} {'fake us':>11} {'gencli us':>13} {'ratio':>7}")
    for label, fk, gk in (
        (f"non-streamed, {c} conns", f"fake_plain_c{c}", f"gencli_plain_c{c}"),
        ("  /api/chat", f"fake_plain_c{c}", f"chat_plain_c{c}"),
        ("  /v1/chat/completions", f"fake_plain_c{c}", f"openai_plain_c{c}"),
        (f"streamed, {c} conns", f"fake_stream_c{c}", f"gencli_stream_c{c}"),
        ("  /api/chat", f"fake_stream_c{c}", f"chat_stream_c{c}"),
        ("  /v1/chat/completions", f"fake_stream_c{c}", f"openai_stream_c{c}"),
        ("non-streamed, 1 conn", "fake_plain_c1", "gencli_plain_c1"),
    ):
        print(
            f"{label:<28} {med[fk]['cpu_us']:11.0f} {med[gk]['cpu_us']:13.0f} "
            f"{med[fk]['cpu_us'] / med[gk]['cpu_us']:6.3f}x"
        )
    if args.ref:
        print()
        print(f"this code vs {args.ref} (same CPU, same rounds; rates: higher is better, CPU: lower is better):")
        print(f"{'scenario':<28} {args.ref + ' req/s':>13} {'this req/s':>11} {'ratio':>7} {'CPU us/req':>17}")
        for label, key in (
            (f"non-streamed, {c} conns", f"plain_c{c}"),
            (f"streamed, {c} conns", f"stream_c{c}"),
            ("non-streamed, 1 conn", "plain_c1"),
        ):
            a, b = med[f"ref_{key}"], med[f"gencli_{key}"]
            results[f"vs_ref_{key}"] = b["rps"] / a["rps"]
            print(
                f"{label:<28} {a['rps']:13.1f} {b['rps']:11.1f} {b['rps'] / a['rps']:6.3f}x "
                f"{a['cpu_us']:8.0f} -> {b['cpu_us']:5.0f}"
            )
        a, b = med["ref_plain_c1"], med["gencli_plain_c1"]
        print(
            f"{'p50 / p99 latency, 1 conn':<28} {a['p50_ms']:.3f}/{a['p99_ms']:.3f} ms -> "
            f"{b['p50_ms']:.3f}/{b['p99_ms']:.3f} ms"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
