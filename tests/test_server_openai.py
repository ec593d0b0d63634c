"""gencli serve's OpenAI-compatible routes, driven by the official ``openai`` SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server_fixture import server  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models(sdk):
    ids = {m.id for m in sdk.models.list()}
    assert {"echo", "reason", "tokens-5"} <= ids
    assert "needs-key" not in ids
    m = next(m for m in sdk.models.list() if m.id == "echo")
    assert m.object == "model" and m.owned_by == "openai-compatible"


def test_chat_completion_not_streamed(sdk, openai_fake):
    r = sdk.chat.completions.create(
        model="echo",
        messages=[{"role": "developer", "content": "short"}, {"role": "user", "content": "hello v1"}],
        temperature=0.3,
        max_tokens=10,
        seed=7,
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "You said: hello v1"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4 and r.usage.total_tokens == r.usage.prompt_tokens + 4
    body = openai_fake.last().body
    assert body["messages"][0] == {"role": "system", "content": "short"}
    assert body["temperature"] == 0.3 and body["max_tokens"] == 10 and body["seed"] == 7


def test_chat_completion_reasoning_content(server):
    r = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "reason", "messages": [{"role": "user", "content": "q"}]}
    ).json()
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"]["reasoning_content"] == "Hmm, the user wants an answer."
    assert r["choices"][0]["message"]["content"] == "Here it is: 42."


def test_chat_completion_streamed(sdk):
    stream = sdk.chat.completions.create(
        model="tokens-5",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_sse_framing_and_reasoning_deltas(server):
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "reason", "stream": True, "messages": [{"role": "user", "content": "q"}]},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert reasoning == "Hmm, the user wants an answer."
    assert all(c["choices"] for c in chunks)  # no usage chunk unless asked


def test_image_parts(sdk):
    import base64

    from tests.test_server_ollama import PNG

    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    r = sdk.chat.completions.create(
        model="echo",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ],
    )
    assert r.choices[0].message.content == "You said: look [1 image]"


def test_response_format_and_effort(server, openai_fake):
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": "reason-or",
            "messages": [{"role": "user", "content": "q"}],
            "reasoning_effort": "low",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        },
    )
    assert r.status_code == 200
    body = openai_fake.last().body
    assert body["reasoning_effort"] == "low"
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_openai_errors(sdk, server):
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and "nope" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="echo", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "7"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "echo", "messages": "hi"})
    err = r.json()["error"]
    assert r.status_code == 400 and set(err) == {"message", "type", "param", "code"}
    assert err["param"] == "messages"


def test_openai_error_after_stream_started(sdk):
    """The upstream fails mid-stream: a 502 when the failure came with the first bytes,
    else an error event after the partial text; the SDK raises either way."""
    got = []
    with pytest.raises(openai.APIError) as e:
        stream = sdk.chat.completions.create(
            model="midstream", messages=[{"role": "user", "content": "x"}], stream=True
        )
        for c in stream:
            if c.choices:
                got.append(c.choices[0].delta.content or "")
    assert "crashed" in str(e.value)
    assert "".join(got) in ("", "Partial ", "Partial answer ")
