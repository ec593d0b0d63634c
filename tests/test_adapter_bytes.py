"""Byte-level adapter tests: the sans-I/O parsers fed wire bytes, no server, no socket.

The samples below are written in each API's wire format as the real services send it
(OpenAI's chat.completion.chunk stream with its null fields and the usage chunk,
DeepSeek's reasoning_content, OpenRouter's keep-alive comments and reasoning_details,
Gemini's CRLF-separated SSE with thought parts, thoughtSignature and usageMetadata).
Every stream is parsed whole, byte by byte, and split in two at every byte boundary:
the events must be the same each time, and a mid-stream error must keep the same
partial answer. The over-HTTP tests (test_openai_provider, test_google_provider) stay.
"""

from __future__ import annotations

import pytest

from gencli.core.errors import (
    GencliError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from gencli.core.events import Finish, ReasoningDelta, TextDelta, ToolCall, Usage
from gencli.providers import get_adapter
from gencli.providers.base import Call, HttpAdapter


def call(provider: str, stream: bool = True) -> Call:
    return Call(
        model="m",
        name="m",
        base_url="http://127.0.0.1:1",
        api_key="sk-test-0123456789abcdef",
        key_env="TEST_KEY",
        headers={},
        messages=[],
        options={},
        stream=stream,
        capabilities=("completion", "thinking", "tools"),
    )


def feed(adapter: HttpAdapter, c: Call, pieces: list[bytes]) -> tuple[list, GencliError | None]:
    """All events of a stream fed in ``pieces``; a mid-stream error with the events before it."""
    parser = adapter.stream_parser(c)
    out: list = []
    try:
        for piece in pieces:
            out.extend(parser.feed(piece))
        out.extend(parser.close())
    except GencliError as exc:
        return out + list(exc.partial), exc
    return out, None


def splits(data: bytes) -> list[list[bytes]]:
    """The stream whole, byte by byte, and cut in two at every byte boundary."""
    return [[data], [data[i : i + 1] for i in range(len(data))], *([data[:i], data[i:]] for i in range(1, len(data)))]


def _same(events: list) -> list:
    """Events to compare: a tool call id the upstream did not send is made up anew each time."""
    return [(ev.name, ev.arguments) if type(ev) is ToolCall else ev for ev in events]


def parse_stream(provider: str, data: bytes) -> tuple[list, GencliError | None]:
    adapter = get_adapter(provider)
    c = call(provider)
    first = feed(adapter, c, [data])
    for pieces in splits(data):
        events, error = feed(adapter, c, pieces)
        assert _same(events) == _same(first[0]), pieces
        assert type(error) is type(first[1]) and str(error) == str(first[1])
    return first


# -- OpenAI and OpenAI-compatible streams -----------------------------------------------------
OPENAI_TEXT = (
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024'
    b'-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role'
    b'":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024'
    b'-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"con'
    b'tent":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024'
    b'-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"con'
    b'tent":" w\xc3\xb6rld \xf0\x9f\x8c\x8d"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024'
    b'-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"lo'
    b'gprobs":null,"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024'
    b'-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"usage":{"prompt_tokens'
    b'":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"c'
    b'ompletion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_p'
    b'rediction_tokens":0}}}\n\n'
    b"data: [DONE]\n\n"
)


def test_openai_text_stream():
    events, error = parse_stream("openai", OPENAI_TEXT)
    assert error is None
    assert events == [TextDelta("Hello"), TextDelta(" wörld 🌍"), Finish("stop"), Usage(9, 3, 0)]


DEEPSEEK_REASONING = (
    b'data: {"id":"0b5c","object":"chat.completion.chunk","created":1737000000,"model":"deepseek-reasoner","syst'
    b'em_fingerprint":"fp_7e73fd9a08_prod0225","choices":[{"index":0,"delta":{"role":"assistant","content":null,'
    b'"reasoning_content":""},"logprobs":null,"finish_reason":null}]}\r\n\r\n'
    b'data: {"id":"0b5c","object":"chat.completion.chunk","created":1737000000,"model":"deepseek-reasoner","syst'
    b'em_fingerprint":"fp_7e73fd9a08_prod0225","choices":[{"index":0,"delta":{"content":null,"reasoning_content"'
    b':"Two plus two"},"logprobs":null,"finish_reason":null}]}\r\n\r\n'
    b'data: {"id":"0b5c","object":"chat.completion.chunk","created":1737000000,"model":"deepseek-reasoner","syst'
    b'em_fingerprint":"fp_7e73fd9a08_prod0225","choices":[{"index":0,"delta":{"content":"4","reasoning_content"'
    b':null},"logprobs":null,"finish_reason":null}]}\r\n\r\n'
    b'data: {"id":"0b5c","object":"chat.completion.chunk","created":1737000000,"model":"deepseek-reasoner","syst'
    b'em_fingerprint":"fp_7e73fd9a08_prod0225","choices":[{"index":0,"delta":{"content":"","reasoning_content":'
    b'null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":40,"total_'
    b'tokens":52,"completion_tokens_details":{"reasoning_tokens":38}}}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
)


def test_deepseek_reasoning_content_stream():
    events, error = parse_stream("openai-compatible", DEEPSEEK_REASONING)
    assert error is None
    assert events == [ReasoningDelta("Two plus two"), TextDelta("4"), Finish("stop"), Usage(12, 40, 38)]


OPENROUTER_REASONING = (
    b": OPENROUTER PROCESSING\n\n"
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"id":"gen-1745","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chun'
    b'k","created":1745000000,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Let me '
    b'think.","reasoning_details":[{"type":"reasoning.text","text":"Let me think.","format":"unknown","index":0}]'
    b'},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"gen-1745","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chun'
    b'k","created":1745000000,"choices":[{"index":0,"delta":{"role":"assistant","content":"Paris.","reasoning":nu'
    b'll},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    b'data: {"id":"gen-1745","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chun'
    b'k","created":1745000000,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":null},"'
    b'finish_reason":"length","native_finish_reason":"length","logprobs":null}]}\n\n'
    b'data: {"id":"gen-1745","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chun'
    b'k","created":1745000000,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":nu'
    b'll,"native_finish_reason":null,"logprobs":null}],"usage":{"prompt_tokens":10,"completion_tokens":7,"total_'
    b'tokens":17}}\n\n'
    b"data: [DONE]\n\n"
)


def test_openrouter_keepalives_and_reasoning_stream():
    events, error = parse_stream("openrouter", OPENROUTER_REASONING)
    assert error is None
    assert events == [ReasoningDelta("Let me think."), TextDelta("Paris."), Finish("length"), Usage(10, 7)]


OPENAI_TOOLS = (
    b'data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-2024-08-06"'
    b',"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Dn1t'
    b'Q","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"fi'
    b'nish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-2024-08-06"'
    b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]},"logprobs":n'
    b'ull,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-2024-08-06"'
    b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\\": \\"Par"}}]},"logp'
    b'robs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-2024-08-06"'
    b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is\\"}"}}]},"logprobs":n'
    b'ull,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-2024-08-06"'
    b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}\n\n'
    b"data: [DONE]\n\n"
)


