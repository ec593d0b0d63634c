"""Options are an allowlist per provider (gencli.core.options, ProviderSpec.options): a request
sets only the sampling options its provider takes; how a model is loaded (num_ctx,
num_thread, num_batch, num_gpu) comes from its models.json entry, never from a request.
The hostile cases run against the real ``gencli serve`` with the local model under a
memory limit: no crash, no reload, no slowdown for the next client."""

from __future__ import annotations

import importlib.util
import json

import httpx
import pytest

from gencli.config.registry import Registry
from gencli.core import options as opts
from gencli.core.errors import ConfigError, UsageError
from gencli.providers import PROVIDERS
from tests.conftest import clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY


# -- the allowlist ---------------------------------------------------------------------------
def test_each_provider_takes_its_own_options():
    raw = {"temperature": 0.5, "top_k": 20, "min_p": 0.1, "typical_p": 0.9, "num_ctx": 4096, "mirostat": 1}
    taken = {name: opts.check(raw, spec.options) for name, spec in PROVIDERS.items()}
    assert taken["openai"] == ({"temperature": 0.5}, ["top_k", "min_p", "typical_p", "num_ctx", "mirostat"])
    assert taken["google"] == ({"temperature": 0.5, "top_k": 20}, ["min_p", "typical_p", "num_ctx", "mirostat"])
    assert taken["openai-compatible"][0] == {"temperature": 0.5, "top_k": 20, "min_p": 0.1}
    assert taken["local"] == (
        {"temperature": 0.5, "top_k": 20, "min_p": 0.1, "typical_p": 0.9},
        ["num_ctx", "mirostat"],
    )
    for spec in PROVIDERS.values():  # load-time options are never taken from a request
        assert not set(spec.options) & opts.RUNNER_NAMES


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"temperature": "hot"}, "options.temperature"),
        ({"temperature": float("inf")}, "options.temperature"),
        ({"top_k": 2.5}, "options.top_k"),
        ({"seed": True}, "options.seed"),
        ({"stop": [1]}, "options.stop"),
        ({"num_predict": 10**9}, "options.num_predict"),
    ],
)
def test_a_bad_value_of_a_known_option_is_a_400_naming_it(raw, field):
    with pytest.raises(UsageError) as info:
        opts.check(raw, PROVIDERS["local"].options)
    assert info.value.status == 400 and info.value.field == field and field in str(info.value)


def test_defaults_and_nulls_are_dropped_and_integers_normalised():
    got, ignored = opts.check(
        {"num_predict": -1, "seed": 4.0, "stop": "END", "top_p": None}, PROVIDERS["local"].options
    )
    assert got == {"seed": 4, "stop": ["END"]} and ignored == []


def test_the_warning_is_one_bounded_line_whatever_was_sent():
    names = ["k" * 1_000_000, "bad\nname\x00", *[f"x{i}" for i in range(5000)], "num_thread"]
    line = opts.ignored_message("smollm2", "the local model", names)
    assert "\n" not in line and len(line) < 800
    assert "num_thread is set per model in models.json" in line and "and 4994 more" in line
    assert "bad\\nname\\x00" in line  # control characters are shown escaped


# -- models.json -----------------------------------------------------------------------------
def _registry(tmp_path, entry: dict) -> Registry:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"m": entry}))
    return Registry.load(str(path), env={})


@pytest.mark.parametrize(
    "entry, words",
    [
        (
            {"provider": "local", "path": "x.gguf", "options": {"num_thread": 2147483647}},
            "options.num_thread is 2147483647; it must be from 1 to 1024",
        ),
        (
            {"provider": "openai", "model": "gpt-4o-mini", "options": {"num_thread": 4}},
            "unknown option 'num_thread' for this provider",
        ),
        (
            {"provider": "google", "model": "gemini-2.5-flash", "options": {"temperature": 5}},
            "options.temperature is 5; it must be from 0 to 2",
        ),
        ({"provider": "local", "path": "x.gguf", "options": {"flash": True}}, "unknown option 'flash'"),
    ],
)
def test_models_json_options_are_checked_at_load(tmp_path, entry, words):
    with pytest.raises(ConfigError) as info:
        _registry(tmp_path, entry)
    assert "model 'm'" in str(info.value) and words in str(info.value)


def test_models_json_sets_the_load_options_and_sampling_defaults(tmp_path):
    reg = _registry(
        tmp_path,
        {
            "provider": "local",
            "path": "x.gguf",
            "options": {"num_ctx": 512.0, "num_thread": 2, "num_batch": 64, "num_gpu": 0, "temperature": 0.3},
        },
    )
    assert reg.models["m"].options == {
        "num_ctx": 512,
        "num_thread": 2,
        "num_batch": 64,
        "num_gpu": 0,
        "temperature": 0.3,
    }


