"""Settings are read once (gencli.config.settings): flags over the environment over .env, checked
at start, then passed down to the registry, the engine, the local model's queue and the
server, including every ``--workers`` process. Nothing reads os.environ per request."""

from __future__ import annotations

import concurrent.futures
import json
import pickle

import httpx
import pytest

from gencli.config.registry import Registry
from gencli.config.settings import Settings
from gencli.core.errors import UsageError
from gencli.core.request import GenerateRequest
from gencli.engine import prepare
from tests.conftest import clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY
from tests.server_fixture import KEY_VAR, ServeProcess


def test_flags_win_over_the_environment_which_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("GENCLI_TIMEOUT=7\nGENCLI_RETRIES=4\nGENCLI_MODEL=from-file\nOTHER=x\n")
    s = Settings.load(environ=None, cwd=tmp_path)
    assert s.timeout == 7.0 and s.retries == 4 and s.env["OTHER"] == "x"
    s = Settings.from_env({**s.env, "GENCLI_TIMEOUT": "9"}, timeout=3.0)
    assert s.timeout == 3.0 and s.retries == 4 and s.model == "from-file"


@pytest.mark.parametrize(
    "var, value, rule",
    [
        ("GENCLI_TIMEOUT", "abc", "a number above 0 to 86400 (seconds)"),
        ("GENCLI_TIMEOUT", "0", "a number above 0"),
        ("GENCLI_TIMEOUT", "inf", "a number above 0"),
        ("GENCLI_RETRIES", "11", "a whole number from 0 to 10"),
        ("GENCLI_RETRIES", "two", "a whole number"),
        ("GENCLI_LOCAL_QUEUE", "-1", "a whole number from 0 to 100000"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_variable(var, value, rule):
    with pytest.raises(UsageError) as info:
        Settings.from_env({var: value})
    message = str(info.value)
    assert message.startswith(f"{var}={value!r} is not {rule}") and message.endswith("; fix or unset it")
    assert info.value.exit_code == 2


def test_settings_never_show_keys_and_travel_to_worker_processes():
    s = Settings.from_env({"OPENAI_API_KEY": "sk-secret-1234567890", "GENCLI_API_KEY": "serve-secret"})
    assert "secret" not in repr(s) and "timeout=None" in repr(s)
    assert s.secrets == ("sk-secret-1234567890", "serve-secret")  # what upstream messages are scrubbed of
    assert Settings.from_env({"GENCLI_TOKEN": "short", "PATH": "/usr/bin:/bin/long"}).secrets == ()
    assert pickle.loads(pickle.dumps(s)) == s  # what --workers N hands each spawned worker


def test_the_engine_resolves_timeout_and_retries_flag_model_then_settings(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "own": {
                    "provider": "openai-compatible",
                    "model": "m",
                    "base_url": "http://127.0.0.1:9/v1",
                    "timeout": 5,
                    "retries": 1,
                },
                "plain": {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1"},
            }
        )
    )
    reg = Registry.load(str(path), env={"GENCLI_TIMEOUT": "30", "GENCLI_RETRIES": "3"})

    def call(name: str, **flags):
        return prepare(GenerateRequest(model=name, prompt="x"), reg, **flags).call

    assert (call("plain").timeout, call("plain").retries) == (30.0, 3)  # the settings
    assert (call("own").timeout, call("own").retries) == (5, 1)  # models.json
    assert (call("own", timeout=0.5, retries=0).timeout, call("own", retries=0).retries) == (0.5, 0)  # flags


# -- through the real command ------------------------------------------------------------------
@pytest.fixture
def hang_env(tmp_path, openai_fake):
    work = tmp_path / "work"
    work.mkdir()
    (work / "models.json").write_text(
        json.dumps(
            {
                "hang": {
                    "provider": "openai-compatible",
                    "model": "hang",
                    "base_url": openai_fake.base_url,
                    "api_key_env": KEY_VAR,
                }
            }
        )
    )
    return clean_env(tmp_path, **{KEY_VAR: FAKE_KEY}), work


def test_gencli_timeout_in_dotenv_is_honoured(hang_env):
    env, work = hang_env
    (work / ".env").write_text("GENCLI_TIMEOUT=0.5\nGENCLI_RETRIES=0\n")
    # without the .env setting this would wait the 300 s default (and the run would time out)
    r = run_gencli(["generate", "-m", "hang", "hi"], env, work, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith("gencli: error: hang: 127.0.0.1:") and err.endswith(" did not answer in time\n")


def test_a_bad_setting_in_dotenv_is_exit_2(hang_env):
    env, work = hang_env
    (work / ".env").write_text("GENCLI_TIMEOUT=soon\n")
    r = run_gencli(["generate", "-m", "hang", "hi"], env, work)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode() == (
        "gencli: error: GENCLI_TIMEOUT='soon' is not a number above 0 to 86400 (seconds); fix or unset it\n"
    )


def test_workers_get_the_settings_from_flags_and_dotenv(tmp_path, openai_fake):
    """--workers 2: the API key from .env and --timeout reach every worker process."""
    models = {
        "hang": {
            "provider": "openai-compatible",
            "model": "hang",
            "base_url": openai_fake.base_url,
            "api_key_env": KEY_VAR,
        },
        "echo": {
            "provider": "openai-compatible",
            "model": "echo",
            "base_url": openai_fake.base_url,
            "api_key_env": KEY_VAR,
        },
    }
    work = tmp_path / "serve" / "work"
    work.mkdir(parents=True)
    (work / ".env").write_text("GENCLI_API_KEY=serve-key-123\n")
    s = ServeProcess(tmp_path / "serve", models, args=["--workers", "2", "--timeout", "0.5", "--retries", "0"])
    try:
        auth = {"Authorization": "Bearer serve-key-123", "Connection": "close"}

        def generate(model: str, headers: dict) -> httpx.Response:
            return httpx.post(
                s.url + "/api/generate", json={"model": model, "prompt": "x"}, headers=headers, timeout=30
            )

        # many fresh connections: the kernel spreads them over both workers
        for _ in range(8):
            assert generate("echo", {"Connection": "close"}).status_code == 401
            assert generate("echo", auth).json()["response"] == "You said: x"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            hung = list(pool.map(lambda _: generate("hang", auth), range(4)))
        assert all(r.status_code == 504 and "did not answer in time" in r.json()["error"] for r in hung)
    finally:
        s.stop()