def test_openai_streamed_tool_call_is_assembled():
    events, error = parse_stream("openai", OPENAI_TOOLS)
    assert error is None
    assert events == [ToolCall("call_Dn1tQ", "get_weather", {"city": "Paris"}), Finish("tool_calls")]


OPENROUTER_MIDSTREAM_ERROR = (
    b'data: {"id":"gen-9","model":"x/y","object":"chat.completion.chunk","created":1,"choices":[{"index":0,"delt'
    b'a":{"role":"assistant","content":"Partial "},"finish_reason":null}]}\n\n'
    b'data: {"id":"gen-9","model":"x/y","object":"chat.completion.chunk","created":1,"error":{"code":502,"messag'
    b'e":"Provider disconnected (key sk-test-0123456789abcdef)"},"choices":[{"index":0,"delta":{"content":""},"f'
    b'inish_reason":"error"}]}\n\n'
)


def test_a_midstream_error_keeps_the_partial_answer_and_no_key():
    events, error = parse_stream("openrouter", OPENROUTER_MIDSTREAM_ERROR)
    assert events == [TextDelta("Partial ")]
    assert isinstance(error, UpstreamError) and error.upstream_status == 502
    assert "Provider disconnected" in str(error) and "sk-test" not in str(error)


def test_a_stream_cut_before_the_end_is_an_error_keeping_the_text():
    cut = OPENAI_TEXT[: OPENAI_TEXT.index(b'"finish_reason":"stop"')]
    cut = cut[: cut.rindex(b"data: ")]  # the connection closed between two events
    events, error = parse_stream("openai", cut)
    assert events == [TextDelta("Hello"), TextDelta(" wörld 🌍")]
    assert isinstance(error, UpstreamError) and "closed the stream before the answer was complete" in str(error)


