"""The official ``google-genai`` SDK against the fake Gemini upstream: the fake must
accept what the SDK sends and answer what it parses, so it stays faithful to the
real wire that the gencli adapter is tested against."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

from tests.fakes.gemini_upstream import FAKE_KEY  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # bytes whose base64 uses + and / (or - and _)


@pytest.fixture
def sdk_env(monkeypatch):
    """No variable that would send the SDK to Vertex AI, a real key or a proxy."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "GEMINI_")) or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def client(fake, key: str = FAKE_KEY, version: str = "v1beta"):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=fake.base_url, api_version=version))


THINK = types.GenerateContentConfig(
    system_instruction="Answer briefly.",
    temperature=0.2,
    top_p=0.8,
    top_k=5,
    max_output_tokens=64,
    seed=7,
    stop_sequences=["NEVER"],
    thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=512),
)


def test_generate_content_with_thoughts_and_an_image(gemini_fake, sdk_env):
    c = client(gemini_fake)
    r = c.models.generate_content(
        model="gemini-think-sdk",
        contents=[types.Part.from_bytes(data=PNG, mime_type="image/png"), "describe it"],
        config=THINK,
    )
    parts = r.candidates[0].content.parts
    assert [bool(p.thought) for p in parts] == [True, True, False]
    assert "Reading the prompt" in parts[0].text
    assert r.text == f"You said: describe it [image/png {len(PNG)} bytes]"  # the image arrived intact
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.thoughts_token_count == 14
    assert r.usage_metadata.candidates_token_count == 7
    rec = gemini_fake.last("gemini-think-sdk")
    assert rec.path == "/v1beta/models/gemini-think-sdk:generateContent"
    assert rec.headers["x-goog-api-key"] == FAKE_KEY
    assert rec.body["systemInstruction"]["parts"] == [{"text": "Answer briefly."}]


def test_generate_content_stream(gemini_fake, sdk_env):
    c = client(gemini_fake)
    chunks = list(c.models.generate_content_stream(model="gemini-think-sdk", contents="stream please", config=THINK))
    thoughts = [p.text for ch in chunks for p in ch.candidates[0].content.parts or [] if p.thought]
    answer = [p.text for ch in chunks for p in ch.candidates[0].content.parts or [] if not p.thought]
    assert "".join(thoughts).startswith("**Reading the prompt**")
    assert "".join(answer) == "You said: stream please"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    rec = gemini_fake.last("gemini-think-sdk")
    assert (rec.path, rec.query) == ("/v1beta/models/gemini-think-sdk:streamGenerateContent", {"alt": "sse"})


def test_async_stream_on_v1_with_json_schema(gemini_fake, sdk_env):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}

    async def go():
        c = client(gemini_fake, version="v1")
        out = []
        async for ch in await c.aio.models.generate_content_stream(
            model="gemini-echo-sdk",
            contents="json please",
            config=types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema),
        ):
            out.append(ch.text or "")
        return "".join(out)

    assert json.loads(asyncio.run(go())) == {"echo": "You said: json please"}
    rec = gemini_fake.last("gemini-echo-sdk")
    assert rec.path == "/v1/models/gemini-echo-sdk:streamGenerateContent"


def test_blocked_prompt_parses(gemini_fake, sdk_env):
    c = client(gemini_fake)  # held: the SDK closes its HTTP client when the Client is collected
    r = c.models.generate_content(model="gemini-blocked", contents="bad")
    assert not r.candidates
    assert r.prompt_feedback.block_reason == types.BlockedReason.SAFETY


@pytest.mark.parametrize(
    "model, key, exc, code, status",
    [
        ("gemini-echo", "wrong-key", errors.ClientError, 400, "INVALID_ARGUMENT"),
        ("gemini-error-429", FAKE_KEY, errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("gemini-error-503", FAKE_KEY, errors.ServerError, 503, "UNAVAILABLE"),
        ("nope-model", FAKE_KEY, errors.ClientError, 404, "NOT_FOUND"),
    ],
)
def test_errors(gemini_fake, sdk_env, model, key, exc, code, status):
    c = client(gemini_fake, key=key)
    with pytest.raises(exc) as info:
        c.models.generate_content(model=model, contents="x")
    assert info.value.code == code and info.value.status == status
    if code == 429:
        retry = [d for d in info.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]


def test_stream_error_before_the_first_event(gemini_fake, sdk_env):
    c = client(gemini_fake, key="wrong-key")
    with pytest.raises(errors.ClientError) as info:
        list(c.models.generate_content_stream(model="gemini-echo", contents="x"))
    assert info.value.code == 400
