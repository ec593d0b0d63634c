"""Shell completions: the committed scripts are current, and completing actually works
(click's protocol driven through the real `gencli`, and the committed bash script run by bash)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GENCLI, ROOT, clean_env

SCRIPT = ROOT / "scripts" / "gen_completions.py"
FILES = ("gencli.bash", "_gencli", "gencli.fish")


def complete(words: str, cword: int, env: dict, cwd: Path, shell: str = "bash") -> list[str]:
    """What gencli offers for COMP_WORDS/COMP_CWORD, via click's <shell>_complete protocol."""
    env = dict(env, COMP_WORDS=words, COMP_CWORD=str(cword), _GENCLI_COMPLETE=f"{shell}_complete")
    out = subprocess.run([GENCLI], env=env, cwd=cwd, capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout.splitlines()


def values(lines: list[str]) -> list[str]:
    return [line.split(",", 1)[1] for line in lines if line.startswith("plain,")]


def test_committed_scripts_are_current(tmp_path):
    out = tmp_path / "completions"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True, timeout=60)
    for name in FILES:
        committed = ROOT / "completions" / name
        assert committed.is_file(), f"completions/{name} is missing; run: .venv/bin/python scripts/gen_completions.py"
        assert committed.read_text() == (out / name).read_text(), (
            f"completions/{name} is stale; regenerate with: .venv/bin/python scripts/gen_completions.py")
    assert (out / "_gencli").read_text().startswith("#compdef gencli\n")
    assert "complete" in (out / "gencli.bash").read_text() and "_GENCLI_COMPLETE" in (out / "gencli.bash").read_text()
    assert "complete --no-files --command gencli" in (out / "gencli.fish").read_text()
    # --check agrees with the comparison above
    check = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_check_reports_stale_files(tmp_path):
    out = tmp_path / "completions"
    out.mkdir()
    (out / "gencli.bash").write_text("# old\n")
    check = subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(out)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1
    assert "gencli.bash" in check.stderr and "gen_completions.py" in check.stderr


def test_commands_and_options(tmp_path, workdir):
    env = clean_env(tmp_path)
    offered = values(complete("gencli ", 1, env, workdir))
    assert {"generate", "models"} <= set(offered), offered
    assert values(complete("gencli gen", 1, env, workdir)) == ["generate"]
    opts = values(complete("gencli generate --hi", 2, env, workdir))
    assert opts == ["--hide-reasoning"], opts


def test_model_names_from_the_registry(tmp_path, workdir):
    (workdir / "models.json").write_text(json.dumps(
        {"my-local-model": {"provider": "openai-compatible", "model": "x", "base_url": "http://127.0.0.1:9/v1",
                            "description": "a test model"}}))
    env = clean_env(tmp_path)
    names = values(complete("gencli generate -m ", 3, env, workdir))
    assert "my-local-model" in names and "gpt-4o-mini" in names, names
    assert values(complete("gencli generate -m my-", 3, env, workdir)) == ["my-local-model"]
    # --models given on the command line is the registry completed from
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"from-flag": {"provider": "openai", "model": "gpt-4o"}}))
    names = values(complete(f"gencli generate --models {other} -m from", 5, env, workdir))
    assert names == ["from-flag"], names
    # zsh gets the description too
    zsh = complete("gencli generate -m my-", 3, env, workdir, shell="zsh")
    assert zsh[:3] == ["plain", "my-local-model", "a test model"], zsh


def test_broken_registry_offers_nothing_quietly(tmp_path, workdir):
    (workdir / "models.json").write_text("{not json")
    names = values(complete("gencli generate -m ", 3, clean_env(tmp_path), workdir))
    assert names == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_committed_bash_script_in_bash(tmp_path, workdir):
    """Source completions/gencli.bash in a real bash and call the completion function it registers."""
    env = clean_env(tmp_path)
    env["PATH"] = f"{Path(GENCLI).parent}:{env.get('PATH', '')}"
    script = f"""
source {ROOT / 'completions' / 'gencli.bash'}
complete -p gencli
COMP_WORDS=(gencli mo); COMP_CWORD=1
_gencli_completion gencli
printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, cwd=workdir,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "-F _gencli_completion gencli" in out.stdout
    assert out.stdout.splitlines()[-1] == "reply:models", out.stdout
