"""The official ``openai`` SDK against the fake upstream: whatever the fake sends must
parse as the real wire does, so the fake stays faithful to OpenAI / OpenRouter / DeepSeek."""

from __future__ import annotations

import asyncio
import base64
import json

import openai
import pytest

from tests.fakes.openai_upstream import FAKE_KEY
from tests.test_openai_provider import png_bytes

MSG = [{"role": "user", "content": "hello sdk"}]


@pytest.fixture(scope="module")
def client(openai_fake):
    c = openai.OpenAI(api_key=FAKE_KEY, base_url=openai_fake.base_url, max_retries=0, timeout=10)
    yield c
    c.close()


def collect(stream) -> tuple[list, str, str, str | None, object]:
    chunks = list(stream)
    content, reasoning, finish, usage = [], [], None, None
    for ch in chunks:
        assert ch.object == "chat.completion.chunk"
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            d = choice.delta
            if d.content:
                content.append(d.content)
            extra = d.model_extra or {}
            r = extra.get("reasoning") or extra.get("reasoning_content")
            if r:
                reasoning.append(r)
            if choice.finish_reason:
                finish = choice.finish_reason
    return chunks, "".join(content), "".join(reasoning), finish, usage


def test_non_streamed(client, openai_fake):
    resp = client.chat.completions.create(model="echo", messages=MSG)
    assert resp.object == "chat.completion" and resp.model == "echo"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "You said: hello sdk"
    assert choice.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (2, 4, 6)
    assert openai_fake.last().body == {"model": "echo", "messages": MSG}


def test_streamed_with_usage(client, openai_fake):
    stream = client.chat.completions.create(
        model="echo", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks, content, _, finish, usage = collect(stream)
    assert content == "You said: hello sdk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish == "stop"
    assert chunks[-1].choices == [] and usage.completion_tokens == 4 and usage.prompt_tokens == 2
    last_choice = chunks[-2].choices[0]
    assert last_choice.finish_reason == "stop" and last_choice.delta.content is None
    assert openai_fake.last().body["stream_options"] == {"include_usage": True}


def test_streamed_without_usage_has_no_usage_chunk(client):
    chunks, content, _, finish, usage = collect(
        client.chat.completions.create(model="tokens-5", messages=MSG, stream=True)
    )
    assert content == "tok0 tok1 tok2 tok3 tok4" and finish == "stop" and usage is None
    assert all(ch.choices for ch in chunks)


def test_stream_options_without_stream_is_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="echo", messages=MSG, stream_options={"include_usage": True})
    assert err.value.status_code == 400


def test_openrouter_reasoning_fields(client):
    resp = client.chat.completions.create(model="reason-openrouter", messages=MSG)
    extra = resp.choices[0].message.model_extra
    assert extra["reasoning"] == "Let me think about this."
    assert extra["reasoning_details"][0] == {
        "type": "reasoning.text",
        "text": "Let me think about this.",
        "format": "unknown",
        "index": 0,
    }
    assert resp.choices[0].message.content == "The answer is 42."
    chunks, content, reasoning, _, _ = collect(
        client.chat.completions.create(model="reason-openrouter", messages=MSG, stream=True)
    )
    assert reasoning == "Let me think about this." and content == "The answer is 42."
    thinking_deltas = [
        c.choices[0].delta for c in chunks if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning")
    ]
    assert thinking_deltas and all(d.content == "" for d in thinking_deltas)  # content is "" while it thinks


def test_openrouter_exclude_reasoning(client, openai_fake):
    resp = client.chat.completions.create(
        model="reason-openrouter", messages=MSG, extra_body={"reasoning": {"exclude": True}}
    )
    assert "reasoning" not in (resp.choices[0].message.model_extra or {})
    assert openai_fake.last().body["reasoning"] == {"exclude": True}


