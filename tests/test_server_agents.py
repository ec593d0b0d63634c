"""The agent protocols of ``gencli serve``: OpenAI's Responses API (``/v1/responses``) driven
by the official ``openai`` SDK, and Anthropic's Messages API (``/v1/messages``,
``/v1/messages/count_tokens``) driven by the official ``anthropic`` SDK, each over every
upstream kind (the OpenAI-wire, Gemini and Anthropic fakes); plus the older client
protocols (Ollama generate/chat, OpenAI chat) over the Anthropic upstream. Streams are
read with the SDKs' own parsers and stream helpers, which check the event order."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

anthropic = pytest.importorskip("anthropic")

from tests.fakes.anthropic_upstream import FAKE_KEY as ANTHROPIC_KEY  # noqa: E402
from tests.fakes.gemini_upstream import FAKE_KEY as GEMINI_KEY  # noqa: E402
from tests.server_fixture import KEY_VAR, ServeProcess  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x01" * 20
UPSTREAMS = ("oa", "gm", "cl")  # OpenAI-wire, Gemini, Anthropic
WEATHER_RESP = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_ANTH = {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_RESP["parameters"]}
REASONING = {"oa": "Hmm, the user wants an answer.", "gm": "**Reading the prompt**", "cl": "Let me think about this."}


def models(oa, gm, cl) -> dict:
    def o(model, caps, **kw):
        return {
            "provider": "openai-compatible",
            "model": model,
            "base_url": oa.base_url,
            "api_key_env": KEY_VAR,
            "capabilities": caps,
            **kw,
        }

    def g(model, caps, **kw):
        return {"provider": "google", "model": model, "base_url": gm.base_url, "capabilities": caps, **kw}

    def c(model, caps, **kw):
        return {"provider": "anthropic", "model": model, "base_url": cl.base_url, "capabilities": caps, **kw}

    vision, think, tools = ["completion", "vision"], ["completion", "thinking"], ["completion", "tools"]
    return {
        "oa-echo": o("echo", vision),
        "gm-echo": g("gemini-echo", vision),
        "cl-echo": c("claude-echo", vision),
        "oa-think": o("reason-deepseek", think),
        "gm-think": g("gemini-think", think),
        "cl-think": c("claude-think", think),
        "oa-tools": o("tools", tools),
        "gm-tools": g("gemini-tools", tools),
        "cl-tools": c("claude-tools", tools),
        "oa-tokens": o("tokens-5", ["completion"]),
        "gm-tokens": g("gemini-tokens-5", ["completion"]),
        "cl-tokens": c("claude-tokens-5", ["completion"]),
        "oa-midstream": o("error-midstream", ["completion"]),
        "cl-midstream": c("claude-error-midstream", ["completion"]),
        "oa-401": o("error-401", ["completion"]),
        "cl-529": c("claude-error-529", ["completion"], retries=0),
        "cl-429": c("claude-error-429", ["completion"], retries=0),
    }


@pytest.fixture(scope="module")
def server(openai_fake, gemini_fake, anthropic_fake, tmp_path_factory):
    s = ServeProcess(
        tmp_path_factory.mktemp("serve-agents"),
        models(openai_fake, gemini_fake, anthropic_fake),
        env={"GEMINI_API_KEY": GEMINI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY},
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def claude(server):
    c = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=30)
    yield c
    c.close()


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) of every SSE event in a body: the names must match the data's type."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append((lines["event"], data))
    return out


# == OpenAI Responses API =================================================================


@pytest.mark.parametrize("up", UPSTREAMS)
def test_responses_create(oai, up, openai_fake, gemini_fake, anthropic_fake):
    r = oai.responses.create(
        model=f"{up}-echo", input="hello there", instructions="Be brief.", max_output_tokens=50, temperature=0.5
    )
    assert r.object == "response" and r.status == "completed" and r.model == f"{up}-echo"
    assert r.output_text == "You said: hello there"
    assert [o.type for o in r.output] == ["message"]
    msg = r.output[0]
    assert msg.role == "assistant" and msg.status == "completed" and msg.content[0].type == "output_text"
    assert r.usage.output_tokens == 4 and r.usage.total_tokens == r.usage.input_tokens + 4
    assert r.instructions == "Be brief." and r.store is True and r.previous_response_id is None  # OpenAI's default
    if up == "oa":
        assert openai_fake.last().body["messages"][0] == {"role": "system", "content": "Be brief."}
    elif up == "cl":
        assert anthropic_fake.last().body["system"] == "Be brief."
    else:
        assert gemini_fake.last("gemini-echo").body["systemInstruction"]["parts"] == [{"text": "Be brief."}]


@pytest.mark.parametrize("up", UPSTREAMS)
def test_responses_stream_helper_and_event_order(oai, up):
    with oai.responses.stream(model=f"{up}-tokens", input="count") as stream:  # the helper checks identities
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas).rstrip() == "tok0 tok1 tok2 tok3 tok4" and len(deltas) == 5  # Gemini's ends in " "
    assert final.output_text == "".join(deltas) and final.status == "completed"
    events = list(oai.responses.create(model=f"{up}-tokens", input="count", stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ] + ["response.output_text.delta"] * 5 + [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert events[-1].response.usage.output_tokens == 5


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_responses_reasoning_summary(oai, up, stream):
    args = dict(model=f"{up}-think", input="why?", reasoning={"effort": "high", "summary": "auto"})
    if stream:
        with oai.responses.stream(**args) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.reasoning_summary_text.delta" in kinds
        assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.output_text.delta")
    else:
        r = oai.responses.create(**args)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert REASONING[up] in r.output[0].summary[0].text
    assert r.output_text and REASONING[up] not in r.output_text
    assert r.reasoning.effort == "high"


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_responses_tool_round_trip(oai, up, stream):
    args = dict(model=f"{up}-tools", input=[{"role": "user", "content": "Paris"}], tools=[WEATHER_RESP])
    if stream:
        with oai.responses.stream(**args) as s:
            arg_deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
            r = s.get_final_response()
        assert "".join(arg_deltas) == r.output[-1].arguments
    else:
        r = oai.responses.create(**args)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].status == "completed"
    assert isinstance(calls[0].arguments, str) and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert r.tools[0].name == "get_weather"
    follow = [
        {"role": "user", "content": "Paris"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    ]
    r2 = oai.responses.create(model=f"{up}-tools", input=follow, tools=[WEATHER_RESP])
    assert "sunny" in r2.output_text and r2.output_text.startswith("Tool results:")


def test_responses_reasoning_items_sent_back_are_skipped(oai, openai_fake):
    r = oai.responses.create(
        model="oa-echo",
        input=[
            {"role": "user", "content": "first"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    assert r.output_text == "You said: second"
    sent = openai_fake.last().body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "system", "user"]


def test_responses_image_and_json_schema(oai, gemini_fake):
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    r = oai.responses.create(
        model="oa-echo",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": url}],
            }
        ],
    )
    assert r.output_text == "You said: look [1 image]"
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    r = oai.responses.create(
        model="gm-echo", input="hi", text={"format": {"type": "json_schema", "name": "echo", "schema": schema}}
    )
    assert json.loads(r.output_text) == {"echo": "You said: hi"}
    assert r.text.format.type == "json_schema"
    assert gemini_fake.last("gemini-echo").body["generationConfig"]["responseMimeType"] == "application/json"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_max_output_tokens_is_incomplete(oai, stream):
    args = dict(model="cl-echo", input="alpha beta gamma delta", max_output_tokens=2)
    if stream:
        events = list(oai.responses.create(stream=True, **args))
        assert events[-1].type == "response.incomplete"
        r = events[-1].response
    else:
        r = oai.responses.create(**args)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "You said: "


@pytest.mark.parametrize(
    "body,param,message",
    [
        ({"input": "x", "previous_response_id": 7}, "previous_response_id", "id of a stored response"),
        ({"input": "x", "store": "yes"}, "store", "true or false"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "send the whole conversation"),
        ({}, "input", "input is required"),
        ({"input": [{"type": "web_search_call"}]}, "input", "not supported"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "send the whole conversation"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools", "function tools only"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning", "reasoning.effort"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", "call_id is required"),
        (
            {"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{oops"}]},
            "input",
            "not valid JSON",
        ),
    ],
)
def test_responses_bad_input_is_a_400_in_openai_shape(oai, body, param, message):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="oa-echo", **body)
    err = info.value.body
    assert info.value.status_code == 400 and message in err["message"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_responses_errors_before_and_after_the_stream_started(oai, server):
    with pytest.raises(openai.NotFoundError, match="not found"):
        oai.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.APIStatusError, match="rejected the API key") as info:
        oai.responses.create(model="oa-401", input="x", stream=True)
    assert info.value.status_code == 502
    events = list(oai.responses.create(model="oa-midstream", input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert "crashed" in events[-1].response.error.message and events[-1].response.status == "failed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Partial answer "
    r = httpx.post(server.url + "/v1/responses", json={"model": "oa-echo", "input": "x"})  # still serving
    assert r.status_code == 200


# == Anthropic Messages API ==================================================================


@pytest.mark.parametrize("up", UPSTREAMS)
def test_messages_create(claude, up, anthropic_fake):
    m = claude.messages.create(
        model=f"{up}-echo",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert m.type == "message" and m.role == "assistant" and m.model == f"{up}-echo"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "You said: hello there"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.output_tokens == 4 and m.usage.input_tokens > 0
    assert m.id.startswith("msg_")
    if up == "cl":
        body = anthropic_fake.last().body
        assert body["system"] == "Be brief." and body["max_tokens"] == 100


@pytest.mark.parametrize("up", UPSTREAMS)
def test_messages_stream_helper_and_event_order(claude, server, up):
    with claude.messages.stream(
        model=f"{up}-tokens", max_tokens=100, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.rstrip() == "tok0 tok1 tok2 tok3 tok4" and text == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    r = httpx.post(
        server.url + "/v1/messages",
        json={
            "model": f"{up}-tokens",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "count"}],
        },
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    kinds = [k for k, _ in sse_events(r.content)]
    assert kinds == ["message_start", "ping", "content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_messages_thinking_blocks(claude, up, stream):
    args = dict(
        model=f"{up}-think",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "why?"}],
    )
    if stream:
        with claude.messages.stream(**args) as s:
            thinking = "".join(e.thinking for e in s if e.type == "thinking")
            m = s.get_final_message()
        assert thinking == m.content[0].thinking
    else:
        m = claude.messages.create(**args)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert REASONING[up] in m.content[0].thinking and REASONING[up] not in m.content[1].text


def test_messages_thinking_reaches_each_upstream_as_its_control(claude, openai_fake, gemini_fake, anthropic_fake):
    claude.messages.create(
        model="gm-think",
        max_tokens=40000,
        thinking={"type": "enabled", "budget_tokens": 20000},
        messages=[{"role": "user", "content": "x"}],
    )
    assert gemini_fake.last("gemini-think").body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True,
        "thinkingBudget": 24576,
    }
    claude.messages.create(
        model="cl-think",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "x"}],
    )
    assert anthropic_fake.last().body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    m = claude.messages.create(
        model="cl-think", max_tokens=4096, thinking={"type": "disabled"}, messages=[{"role": "user", "content": "x"}]
    )
    assert [b.type for b in m.content] == ["text"]
    assert anthropic_fake.last().body["thinking"] == {"type": "disabled"}


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_round_trip(claude, up, stream):
    messages = [{"role": "user", "content": "Paris"}]
    args = dict(model=f"{up}-tools", max_tokens=200, tools=[WEATHER_ANTH])
    if stream:
        with claude.messages.stream(messages=messages, **args) as s:
            list(s)
            m = s.get_final_message()
    else:
        m = claude.messages.create(messages=messages, **args)
    assert m.stop_reason == "tool_use"
    use = m.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                {"type": "text", "text": "and?"},
            ],
        },
    ]
    m2 = claude.messages.create(messages=messages, **args)
    assert "sunny" in m2.content[0].text and m2.stop_reason == "end_turn"


def test_messages_tool_choice_reaches_the_upstream(claude, anthropic_fake, openai_fake):
    claude.messages.create(
        model="cl-tools",
        max_tokens=100,
        tools=[WEATHER_ANTH],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Rome"}],
    )
    assert anthropic_fake.last().body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    claude.messages.create(
        model="oa-tools",
        max_tokens=100,
        tools=[WEATHER_ANTH],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Rome"}],
    )
    assert openai_fake.last().body["tool_choice"] == "required"
    m = claude.messages.create(
        model="cl-tools",
        max_tokens=100,
        tools=[WEATHER_ANTH],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "Rome"}],
    )
    assert m.stop_reason == "end_turn" and anthropic_fake.last().body["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize("stream", [False, True])
def test_messages_stop_sequence_and_max_tokens(claude, stream):
    def run(**kw):
        args = dict(model="cl-echo", messages=[{"role": "user", "content": "alpha beta gamma"}], **kw)
        if stream:
            with claude.messages.stream(**args) as s:
                return s.get_final_message()
        return claude.messages.create(**args)

    m = run(max_tokens=100, stop_sequences=["gamma"])
    assert (m.content[0].text, m.stop_reason, m.stop_sequence) == ("You said: alpha beta ", "stop_sequence", "gamma")
    m = run(max_tokens=2)
    assert m.content[0].text == "You said: " and m.stop_reason == "max_tokens"


def test_messages_images_base64_and_in_tool_results(claude, openai_fake):
    data = base64.b64encode(PNG).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    m = claude.messages.create(
        model="gm-echo",
        max_tokens=100,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is it"}]}],
    )
    assert m.content[0].text == f"You said: what is it [image/png {len(PNG)} bytes]"
    m = claude.messages.create(
        model="oa-echo",
        max_tokens=100,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "see"}]}],
    )
    assert m.content[0].text == "You said: see [1 image]"


def test_count_tokens(claude, anthropic_fake):
    msgs = [{"role": "user", "content": "one two three four"}]
    exact = claude.messages.count_tokens(model="cl-echo", system="Be brief.", messages=msgs)
    assert exact.input_tokens == 6  # the Anthropic upstream's own count (the fake counts words)
    assert (
        anthropic_fake.last("/v1/messages/count_tokens").body["messages"][0]["content"][0]["text"]
        == "one two three four"
    )
    estimate = claude.messages.count_tokens(model="oa-echo", system="Be brief.", messages=msgs)
    # the documented estimate: ceil(chars / 4) plus 4 per message (system included)
    assert estimate.input_tokens == 8 + -(-(len("Be brief.") + len("one two three four")) // 4)
    with_tools = claude.messages.count_tokens(model="oa-tools", messages=msgs, tools=[WEATHER_ANTH])
    assert with_tools.input_tokens > claude.messages.count_tokens(model="oa-tools", messages=msgs).input_tokens


@pytest.mark.parametrize(
    "body,message",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens is required"),
        ({"max_tokens": 10}, "messages is required"),
        ({"max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "role must be"),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "'document' is not supported",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}]},
            "'tool_result' is not supported in an assistant message",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled", "budget_tokens": 100},
            },
            "at least 1024",
        ),
        (
            {
                "max_tokens": 2000,
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled", "budget_tokens": 4000},
            },
            "less than max_tokens",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "server tool",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "sometimes"}},
            "tool_choice",
        ),
    ],
)
def test_messages_bad_input_is_a_400_in_anthropic_shape(claude, body, message):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", cast_to=object, body={"model": "oa-echo", **body})
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert message in info.value.body["error"]["message"]


def test_messages_errors_in_anthropic_shape(claude, server):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model="cl-529", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503 and info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(model="cl-429", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert info.value.response.headers["retry-after"] == "7"
    r = httpx.get(server.url + "/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error"
    r = httpx.post(server.url + "/v1/messages", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("model,kind", [("cl-midstream", "overloaded_error"), ("oa-midstream", "api_error")])
def test_messages_midstream_error_event(claude, server, model, kind):
    r = httpx.post(
        server.url + "/v1/messages",
        json={"model": model, "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "one two"}]},
    )
    events = sse_events(r.content)
    assert r.status_code == 200 and events[-1][0] == "error" and events[-1][1]["error"]["type"] == kind
    deltas = "".join(d["delta"].get("text", "") for k, d in events if k == "content_block_delta")
    assert deltas in ("You said: ", "Partial answer ")  # the partial answer was sent before the error
    with pytest.raises(anthropic.APIStatusError):
        with claude.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "one two"}]
        ) as s:
            list(s)


# == the older client protocols over the Anthropic upstream ====================================


def test_ollama_and_openai_chat_over_claude(server):
    import ollama

    client = ollama.Client(host=server.url)
    r = client.generate(model="cl-echo", prompt="hi there")
    assert r.response == "You said: hi there" and r.done_reason == "stop" and r.eval_count == 4
    r = client.chat(model="cl-think", messages=[{"role": "user", "content": "hi"}], think=True)
    assert r.message.content == "You said: hi" and "Let me think" in r.message.thinking
    parts = list(client.chat(model="cl-tokens", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(p.message.content for p in parts) == "tok0 tok1 tok2 tok3 tok4"
    r = client.chat(
        model="cl-tools",
        messages=[{"role": "user", "content": "Oslo"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_RESP["parameters"]}}],
    )
    assert r.message.tool_calls[0].function.arguments == {"city": "Oslo"}
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    c = oai.chat.completions.create(model="cl-echo", messages=[{"role": "user", "content": "yo"}], stop=["yo"])
    assert c.choices[0].message.content == "You said: " and c.choices[0].finish_reason == "stop"
    chunks = list(
        oai.chat.completions.create(model="cl-tokens", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "tok0 tok1 tok2 tok3 tok4"


def test_version_serves_agent_routes(server):
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert tuple(int(p) for p in version.split(".")) >= (0, 14, 0)  # Ollama serves both APIs from 0.14.0


# == the key: x-api-key as well as Authorization: Bearer ===============================


def test_x_api_key_is_accepted_like_bearer(tmp_path, anthropic_fake):
    key = "gencli-test-server-key-123456"
    s = ServeProcess(
        tmp_path,
        {"cl-echo": {"provider": "anthropic", "model": "claude-echo", "base_url": anthropic_fake.base_url}},
        args=["--max-body-mb", "0.01"],
        env={"GENCLI_API_KEY": key, "ANTHROPIC_API_KEY": ANTHROPIC_KEY},
    )
    try:
        body = {"model": "cl-echo", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(s.url + "/v1/messages", json=body, headers={"x-api-key": key}).status_code == 200
        assert (
            httpx.post(s.url + "/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
        ok = anthropic.Anthropic(base_url=s.url, api_key=key, max_retries=0)  # the SDK sends a Bearer token
        assert ok.messages.create(**body).content[0].text == "You said: x"
        r = httpx.post(s.url + "/v1/messages", json=body, headers={"x-api-key": "wrong"})
        assert r.status_code == 401
        assert r.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
        r = httpx.post(s.url + "/v1/messages", json=body)
        assert r.status_code == 401 and "x-api-key" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/v1/responses", json={"model": "cl-echo", "input": "x"}, headers={"x-api-key": key})
        assert r.status_code == 200  # the same header on any route
        # the guard's own refusals speak Anthropic's shape on Anthropic's routes
        r = httpx.post(s.url + "/v1/messages", json={**body, "system": "x" * 20000}, headers={"x-api-key": key})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        r = httpx.post(s.url + "/v1/messages", json=body, headers={"x-api-key": key, "Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert key not in s.stderr()
    finally:
        s.stop()
