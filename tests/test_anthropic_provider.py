"""The Anthropic adapter through the real engine and httpx transport, against the fake
Anthropic upstream on 127.0.0.1; plus ``gencli generate`` as a subprocess."""

from __future__ import annotations

import base64
import json

import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import UpstreamAuthError, UpstreamError, UpstreamRateLimited, UsageError
from gencli.core.events import Done, ReasoningDelta, TextDelta, ToolCall
from gencli.core.request import GenerateRequest, Message
from tests.conftest import clean_env, run_gencli
from tests.fakes.anthropic_upstream import FAKE_KEY
from tests.helpers import execute, generate, texts

ALL = ["completion", "vision", "thinking", "tools"]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x01" * 20
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}


def registry(tmp_path, fake, upstream: str = "claude-echo", env=None, base_url=True, **entry) -> Registry:
    spec = {"provider": "anthropic", "model": upstream, "capabilities": ALL, **entry}
    if base_url:
        spec["base_url"] = fake.base_url
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"c": spec}), encoding="utf-8")
    return Registry.load(path=str(path), env={"ANTHROPIC_API_KEY": FAKE_KEY} if env is None else env)


def run(reg: Registry, prompt: str | None = "hello world", **kw) -> tuple[list, Done]:
    return generate(reg, kw.pop("model", "c"), prompt, **kw)


@pytest.mark.parametrize("stream", [True, False])
def test_text_usage_and_wire(tmp_path, anthropic_fake, stream):
    events, done = run(registry(tmp_path, anthropic_fake), system="Be brief.", stream=stream)
    assert done.text == "You said: hello world" == "".join(texts(events, TextDelta))
    assert len(texts(events, TextDelta)) == (4 if stream else 1)
    assert (done.done_reason, done.stop_sequence) == ("stop", None)
    assert (done.prompt_eval_count, done.eval_count) == (4, 4)
    rec = anthropic_fake.last()
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == FAKE_KEY and rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers
    expected = {
        "model": "claude-echo",
        "max_tokens": 8192,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
    }
    if stream:
        expected["stream"] = True
    assert rec.body == expected


@pytest.mark.parametrize("stream", [True, False])
def test_stop_sequence_and_max_tokens(tmp_path, anthropic_fake, stream):
    reg = registry(tmp_path, anthropic_fake)
    _, done = run(reg, "alpha beta gamma", options={"stop": ["gamma"]}, stream=stream)
    assert (done.text, done.done_reason, done.stop_sequence) == ("You said: alpha beta ", "stop", "gamma")
    assert anthropic_fake.last().body["stop_sequences"] == ["gamma"]
    _, done = run(reg, "alpha beta gamma", options={"num_predict": 2}, stream=stream)
    assert (done.text, done.done_reason) == ("You said: ", "length")
    assert anthropic_fake.last().body["max_tokens"] == 2


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "upstream,think,options,thinking,effort,max_tokens",
    [
        ("claude-think", True, {}, {"type": "enabled", "budget_tokens": 8192}, None, 8192 + 8192),
        ("claude-think", "high", {}, {"type": "enabled", "budget_tokens": 24576}, None, 8192 + 24576),
        ("claude-think", "high", {"num_predict": 4000}, {"type": "enabled", "budget_tokens": 3999}, None, 4000),
        ("claude-think", "low", {}, {"type": "enabled", "budget_tokens": 1024}, None, 8192 + 1024),
        ("claude-think-5", True, {}, {"type": "adaptive", "display": "summarized"}, None, 8192),
        ("claude-think-5", "medium", {}, {"type": "adaptive", "display": "summarized"}, "medium", 8192),
    ],
)
def test_thinking_becomes_reasoning(
    tmp_path, anthropic_fake, stream, upstream, think, options, thinking, effort, max_tokens
):
    events, done = run(registry(tmp_path, anthropic_fake, upstream), think=think, stream=stream, options=options)
    assert done.reasoning == "Let me think about this. The user wants an echo."
    assert "".join(texts(events, ReasoningDelta)) == done.reasoning
    assert done.text == "You said: hello world"
    body = anthropic_fake.last().body
    assert body["thinking"] == thinking and body["max_tokens"] == max_tokens
    assert body.get("output_config", {}).get("effort") == effort


