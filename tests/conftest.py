"""Shared test helpers. Fakes of upstream providers live in tests/fakes/ and are
real HTTP servers on 127.0.0.1; gencli runs as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENCLI = str(Path(sys.executable).with_name("gencli"))

# Variables that would route a test to a real provider or change gencli's behaviour.
_SCRUB_PREFIXES = ("OPENAI_", "GEMINI_", "GOOGLE_", "OPENROUTER_", "ANTHROPIC_", "GENCLI_", "OLLAMA_")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no provider keys or gencli settings, HOME and XDG in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        NO_COLOR="1",
        NO_PROXY="127.0.0.1,localhost,::1",
        no_proxy="127.0.0.1,localhost,::1",
    )
    env.pop("HTTP_PROXY", None), env.pop("HTTPS_PROXY", None), env.pop("ALL_PROXY", None)
    env.pop("http_proxy", None), env.pop("https_proxy", None), env.pop("all_proxy", None)
    env.update(extra)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory (no ./models.json, no .env) for a gencli subprocess."""
    d = tmp_path / "work"
    d.mkdir()
    return d


def run_gencli(
    args: list[str], env: dict[str, str], cwd: Path, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run the real ``gencli`` command. stdin is /dev/null unless ``input`` is given."""
    return subprocess.run(
        [GENCLI, *args],
        env=env,
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


from tests.fakes.anthropic_upstream import anthropic_fake  # noqa: E402,F401  (fixture)
from tests.fakes.gemini_upstream import gemini_fake  # noqa: E402,F401  (fixture)
from tests.fakes.openai_upstream import openai_fake  # noqa: E402,F401  (fixture)
