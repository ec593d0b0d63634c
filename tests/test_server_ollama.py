"""gencli serve's Ollama API, driven by the official ``ollama`` client and raw HTTP,
against the real server subprocess in front of the fake OpenAI upstream."""

from __future__ import annotations

import base64

import httpx
import ollama
import pytest

from tests.helpers import ndjson
from tests.server_fixture import server  # noqa: F401  (module-scoped fixture)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


# -- probes ----------------------------------------------------------------------------


def test_root_and_head(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"].startswith("text/plain")
    h = httpx.head(server.url + "/")
    assert h.status_code == 200 and h.content == b""


def test_version(client, server):
    v = client._request_raw("GET", "/api/version").json()["version"]
    parts = [int(p) for p in v.split(".")]
    assert parts >= [0, 6, 4]
    assert httpx.head(server.url + "/api/version").status_code == 200


def test_list_ready_models_only(client):
    listed = client.list()
    names = {m.model for m in listed.models}
    assert {"echo:latest", "reason:latest", "tokens-5:latest"} <= names  # Ollama always lists a tag
    assert "needs-key:latest" not in names  # its key variable is unset
    echo = next(m for m in listed.models if m.model == "echo:latest")
    assert echo.details.family == "openai-compatible"
    assert echo.details.format == "api"
    assert echo.modified_at is not None and isinstance(echo.size, int) and echo.digest


def test_tags_capabilities_raw(server):
    models = httpx.get(server.url + "/api/tags").json()["models"]
    by_name = {m["name"].removesuffix(":latest"): m for m in models}
    assert by_name["echo"]["capabilities"] == ["completion", "vision"]
    assert by_name["reason"]["capabilities"] == ["completion", "thinking"]
    assert set(by_name["echo"]["details"]) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }


def test_show(client, server):
    shown = client.show("reason")
    assert shown.modelinfo["general.architecture"] == "openai-compatible"
    assert "thinking" in shown.capabilities
    assert shown.details.family == "openai-compatible"
    # older clients send "name"; the context length comes from options.num_ctx
    raw = httpx.post(server.url + "/api/show", json={"name": "ctx"}).json()
    assert raw["model_info"]["openai-compatible.context_length"] == 8192
    params = dict(line.split(None, 1) for line in raw["parameters"].splitlines())  # Ollama's "name  value" lines
    assert params == {"num_ctx": "8192", "temperature": "0.5"}
    for key in ("modelfile", "template", "license", "modified_at", "details", "capabilities"):
        assert key in raw