@pytest.mark.parametrize(
    "upstream,thinking,effort", [("claude-think", {"type": "disabled"}, None), ("claude-think-5", None, "low")]
)
def test_think_false(tmp_path, anthropic_fake, upstream, thinking, effort):
    _, done = run(registry(tmp_path, anthropic_fake, upstream), think=False)
    assert done.reasoning == "" and done.text == "You said: hello world"
    body = anthropic_fake.last().body
    assert body.get("thinking") == thinking and body.get("output_config", {}).get("effort") == effort


def test_thinking_needs_room_and_the_capability(tmp_path, anthropic_fake):
    with pytest.raises(UsageError, match="num_predict"):
        run(registry(tmp_path, anthropic_fake, "claude-think"), think=True, options={"num_predict": 1000})
    nocap = registry(tmp_path, anthropic_fake, "claude-think", capabilities=["completion"])
    with pytest.raises(UsageError, match="does not support thinking"):  # as Ollama: a 400
        run(nocap, think=True)
    _, done = run(nocap, think=False)
    assert "thinking" not in anthropic_fake.last().body and done.reasoning == ""


def test_sampling_options(tmp_path, anthropic_fake):
    opts = {"temperature": 0.3, "top_p": 0.9, "top_k": 7, "seed": 5}
    run(registry(tmp_path, anthropic_fake), options=opts)
    body = anthropic_fake.last().body
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.3, 0.9, 7) and "seed" not in body
    run(registry(tmp_path, anthropic_fake, "claude-echo-5"), options=opts)  # Claude 4.7 on: refused, so not sent
    assert not {"temperature", "top_p", "top_k"} & set(anthropic_fake.last().body)
    run(registry(tmp_path, anthropic_fake, "claude-think"), options=opts, think=True)  # not while thinking
    assert not {"temperature", "top_p", "top_k"} & set(anthropic_fake.last().body)
    with pytest.raises(UsageError, match="0 to 1"):
        run(registry(tmp_path, anthropic_fake), options={"temperature": 1.5})


def test_images_and_formats(tmp_path, anthropic_fake):
    reg = registry(tmp_path, anthropic_fake)
    _, done = run(reg, "look", images=[base64.b64encode(PNG).decode()])
    assert done.text == "You said: look [1 image]"
    content = anthropic_fake.last().body["messages"][0]["content"]
    assert content[0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
    }
    _, done = run(reg, "hi", format={"type": "object", "properties": {"echo": {"type": "string"}}})
    assert json.loads(done.text) == {"echo": "You said: hi"}
    assert anthropic_fake.last().body["output_config"]["format"]["type"] == "json_schema"
    run(reg, "hi", format="json")
    assert "JSON object" in anthropic_fake.last().body["system"]


@pytest.mark.parametrize("stream", [True, False])
def test_tool_round_trip(tmp_path, anthropic_fake, stream):
    reg = registry(tmp_path, anthropic_fake, "claude-tools")
    msgs = [Message("system", "Use tools."), Message("user", "Paris")]
    events, done = run(reg, None, messages=list(msgs), tools=[WEATHER], stream=stream)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris", "days": 42})]
    assert done.done_reason == "tool_calls" and done.tool_calls == calls
    body = anthropic_fake.last().body
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER["function"]["parameters"]}
    ]
    assert "tool_choice" not in body and body["system"] == "Use tools."
    history = msgs + [Message("assistant", "", tool_calls=calls), Message("tool", "sunny", tool_call_id=calls[0].id)]
    _, done = run(reg, None, messages=history, tools=[WEATHER], stream=stream)
    assert done.text == "Tool results: sunny" and done.done_reason == "stop"
    sent = anthropic_fake.last().body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": calls[0].id, "name": "get_weather", "input": calls[0].arguments}],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"}],
    }


