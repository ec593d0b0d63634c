"""The official ``anthropic`` SDK against the fake Anthropic upstream: the fake must
accept what the SDK sends and answer what it parses, so it stays faithful to the real
wire that the gencli adapter is tested against."""

from __future__ import annotations

import base64

import pytest

anthropic = pytest.importorskip("anthropic")

from tests.fakes.anthropic_upstream import FAKE_KEY, SIGNATURE  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@pytest.fixture
def client(anthropic_fake, monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    c = anthropic.Anthropic(api_key=FAKE_KEY, base_url=anthropic_fake.base_url, max_retries=0, timeout=10)
    yield c
    c.close()


def test_create_with_system_image_and_usage(client, anthropic_fake):
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
    }
    m = client.messages.create(
        model="claude-echo",
        max_tokens=100,
        system="Be brief.",
        metadata={"user_id": "u1"},
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "look here"}]}],
    )
    assert m.type == "message" and m.role == "assistant" and m.model == "claude-echo"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "You said: look here [1 image]"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == 2 + 2 + 100 and m.usage.output_tokens == 6
    rec = anthropic_fake.last()
    assert rec.headers["authorization"] == f"Bearer {FAKE_KEY}" and rec.headers["anthropic-version"]
    assert rec.body["system"] == "Be brief." and rec.body["max_tokens"] == 100


def test_sampling_parameters_by_api_version_and_model(anthropic_fake):
    """Current SDKs send anthropic-version 2026-10-21, where no model takes temperature; with
    2023-06-01 (what gencli sends) models before Claude 4.7 still take them."""
    args = dict(
        max_tokens=10,
        messages=[{"role": "user", "content": "x"}],
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},
    )
    current = anthropic.Anthropic(
        api_key=FAKE_KEY,
        base_url=anthropic_fake.base_url,
        max_retries=0,
        default_headers={"anthropic-version": "2026-10-21"},
    )
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        current.messages.create(model="claude-echo", **args)
    old = anthropic.Anthropic(
        api_key=FAKE_KEY,
        base_url=anthropic_fake.base_url,
        max_retries=0,
        default_headers={"anthropic-version": "2023-06-01"},
    )
    assert old.messages.create(model="claude-echo", **args).content[0].text == "You said: x"
    assert anthropic_fake.last().body["temperature"] == 0.5
    with pytest.raises(anthropic.BadRequestError, match="temperature"):  # Claude 4.7 on: never
        old.messages.create(model="claude-echo-5", **args)


def test_stream_text_and_final_message(client):
    with client.messages.stream(
        model="claude-tokens-5", max_tokens=50, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4"
    assert final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5 and final.usage.input_tokens == 1


def test_raw_stream_event_order(client):
    events = list(
        client.messages.create(
            model="claude-echo", max_tokens=50, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_stop") == 1
    assert events[-2].delta.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_and_max_tokens(client, stream):
    def run(**kw):
        if stream:
            with client.messages.stream(
                model="claude-echo", messages=[{"role": "user", "content": "alpha beta gamma"}], **kw
            ) as s:
                return s.get_final_message()
        return client.messages.create(
            model="claude-echo", messages=[{"role": "user", "content": "alpha beta gamma"}], **kw
        )

    m = run(max_tokens=50, stop_sequences=["gamma"])
    assert m.content[0].text == "You said: alpha beta "
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "gamma")
    m = run(max_tokens=2)
    assert m.content[0].text == "You said: " and m.stop_reason == "max_tokens"


@pytest.mark.parametrize(
    "model,thinking",
    [
        ("claude-think", {"type": "enabled", "budget_tokens": 2048}),
        ("claude-think-5", {"type": "adaptive"}),
    ],
)
def test_thinking_blocks(client, model, thinking):
    m = client.messages.create(
        model=model, max_tokens=4096, thinking=thinking, messages=[{"role": "user", "content": "hi"}]
    )
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking.startswith("Let me think") and m.content[0].signature == SIGNATURE
    with client.messages.stream(
        model=model, max_tokens=4096, thinking=thinking, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert final.content[0].thinking == m.content[0].thinking and final.content[0].signature == SIGNATURE


def test_thinking_forms_follow_the_model_generation(client):
    with pytest.raises(anthropic.BadRequestError, match="thinking.type.enabled"):
        client.messages.create(
            model="claude-think-5",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "hi"}],
        )
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client.messages.create(
            model="claude-think",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "hi"}],
        )
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        client.messages.create(
            model="claude-think",
            max_tokens=4096,
            extra_body={"temperature": 0.3},
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "hi"}],
        )


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(client, stream):
    messages = [{"role": "user", "content": "Paris"}]
    if stream:
        with client.messages.stream(model="claude-tools", max_tokens=100, tools=[WEATHER], messages=messages) as s:
            partial = [e.partial_json for e in s if e.type == "input_json"]
            m = s.get_final_message()
        assert len(partial) > 1  # the input arrived in pieces
    else:
        m = client.messages.create(model="claude-tools", max_tokens=100, tools=[WEATHER], messages=messages)
    assert m.stop_reason == "tool_use"
    use = m.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris", "days": 42}
    messages += [
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    m2 = client.messages.create(model="claude-tools", max_tokens=100, tools=[WEATHER], messages=messages)
    assert m2.content[0].text == "Tool results: sunny" and m2.stop_reason == "end_turn"


def test_unanswered_tool_use_is_a_400(client):
    bad = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {"role": "user", "content": "no result"},
    ]
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result`"):
        client.messages.create(model="claude-echo", max_tokens=10, messages=bad)


def test_count_tokens(client, anthropic_fake):
    r = client.messages.count_tokens(
        model="claude-echo", system="Be brief.", messages=[{"role": "user", "content": "one two three"}]
    )
    assert r.input_tokens == 5
    assert anthropic_fake.last("/v1/messages/count_tokens").body["system"] == "Be brief."


def test_structured_output(client):
    m = client.messages.create(
        model="claude-echo",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
    )
    assert m.content[0].text == '{"echo":"You said: hi"}'


@pytest.mark.parametrize(
    "model,error",
    [
        ("claude-error-401", anthropic.AuthenticationError),
        ("claude-error-403", anthropic.PermissionDeniedError),
        ("claude-error-404", anthropic.NotFoundError),
        ("claude-error-429", anthropic.RateLimitError),
        ("claude-error-500", anthropic.InternalServerError),
        ("claude-error-529", anthropic.APIStatusError),
    ],
)
def test_errors(client, model, error):
    with pytest.raises(error) as info:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
    if model == "claude-error-429":
        assert info.value.response.headers["retry-after"] == "7"


def test_bad_key_and_missing_max_tokens(anthropic_fake, client):
    bad = anthropic.Anthropic(api_key="sk-ant-wrong", base_url=anthropic_fake.base_url, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-echo", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    token = anthropic.Anthropic(api_key=None, auth_token=FAKE_KEY, base_url=anthropic_fake.base_url, max_retries=0)
    assert (
        token.messages.create(model="claude-echo", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        .content[0]
        .text
        == "You said: x"
    )
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.post(
            "/v1/messages",
            cast_to=object,
            body={"model": "claude-echo", "messages": [{"role": "user", "content": "x"}]},
        )


def test_midstream_error_event_raises(client):
    with pytest.raises(anthropic.APIStatusError, match="overloaded"):
        with client.messages.stream(
            model="claude-error-midstream", max_tokens=50, messages=[{"role": "user", "content": "one two three"}]
        ) as s:
            for _ in s:
                pass
