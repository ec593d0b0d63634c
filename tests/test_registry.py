"""The registry: models.json validation, keys, base URLs, defaults and close names."""

import json
from pathlib import Path

import pytest

from gencli.config.registry import Registry, parse_dotenv
from gencli.core.errors import ConfigError, MissingKey, ModelNotFound


def write(tmp_path: Path, data) -> str:
    p = tmp_path / "models.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_builtins_are_the_seed_models():
    reg = Registry.load(path=None, env={"HOME": "/nonexistent"}, cwd=Path("/nonexistent"))
    assert reg.source is None
    want = {
        "gpt-4o-mini": ("openai", "gpt-4o-mini"),
        "gpt-4.1-mini": ("openai", "gpt-4.1-mini"),
        "gpt-4.1-nano": ("openai", "gpt-4.1-nano"),
        "gpt-4o": ("openai", "gpt-4o"),
        "gpt-5-nano": ("openai", "gpt-5-nano"),
        "gemini-2.5-flash": ("google", "gemini-2.5-flash"),
        "gemini-2.5-flash-lite": ("google", "gemini-2.5-flash-lite"),
        "deepseek-r1": ("openrouter", "deepseek/deepseek-r1-0528:free"),
        "kimi-k2": ("openrouter", "moonshotai/kimi-k2:free"),
    }
    for name, (provider, model) in want.items():
        assert (reg.models[name].provider, reg.models[name].model) == (provider, model)


def test_invalid_json_names_file_and_position(tmp_path):
    path = write(tmp_path, '{"a": {"provider": "openai",}}')
    with pytest.raises(ConfigError) as exc:
        Registry.load(path=path, env={})
    assert path in str(exc.value) and "line 1" in str(exc.value)


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"provider": "nope", "model": "x"}, "unknown provider 'nope'"),
        ({"model": "x"}, "missing field 'provider'"),
        ({"provider": "openai"}, "missing field 'model'"),
        ({"provider": "openai", "model": "x", "temperature": 1}, "unknown field 'temperature'"),
        ({"provider": "openai", "model": 5}, "field 'model' must be a str"),
        ({"provider": "openai-compatible", "model": "x"}, "needs a 'base_url'"),
        ({"provider": "openai", "model": "x", "capabilities": ["telepathy"]}, "unknown capability"),
        ("not an object", "expected an object"),
    ],
)
def test_bad_entries_name_the_entry_and_fault(tmp_path, entry, words):
    path = write(tmp_path, {"mine": entry})
    with pytest.raises(ConfigError) as exc:
        Registry.load(path=path, env={})
    msg = str(exc.value)
    assert path in msg and "model 'mine'" in msg and words in msg
    assert "\n" not in msg


def test_keys_in_models_json_are_refused(tmp_path):
    path = write(tmp_path, {"mine": {"provider": "openai", "model": "x", "api_key": "sk-secret123456"}})
    with pytest.raises(ConfigError) as exc:
        Registry.load(path=path, env={})
    assert "api_key_env" in str(exc.value) and "sk-secret" not in str(exc.value)


def test_file_is_laid_over_builtins_and_null_removes(tmp_path):
    path = write(
        tmp_path,
        {
            "mine": {"provider": "openai-compatible", "model": "m", "base_url": "http://h/v1/"},
            "kimi-k2": None,
            "default": "mine",
        },
    )
    reg = Registry.load(path=path, env={})
    assert "kimi-k2" not in reg.models and "gpt-4o" in reg.models
    assert reg.default_name() == "mine"
    assert reg.base_url(reg.models["mine"]) == "http://h/v1"
    assert reg.key(reg.models["mine"]) == (None, None)  # no key needed


def test_default_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="'default' names 'ghost'"):
        Registry.load(path=write(tmp_path, {"default": "ghost"}), env={})


def test_unknown_model_lists_close_names():
    reg = Registry.load(path=None, env={}, cwd=Path("/nonexistent"))
    with pytest.raises(ModelNotFound) as exc:
        reg.resolve("gpt4o-mini")
    assert "gpt-4o-mini" in str(exc.value) and exc.value.status == 404


def test_missing_key_names_the_variable_and_fallbacks():
    reg = Registry.load(path=None, env={}, cwd=Path("/nonexistent"))
    with pytest.raises(MissingKey) as exc:
        reg.key(reg.models["gemini-2.5-flash"])
    assert "GEMINI_API_KEY" in str(exc.value) and "GOOGLE_API_KEY" in str(exc.value)
    reg = Registry.load(path=None, env={"GOOGLE_API_KEY": "g"}, cwd=Path("/nonexistent"))
    assert reg.key(reg.models["gemini-2.5-flash"]) == ("g", "GOOGLE_API_KEY")


def test_api_key_env_and_base_url_overrides(tmp_path):
    path = write(
        tmp_path,
        {
            "groq": {
                "provider": "openai-compatible",
                "model": "llama",
                "base_url": "http://x/v1",
                "api_key_env": "GROQ_API_KEY",
            }
        },
    )
    reg = Registry.load(
        path=path,
        env={
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
            "OPENROUTER_API_URL": "http://o/v1",
            "GEMINI_BASE_URL": "http://g",
        },
    )
    assert reg.base_url(reg.models["gpt-4o"]) == "http://127.0.0.1:9/v1"
    assert reg.base_url(reg.models["deepseek-r1"]) == "http://o/v1"
    assert reg.base_url(reg.models["gemini-2.5-flash"]) == "http://g"
    assert reg.missing_key(reg.models["groq"]) == "GROQ_API_KEY"


def test_dotenv_parsing_and_environment_wins(tmp_path):
    (tmp_path / ".env").write_text('# keys\nexport OPENAI_API_KEY="sk-from-file"\nOTHER=x # note\nEMPTY=\n')
    assert parse_dotenv((tmp_path / ".env").read_text()) == {
        "OPENAI_API_KEY": "sk-from-file",
        "OTHER": "x",
        "EMPTY": "",
    }
    from gencli.config.registry import load_env

    env = load_env(cwd=tmp_path, environ={"OTHER": "from-env"})
    assert env["OPENAI_API_KEY"] == "sk-from-file" and env["OTHER"] == "from-env"
