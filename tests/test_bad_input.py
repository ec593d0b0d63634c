"""Bad input: a corpus of malformed requests to /api/generate, /api/chat and
/v1/chat/completions against the real ``gencli serve`` subprocess.

Every case must get a 4xx (never a 5xx) whose error message is one line and names
the field at fault; after the whole corpus the server still answers a normal request.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from gencli.core import context as ctx
from gencli.core.request import Message
from tests.helpers import post
from tests.server_fixture import server  # noqa: F401  (fixture)

G, C, OA = "/api/generate", "/api/chat", "/v1/chat/completions"

NOT_IMAGE = base64.b64encode(b"hello, I am plain text and not a picture at all").decode()
GOOD_CONTEXT = ctx.encode([Message("user", "hi"), Message("assistant", "hello there, how can I help?")])


def raw(text: str) -> bytes:
    """A body sent as these exact bytes (for what json.dumps cannot produce)."""
    return text.encode("utf-8", "surrogatepass")


def gen(**kw) -> dict:
    return {"model": "echo", "prompt": "hi", **kw}


def chat(**kw) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **kw}


def user(content, **kw) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": content, **kw}]}


def deep(n: int) -> str:
    return "[" * n + "]" * n


# (id, path, body, word the message must contain)
CASES: list[tuple[str, str, object, str]] = [
    # -- the body itself, on each route
    *[(f"{p}-malformed", p, b'{"model": "echo", "prompt": ', "body") for p in (G, C, OA)],
    *[(f"{p}-empty", p, b"", "body") for p in (G, C, OA)],
    *[(f"{p}-array", p, b'[{"model": "echo"}]', "body") for p in (G, C, OA)],
    *[(f"{p}-string", p, b'"model"', "body") for p in (G, C, OA)],
    *[(f"{p}-null", p, b"null", "body") for p in (G, C, OA)],
    *[(f"{p}-trailing-garbage", p, b'{"model": "echo"} xyz', "body") for p in (G, C, OA)],
    *[(f"{p}-bad-utf8", p, b'{"model": "echo", "prompt": "\xff\xfe"}', "body") for p in (G, C, OA)],
    *[(f"{p}-deep-nesting", p, raw('{"model": "echo", "x": ' + deep(5000) + "}"), "body") for p in (G, C, OA)],
    *[
        (f"{p}-50MB", p, b'{"model": "echo", "prompt": "' + b"a" * (50 * 1024 * 1024) + b'"}', "body")
        for p in (G, C, OA)
    ],
    # -- model
    *[
        (f"{p}-no-model", p, {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "model")
        for p in (G, C, OA)
    ],
    *[
        (f"{p}-model-empty", p, {"model": "", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "model")
        for p in (G, C, OA)
    ],
    *[
        (
            f"{p}-model-number",
            p,
            {"model": 42, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            "model",
        )
        for p in (G, C, OA)
    ],
    *[
        (
            f"{p}-model-list",
            p,
            {"model": ["echo"], "prompt": "x", "messages": [{"role": "user", "content": "x"}]},
            "model",
        )
        for p in (G, C, OA)
    ],
    *[
        (
            f"{p}-model-unknown",
            p,
            {"model": "no-such-model", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            "model",
        )
        for p in (G, C, OA)
    ],
    ("model-huge-name", G, {"model": "m" * 100_000, "prompt": "hi"}, "model"),
    ("model-nul", G, {"model": "ech\u0000o", "prompt": "hi"}, "model"),
    ("model-newline", G, {"model": "echo\nInjected: line", "prompt": "hi"}, "model"),
    ("model-surrogate", OA, raw('{"model": "\\udbff", "messages": [{"role": "user", "content": "x"}]}'), "model"),
    (
        "tools-surrogate-key",
        OA,
        raw(
            '{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
            '"tools": [{"type": "function", "function": {"name": "f", "\\ud800": 1}}]}'
        ),
        "tools",
    ),
    # -- /api/generate fields
    ("prompt-number", G, gen(prompt=42), "prompt"),
    ("prompt-object", G, gen(prompt={"text": "hi"}), "prompt"),
    ("prompt-list", G, gen(prompt=["hi"]), "prompt"),
    ("prompt-nul", G, gen(prompt="a\u0000b"), "prompt"),
    ("prompt-lone-surrogate", G, raw('{"model": "echo", "prompt": "a\\ud800b"}'), "prompt"),
    ("prompt-lone-low-surrogate", G, raw('{"model": "echo", "prompt": "\\udc00"}'), "prompt"),
    ("stream-string", G, gen(stream="yes"), "stream"),
    ("stream-number", G, gen(stream=1), "stream"),
    ("system-number", G, gen(system=5), "system"),
    ("system-nul", G, gen(system="be \u0000 nice"), "system"),
    ("system-surrogate", G, raw('{"model": "echo", "prompt": "x", "system": "\\ud83d"}'), "system"),
    ("options-string", G, gen(options="hot"), "options"),
    ("options-list", G, gen(options=[0.5]), "options"),
    ("temperature-negative", G, gen(options={"temperature": -1}), "temperature"),
    ("temperature-absurd", G, gen(options={"temperature": 1e308}), "temperature"),
    ("temperature-string", G, gen(options={"temperature": "0.5"}), "temperature"),
    ("temperature-nan", G, raw('{"model": "echo", "prompt": "x", "options": {"temperature": NaN}}'), "temperature"),
    ("temperature-nested", G, gen(options={"temperature": {"a": [[[[]]]]}}), "temperature"),
    ("top-p-5", G, gen(options={"top_p": 5}), "top_p"),
    ("top-k-negative", G, gen(options={"top_k": -1}), "top_k"),
    ("num-predict-negative", G, gen(options={"num_predict": -5}), "num_predict"),
    ("num-predict-absurd", G, gen(options={"num_predict": 1e20}), "num_predict"),
    ("num-predict-fraction", G, gen(options={"num_predict": 2.5}), "num_predict"),
    ("min-p-negative", G, gen(options={"min_p": -1}), "min_p"),
    ("seed-string", G, gen(options={"seed": "abc"}), "seed"),
    ("seed-huge", G, gen(options={"seed": 2**70}), "seed"),
    ("repeat-penalty-bool", G, gen(options={"repeat_penalty": True}), "repeat_penalty"),
    ("stop-number", G, gen(options={"stop": 5}), "stop"),
    ("stop-huge-list", G, gen(options={"stop": [f"s{i}" for i in range(10_000)]}), "stop"),
    ("stop-long-entry", G, gen(options={"stop": ["x" * 5000]}), "stop"),
    ("stop-numbers", G, gen(options={"stop": [1, 2]}), "stop"),
    ("format-xml", G, gen(format="xml"), "format"),
    ("format-number", G, gen(format=5), "format"),
    ("think-maybe", G, gen(think="maybe"), "think"),
    ("think-number", G, gen(think=3), "think"),
    ("images-string", G, gen(images="abc"), "images"),
    ("images-object", G, gen(images={"0": "abc"}), "images"),
    ("image-bad-base64", G, gen(images=["!!!not base64***"]), "image"),
    ("image-number", G, gen(images=[123]), "image"),
    ("image-empty", G, gen(images=[""]), "image"),
    ("image-object", G, gen(images=[{"url": "http://example.com/x.png"}]), "image"),
    ("image-not-image", G, gen(images=[NOT_IMAGE]), "image"),
    ("image-data-url-no-b64", G, gen(images=["data:image/png,abc"]), "image"),
    ("image-local-path", G, gen(images=["/etc/passwd"]), "image"),
    ("image-non-vision-model", G, {"model": "tokens-5", "prompt": "x", "images": [NOT_IMAGE]}, "images"),
    ("context-string", G, gen(context="abc"), "context"),
    ("context-forged", G, gen(context=[1, 2, 3]), "context"),
    ("context-negative", G, gen(context=[-1]), "context"),
    ("context-huge-int", G, gen(context=[2**40]), "context"),
    ("context-floats", G, gen(context=[1.5, 2.5]), "context"),
    ("context-truncated", G, gen(context=GOOD_CONTEXT[: len(GOOD_CONTEXT) // 2]), "context"),
    ("context-flipped", G, gen(context=GOOD_CONTEXT[:-1] + [GOOD_CONTEXT[-1] ^ 1]), "context"),
    ("context-magic-only", G, gen(context=GOOD_CONTEXT[:2]), "context"),
    ("context-nested", G, gen(context=[[1], {"a": 2}]), "context"),
    # -- /api/chat fields
    ("chat-messages-string", C, {"model": "echo", "messages": "hi"}, "messages"),
    ("chat-messages-object", C, {"model": "echo", "messages": {"role": "user", "content": "hi"}}, "messages"),
    ("chat-message-number", C, {"model": "echo", "messages": [1]}, "messages"),
    ("chat-message-list", C, {"model": "echo", "messages": [[]]}, "messages"),
    ("chat-role-bogus", C, {"model": "echo", "messages": [{"role": "bogus", "content": "x"}]}, "role"),
    ("chat-role-missing", C, {"model": "echo", "messages": [{"content": "x"}]}, "role"),
    ("chat-content-number", C, user(5), "content"),
    ("chat-content-list", C, user(["x"]), "content"),
    ("chat-content-nul", C, user("a\u0000b"), "content"),
    (
        "chat-content-surrogate",
        C,
        raw('{"model": "echo", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        "content",
    ),
    ("chat-only-system", C, {"model": "echo", "messages": [{"role": "system", "content": "x"}]}, "messages"),
    ("chat-images-string", C, user("x", images="abc"), "images"),
    ("chat-image-bad-base64", C, user("x", images=["%%%"]), "image"),
    ("chat-image-not-image", C, user("x", images=[NOT_IMAGE]), "image"),
    ("chat-image-number", C, user("x", images=[7]), "image"),
    ("chat-tools-string", C, chat(tools="abc"), "tools"),
    ("chat-tools-no-function", C, chat(tools=[{"type": "function"}]), "tools"),
    (
        "chat-tool-message-stray",
        C,
        {"model": "echo", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": 5}]},
        "content",
    ),
    ("chat-stream-string", C, chat(stream="true"), "stream"),
    ("chat-think-extreme", C, chat(think="extreme"), "think"),
    ("chat-temperature-99", C, chat(options={"temperature": 99}), "temperature"),
    ("chat-stop-huge", C, chat(options={"stop": ["x"] * 5000}), "stop"),
    ("chat-format-list", C, chat(format=["json"]), "format"),
    # -- /v1/chat/completions fields
    ("oa-messages-missing", OA, {"model": "echo"}, "messages"),
    ("oa-messages-empty", OA, {"model": "echo", "messages": []}, "messages"),
    ("oa-messages-string", OA, {"model": "echo", "messages": "hi"}, "messages"),
    ("oa-message-number", OA, {"model": "echo", "messages": [5]}, "messages"),
    ("oa-role-bogus", OA, {"model": "echo", "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("oa-content-number", OA, user(5), "content"),
    ("oa-content-part-string", OA, user(["text"]), "content"),
    ("oa-content-part-audio", OA, user([{"type": "input_audio", "input_audio": {}}]), "content"),
    ("oa-content-text-number", OA, user([{"type": "text", "text": 5}]), "text"),
    ("oa-content-nul", OA, user("\u0000"), "content"),
    (
        "oa-content-surrogate",
        OA,
        raw('{"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'),
        "content",
    ),
    ("oa-image-bad", OA, user([{"type": "image_url", "image_url": {"url": "!!!"}}]), "image"),
    (
        "oa-image-not-image",
        OA,
        user([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + NOT_IMAGE}}]),
        "image",
    ),
    ("oa-image-url-missing", OA, user([{"type": "image_url", "image_url": {}}]), "image"),
    ("oa-temperature-string", OA, chat(temperature="hot"), "temperature"),
    ("oa-temperature-3", OA, chat(temperature=3), "temperature"),
    ("oa-top-p-negative", OA, chat(top_p=-0.5), "top_p"),
    ("oa-presence-penalty-5", OA, chat(presence_penalty=5), "presence_penalty"),
    ("oa-frequency-penalty-string", OA, chat(frequency_penalty="x"), "frequency_penalty"),
    ("oa-seed-float", OA, chat(seed=1.5), "seed"),
    ("oa-max-tokens-negative", OA, chat(max_tokens=-5), "max_tokens"),
    ("oa-max-tokens-minus-one", OA, chat(max_tokens=-1), "max_tokens"),
    ("oa-max-tokens-string", OA, chat(max_tokens="ten"), "max_tokens"),
    ("oa-max-tokens-absurd", OA, chat(max_tokens=10**30), "max_tokens"),
    (
        "resp-max-output-tokens-zero",
        "/v1/responses",
        {"model": "echo", "input": "hi", "max_output_tokens": 0},
        "max_output_tokens",
    ),
    (
        "resp-max-output-tokens-text",
        "/v1/responses",
        {"model": "echo", "input": "hi", "max_output_tokens": "9"},
        "max_output_tokens",
    ),
    ("anth-max-tokens-zero", "/v1/messages", {**chat(), "max_tokens": 0}, "max_tokens"),
    ("anth-max-tokens-bool", "/v1/messages", {**chat(), "max_tokens": True}, "max_tokens"),
    ("anth-max-tokens-absurd", "/v1/messages", {**chat(), "max_tokens": 10**8}, "max_tokens"),
    ("oa-max-completion-tokens-zero", OA, chat(max_completion_tokens=0), "max_completion_tokens"),
    ("oa-stop-number", OA, chat(stop=5), "stop"),
    ("oa-stop-huge", OA, chat(stop=["x"] * 1000), "stop"),
    ("oa-response-format-string", OA, chat(response_format="json"), "response_format"),
    ("oa-response-format-xml", OA, chat(response_format={"type": "xml"}), "response_format"),
    ("oa-response-format-schema-missing", OA, chat(response_format={"type": "json_schema"}), "response_format"),
    ("oa-reasoning-effort", OA, chat(reasoning_effort="ultra"), "reasoning_effort"),
    ("oa-stream-options-string", OA, chat(stream_options="yes"), "stream_options"),
    ("oa-stream-string", OA, chat(stream="yes"), "stream"),
    ("oa-tools-string", OA, chat(tools="abc"), "tools"),
    ("oa-tools-empty-function", OA, chat(tools=[{"type": "function", "function": {}}]), "tools"),
]


def message_of(r: httpx.Response) -> str:
    err = r.json()["error"]
    if isinstance(err, dict):  # OpenAI's shape
        return err["message"] + " " + str(err.get("param") or "")
    return err


def test_corpus_size():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    for path in (G, C, OA):
        assert sum(1 for c in CASES if c[1] == path) >= 20


@pytest.mark.parametrize("name,path,body,word", CASES, ids=[c[0] for c in CASES])
def test_bad_input(server, name, path, body, word):  # noqa: F811
    r = post(server.url, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    message = message_of(r)
    assert "\n" not in message.strip(), message
    assert len(message) < 600, message[:700]
    assert word.lower() in message.lower(), (word, message)
    assert "Traceback" not in message


def test_still_serving_after_the_corpus(server):  # noqa: F811
    assert "internal server error" not in server.stderr()
    assert "Traceback" not in server.stderr()
    r = httpx.post(server.url + G, json={"model": "echo", "prompt": "still here?"}, timeout=30)
    assert r.status_code == 200 and "still here?" in r.json()["response"]
    r = httpx.post(server.url + OA, json=chat(), timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
