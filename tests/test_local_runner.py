"""The local model runs in its own process (issue 21): a runner that dies (killed by the test,
or made to die by ``GENCLI_LLAMA_FAULT``) fails the request in flight with its cause in the
wire's shape, the next request gets a fresh runner, every other model keeps serving, and
``keep_alive`` unloading ends the runner process. A portable llama.cpp build's CPU variant
that dies of SIGILL is skipped and remembered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install -e '.[local]'")

from gencli.providers.llama.process import crash_message, runner_env  # noqa: E402
from gencli.providers.llama.worker import library_dir, score, variant_name, variants  # noqa: E402
from tests.conftest import GENCLI, clean_env, run_gencli  # noqa: E402
from tests.helpers import one_line_error, post  # noqa: E402
from tests.server_fixture import KEY_VAR, ServeProcess  # noqa: E402

WORKER = b"gencli.providers.llama.worker"
PROMPT = "Why is the sky blue?"
# a schema that forces a long answer, so a generation is still running when the test acts
LONG = {"type": "array", "items": {"type": "integer"}, "minItems": 1000}


def runner_pids(home: Path) -> list[int]:
    """The runner processes started with HOME=home (the test's own, whoever their parent is)."""
    found = []
    marker = f"HOME={home}".encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if WORKER in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(predicate, seconds: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fake_models(base_url: str) -> dict:
    return {"echo": {"provider": "openai-compatible", "model": "echo", "base_url": base_url, "api_key_env": KEY_VAR}}


@pytest.fixture(scope="module")
def served(openai_fake, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-runner")
    s = ServeProcess(tmp, fake_models(openai_fake.base_url))
    s.home = tmp / "home"
    yield s
    s.stop()


def test_a_killed_runner_fails_the_request_in_flight_and_the_next_request_gets_a_new_one(served):
    url = served.url + "/api/generate"
    body = {"model": "smollm2", "prompt": "List numbers.", "stream": True, "format": LONG, "options": {"seed": 3}}
    with httpx.Client(timeout=120) as client, client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False  # the runner is generating
        [pid] = runner_pids(served.home)
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
        rest = [json.loads(line) for line in lines if line]
    assert "SIGKILL" in rest[-1]["error"] and "out-of-memory" in rest[-1]["error"]
    assert "next request starts a new one" in rest[-1]["error"]
    # the server is alive, other models answer, and the next local request starts a fresh runner
    echo = post(served, "/api/generate", {"model": "echo", "prompt": "still here"})
    assert echo.status_code == 200 and "still here" in echo.json()["response"]
    again = post(served, "/api/generate", {"model": "smollm2", "prompt": PROMPT, "options": {"num_predict": 4}})
    assert again.status_code == 200, again.text
    assert again.json()["eval_count"] == 4
    [new] = runner_pids(served.home)
    assert new != pid


def test_keep_alive_zero_ends_the_runner_process(served):
    r = post(served, "/api/generate", {"model": "smollm2", "prompt": "hi", "options": {"num_predict": 2}})
    assert r.status_code == 200
    [pid] = runner_pids(served.home)
    assert b"\0OMP_WAIT_POLICY=passive\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()  # its threads sleep
    gone = post(served, "/api/generate", {"model": "smollm2", "prompt": "", "keep_alive": 0})
    assert gone.json()["done_reason"] == "unload"
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes(), 10)
    assert runner_pids(served.home) == []  # its memory went back with the process
    ps = httpx.get(served.url + "/api/ps", timeout=10).json()
    assert "smollm2:latest" not in {m["model"] for m in ps["models"]}


def test_a_runner_s_threads_sleep_when_they_wait_unless_the_environment_says_otherwise():
    env = runner_env({"HOME": "/h"}, {"x86_64"})
    assert env == {"HOME": "/h", "GENCLI_LLAMA_EXCLUDE": "x86_64", "OMP_WAIT_POLICY": "passive"}
    assert runner_env({"OMP_WAIT_POLICY": "active"}, [])["OMP_WAIT_POLICY"] == "active"


def test_a_client_that_goes_away_stops_the_runner_at_once(served):
    """The disconnect reaches the runner: it stops generating and the next request is served
    at once, by the same runner process."""
    url = served.url + "/api/generate"
    body = {"model": "smollm2", "prompt": "List numbers.", "stream": True, "format": LONG, "options": {"seed": 4}}
    with httpx.Client(timeout=120) as client, client.stream("POST", url, json=body) as r:
        assert json.loads(next(r.iter_lines()))["done"] is False
        [pid] = runner_pids(served.home)
    left = time.monotonic()
    r = post(served, "/api/generate", {"model": "smollm2", "prompt": "hi", "options": {"num_predict": 2}})
    assert r.status_code == 200 and time.monotonic() - left < 10  # not after 1000 numbers
    assert runner_pids(served.home) == [pid]


@pytest.fixture(scope="module")
def aborting(openai_fake, tmp_path_factory):
    """A server whose local runners abort when a generation starts (as a failed GGML_ASSERT does)."""
    tmp = tmp_path_factory.mktemp("serve-abort")
    s = ServeProcess(tmp, fake_models(openai_fake.base_url), env={"GENCLI_LLAMA_FAULT": "SIGABRT"})
    yield s
    s.stop()


def test_every_wire_names_the_crash_in_its_own_shape(aborting):
    prompt = [{"role": "user", "content": PROMPT}]
    ollama = post(aborting, "/api/generate", {"model": "smollm2", "prompt": PROMPT})
    assert ollama.status_code == 500 and "SIGABRT" in ollama.json()["error"]
    chat = post(aborting, "/api/chat", {"model": "smollm2", "messages": prompt, "stream": True})
    assert chat.status_code == 500 and "SIGABRT" in chat.json()["error"]
    oai = post(aborting, "/v1/chat/completions", {"model": "smollm2", "messages": prompt})
    assert oai.status_code == 500 and "SIGABRT" in oai.json()["error"]["message"]
    claude = post(aborting, "/v1/messages", {"model": "smollm2", "max_tokens": 8, "messages": prompt})
    assert claude.status_code == 500 and claude.json()["type"] == "error"
    assert "SIGABRT" in claude.json()["error"]["message"]
    # one crash at a time, the server stays up and every other model keeps serving
    echo = post(aborting, "/v1/chat/completions", {"model": "echo", "messages": prompt})
    assert echo.status_code == 200
    assert aborting.proc.poll() is None
    assert "Traceback" not in aborting.stderr()


def test_the_cli_prints_one_line_when_the_runner_dies(tmp_path, workdir):
    p = run_gencli(["generate", PROMPT], clean_env(tmp_path, GENCLI_LLAMA_FAULT="SIGABRT"), workdir, timeout=120)
    line = one_line_error(p, 1)
    assert "runner process was killed by SIGABRT" in line


def test_ctrl_c_stops_the_cli_at_once_and_leaves_no_runner(tmp_path, workdir):
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [GENCLI, "generate", "List numbers.", "--seed", "1", "--num-predict", "3000"],
        env=clean_env(tmp_path),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.read(1)
        assert len(runner_pids(home)) == 1  # generation has started, in the runner
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130
        assert time.monotonic() - sent < 5  # not after 3000 tokens
        assert "Traceback" not in proc.stderr.read().decode()
        wait_for(lambda: runner_pids(home) == [], 10, "the runner to end with the CLI")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _best_variant() -> str:
    lib = library_dir()
    found = variants(lib) if lib else []
    if len(found) < 2:
        pytest.skip("llama-cpp-python is not a portable build (no CPU variants): sh scripts/install.sh")
    return variant_name(max(found, key=score))


def test_a_cpu_variant_that_dies_of_sigill_is_skipped_and_remembered(tmp_path, workdir):
    best = _best_variant()
    env = clean_env(tmp_path, GENCLI_LLAMA_FAULT=f"SIGILL@{best}")
    args = ["generate", PROMPT, "--seed", "1", "--num-predict", "6"]
    first = run_gencli(args, env, workdir, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    warning = first.stderr.decode()
    assert f"'{best}' CPU kernels died of SIGILL" in warning and warning.count("\n") == 1
    cache = json.loads((tmp_path / "home" / ".cache" / "gencli" / "llama-cpu.json").read_text())
    assert [best] in cache.values()
    second = run_gencli(args, env, workdir, timeout=120)  # remembered: no crash, no warning
    assert second.returncode == 0 and second.stderr == b"" and second.stdout.strip()


def test_the_server_falls_back_to_the_next_variant_without_failing_the_request(openai_fake, tmp_path):
    best = _best_variant()
    s = ServeProcess(tmp_path, fake_models(openai_fake.base_url), env={"GENCLI_LLAMA_FAULT": f"SIGILL@{best}"})
    try:
        results = []

        body = {"model": "smollm2", "prompt": "hi", "options": {"num_predict": 3}}

        def ask():
            results.append(post(s, "/api/generate", body))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert s.stderr().count("died of SIGILL") == 1
    finally:
        s.stop()


def test_the_sigill_message_says_how_to_rebuild():
    native = crash_message(-signal.SIGILL, None, [])
    assert "CPU instructions this machine cannot run" in native
    assert "GGML_NATIVE=OFF" in native and "GGML_CPU_ALL_VARIANTS=ON" in native and "--no-cache-dir" in native
    spent = crash_message(-signal.SIGILL, "sse42", [])
    assert "'sse42'" in spent and "no other CPU variant" in spent
    aborted = crash_message(-signal.SIGABRT, "haswell", ["GGML_ASSERT(ctx) failed"])
    assert "SIGABRT" in aborted and "GGML_ASSERT(ctx) failed" in aborted
    assert crash_message(3, None, []).startswith("the local model's runner process exited with status 3")