def test_deepseek_reasoning_content(client):
    resp = client.chat.completions.create(model="reason-deepseek", messages=MSG)
    assert resp.choices[0].message.model_extra["reasoning_content"] == "Hmm, the user wants an answer."
    chunks, content, reasoning, _, _ = collect(
        client.chat.completions.create(model="reason-deepseek", messages=MSG, stream=True)
    )
    assert reasoning == "Hmm, the user wants an answer." and content == "Here it is: 42."
    thinking = [
        c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.model_extra.get("reasoning_content")
    ]
    assert thinking and all(d.content is None for d in thinking)  # content is null while it thinks


def test_think_tags_arrive_split_in_content(client):
    _, content, _, _, _ = collect(client.chat.completions.create(model="think-tags", messages=MSG, stream=True))
    assert content == "<think>Pondering deeply.</think>\n\nThe answer is 42."


def test_keepalive_comments_and_length(client):
    _, content, _, finish, _ = collect(client.chat.completions.create(model="keepalive", messages=MSG, stream=True))
    assert content == "You said: hello sdk" and finish == "stop"
    resp = client.chat.completions.create(model="length", messages=MSG)
    assert resp.choices[0].finish_reason == "length"


def test_image_parts_and_sampling_fields(client, openai_fake):
    b64 = base64.b64encode(png_bytes()).decode()
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
    ]
    resp = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": content}],
        temperature=0.1,
        seed=3,
        stop=["x"],
        max_tokens=20,
    )
    assert resp.choices[0].message.content == "You said: look [1 image]"
    body = openai_fake.last().body
    assert body["messages"][0]["content"] == content
    assert (body["temperature"], body["seed"], body["stop"], body["max_tokens"]) == (0.1, 3, ["x"], 20)


def test_response_format_schema(client, openai_fake):
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True}}
    resp = client.chat.completions.create(model="json", messages=MSG, response_format=fmt)
    assert json.loads(resp.choices[0].message.content) == {"you_said": "hello sdk", "ok": True}
    assert openai_fake.last().body["response_format"] == fmt


def test_reasoning_model_rejects_max_tokens(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-5-nano", messages=MSG, max_tokens=5)
    assert err.value.code == "unsupported_parameter" and err.value.param == "max_tokens"
    resp = client.chat.completions.create(model="gpt-5-nano", messages=MSG, max_completion_tokens=5)
    assert resp.choices[0].message.content == "You said: hello sdk"


@pytest.mark.parametrize(
    "model,exc,status,code",
    [
        ("error-401", openai.AuthenticationError, 401, "invalid_api_key"),
        ("error-404", openai.NotFoundError, 404, "model_not_found"),
        ("error-429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("error-500", openai.InternalServerError, 500, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_error_statuses(client, model, exc, status, code, stream):
    with pytest.raises(exc) as err:
        client.chat.completions.create(model=model, messages=MSG, stream=stream)
    assert err.value.status_code == status and err.value.code == code
    assert err.value.message
    if status == 429:
        assert err.value.response.headers["retry-after"] == "7"


def test_wrong_key_is_401(openai_fake):
    with openai.OpenAI(api_key="sk-wrong-key-1234", base_url=openai_fake.base_url, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="echo", messages=MSG)
    assert err.value.code == "invalid_api_key"
    assert "sk-wrong-key-1234" not in str(err.value)  # masked, as OpenAI does


def test_midstream_error_is_an_api_error(client):
    stream = client.chat.completions.create(model="error-midstream", messages=MSG, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "Partial answer "
    assert "Upstream provider crashed" in err.value.message
    assert not isinstance(err.value, openai.APIStatusError)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "echo" in ids and "reason-openrouter" in ids


def test_async_client_streams(openai_fake):
    async def main():
        async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=openai_fake.base_url, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="tokens-20", messages=MSG, stream=True, stream_options={"include_usage": True}
            )
            text, usage = [], None
            async for chunk in stream:
                usage = chunk.usage or usage
                text.extend(ch.delta.content or "" for ch in chunk.choices)
            return "".join(text), usage

    text, usage = asyncio.run(main())
    assert text == " ".join(f"tok{i}" for i in range(20)) and usage.completion_tokens == 20
