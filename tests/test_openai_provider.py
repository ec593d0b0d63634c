"""The engine in-process with the httpx transport against the fake OpenAI upstream:
the openai, openrouter and openai-compatible providers."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import (
    MissingKey,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UsageError,
)
from gencli.core.events import Done, ReasoningDelta, TextDelta
from gencli.core.request import GenerateRequest, Message
from gencli.transports.cli import HttpxTransport
from tests.fakes.openai_upstream import FAKE_KEY, FakeOpenAI
from tests.helpers import execute, wait_until

ENV = {"OPENAI_API_KEY": FAKE_KEY, "OPENROUTER_API_KEY": FAKE_KEY, "COMPAT_KEY": FAKE_KEY}


def png_bytes() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def registry(openai_fake, tmp_path_factory) -> Registry:
    url = openai_fake.base_url
    vision = ["completion", "vision"]
    thinking = ["completion", "thinking"]

    def oa(model, **kw):
        return {"provider": "openai", "model": model, "base_url": url, **kw}

    def orr(model, **kw):
        return {"provider": "openrouter", "model": model, "base_url": url, **kw}

    def cp(model, **kw):
        return {"provider": "openai-compatible", "model": model, "base_url": url, "api_key_env": "COMPAT_KEY", **kw}

    models = {
        "oa-echo": oa("echo", capabilities=vision),
        "or-echo": orr("echo", capabilities=vision),
        "cp-echo": cp("echo", capabilities=vision),
        "oa-gpt5": oa("gpt-5-nano", capabilities=["completion", "vision", "thinking"]),
        "or-reason": orr("reason-openrouter", capabilities=thinking),
        "ds-reason": cp("reason-deepseek", capabilities=thinking),
        "cp-think": cp("think-tags", capabilities=thinking),
        "cp-think-tags-mode": cp("think-tags", capabilities=thinking, reasoning_tags=True),
        "cp-noopen": cp("think-noopen", capabilities=thinking, reasoning_tags=True),
        "cp-noopen-auto": cp("think-noopen", capabilities=thinking),
        "oa-401": oa("error-401"),
        "oa-404": oa("error-404"),
        "oa-429": oa("error-429"),
        "oa-500": oa("error-500"),
        "or-midstream": orr("error-midstream"),
        "or-midstream-oneread": orr("error-midstream-oneread"),
        "oa-trunc": oa("error-truncate"),
        "or-keepalive": orr("keepalive"),
        "oa-length": oa("length"),
        "oa-json": oa("json"),
        "oa-tokens": oa("tokens-50"),
        "cp-opts": cp("echo", options={"temperature": 0.2, "top_k": 7}),
    }
    path = tmp_path_factory.mktemp("provider") / "models.json"
    path.write_text(json.dumps(models))
    return Registry.load(path=str(path), env=ENV)


def run(registry: Registry, model: str, prompt: str | None = "hello world", **kw) -> list:
    return execute(engine.prepare(GenerateRequest(model=model, prompt=prompt, **kw), registry))


def parts(events: list) -> tuple[str, str, Done]:
    text = "".join(e.text for e in events if type(e) is TextDelta)
    reasoning = "".join(e.text for e in events if type(e) is ReasoningDelta)
    done = events[-1]
    assert type(done) is Done
    assert [e for e in events if type(e) is Done] == [done]
    assert done.text == text and done.reasoning == reasoning
    return text, reasoning, done


# -- plain generation ------------------------------------------------------------


@pytest.mark.parametrize("model", ["oa-echo", "or-echo", "cp-echo"])
@pytest.mark.parametrize("stream", [True, False])
def test_echo_text_usage_and_finish(registry, openai_fake, model, stream):
    events = run(registry, model, "hello big world", stream=stream)
    text, reasoning, done = parts(events)
    assert text == "You said: hello big world"
    assert reasoning == ""
    assert done.done_reason == "stop"
    assert done.prompt_eval_count == 3
    assert done.eval_count == 5
    assert done.model == model
    assert done.total_duration >= done.eval_duration >= 0
    deltas = [e for e in events if type(e) is TextDelta]
    assert len(deltas) == (5 if stream else 1)
    body = openai_fake.last().body
    assert body["model"] == "echo"
    assert body["messages"] == [{"role": "user", "content": "hello big world"}]
    if stream:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in body and "stream_options" not in body


def test_request_headers_per_provider(registry, openai_fake):
    run(registry, "oa-echo")
    h = openai_fake.last().headers
    assert h["authorization"] == f"Bearer {FAKE_KEY}"
    assert h["content-type"] == "application/json"
    assert "x-title" not in h and "http-referer" not in h
    run(registry, "or-echo")
    h = openai_fake.last().headers
    assert h["x-title"] == "gencli" and h["http-referer"].startswith("https://")


def test_many_tokens_one_delta_each(registry):
    events = run(registry, "oa-tokens")
    text, _, done = parts(events)
    assert text == " ".join(f"tok{i}" for i in range(50))
    assert len([e for e in events if type(e) is TextDelta]) == 50
    assert done.eval_count == 50


def test_keepalive_comments_are_ignored(registry, openai_fake):
    text, _, done = parts(run(registry, "or-keepalive", "ping"))
    assert text == "You said: ping"
    assert done.done_reason == "stop"


@pytest.mark.parametrize("stream", [True, False])
def test_finish_reason_length(registry, stream):
    _, _, done = parts(run(registry, "oa-length", stream=stream))
    assert done.done_reason == "length"


def test_num_predict_cut_reports_length(registry, openai_fake):
    text, _, done = parts(run(registry, "or-echo", "one two three four five", options={"num_predict": 3}))
    assert text == "You said: one "
    assert done.done_reason == "length"
    assert openai_fake.last().body["max_tokens"] == 3


def test_system_message_goes_first(registry, openai_fake):
    run(registry, "oa-echo", "question", system="Be terse.")
    assert openai_fake.last().body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "question"},
    ]


# -- reasoning forms -----------------------------------------------------------


def reasoning_first(events: list) -> bool:
    kinds = [type(e) for e in events if type(e) in (TextDelta, ReasoningDelta)]
    first_text = kinds.index(TextDelta)
    return (
        ReasoningDelta in kinds
        and all(k is ReasoningDelta for k in kinds[:first_text])
        and ReasoningDelta not in kinds[first_text:]
    )


@pytest.mark.parametrize("stream", [True, False])
def test_openrouter_reasoning_not_duplicated(registry, stream):
    events = run(registry, "or-reason", stream=stream)
    text, reasoning, done = parts(events)
    assert reasoning == "Let me think about this."  # reasoning and reasoning_details carry the same text
    assert text == "The answer is 42."
    assert reasoning_first(events)
    assert done.eval_count == 9  # 5 reasoning words + 4 answer words


@pytest.mark.parametrize("stream", [True, False])
def test_deepseek_reasoning_content(registry, stream):
    events = run(registry, "ds-reason", stream=stream)
    text, reasoning, _ = parts(events)
    assert reasoning == "Hmm, the user wants an answer."
    assert text == "Here it is: 42."
    assert reasoning_first(events)


@pytest.mark.parametrize("model", ["cp-think", "cp-think-tags-mode"])
@pytest.mark.parametrize("stream", [True, False])
def test_think_tags_split_across_chunks(registry, model, stream):
    events = run(registry, model, stream=stream)
    text, reasoning, _ = parts(events)
    assert reasoning == "Pondering deeply."
    assert text == "The answer is 42."
    for e in events:
        if type(e) in (TextDelta, ReasoningDelta):
            assert "<" not in e.text and ">" not in e.text


def test_think_missing_open_tag_streamed_with_reasoning_tags(registry):
    text, reasoning, _ = parts(run(registry, "cp-noopen", stream=True))
    assert reasoning == "Pondering without an open tag."
    assert text == "The answer is 42."


@pytest.mark.parametrize("model", ["cp-noopen", "cp-noopen-auto"])
def test_think_missing_open_tag_non_streamed_is_detected(registry, model):
    text, reasoning, _ = parts(run(registry, model, stream=False))
    assert reasoning == "Pondering without an open tag."
    assert text == "The answer is 42."


def test_context_keeps_only_the_answer_not_the_reasoning(registry, openai_fake):
    _, _, done = parts(run(registry, "cp-think", "first"))
    run(registry, "cp-echo", "second", context=done.context)
    assert openai_fake.last().body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "The answer is 42."},
        {"role": "user", "content": "second"},
    ]


# -- options mapping -------------------------------------------------------------

OPTS = {
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "num_predict": 64,
    "stop": ["END", "STOP"],
    "seed": 1234,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
}


def body_without_messages(fake) -> dict:
    body = dict(fake.last().body)
    body.pop("messages")
    return body


def test_options_for_openai(registry, openai_fake):
    run(registry, "oa-echo", options=OPTS, stream=False)
    assert body_without_messages(openai_fake) == {
        "model": "echo",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_completion_tokens": 64,
        "stop": ["END", "STOP"],
        "seed": 1234,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
    }


@pytest.mark.parametrize("model", ["or-echo", "cp-echo"])
def test_options_for_openrouter_and_compatible(registry, openai_fake, model):
    run(registry, model, options={**OPTS, "repeat_penalty": 1.1, "min_p": 0.05}, stream=False)
    assert body_without_messages(openai_fake) == {
        "model": "echo",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["END", "STOP"],
        "seed": 1234,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "min_p": 0.05,
    }


def test_model_entry_options_are_defaults_the_request_overrides(registry, openai_fake):
    run(registry, "cp-opts", stream=False)
    body = openai_fake.last().body
    assert body["temperature"] == 0.2 and body["top_k"] == 7
    run(registry, "cp-opts", options={"temperature": 1.5}, stream=False)
    body = openai_fake.last().body
    assert body["temperature"] == 1.5 and body["top_k"] == 7


def test_openai_reasoning_model_accepts_max_completion_tokens(registry, openai_fake):
    text, _, _ = parts(run(registry, "oa-gpt5", "a b c", options={"num_predict": 50}))
    assert text == "You said: a b c"
    assert openai_fake.last().body["max_completion_tokens"] == 50


def test_stop_sequence_reaches_the_upstream_and_cuts(registry, openai_fake):
    text, _, _ = parts(run(registry, "oa-echo", "alpha beta gamma", options={"stop": "beta"}))
    assert text == "You said: alpha "
    assert openai_fake.last().body["stop"] == ["beta"]


def test_openai_refuses_more_than_four_stops(registry):
    with pytest.raises(UsageError) as err:
        run(registry, "oa-echo", options={"stop": ["a", "b", "c", "d", "e"]})
    assert "at most 4" in str(err.value)


def test_bad_option_is_a_usage_error(registry, openai_fake):
    before = openai_fake.mark()
    with pytest.raises(UsageError) as err:
        run(registry, "oa-echo", options={"temperature": 5})
    assert err.value.status == 400 and "temperature" in str(err.value)
    assert openai_fake.since(before) == []


def test_format_json(registry, openai_fake):
    text, _, _ = parts(run(registry, "oa-json", "hi", format="json"))
    assert json.loads(text) == {"you_said": "hi", "ok": True}
    assert openai_fake.last().body["response_format"] == {"type": "json_object"}


def test_format_schema(registry, openai_fake):
    schema = {"type": "object", "properties": {"you_said": {"type": "string"}}, "required": ["you_said"]}
    text, _, _ = parts(run(registry, "oa-json", "yo", format=schema, stream=False))
    assert json.loads(text)["you_said"] == "yo"
    assert openai_fake.last().body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_bad_format_is_refused(registry):
    with pytest.raises(UsageError):
        run(registry, "oa-json", format="yaml")


@pytest.mark.parametrize(
    "think,expected", [(True, {"enabled": True}), (False, {"exclude": True}), ("high", {"effort": "high"})]
)
def test_openrouter_reasoning_controls(registry, openai_fake, think, expected):
    events = run(registry, "or-reason", think=think)
    assert openai_fake.last().body["reasoning"] == expected
    _, reasoning, _ = parts(events)
    assert (reasoning == "") is (think is False)  # the fake honours exclude, as OpenRouter does


@pytest.mark.parametrize("think,expected", [("low", "low"), (False, "minimal"), (True, None)])
def test_openai_reasoning_effort(registry, openai_fake, think, expected):
    run(registry, "oa-gpt5", think=think)
    assert openai_fake.last().body.get("reasoning_effort") == expected


def test_think_on_a_model_without_thinking_is_refused(registry, openai_fake):
    """As Ollama: think true (or a level) on a model without the 'thinking' capability is a
    usage error (HTTP 400), and nothing reaches the upstream; think false is fine."""
    mark = openai_fake.mark()
    for think in (True, "high"):
        with pytest.raises(UsageError) as err:
            run(registry, "oa-echo", think=think)
        assert err.value.field == "think" and "does not support thinking" in err.value.message
    assert openai_fake.since(mark) == []
    run(registry, "oa-echo", think=False)
    body = openai_fake.last().body
    assert "reasoning_effort" not in body and "reasoning" not in body


def test_think_value_is_validated(registry):
    with pytest.raises(UsageError):
        run(registry, "oa-gpt5", think="max")


# -- images ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bytes", "base64", "data-url", "urlsafe-nopad"])
def test_images_become_data_urls(registry, openai_fake, form):
    raw = png_bytes()
    b64 = base64.b64encode(raw).decode()
    value = {
        "bytes": raw,
        "base64": b64,
        "data-url": f"data:image/png;base64,{b64}",
        "urlsafe-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }[form]
    text, _, _ = parts(run(registry, "or-echo", "what is this?", images=[value]))
    assert text == "You said: what is this? [1 image]"
    assert openai_fake.last().body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
            ],
        }
    ]


def test_not_an_image_is_refused(registry, openai_fake):
    before = openai_fake.mark()
    with pytest.raises(UsageError) as err:
        run(registry, "oa-echo", "x", images=[base64.b64encode(b"%PDF-1.4 not an image").decode()])
    assert "not an image" in str(err.value)
    assert openai_fake.since(before) == []


def test_image_to_a_model_without_vision_is_refused(registry):
    with pytest.raises(UsageError) as err:
        run(registry, "or-reason", "x", images=[png_bytes()])
    assert "vision" in str(err.value)


# -- errors ----------------------------------------------------------------------


def test_401_names_the_variable_never_the_key(registry):
    with pytest.raises(UpstreamAuthError) as err:
        run(registry, "oa-401")
    e = err.value
    assert e.upstream_status == 401
    assert "OPENAI_API_KEY" in str(e)
    assert FAKE_KEY not in str(e) and FAKE_KEY[-4:] not in str(e)
    assert "\n" not in str(e)


def test_wrong_key_is_rejected_by_the_fake_and_not_echoed(openai_fake, tmp_path):
    secret = "sk-wrong-SECRET-value-0000"
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"m": {"provider": "openrouter", "model": "echo", "base_url": openai_fake.base_url}}))
    reg = Registry.load(path=str(path), env={"OPENROUTER_API_KEY": secret})
    with pytest.raises(UpstreamAuthError) as err:
        run(reg, "m")
    assert openai_fake.last().headers["authorization"] == f"Bearer {secret}"
    assert "OPENROUTER_API_KEY" in str(err.value)
    assert "SECRET" not in str(err.value) and "0000" not in str(err.value)


def test_missing_key_names_the_variable(openai_fake, tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"m": {"provider": "openai", "model": "echo", "base_url": openai_fake.base_url}}))
    reg = Registry.load(path=str(path), env={})
    before = openai_fake.mark()
    with pytest.raises(MissingKey) as err:
        run(reg, "m")
    assert err.value.variable == "OPENAI_API_KEY" and "OPENAI_API_KEY" in str(err.value)
    assert openai_fake.since(before) == []


def test_404_model_not_found(registry):
    with pytest.raises(UpstreamError) as err:
        run(registry, "oa-404")
    assert err.value.upstream_status == 404
    assert "does not exist" in str(err.value)


@pytest.mark.parametrize("stream", [True, False])
def test_429_is_rate_limited_with_retry_after(registry, stream):
    with pytest.raises(UpstreamRateLimited) as err:
        run(registry, "oa-429", stream=stream)
    assert err.value.status == 429 and err.value.retry_after == 7.0
    assert "rate limit" in str(err.value).lower()


def test_500_becomes_502(registry):
    with pytest.raises(UpstreamError) as err:
        run(registry, "oa-500")
    assert err.value.status == 502 and err.value.upstream_status == 500
    assert "HTTP 500" in str(err.value)


@pytest.mark.parametrize("model", ["or-midstream", "or-midstream-oneread"])
def test_midstream_error_after_partial_text(registry, model):
    """The text before the error is kept, also when the error arrives in the same read."""
    plan = engine.prepare(GenerateRequest(model=model, prompt="x"), registry)
    seen: list = []
    with pytest.raises(UpstreamError) as err:
        execute(plan, seen)
    assert "".join(e.text for e in seen if type(e) is TextDelta) == "Partial answer "
    assert not any(type(e) is Done for e in seen)
    assert "Upstream provider crashed" in str(err.value)
    assert err.value.status == 502


def test_midstream_error_non_streamed(registry):
    with pytest.raises(UpstreamError) as err:
        run(registry, "or-midstream", stream=False)
    assert "Upstream provider crashed" in str(err.value)


def test_stream_cut_short_is_an_error_not_a_silent_end(registry):
    plan = engine.prepare(GenerateRequest(model="oa-trunc", prompt="x"), registry)
    seen: list = []
    with pytest.raises(UpstreamError) as err:
        execute(plan, seen)
    assert "".join(e.text for e in seen if type(e) is TextDelta) == "Cut short "
    assert not any(type(e) is Done for e in seen)
    assert "before the answer was complete" in str(err.value)


def test_body_cut_short_is_an_error(registry):
    with pytest.raises(UpstreamError) as err:
        run(registry, "oa-trunc", stream=False)
    assert "not JSON" in str(err.value)


def test_connections_are_closed_after_a_run_and_when_the_reader_stops(tmp_path):

    fake = FakeOpenAI(api_key=None).start()
    try:
        path = tmp_path / "models.json"
        path.write_text(
            json.dumps({"slow": {"provider": "openai-compatible", "model": "slow-10-100", "base_url": fake.base_url}})
        )
        reg = Registry.load(path=str(path), env={})
        transport = HttpxTransport(tls=False)
        events = engine.execute(engine.prepare(GenerateRequest(model="slow", prompt="x"), reg), transport)
        assert type(next(events)) is TextDelta
        assert fake.open_connections == 1
        events.close()  # the reader stops after one token (as a client that goes away would)
        transport.close()
        wait_until(lambda: not fake.open_connections and fake.disconnects, 5, 0.01)
        assert fake.open_connections == 0
        assert fake.disconnects == 1  # the fake saw the stream dropped well before its 100 tokens
    finally:
        fake.stop()


def test_unreachable_upstream(tmp_path):
    fake = FakeOpenAI(api_key=None).start()
    url = fake.base_url
    fake.stop()  # the port is now closed
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"m": {"provider": "openai-compatible", "model": "echo", "base_url": url}}))
    with pytest.raises(UpstreamError) as err:
        run(Registry.load(path=str(path), env={}), "m")
    assert err.value.status == 502 and "cannot reach 127.0.0.1" in str(err.value)


def test_compatible_without_key_sends_no_authorization(tmp_path):
    fake = FakeOpenAI(api_key=None).start()
    try:
        path = tmp_path / "models.json"
        path.write_text(
            json.dumps({"m": {"provider": "openai-compatible", "model": "echo", "base_url": fake.base_url}})
        )
        text, _, _ = parts(run(Registry.load(path=str(path), env={}), "m", "local"))
        assert text == "You said: local"
        assert "authorization" not in fake.last().headers
    finally:
        fake.stop()


# -- context round trip ------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_context_round_trip(registry, openai_fake, stream):
    _, _, first = parts(run(registry, "or-echo", "my name is Ada", system="sys", stream=stream))
    assert first.context and all(0 <= i < 2**24 for i in first.context)
    _, _, second = parts(
        run(registry, "or-echo", "what is my name?", system="sys", context=first.context, stream=stream)
    )
    assert openai_fake.last().body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    run(registry, "oa-echo", "third", context=second.context)
    msgs = openai_fake.last().body["messages"]
    assert [m["content"] for m in msgs] == [
        "my name is Ada",
        "You said: my name is Ada",
        "what is my name?",
        "You said: what is my name?",
        "third",
    ]


def test_damaged_context_is_refused(registry, openai_fake):
    _, _, done = parts(run(registry, "oa-echo", "x"))
    bad = list(done.context)
    bad[-2] ^= 1
    before = openai_fake.mark()
    with pytest.raises(UsageError):
        run(registry, "oa-echo", "y", context=bad)
    with pytest.raises(UsageError):
        run(registry, "oa-echo", "y", context=[1, 2, 3])
    assert openai_fake.since(before) == []


def test_messages_request_has_no_context(registry, openai_fake):
    req = GenerateRequest(
        model="cp-echo", messages=[Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    )
    transport = HttpxTransport(tls=False)
    try:
        events = list(engine.execute(engine.prepare(req, registry), transport))
    finally:
        transport.close()
    text, _, done = parts(events)
    assert text == "You said: c" and done.context == []
    assert len(openai_fake.last().body["messages"]) == 3


def test_env_base_url_is_used_by_the_builtin_provider(openai_fake, tmp_path):
    env = {
        "OPENAI_API_KEY": FAKE_KEY,
        "OPENAI_BASE_URL": openai_fake.base_url + "/",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    reg = Registry.load(env=env, cwd=tmp_path)  # no models.json anywhere: the built-ins
    text, _, _ = parts(run(reg, "gpt-5-nano", "builtin", options={"num_predict": 9}))
    assert text == "You said: builtin"
    body = openai_fake.last().body
    assert body["model"] == "gpt-5-nano" and body["max_completion_tokens"] == 9