def test_a_malformed_event_is_an_error():
    events, error = parse_stream("openai", OPENAI_TEXT[:400] + b'data: {"choices": [tru\n\n')
    assert isinstance(error, UpstreamError) and "malformed stream event" in str(error)


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_an_event_past_the_cap_is_an_error_keeping_the_events_of_the_same_read(provider):
    """One read: two whole events, then a line that passes 8 MB: the two are parsed first."""
    from gencli.core.sse import MAX_EVENT, EventTooLarge

    whole = {"openai": OPENAI_TEXT, "google": GEMINI_THOUGHTS}[provider]
    end = b"\r\n\r\n" if b"\r\n\r\n" in whole else b"\n\n"
    first = whole[: whole.index(end, whole.index(end) + 1) + len(end)]  # two events
    adapter = get_adapter(provider)
    wanted, _ = feed(adapter, call(provider), [first])
    assert wanted  # the two events carry an answer
    events, error = feed(adapter, call(provider), [first + b"data: " + b"z" * MAX_EVENT])
    assert isinstance(error, EventTooLarge) and isinstance(error, UpstreamError)
    assert str(error) == "the upstream sent an event larger than 8 MB"
    assert events == wanted


# -- OpenAI JSON bodies ---------------------------------------------------------------------
OPENAI_BODY = (
    b'{\n  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",\n  "object": "chat.completion",\n  "created": 174'
    b'1570283,\n  "model": "gpt-4o-2024-08-06",\n  "choices": [\n    {\n      "index": 0,\n      "message": {\n'
    b'        "role": "assistant",\n        "content": "The sky is blue.",\n        "refusal": null,\n        "an'
    b'notations": []\n      },\n      "logprobs": null,\n      "finish_reason": "length"\n    }\n  ],\n  "usage"'
    b': {\n    "prompt_tokens": 1117,\n    "completion_tokens": 46,\n    "total_tokens": 1163\n  },\n  "service_t'
    b'ier": "default",\n  "system_fingerprint": "fp_fc9f1d7035"\n}\n'
)


def test_openai_json_body():
    adapter = get_adapter("openai")
    events = adapter.parse_response(call("openai", stream=False), OPENAI_BODY)
    assert events == [TextDelta("The sky is blue."), Finish("length"), Usage(1117, 46)]


@pytest.mark.parametrize(
    "status, headers, body, kind, words",
    [
        (
            401,
            {},
            b'{\n    "error": {\n        "message": "Incorrect API key provided: sk-test-*****cdef. You can find '
            b'your API key at https://platform.openai.com/account/api-keys.",\n        "type": "invalid_request_e'
            b'rror",\n        "param": null,\n        "code": "invalid_api_key"\n    }\n}\n',
            UpstreamAuthError,
            "OpenAI rejected the API key (HTTP 401); check TEST_KEY",
        ),
        (
            429,
            {"retry-after-ms": "1500", "x-ratelimit-remaining-requests": "0"},
            b'{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): '
            b'Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
            UpstreamRateLimited,
            "OpenAI is rate limiting requests (HTTP 429): Rate limit reached",
        ),
        (
            503,
            {},
            b"<html><body><h1>503 Service Unavailable</h1> upstream sk-test-0123456789abcdef</body></html>",
            UpstreamError,
            "OpenAI returned HTTP 503",
        ),
    ],
)
def test_openai_error_bodies(status, headers, body, kind, words):
    err = get_adapter("openai").parse_error(call("openai"), status, headers, body)
    assert type(err) is kind and words in str(err) and "0123456789abcdef" not in str(err)
    if status == 429:
        assert err.retry_after == 1.5


# -- Gemini ---------------------------------------------------------------------------------
GEMINI_THOUGHTS = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "**Weighing the question**\\n\\nThe user asks about '
    b'the sky.","thought": true}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"total'
    b'TokenCount": 60,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}],"thoughtsTokenCount": 52},"m'
    b'odelVersion": "gemini-2.5-flash","responseId": "Ab1cZ"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": "Rayleigh scattering makes it blue \xe2\x80\x94 sh'
    b'orter wavelengths scatter more."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,'
    b'"candidatesTokenCount": 11,"totalTokenCount": 71,"promptTokensDetails": [{"modality": "TEXT","tokenCount":'
    b' 8}],"thoughtsTokenCount": 52},"modelVersion": "gemini-2.5-flash","responseId": "Ab1cZ"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": ""}],"role": "model"},"finishReason": "STOP","index'
    b'": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 12,"totalTokenCount": 72,"promptTo'
    b'kensDetails": [{"modality": "TEXT","tokenCount": 8}],"thoughtsTokenCount": 52},"modelVersion": "gemini-2.'
    b'5-flash","responseId": "Ab1cZ"}\r\n\r\n'
)


def test_gemini_stream_with_thoughts():
    events, error = parse_stream("google", GEMINI_THOUGHTS)
    assert error is None
    assert events == [
        ReasoningDelta("**Weighing the question**\n\nThe user asks about the sky."),
        Usage(8, 52, 52),
        TextDelta("Rayleigh scattering makes it blue — shorter wavelengths scatter more."),
        Usage(8, 63, 52),
        Finish("stop"),
        Usage(8, 64, 52),
    ]


