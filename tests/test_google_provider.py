"""The Gemini adapter through the real engine and httpx transport, against the fake
Gemini upstream on 127.0.0.1; plus ``gencli generate`` as a subprocess."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import UpstreamAuthError, UpstreamError, UpstreamRateLimited, UsageError
from gencli.core.events import Done, ReasoningDelta, TextDelta
from gencli.core.request import GenerateRequest
from gencli.providers.base import Call
from gencli.providers.google import GoogleAdapter
from tests.conftest import clean_env, run_gencli
from tests.fakes.gemini_upstream import FAKE_KEY
from tests.helpers import execute, generate, texts

THOUGHTS = "**Reading the prompt**\n\nThe user wants an echo. I will repeat what they said."
THOUGHT_TOKENS = 14  # words in THOUGHTS, as the fake counts them
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x01" * 20
JPEG = b"\xff\xd8\xff\xe0" + b"\x10JFIF" + b"\x02" * 30
THINKING = ["completion", "vision", "thinking"]


def write_models(tmp_path, models: dict) -> str:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(models), encoding="utf-8")
    return str(path)


def registry(tmp_path, fake, upstream: str = "gemini-echo", caps=None, env=None, base_url=True, **entry) -> Registry:
    spec = {"provider": "google", "model": upstream, "capabilities": caps or THINKING, **entry}
    if base_url:
        spec["base_url"] = fake.base_url
    env = {"GEMINI_API_KEY": FAKE_KEY} if env is None else env
    return Registry.load(path=write_models(tmp_path, {"g": spec}), env=env)


def run(reg: Registry, prompt: str = "hello world", **kw) -> tuple[list, Done]:
    return generate(reg, kw.pop("model", "g"), prompt, **kw)


# -- text, reasoning, usage ----------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_text_usage_and_wire(tmp_path, gemini_fake, stream):
    events, done = run(registry(tmp_path, gemini_fake, caps=["completion"]), stream=stream)
    assert done.text == "You said: hello world"
    assert "".join(texts(events, TextDelta)) == "You said: hello world"
    assert len(texts(events, TextDelta)) == (4 if stream else 1)
    assert done.done_reason == "stop"
    assert (done.prompt_eval_count, done.eval_count) == (2, 4)
    assert done.reasoning == ""
    rec = gemini_fake.last("gemini-echo")
    action = "streamGenerateContent" if stream else "generateContent"
    assert rec.path == f"/v1beta/models/gemini-echo:{action}"
    assert rec.query == ({"alt": "sse"} if stream else {})
    assert rec.headers["x-goog-api-key"] == FAKE_KEY
    assert "authorization" not in rec.headers
    assert rec.body == {"contents": [{"role": "user", "parts": [{"text": "hello world"}]}]}


@pytest.mark.parametrize("stream", [True, False])
def test_thought_parts_become_reasoning(tmp_path, gemini_fake, stream):
    events, done = run(registry(tmp_path, gemini_fake, "gemini-think"), prompt="hi there", stream=stream)
    assert done.reasoning == THOUGHTS
    assert done.text == "You said: hi there"
    kinds = [type(e) for e in events]
    assert kinds.index(TextDelta) > kinds.index(ReasoningDelta)  # reasoning first, as it arrived
    assert ReasoningDelta not in kinds[kinds.index(TextDelta) :]
    assert done.eval_count == 4 + THOUGHT_TOKENS  # candidates + thoughts
    assert done.prompt_eval_count == 2
    # reasoning summaries are asked for by default on a thinking model
    assert gemini_fake.last("gemini-think").body["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}


@pytest.mark.parametrize(
    "think, upstream, config",
    [
        (True, "gemini-think", {"includeThoughts": True, "thinkingBudget": -1}),
        (False, "gemini-think", {"thinkingBudget": 0}),
        ("low", "gemini-think", {"includeThoughts": True, "thinkingBudget": 1024}),
        ("medium", "gemini-think", {"includeThoughts": True, "thinkingBudget": 8192}),
        ("high", "gemini-think", {"includeThoughts": True, "thinkingBudget": 24576}),
        ("high", "gemini-3-pro-preview", {"includeThoughts": True, "thinkingLevel": "HIGH"}),
        (False, "gemini-3-pro-preview", {"thinkingLevel": "LOW"}),
        (False, "gemini-3-flash-preview", {"thinkingLevel": "MINIMAL"}),
        ("medium", "gemini-3-flash-preview", {"includeThoughts": True, "thinkingLevel": "MEDIUM"}),
    ],
)
def test_think_controls(tmp_path, gemini_fake, think, upstream, config):
    events, done = run(registry(tmp_path, gemini_fake, upstream), think=think)
    assert gemini_fake.last(upstream).body["generationConfig"]["thinkingConfig"] == config
    if upstream == "gemini-think":
        assert done.reasoning == ("" if think is False else THOUGHTS)
        assert done.eval_count == 4 + (0 if think is False else THOUGHT_TOKENS)


def test_no_thinking_config_for_a_model_without_thinking(tmp_path, gemini_fake):
    reg = registry(tmp_path, gemini_fake, "gemini-think-nocap", caps=["completion"])
    for think in (None, False):
        _, done = run(reg, think=think)
        assert "generationConfig" not in gemini_fake.last("gemini-think-nocap").body
        assert done.reasoning == ""
    for think in (True, "high"):  # as Ollama: asking a model without 'thinking' to think is a 400
        with pytest.raises(UsageError, match="does not support thinking"):
            run(reg, think=think)


# -- request mapping -----------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_options_map_to_generation_config(tmp_path, gemini_fake, stream):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-opts", options={"temperature": 0.3})
    opts = {"top_p": 0.9, "top_k": 20, "num_predict": 100, "stop": ["END", "STOP"], "seed": 42, "num_ctx": 4096}
    run(reg, stream=stream, think=False, options=opts)
    assert gemini_fake.last("gemini-echo-opts").body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 20,
        "maxOutputTokens": 100,
        "stopSequences": ["END", "STOP"],
        "seed": 42,
        "thinkingConfig": {"thinkingBudget": 0},
    }


@pytest.mark.parametrize("stream", [True, False])
def test_max_tokens_is_length_and_stop_cuts(tmp_path, gemini_fake, stream):
    reg = registry(tmp_path, gemini_fake, "gemini-echo", caps=["completion"])
    _, done = run(reg, prompt="one two three four", stream=stream, options={"num_predict": 2})
    assert (done.text, done.done_reason, done.eval_count) == ("You said: ", "length", 2)
    _, done = run(reg, prompt="alpha beta gamma", stream=stream, options={"stop": ["gamma"]})
    assert (done.text, done.done_reason) == ("You said: alpha beta ", "stop")


def test_more_than_five_stops_is_a_usage_error(tmp_path, gemini_fake):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-stops")
    before = len(gemini_fake.requests)
    with pytest.raises(UsageError, match=r"options.stop has 6 entries; Gemini takes at most 5") as info:
        run(reg, options={"stop": list("abcdef")})
    assert info.value.field == "options.stop"
    with pytest.raises(UsageError, match="32-bit seed"):
        run(reg, options={"seed": 2**40})
    assert len(gemini_fake.requests) == before  # nothing was sent
    run(reg, options={"stop": list("abcde")})  # five is fine
    assert gemini_fake.last("gemini-echo-stops").body["generationConfig"]["stopSequences"] == list("abcde")


def test_system_instruction_and_context_roles(tmp_path, gemini_fake):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-sys", caps=["completion"])
    _, first = run(reg, prompt="first question", system="Be terse.")
    body = gemini_fake.last("gemini-echo-sys").body
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "first question"}]}]
    _, second = run(reg, prompt="second one", context=first.context, stream=False)
    assert gemini_fake.last("gemini-echo-sys").body["contents"] == [
        {"role": "user", "parts": [{"text": "first question"}]},
        {"role": "model", "parts": [{"text": "You said: first question"}]},
        {"role": "user", "parts": [{"text": "second one"}]},
    ]
    assert second.text == "You said: second one"


@pytest.mark.parametrize("data, mime", [(PNG, "image/png"), (JPEG, "image/jpeg")])
def test_image_inline_data_with_sniffed_mime(tmp_path, gemini_fake, data, mime):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-img")
    # a URL-safe base64 string without padding: the engine decodes and re-encodes it
    raw = base64.urlsafe_b64encode(data).decode().rstrip("=")
    _, done = run(reg, prompt="what is this?", images=[raw], think=False)
    parts = gemini_fake.last("gemini-echo-img").body["contents"][0]["parts"]
    assert parts[0]["inlineData"]["mimeType"] == mime
    assert base64.b64decode(parts[0]["inlineData"]["data"], validate=True) == data
    assert parts[1] == {"text": "what is this?"}
    assert done.text == f"You said: what is this? [{mime} {len(data)} bytes]"


@pytest.mark.parametrize("stream", [True, False])
def test_format_json_and_schema(tmp_path, gemini_fake, stream):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-json", caps=["completion"])
    _, done = run(reg, prompt="give json", format="json", stream=stream)
    assert gemini_fake.last("gemini-echo-json").body["generationConfig"] == {"responseMimeType": "application/json"}
    assert json.loads(done.text) == {"echo": "You said: give json"}
    schema = {
        "type": "object",
        "properties": {"echo": {"type": "string"}},
        "required": ["echo"],
        "additionalProperties": False,
    }
    _, done = run(reg, prompt="give json", format=schema, stream=stream)
    assert gemini_fake.last("gemini-echo-json").body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    assert json.loads(done.text) == {"echo": "You said: give json"}


# -- finish reasons and errors -------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_safety_finish_is_content_filter(tmp_path, gemini_fake, stream):
    _, done = run(registry(tmp_path, gemini_fake, "gemini-safety", caps=["completion"]), stream=stream)
    assert (done.done_reason, done.text) == ("content_filter", "I cannot continue ")


@pytest.mark.parametrize("stream", [True, False])
def test_blocked_prompt_is_a_clear_error(tmp_path, gemini_fake, stream):
    with pytest.raises(UpstreamError, match=r"^g: Gemini blocked the prompt \(blockReason SAFETY\)") as info:
        run(registry(tmp_path, gemini_fake, "gemini-blocked"), stream=stream)
    assert info.value.status == 400


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "upstream, key", [("gemini-echo", "wrong-key-secret-987654321"), ("gemini-error-400-key", FAKE_KEY)]
)
def test_bad_key_is_an_auth_error_naming_the_variable(tmp_path, gemini_fake, stream, upstream, key):
    reg = registry(tmp_path, gemini_fake, upstream, env={"GEMINI_API_KEY": key})
    with pytest.raises(UpstreamAuthError) as info:
        run(reg, stream=stream)
    msg = str(info.value)
    assert "GEMINI_API_KEY" in msg and key not in msg and "\n" not in msg
    assert info.value.upstream_status == 400


def test_missing_key_403_is_an_auth_error(tmp_path, gemini_fake):
    reg = registry(tmp_path, gemini_fake, "gemini-echo", env={"GEMINI_API_KEY": FAKE_KEY}, headers={})
    plan = engine.prepare(GenerateRequest(model="g", prompt="x"), reg)
    plan.call = dataclasses.replace(plan.call, api_key=None)  # what an empty key sends: no x-goog-api-key
    with pytest.raises(UpstreamAuthError, match=r"HTTP 403.*GEMINI_API_KEY"):
        execute(plan)
    assert "x-goog-api-key" not in gemini_fake.last("gemini-echo").headers


@pytest.mark.parametrize(
    "upstream, wait", [("gemini-error-429", 12.0), ("gemini-error-429-frac", 1.5), ("gemini-error-429-header", 7.0)]
)
def test_rate_limit_retry_after(tmp_path, gemini_fake, upstream, wait):
    with pytest.raises(UpstreamRateLimited) as info:
        run(registry(tmp_path, gemini_fake, upstream))
    assert info.value.retry_after == wait
    assert info.value.status == 429 and "exceeded your current quota" in str(info.value)


@pytest.mark.parametrize("stream", [True, False])
def test_overloaded_503_is_a_502(tmp_path, gemini_fake, stream):
    with pytest.raises(UpstreamError, match="overloaded") as info:
        run(registry(tmp_path, gemini_fake, "gemini-error-503"), stream=stream)
    assert (info.value.status, info.value.upstream_status) == (502, 503)


def test_unknown_model_and_midstream_error(tmp_path, gemini_fake):
    with pytest.raises(UpstreamError, match="not found for API version v1beta"):
        run(registry(tmp_path, gemini_fake, "nope-1"))
    reg = registry(tmp_path, gemini_fake, "gemini-error-midstream", caps=["completion"])
    seen: list = []
    with pytest.raises(UpstreamError, match="internal error"):
        execute(engine.prepare(GenerateRequest(model="g", prompt="a b c d"), reg), seen)
    assert "".join(texts(seen, TextDelta)) == "You said: "  # what arrived before the error


# -- keys and base URLs from the environment -------------------------------------
def test_google_api_key_fallback(tmp_path, gemini_fake):
    reg = registry(tmp_path, gemini_fake, "gemini-echo-gkey", caps=["completion"], env={"GOOGLE_API_KEY": FAKE_KEY})
    _, done = run(reg)
    assert done.text == "You said: hello world"
    assert gemini_fake.last("gemini-echo-gkey").headers["x-goog-api-key"] == FAKE_KEY
    reg = registry(tmp_path, gemini_fake, "gemini-echo-gkey", env={"GOOGLE_API_KEY": "not-the-key-42424242"})
    with pytest.raises(UpstreamAuthError, match="check GOOGLE_API_KEY"):
        run(reg)
    # GEMINI_API_KEY wins when both are set
    reg = registry(
        tmp_path,
        gemini_fake,
        "gemini-echo-gkey",
        env={"GEMINI_API_KEY": FAKE_KEY, "GOOGLE_API_KEY": "not-the-key-42424242"},
    )
    run(reg)
    assert gemini_fake.last("gemini-echo-gkey").headers["x-goog-api-key"] == FAKE_KEY


@pytest.mark.parametrize("var", ["GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"])
def test_base_url_from_environment(tmp_path, gemini_fake, var):
    reg = registry(
        tmp_path,
        gemini_fake,
        "gemini-echo-env",
        caps=["completion"],
        base_url=False,
        env={"GEMINI_API_KEY": FAKE_KEY, var: gemini_fake.base_url + "/"},
    )
    plan = engine.prepare(GenerateRequest(model="g", prompt="via env"), reg)
    assert plan.call.base_url == gemini_fake.base_url  # decided before anything is sent
    done = execute(plan)[-1]
    assert done.text == "You said: via env"
    assert gemini_fake.last("gemini-echo-env").path == "/v1beta/models/gemini-echo-env:streamGenerateContent"


def test_base_url_with_a_version_is_kept(tmp_path, gemini_fake):
    reg = Registry.load(
        path=write_models(
            tmp_path, {"g": {"provider": "google", "model": "gemini-echo-v1", "base_url": gemini_fake.base_url + "/v1"}}
        ),
        env={"GEMINI_API_KEY": FAKE_KEY},
    )
    _, done = run(reg, stream=False)
    assert done.text == "You said: hello world"
    assert gemini_fake.last("gemini-echo-v1").path == "/v1/models/gemini-echo-v1:generateContent"


# -- the stream parser on its own: CRLF events split at every byte ---------------------
def test_stream_parser_handles_crlf_split_anywhere():
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "plan", "thought": True}], "role": "model"}}]},
        {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]},
        {
            "candidates": [{"content": {"parts": [{"text": "lo é"}], "role": "model"}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "thoughtsTokenCount": 5},
        },
    ]
    wire = b"".join(b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\r\n\r\n" for c in chunks)
    call = Call(
        model="m",
        name="g",
        base_url="http://x",
        api_key="k",
        key_env="GEMINI_API_KEY",
        headers={},
        messages=[],
        options={},
    )
    parser = GoogleAdapter().stream_parser(call)
    events = []
    for i in range(len(wire)):
        events += parser.feed(wire[i : i + 1])
    events += parser.close()
    assert "".join(texts(events, ReasoningDelta)) == "plan"
    assert "".join(texts(events, TextDelta)) == "Hello é"
    assert [e.reason for e in events if type(e).__name__ == "Finish"] == ["length"]
    usage = [e for e in events if type(e).__name__ == "Usage"][-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 7)


# -- the real command --------------------------------------------------------------
def _cli_models(workdir, fake):
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "gthink": {
                    "provider": "google",
                    "model": "gemini-think",
                    "base_url": fake.base_url,
                    "capabilities": THINKING,
                },
            }
        ),
        encoding="utf-8",
    )


@pytest.mark.parametrize("flags", [[], ["--no-stream"]])
def test_cli_generate_reasoning_on_stderr_answer_on_stdout(tmp_path, workdir, gemini_fake, flags):
    _cli_models(workdir, gemini_fake)
    env = clean_env(tmp_path, GEMINI_API_KEY=FAKE_KEY)
    r = run_gencli(["generate", "-m", "gthink", *flags, "hello from the cli"], env, workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "You said: hello from the cli\n"
    assert "Reading the prompt" in r.stderr.decode() and "repeat what they said" in r.stderr.decode()
    r = run_gencli(["generate", "-m", "gthink", "--hide-reasoning", *flags, "quiet"], env, workdir)
    assert (r.returncode, r.stdout.decode(), r.stderr.decode()) == (0, "You said: quiet\n", "")


def test_cli_bad_key_one_line_naming_the_variable(tmp_path, workdir, gemini_fake):
    _cli_models(workdir, gemini_fake)
    secret = "bad-gemini-key-0123456789"
    r = run_gencli(["generate", "-m", "gthink", "hi"], clean_env(tmp_path, GEMINI_API_KEY=secret), workdir)
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b""
    assert err.startswith("gencli: error: gthink: Gemini rejected the API key") and err.count("\n") == 1
    assert "GEMINI_API_KEY" in err and secret not in err