def test_show_unknown_model(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-model")
    assert e.value.status_code == 404
    assert "no-such-model" in e.value.error


def test_ps_lists_models_after_use(client):
    client.generate(model="tokens-5", prompt="warm up")
    ps = client.ps()
    assert isinstance(ps.models, list)
    entry = next(m for m in ps.models if m.model == "tokens-5:latest")
    assert entry.expires_at is not None


# -- generate ------------------------------------------------------------------------------


def test_generate_not_streamed(client, openai_fake):
    r = client.generate(model="echo", prompt="hello server")
    assert r.response == "You said: hello server"
    assert r.done is True and r.done_reason == "stop"
    assert r.context and all(isinstance(i, int) for i in r.context)
    assert r.eval_count == 4 and r.prompt_eval_count == 2
    assert isinstance(r.total_duration, int) and r.total_duration > 0
    body = openai_fake.last().body
    assert body["messages"][-1] == {"role": "user", "content": "hello server"}


def test_generate_stream_defaults_to_false(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "echo", "prompt": "one object"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    obj = r.json()
    assert obj["response"] == "You said: one object" and obj["done"] is True
    assert obj["created_at"].endswith("Z")


def test_chat_streams_by_default_as_ollama_does(server):
    r = httpx.post(server.url + "/api/chat", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(r)
    assert len(lines) > 1 and lines[-1]["done"] is True
    assert "".join(o["message"]["content"] for o in lines) == "You said: hi"


def test_generate_streamed_with_client(client):
    parts = list(client.generate(model="tokens-5", prompt="count", stream=True))
    assert "".join(p.response for p in parts) == "tok0 tok1 tok2 tok3 tok4"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].response == "" and parts[-1].context
    assert parts[-1].eval_count == 5


def test_generate_stream_ndjson_lines(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "reason", "prompt": "why?", "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(r)
    thinking = "".join(o.get("thinking", "") for o in lines[:-1])
    assert thinking == "Hmm, the user wants an answer."
    assert "".join(o["response"] for o in lines) == "Here it is: 42."
    assert all(o["done"] is False and "context" not in o for o in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["response"] == ""
    assert final["reasoning"] == "Hmm, the user wants an answer."
    assert final["context"] and final["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "eval_count"):
        assert isinstance(final[key], int)


def test_generate_think_tags_split(client):
    r = client.generate(model="think-tags", prompt="q")
    assert r.response.strip() == "The answer is 42."
    assert r.thinking == "Pondering deeply."


def test_generate_reasoning_in_non_streamed_reply(server):
    obj = httpx.post(server.url + "/api/generate", json={"model": "reason-or", "prompt": "q"}).json()
    assert obj["response"] == "The answer is 42."
    assert obj["reasoning"] == "Let me think about this."


def test_generate_context_continues_conversation(client, openai_fake):
    first = client.generate(model="echo", prompt="first turn")
    client.generate(model="echo", prompt="second turn", context=first.context)
    messages = openai_fake.last().body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "first turn"
    assert messages[1]["content"] == "You said: first turn"


def test_generate_system_options_and_ignored_fields(server, openai_fake):
    r = httpx.post(
        server.url + "/api/generate",
        json={
            "model": "echo",
            "prompt": "p",
            "system": "be brief",
            "keep_alive": "5m",
            "raw": False,
            "options": {"temperature": 0.2, "top_p": 0.9, "num_predict": 2, "stop": ["zzz"], "unknown": 1},
            "format": "json",
            "whatever_new_field": {"x": 1},
        },
    )
    assert r.status_code == 200, r.text
    body = openai_fake.last().body
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9 and body["max_tokens"] == 2
    assert body["stop"] == ["zzz"] and body["response_format"] == {"type": "json_object"}
    assert "unknown" not in body
    assert r.json()["done_reason"] == "length"


def test_generate_images(client, openai_fake):
    r = client.generate(model="echo", prompt="what is this", images=[PNG])
    assert r.response == "You said: what is this [1 image]"
    content = openai_fake.last().body["messages"][-1]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_generate_image_to_text_only_model(server):
    b64 = base64.b64encode(PNG).decode()
    r = httpx.post(server.url + "/api/generate", json={"model": "tokens-5", "prompt": "x", "images": [b64]})
    assert r.status_code == 400 and "vision" in r.json()["error"]


def test_empty_prompt_is_a_load_reply(server, openai_fake):
    mark = openai_fake.mark()
    r = httpx.post(server.url + "/api/generate", json={"model": "echo"})
    assert r.status_code == 200
    assert r.json() == {**r.json(), "done": True, "done_reason": "load", "response": "", "model": "echo"}
    r = httpx.post(server.url + "/api/generate", json={"model": "echo", "prompt": "", "stream": True})
    assert ndjson(r)[0]["done_reason"] == "load"
    assert openai_fake.since(mark) == []  # nothing was generated
    r = httpx.post(server.url + "/api/generate", json={"model": "nope", "prompt": ""})
    assert r.status_code == 404


def test_latest_tag_accepted(client):
    assert client.generate(model="echo:latest", prompt="tagged").response == "You said: tagged"


# -- chat -----------------------------------------------------------------------------------


def test_chat_not_streamed(client, openai_fake):
    r = client.chat(
        model="echo",
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
    )
    assert r.message.role == "assistant" and r.message.content == "You said: again"
    assert r.done and r.done_reason == "stop"
    sent = openai_fake.last().body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_chat_streamed_with_thinking(client):
    parts = list(client.chat(model="reason", messages=[{"role": "user", "content": "q"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Here it is: 42."
    assert "".join(p.message.thinking or "" for p in parts) == "Hmm, the user wants an answer."
    assert parts[-1].done and all(p.message.role == "assistant" for p in parts)


def test_chat_raw_shape(server):
    r = httpx.post(
        server.url + "/api/chat",
        json={"model": "reason", "stream": True, "messages": [{"role": "user", "content": "q"}]},
    )
    lines = ndjson(r)
    assert all("response" not in o and "context" not in o for o in lines)
    assert lines[-1]["done"] is True and lines[-1]["message"]["content"] == ""
    whole = httpx.post(
        server.url + "/api/chat",
        json={"model": "reason", "stream": False, "messages": [{"role": "user", "content": "q"}]},
    ).json()
    assert whole["message"] == {
        "role": "assistant",
        "content": "Here it is: 42.",
        "thinking": "Hmm, the user wants an answer.",
    }


def test_chat_images(client):
    r = client.chat(model="echo", messages=[{"role": "user", "content": "see", "images": [PNG]}])
    assert r.message.content == "You said: see [1 image]"


def test_chat_empty_messages_is_a_load_reply(server):
    r = httpx.post(server.url + "/api/chat", json={"model": "echo", "messages": []})
    assert r.json()["done_reason"] == "load" and r.json()["message"]["role"] == "assistant"


def test_workers(openai_fake, tmp_path):
    """--workers 2: two processes share the socket; both answer, and SIGTERM stops them all."""
    from tests.server_fixture import ServeProcess, models_json

    s = ServeProcess(tmp_path / "workers", models_json(openai_fake.base_url), args=["--workers", "2"])
    try:
        assert "2 workers" in s.stderr()
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in range(6):
                r = c.post("/api/generate", json={"model": "echo", "prompt": f"n{i}"}, headers={"Connection": "close"})
                assert r.json()["response"] == f"You said: n{i}"
    finally:
        code = s.stop()
    assert code is not None and s.proc.poll() is not None