GEMINI_FUNCTION_CALL = (
    b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"city": "To'
    b'kyo","unit": "celsius"}},"thoughtSignature": "CikBcsjafFK1aGVsbG8gd29ybGQgc2lnbmF0dXJlcw=="}],"role": "mod'
    b'el"},"finishReason": "STOP","index": 0,"finishMessage": "Model generated function call(s)."}],"usageMetada'
    b'ta": {"promptTokenCount": 83,"candidatesTokenCount": 14,"totalTokenCount": 201,"thoughtsTokenCount": 104}'
    b',"modelVersion": "gemini-2.5-flash","responseId": "qpc2a"}\r\n\r\n'
)


def test_gemini_stream_function_call():
    events, error = parse_stream("google", GEMINI_FUNCTION_CALL)
    assert error is None
    (tool, finish, usage) = events
    assert type(tool) is ToolCall and (tool.name, tool.arguments) == (
        "get_weather",
        {"city": "Tokyo", "unit": "celsius"},
    )
    assert tool.id  # Gemini sends no id: one is made up for the OpenAI-shaped replies
    assert (finish, usage) == (Finish("stop"), Usage(83, 118, 104))


GEMINI_MIDSTREAM_ERROR = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Once upon"}],"role": "model"},"index": 0}],"modelV'
    b'ersion": "gemini-2.5-pro"}\r\n\r\n'
    b'data: {"error": {"code": 503,"message": "The model is overloaded. Please try again later.","status": "UNAV'
    b'AILABLE"}}\r\n\r\n'
)


def test_gemini_midstream_error_keeps_the_text():
    events, error = parse_stream("google", GEMINI_MIDSTREAM_ERROR)
    assert events == [TextDelta("Once upon")]
    assert isinstance(error, UpstreamError) and error.upstream_status == 503 and "overloaded" in str(error)


GEMINI_BODY = (
    b'{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n          {\n            "text": "Hel'
    b'lo there."\n          }\n        ],\n        "role": "model"\n      },\n      "finishReason": "MAX_TOKENS",\n'
    b'      "index": 0\n    }\n  ],\n  "usageMetadata": {\n    "promptTokenCount": 4,\n    "candidatesTokenCount": '
    b'3,\n    "totalTokenCount": 7,\n    "promptTokensDetails": [\n      {\n        "modality": "TEXT",\n        "t'
    b'okenCount": 4\n      }\n    ]\n  },\n  "modelVersion": "gemini-2.0-flash",\n  "responseId": "Zz9"\n}\n'
)


def test_gemini_json_body_and_json_array():
    adapter = get_adapter("google")
    c = call("google", stream=False)
    expected = [TextDelta("Hello there."), Finish("length"), Usage(4, 3)]
    assert adapter.parse_response(c, GEMINI_BODY) == expected
    assert adapter.parse_response(c, b"[" + GEMINI_BODY + b"]") == expected  # streamGenerateContent without SSE


def test_gemini_blocked_prompt_is_a_400():
    body = (
        b'{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 9,'
        b'"totalTokenCount": 9},"modelVersion": "gemini-2.5-flash"}'
    )
    with pytest.raises(UpstreamError) as info:
        get_adapter("google").parse_response(call("google", stream=False), body)
    assert info.value.status == 400 and "blockReason PROHIBITED_CONTENT" in str(info.value)


@pytest.mark.parametrize(
    "status, body, kind, words",
    [
        (
            400,
            b'{\n  "error": {\n    "code": 400,\n    "message": "API key not valid. Please pass a valid API key.",\n'
            b'    "status": "INVALID_ARGUMENT",\n    "details": [\n      {\n        "@type": "type.googleapis.com/goog'
            b'le.rpc.ErrorInfo",\n        "reason": "API_KEY_INVALID",\n        "domain": "googleapis.com"\n      }\n'
            b"    ]\n  }\n}\n",
            UpstreamAuthError,
            "Gemini rejected the API key (HTTP 400); check TEST_KEY",
        ),
        (
            429,
            b'{\n  "error": {\n    "code": 429,\n    "message": "You exceeded your current quota, please check your '
            b'plan and billing details.",\n    "status": "RESOURCE_EXHAUSTED",\n    "details": [\n      {\n'
            b'        "@type": "type.googleapis.com/google.rpc.RetryInfo",\n        "retryDelay": "1.5s"\n'
            b"      }\n    ]\n  }\n}\n",
            UpstreamRateLimited,
            "Gemini is rate limiting requests (HTTP 429): You exceeded your current quota",
        ),
    ],
)
def test_gemini_error_bodies(status, body, kind, words):
    err = get_adapter("google").parse_error(call("google"), status, {}, body)
    assert type(err) is kind and words in str(err)
    if status == 429:
        assert err.retry_after == 1.5