def test_tool_choice(tmp_path, anthropic_fake):
    reg = registry(tmp_path, anthropic_fake, "claude-tools")
    run(reg, "x", messages=None, tools=[WEATHER], tool_choice="required")
    assert anthropic_fake.last().body["tool_choice"] == {"type": "any"}
    run(reg, "x", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert anthropic_fake.last().body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    _, done = run(reg, "x", tools=[WEATHER], tool_choice="none")
    assert anthropic_fake.last().body["tool_choice"] == {"type": "none"} and done.text == "You said: x"
    with pytest.raises(UsageError, match="not in tools"):
        run(reg, "x", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})


@pytest.mark.parametrize("stream", [True, False])
def test_errors(tmp_path, anthropic_fake, stream):
    with pytest.raises(UpstreamAuthError, match="ANTHROPIC_API_KEY"):
        run(registry(tmp_path, anthropic_fake, env={"ANTHROPIC_API_KEY": "sk-ant-wrong"}), stream=stream)
    with pytest.raises(UpstreamRateLimited) as info:
        run(registry(tmp_path, anthropic_fake, "claude-error-429", retries=0), stream=stream)
    assert info.value.retry_after == 7 and "rate limit" in info.value.message
    with pytest.raises(UpstreamError) as info:
        run(registry(tmp_path, anthropic_fake, "claude-error-529", retries=0), stream=stream)
    assert info.value.status == 503 and info.value.kind == "overloaded_error" and "Overloaded" in info.value.message
    with pytest.raises(UpstreamError) as info:
        run(registry(tmp_path, anthropic_fake, "gpt-4o"), stream=stream)
    assert info.value.upstream_status == 404


def test_midstream_error_keeps_the_partial_answer(tmp_path, anthropic_fake):
    reg = registry(tmp_path, anthropic_fake, "claude-error-midstream")
    seen: list = []
    with pytest.raises(UpstreamError) as info:
        execute(engine.prepare(GenerateRequest(model="c", prompt="one two"), reg), seen)
    assert "".join(texts(seen, TextDelta)) == "You said: "
    assert "overloaded_error" in info.value.message and info.value.status == 503
    with pytest.raises(UpstreamError, match="no message_stop"):
        run(registry(tmp_path, anthropic_fake, "claude-error-truncate"))
    with pytest.raises(UpstreamError, match="not JSON"):
        run(registry(tmp_path, anthropic_fake, "claude-error-truncate"), stream=False)


def test_key_and_base_url_from_the_environment(tmp_path, anthropic_fake):
    reg = registry(
        tmp_path,
        anthropic_fake,
        base_url=False,
        env={"ANTHROPIC_API_KEY": FAKE_KEY, "ANTHROPIC_BASE_URL": anthropic_fake.base_url + "/"},
    )
    _, done = run(reg)
    assert done.text == "You said: hello world"
    reg = registry(tmp_path, anthropic_fake, base_url=False, env={})
    assert reg.missing_key(reg.resolve("c")) == "ANTHROPIC_API_KEY"


def test_builtin_claude_models_need_the_key():
    reg = Registry.load(env={}, cwd=None)
    claude = [e for e in reg.models.values() if e.provider == "anthropic"]
    assert claude and all(reg.missing_key(e) == "ANTHROPIC_API_KEY" for e in claude)
    assert all({"tools", "vision", "thinking"} <= set(e.capabilities) for e in claude)


def test_cli_generate(tmp_path, workdir, anthropic_fake):
    models = tmp_path / "m.json"
    models.write_text(json.dumps({"c": {"provider": "anthropic", "model": "claude-think", "capabilities": ALL}}))
    env = clean_env(tmp_path, ANTHROPIC_API_KEY=FAKE_KEY, ANTHROPIC_BASE_URL=anthropic_fake.base_url)
    r = run_gencli(["generate", "--models", str(models), "-m", "c", "--think", "hi"], env, workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "You said: hi"
    assert "Let me think" in r.stderr.decode()
    env["ANTHROPIC_API_KEY"] = "sk-ant-wrong"
    r = run_gencli(["generate", "--models", str(models), "-m", "c", "hi"], env, workdir)
    assert r.returncode == 1 and "ANTHROPIC_API_KEY" in r.stderr.decode()
    assert "sk-ant-wrong" not in r.stderr.decode()