def test_cli_warns_about_an_option_the_provider_does_not_take(tmp_path, workdir, openai_fake):
    (workdir / "models.json").write_text(
        json.dumps({"oa": {"provider": "openai", "model": "echo", "base_url": openai_fake.base_url}})
    )
    r = run_gencli(
        ["generate", "-m", "oa", "--top-k", "5", "--temperature", "0.2", "hello"],
        clean_env(tmp_path, OPENAI_API_KEY=FAKE_KEY),
        workdir,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "You said: hello\n"
    assert r.stderr.decode() == ("gencli: warning: model 'oa': ignored options: top_k is not an option OpenAI takes\n")
    body = openai_fake.last().body
    assert body["temperature"] == 0.2 and "top_k" not in body


def test_the_server_warns_once_per_ignored_option(tmp_path, openai_fake):
    """Open WebUI sends num_ctx with every chat: one warning line, not one a request."""
    from tests.server_fixture import ServeProcess, models_json

    serve = ServeProcess(tmp_path, models_json(openai_fake.base_url))
    try:

        def chat(options: dict) -> None:
            r = httpx.post(
                serve.url + "/api/chat",
                timeout=30,
                json={
                    "model": "echo",
                    "stream": False,
                    "options": options,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert r.status_code == 200, r.text

        for _ in range(5):
            chat({"num_ctx": 8192, "temperature": 0.5})
        chat({"num_ctx": 4096, "num_thread": 4})
        chat({"num_thread": 8})
        lines = [line for line in serve.stderr().splitlines() if "ignored options" in line]
        assert lines == [
            "gencli: warning: model 'echo': ignored options: num_ctx is set per model in models.json, not per request",
            "gencli: warning: model 'echo': ignored options: num_thread is set per model in "
            "models.json, not per request",
        ]
    finally:
        serve.stop()


def test_what_is_remembered_of_ignored_options_is_bounded(capsys):
    from gencli.engine import IgnoredOptions

    ignored = IgnoredOptions()
    for i in range(50):
        ignored.warn("m" * 10_000, "OpenAI", [f"k{i}-{j}" + "x" * 10_000 for j in range(100)])
    assert len(ignored.seen) <= IgnoredOptions.LIMIT
    assert all(len(model) + len(name) <= 160 for model, name in ignored.seen)
    err = capsys.readouterr().err
    assert err.count("\n") == 50 and len(err) < 50 * 1000  # one short line for each request with new names


# -- hostile options against gencli serve with the local model --------------------------------
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra: pip install -e '.[local]'"
)
SEEDED = {"seed": 11, "num_predict": 24, "temperature": 0.7}


@pytest.fixture(scope="module")
def local_serve(tmp_path_factory):
    from tests.server_fixture import ServeProcess

    s = ServeProcess(tmp_path_factory.mktemp("serve-options"), {}, memory_mb=2048)
    yield s
    s.stop()


def _generate(serve, options: dict, prompt: str = "Name three colours.") -> dict:
    r = httpx.post(
        serve.url + "/api/generate", timeout=120, json={"model": "smollm2", "prompt": prompt, "options": options}
    )
    assert r.status_code == 200, r.text
    return r.json()


def _rate(reply: dict) -> float:
    return reply["eval_count"] / max(reply["eval_duration"], 1)


@needs_llama
def test_hostile_options_do_not_crash_reload_or_slow_the_model(local_serve):
    cold = _generate(local_serve, SEEDED)  # the first request loads the model
    before = [_generate(local_serve, SEEDED) for _ in range(2)]
    assert before[0]["response"] == cold["response"] == before[1]["response"]  # seeded: repeatable
    log_before = len(local_serve.stderr())

    hostile = [
        {"num_thread": 2147483647},  # aborted the whole process (std::bad_alloc)
        {"num_thread": 256},  # reloaded the model for everyone, 40x slower
        {"num_ctx": 100000, "num_batch": 1, "num_gpu": 999, "main_gpu": 7, "use_mmap": False, "numa": True},
        {"k" * 1_000_000: 1, **{f"x{i}": i for i in range(2000)}},  # unknown keys: ignored, logged short
    ]
    for options in hostile:
        reply = _generate(local_serve, {**SEEDED, **options})
        assert reply["response"] == cold["response"]  # the same model, loaded the same way
        assert local_serve.proc.poll() is None
    # a request's num_ctx is not the loaded context: a 64-token window would refuse this prompt
    long = _generate(local_serve, {"num_ctx": 64, "num_predict": 2}, prompt="sky " * 200)
    assert long["prompt_eval_count"] > 200

    log = local_serve.stderr()[log_before:]
    # once per option name: num_thread (not again for the second request), the load options, the
    # 2001 unknown names, and num_ctx again (the 2001 names overflowed what is remembered)
    assert log.count("ignored options") == len(hostile)
    assert len(log) < 8000  # a megabyte key name is not echoed: each warning is one short line
    after = [_generate(local_serve, SEEDED) for _ in range(2)]
    assert after[0]["response"] == cold["response"]  # the next client gets what the first one got
    # no reload (a load costs a large part of the cold start; a warm start is a few milliseconds)
    assert max(a["load_duration"] for a in after) < cold["load_duration"] / 4
    # no slowdown: 256 threads on this machine made every later request ~40x slower
    assert max(map(_rate, after)) > max(map(_rate, before)) / 8
