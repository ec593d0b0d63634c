"""Tool calling: the engine in-process against the fake OpenAI and Gemini upstreams
(streamed and not), then ``gencli serve`` driven by the official ``ollama`` client on
/api/chat and by the ``openai`` SDK on /v1/chat/completions."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import UpstreamError, UsageError
from gencli.core.events import Done, ToolCall
from gencli.core.request import GenerateRequest, Message
from gencli.transports.cli import HttpxTransport
from tests.fakes.gemini_upstream import FAKE_KEY as GEMINI_KEY
from tests.fakes.openai_upstream import FAKE_KEY
from tests.server_fixture import KEY_VAR, ServeProcess

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS_CAPS = ["completion", "tools"]


@pytest.fixture(scope="module")
def registry(openai_fake, gemini_fake, tmp_path_factory) -> Registry:
    models = {
        "oa-tools": {
            "provider": "openai",
            "model": "tools",
            "base_url": openai_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
        "oa-tools-2": {
            "provider": "openai",
            "model": "tools-2",
            "base_url": openai_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
        "oa-bad-args": {
            "provider": "openrouter",
            "model": "tools-bad-args",
            "base_url": openai_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
        "oa-plain": {"provider": "openai", "model": "echo", "base_url": openai_fake.base_url},
        "gm-tools": {
            "provider": "google",
            "model": "gemini-tools",
            "base_url": gemini_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
        "gm-tools-2": {
            "provider": "google",
            "model": "gemini-tools-2",
            "base_url": gemini_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
    }
    path = tmp_path_factory.mktemp("tools") / "models.json"
    path.write_text(json.dumps(models))
    return Registry.load(
        str(path), env={"OPENAI_API_KEY": FAKE_KEY, "OPENROUTER_API_KEY": FAKE_KEY, "GEMINI_API_KEY": GEMINI_KEY}
    )


def run(reg: Registry, messages: list[Message], model: str, stream: bool, tools=(WEATHER,)) -> tuple[list, Done]:
    transport = HttpxTransport(tls=False)
    try:
        events = list(
            engine.generate(
                GenerateRequest(
                    model=model, messages=messages, stream=stream, tools=list(tools) if tools is not None else None
                ),
                reg,
                transport,
            )
        )
    finally:
        transport.close()
    done = events[-1]
    assert isinstance(done, Done)
    return events, done


# -- the engine against the upstream wires ---------------------------------------------------


@pytest.mark.parametrize("model", ["oa-tools", "gm-tools"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_comes_back_with_arguments_as_a_dict(registry, model, stream):
    events, done = run(registry, [Message("user", "Paris")], model, stream)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].arguments == {"city": "Paris", "days": 42, "metric": True}
    assert type(calls[0].arguments["days"]) is int
    assert calls[0].id
    assert done.tool_calls == calls
    assert done.done_reason == "tool_calls"  # Gemini says STOP; the engine reports the calls


@pytest.mark.parametrize("model", ["oa-tools-2", "gm-tools-2"])
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_are_assembled_in_order(registry, model, stream):
    _, done = run(registry, [Message("user", "Oslo")], model, stream, tools=(WEATHER, TIME))
    assert [c.name for c in done.tool_calls] == ["get_weather", "get_time"]
    assert done.tool_calls[1].arguments == {"city": "Oslo"}
    assert len({c.id for c in done.tool_calls}) == 2


def test_openai_wire_request_carries_tools(registry, openai_fake):
    run(registry, [Message("user", "Paris")], "oa-tools", False)
    body = openai_fake.last().body
    assert body["tools"] == [WEATHER]
    assert "tool_choice" not in body  # not given: the upstream's default (auto), passed on exactly


def test_gemini_wire_request_carries_function_declarations(registry, gemini_fake):
    run(registry, [Message("user", "Paris")], "gm-tools", True)
    body = gemini_fake.last("gemini-tools").body
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather"
    assert decl["parametersJsonSchema"] == WEATHER["function"]["parameters"]


@pytest.mark.parametrize(
    "choice,openai_wire,gemini_config",
    [
        ("required", "required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
        ("auto", "auto", {"mode": "AUTO"}),
        ("none", "none", {"mode": "NONE"}),
        (None, None, None),
    ],
)
def test_tool_choice_reaches_both_wires(registry, openai_fake, gemini_fake, choice, openai_wire, gemini_config):
    for model in ("oa-tools", "gm-tools"):
        transport = HttpxTransport(tls=False)
        req = GenerateRequest(
            model=model, messages=[Message("user", "Rome")], tools=[WEATHER, TIME], tool_choice=choice, stream=False
        )
        list(engine.generate(req, registry, transport))
        transport.close()
    assert openai_fake.last().body.get("tool_choice") == openai_wire  # exactly as given (absent: absent)
    assert openai_fake.last().body["tools"] == [WEATHER, TIME]
    assert gemini_fake.last("gemini-tools").body.get("toolConfig") == (
        None if gemini_config is None else {"functionCallingConfig": gemini_config}
    )


def test_tool_choice_none_on_a_model_without_tools_and_bad_choices_are_refused(registry, openai_fake):
    transport = HttpxTransport(tls=False)
    # a model without the tools capability: no tool may be called, so none is sent (and no 400)
    req = GenerateRequest(
        model="oa-plain", messages=[Message("user", "Rome")], tools=[WEATHER], tool_choice="none", stream=False
    )
    done = list(engine.generate(req, registry, transport))[-1]
    transport.close()
    assert "tools" not in openai_fake.last().body and "tool_choice" not in openai_fake.last().body
    assert not done.tool_calls
    for bad, message in (
        ("sometimes", "tool_choice must be"),
        ({"type": "function", "function": {"name": "x"}}, "not in tools"),
    ):
        with pytest.raises(UsageError, match=message):
            engine.prepare(
                GenerateRequest(model="oa-tools", messages=[Message("user", "x")], tools=[WEATHER], tool_choice=bad),
                registry,
            )
    with pytest.raises(UsageError, match="no tools"):
        engine.prepare(
            GenerateRequest(model="oa-tools", messages=[Message("user", "x")], tool_choice="required"), registry
        )


@pytest.mark.parametrize("stream", [False, True])
def test_openai_follow_up_with_results_uses_call_ids(registry, openai_fake, stream):
    """An Ollama-style follow-up (tool_name, no ids) reaches OpenAI with matching ids and string arguments."""
    _, first = run(registry, [Message("user", "Paris")], "oa-tools", stream)
    call = first.tool_calls[0]
    history = [
        Message("user", "Paris"),
        Message("assistant", "", tool_calls=[ToolCall("", call.name, call.arguments)]),
        Message("tool", "18 degrees", tool_name="get_weather"),
    ]
    _, done = run(registry, history, "oa-tools", stream)
    assert done.text == "Tool results: 18 degrees"
    assert done.done_reason == "stop"
    sent = openai_fake.last().body["messages"]
    assert sent[1]["role"] == "assistant"
    assert isinstance(sent[1]["tool_calls"][0]["function"]["arguments"], str)
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == call.arguments
    assert sent[2] == {"role": "tool", "tool_call_id": sent[1]["tool_calls"][0]["id"], "content": "18 degrees"}


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_follow_up_sends_function_call_and_response_parts(registry, gemini_fake, stream):
    history = [
        Message("user", "Oslo"),
        Message(
            "assistant",
            "",
            tool_calls=[
                ToolCall("call_1", "get_weather", {"city": "Oslo"}),
                ToolCall("call_2", "get_time", {"city": "Oslo"}),
            ],
        ),
        Message("tool", '{"temp": 3}', tool_call_id="call_1"),
        Message("tool", "noon", tool_call_id="call_2"),
    ]
    _, done = run(registry, history, "gm-tools-2", stream, tools=(WEATHER, TIME))
    assert done.text == 'Tool results: [{"temp":3},{"result":"noon"}]'
    contents = gemini_fake.last("gemini-tools-2").body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            {"functionCall": {"name": "get_time", "args": {"city": "Oslo"}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
            {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
        ],
    }


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_arguments_are_a_clear_upstream_error(registry, stream):
    with pytest.raises(UpstreamError, match="malformed JSON arguments for tool 'get_weather'"):
        run(registry, [Message("user", "Paris")], "oa-bad-args", stream)


def test_tools_to_a_model_without_the_capability_is_a_usage_error(registry, openai_fake):
    mark = openai_fake.mark()
    with pytest.raises(UsageError, match="model 'oa-plain' does not support tools") as info:
        run(registry, [Message("user", "hi")], "oa-plain", False)
    assert info.value.status == 400
    assert openai_fake.since(mark) == []


@pytest.mark.parametrize(
    "tools, message",
    [
        ([{"type": "retrieval"}], 'only "function" tools'),
        ([{"type": "function", "function": {}}], "tools[0].function.name is required"),
        ([{"type": "function", "function": {"name": "a b"}}], "must start with a letter"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "parameters must be a JSON schema"),
        ([WEATHER, WEATHER], "used by two tools"),
        ({"name": "f"}, "tools must be an array"),
    ],
)
def test_bad_tool_lists_are_refused(registry, tools, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        engine.prepare(GenerateRequest(model="oa-tools", messages=[Message("user", "x")], tools=tools), registry)


def test_a_tool_message_with_nothing_to_answer_is_refused(registry):
    with pytest.raises(UsageError, match="tool message needs tool_name"):
        engine.prepare(
            GenerateRequest(model="oa-tools", messages=[Message("user", "x"), Message("tool", "r")], tools=[WEATHER]),
            registry,
        )


# -- gencli serve: the ollama client on /api/chat, the openai SDK on /v1 ------------------------


@pytest.fixture(scope="module")
def server(openai_fake, gemini_fake, tmp_path_factory):
    base = {"api_key_env": KEY_VAR}
    models = {
        "oa-tools": {
            "provider": "openai-compatible",
            "model": "tools",
            "base_url": openai_fake.base_url,
            "capabilities": TOOLS_CAPS,
            **base,
        },
        "oa-tools-2": {
            "provider": "openai-compatible",
            "model": "tools-2",
            "base_url": openai_fake.base_url,
            "capabilities": TOOLS_CAPS,
            **base,
        },
        "plain": {"provider": "openai-compatible", "model": "echo", "base_url": openai_fake.base_url, **base},
        "gm-tools": {
            "provider": "google",
            "model": "gemini-tools",
            "base_url": gemini_fake.base_url,
            "capabilities": TOOLS_CAPS,
        },
    }
    s = ServeProcess(tmp_path_factory.mktemp("serve-tools"), models, env={"GEMINI_API_KEY": GEMINI_KEY})
    yield s
    s.stop()


@pytest.fixture
def ollama_client(server):
    import ollama

    return ollama.Client(host=server.url)


@pytest.fixture
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["oa-tools", "gm-tools"])
def test_ollama_client_chat_with_tools_and_follow_up(ollama_client, model):
    messages = [{"role": "user", "content": "Paris"}]
    r = ollama_client.chat(model=model, messages=messages, tools=[WEATHER])
    calls = r.message.tool_calls
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert type(calls[0].function.arguments) is dict  # an object on Ollama's wire
    assert calls[0].function.arguments == {"city": "Paris", "days": 42, "metric": True}
    assert r.done_reason == "tool_calls"
    messages.append(r.message)
    messages.append({"role": "tool", "content": "18 degrees", "tool_name": "get_weather"})
    r2 = ollama_client.chat(model=model, messages=messages, tools=[WEATHER])
    assert "18 degrees" in r2.message.content
    assert r2.done_reason == "stop" and not r2.message.tool_calls


@pytest.mark.parametrize("model", ["oa-tools", "gm-tools"])
def test_ollama_client_streamed_tool_calls(ollama_client, model):
    chunks = list(
        ollama_client.chat(model=model, messages=[{"role": "user", "content": "Rome"}], tools=[WEATHER], stream=True)
    )
    calls = [c for ch in chunks for c in (ch.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert type(calls[0].function.arguments) is dict
    assert calls[0].function.arguments["city"] == "Rome"
    assert chunks[-1].done and chunks[-1].done_reason == "tool_calls"


def test_raw_api_chat_tool_call_shape(server):
    r = httpx.post(
        server.url + "/api/chat",
        json={
            "model": "oa-tools-2",
            "tools": [WEATHER, TIME],
            "stream": False,
            "messages": [{"role": "user", "content": "Oslo"}],
        },
    )
    assert r.status_code == 200
    calls = r.json()["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls[1]["function"]["arguments"] == {"city": "Oslo"}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_tools_and_follow_up(openai_client, stream):
    messages = [{"role": "user", "content": "Lima"}]
    if stream:
        pieces: dict[int, dict] = {}
        finish = None
        for chunk in openai_client.chat.completions.create(
            model="oa-tools", messages=messages, tools=[WEATHER], stream=True
        ):
            if not chunk.choices:
                continue
            for tc in chunk.choices[0].delta.tool_calls or ():
                slot = pieces.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        call = pieces[0]
        args_text, call_id, name = call["arguments"], call["id"], call["name"]
    else:
        r = openai_client.chat.completions.create(model="oa-tools", messages=messages, tools=[WEATHER])
        assert r.choices[0].finish_reason == "tool_calls"
        tc = r.choices[0].message.tool_calls[0]
        args_text, call_id, name = tc.function.arguments, tc.id, tc.function.name
    assert name == "get_weather" and call_id
    assert type(args_text) is str  # a JSON string on OpenAI's wire
    assert json.loads(args_text) == {"city": "Lima", "days": 42, "metric": True}
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args_text}}],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call_id, "content": "sunny"})
    r2 = openai_client.chat.completions.create(model="oa-tools", messages=messages, tools=[WEATHER])
    assert r2.choices[0].message.content == "Tool results: sunny"
    assert r2.choices[0].finish_reason == "stop"


def test_openai_sdk_gemini_tool_call(openai_client):
    r = openai_client.chat.completions.create(
        model="gm-tools", messages=[{"role": "user", "content": "Kyiv"}], tools=[WEATHER]
    )
    tc = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert type(tc.function.arguments) is str
    assert json.loads(tc.function.arguments)["city"] == "Kyiv"


def test_tools_to_a_model_without_the_capability_is_400(server, ollama_client, openai_client):
    import ollama
    import openai

    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.chat(model="plain", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert info.value.status_code == 400
    assert "does not support tools" in info.value.error
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        openai_client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER]
        )


def test_capabilities_in_tags_and_show(ollama_client):
    tags = {m.model.removesuffix(":latest"): m for m in ollama_client.list().models}
    caps = {m: ollama_client.show(m).capabilities for m in ("oa-tools", "plain")}
    assert "tools" in caps["oa-tools"] and "tools" not in caps["plain"]
    raw = httpx.get(ollama_client._client.base_url.join("/api/tags")).json()["models"]
    by_name = {m["name"].removesuffix(":latest"): m["capabilities"] for m in raw}
    assert "tools" in by_name["gm-tools"] and "tools" not in by_name["plain"]
    assert set(tags) >= {"oa-tools", "plain", "gm-tools"}
