"""``gencli serve`` as a real subprocess in front of the fake OpenAI upstream, shared by
the server test modules (one server per module)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import GENCLI, clean_env
from tests.fakes.openai_upstream import FAKE_KEY

KEY_VAR = "FAKE_UPSTREAM_KEY"

# registry name -> fake upstream model (its behaviour) and capabilities
MODELS = {
    "echo": ("echo", ["completion", "vision"]),
    "reason": ("reason-deepseek", ["completion", "thinking"]),
    "reason-or": ("reason-openrouter", ["completion", "thinking"]),
    "think-tags": ("think-tags", ["completion", "thinking"]),
    "tokens-5": ("tokens-5", ["completion"]),
    "slow": ("slow-100-200", ["completion"]),
    "bad-key": ("error-401", ["completion"]),
    "gone": ("error-404", ["completion"]),
    "limited": ("error-429", ["completion"]),
    "broken": ("error-500", ["completion"]),
    "midstream": ("error-midstream", ["completion"]),
}


def models_json(base_url: str) -> dict:
    out: dict = {
        name: {
            "provider": "openai-compatible",
            "model": model,
            "base_url": base_url,
            "api_key_env": KEY_VAR,
            "capabilities": caps,
        }
        for name, (model, caps) in MODELS.items()
    }
    out["sluggish"] = {
        "provider": "openai-compatible",
        "model": "slow-1500-3",
        "base_url": base_url,
        "api_key_env": KEY_VAR,
        "timeout": 0.5,
    }
    out["unreachable"] = {
        "provider": "openai-compatible",
        "model": "echo",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": KEY_VAR,
    }
    out["needs-key"] = {
        "provider": "openai-compatible",
        "model": "echo",
        "base_url": base_url,
        "api_key_env": "GENCLI_TEST_UNSET_KEY",
    }
    out["ctx"] = {
        "provider": "openai-compatible",
        "model": "echo",
        "base_url": base_url,
        "api_key_env": KEY_VAR,
        "options": {"num_ctx": 8192, "temperature": 0.5},
    }
    return out


class ServeProcess:
    """``gencli serve --port 0``; the port is read from the startup line. Output goes to files."""

    def __init__(
        self,
        tmp: Path,
        models: dict | Path,
        args: list[str] = (),
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        memory_mb: int | None = None,
        dotenv: str | None = None,
    ):
        """``memory_mb``: the server's address-space limit (RLIMIT_AS), so that a regression in
        a bound fails the test (MemoryError, or the process dies) instead of the machine.
        ``dotenv``: the text of a ``.env`` file in the server's working directory."""
        tmp.mkdir(parents=True, exist_ok=True)
        if isinstance(models, Path):
            path = models
        else:
            path = tmp / "models.json"
            path.write_text(json.dumps(models))
        self.err_path = tmp / "serve.err"
        self.out_path = tmp / "serve.out"
        work = tmp / "work"
        work.mkdir(exist_ok=True)
        if dotenv is not None:
            (work / ".env").write_text(dotenv)
        self.proc = subprocess.Popen(
            [GENCLI, "serve", "--host", host, "--port", "0", "--models", str(path), *args],
            env=clean_env(tmp, **{KEY_VAR: FAKE_KEY, **(env or {})}),
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=open(self.out_path, "wb"),
            stderr=open(self.err_path, "wb"),
            preexec_fn=_limit_memory(memory_mb) if memory_mb else None,
        )
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            text = self.stderr()
            for line in text.splitlines():
                if "listening on http://" in line:
                    self.url = line.split("listening on ", 1)[1].split()[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"gencli serve exited with {self.proc.returncode}: {text}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gencli serve did not start: {text}")
            time.sleep(0.05)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"  # test traffic stays on loopback whatever the bind address
        # the socket listens before the app is loaded; wait until it answers
        while True:
            try:
                if httpx.get(self.url + "/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(f"gencli serve does not answer: {self.stderr()}") from None
                time.sleep(0.05)

    def status(self, field: str) -> int:
        """A kB figure from /proc/PID/status (VmRSS, VmHWM, VmSize)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def reset_peak(self) -> None:
        """Reset the peak RSS (VmHWM) to the current RSS (Linux: clear_refs 5)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _limit_memory(mb: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb * 1024 * 1024, mb * 1024 * 1024))

    return apply


@pytest.fixture(scope="module")
def server(openai_fake, tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("serve"), models_json(openai_fake.base_url))
    yield s
    s.stop()
