"""Every field of every route, sent with every wrong JSON type, against the real ``gencli
serve``: never a 5xx, always JSON in the route's error shape, and a 400 names the field.

(The schemathesis fuzz in test_fuzz.py samples the documented schema; this sweep is
exhaustive over fields x types, including nested ones, so that a TypeError in any
validation path shows up.)"""

from __future__ import annotations

import httpx
import pytest

from tests.server_fixture import ServeProcess, models_json

WRONG = [[], {}, 1.5, -1, 10**30, "x", True, None, [[]], [{}], {"a": []}, "\u0000", ""]

BASE = {
    "/api/generate": {"model": "echo", "prompt": "hi"},
    "/api/chat": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    "/api/show": {"model": "echo"},
    "/api/embed": {"model": "emb", "input": "hi"},
    "/api/embeddings": {"model": "emb", "prompt": "hi"},
    "/v1/embeddings": {"model": "emb", "input": "hi"},
    "/v1/responses": {"model": "echo", "input": "hi"},
    "/v1/messages": {"model": "echo", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
}
FIELDS = {
    "/api/generate": [
        "model",
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "stream",
        "raw",
        "format",
        "images",
        "options",
        "think",
        "keep_alive",
        "tools",
    ],
    "/api/chat": ["model", "messages", "tools", "format", "options", "stream", "think", "keep_alive"],
    "/v1/chat/completions": [
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "top_k",
        "min_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "response_format",
        "reasoning_effort",
        "tools",
        "tool_choice",
        "n",
        "user",
        "logprobs",
    ],
    "/api/show": ["model", "name", "verbose"],
    "/api/embed": ["model", "input", "truncate", "options", "dimensions", "keep_alive"],
    "/api/embeddings": ["model", "prompt", "options"],
    "/v1/embeddings": ["model", "input", "encoding_format", "dimensions", "user"],
    "/v1/responses": [
        "model",
        "input",
        "instructions",
        "stream",
        "temperature",
        "top_p",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "reasoning",
        "text",
        "previous_response_id",
        "store",
        "include",
    ],
    "/v1/messages": [
        "model",
        "max_tokens",
        "messages",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
    ],
    "/v1/messages/count_tokens": ["model", "messages", "system", "tools", "thinking"],
}
# nested places: (route, path to a container in BASE, keys to spoil inside it)
NESTED = [
    ("/api/chat", ("messages", 0), ["role", "content", "images", "tool_calls", "tool_name", "thinking"]),
    ("/v1/chat/completions", ("messages", 0), ["role", "content", "name", "tool_calls", "tool_call_id"]),
    ("/api/generate", ("options",), ["temperature", "num_predict", "stop", "seed", "top_k", "num_ctx"]),
    ("/v1/chat/completions", ("stream_options",), ["include_usage"]),
    ("/v1/chat/completions", ("response_format",), ["type", "json_schema"]),
    ("/v1/chat/completions", ("messages", 0, "content", 0), ["type", "text", "image_url"]),
    ("/api/chat", ("tools", 0), ["type", "function"]),
    ("/api/chat", ("tools", 0, "function"), ["name", "description", "parameters"]),
    ("/v1/messages", ("messages", 0), ["role", "content"]),
    ("/v1/messages", ("messages", 0, "content", 0), ["type", "text", "source"]),
    ("/v1/responses", ("input", 0), ["role", "content", "type"]),
]
CONTAINERS = {
    ("/api/generate", "options"): {"temperature": 0.5},
    ("/v1/chat/completions", "stream_options"): {"include_usage": True},
    ("/v1/chat/completions", "response_format"): {"type": "text"},
    ("/api/chat", "tools"): [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}


@pytest.fixture(scope="module")
def server(openai_fake, tmp_path_factory):
    models = models_json(openai_fake.base_url)
    models["emb"] = {
        "provider": "openai-compatible",
        "model": "text-embedding-3-small",
        "base_url": openai_fake.base_url,
        "api_key_env": "FAKE_UPSTREAM_KEY",
        "capabilities": ["embedding"],
    }
    models["echo"]["capabilities"] = ["completion", "vision", "tools"]
    s = ServeProcess(tmp_path_factory.mktemp("types"), models, env={"GENCLI_RETRIES": "0"})
    yield s
    s.stop()


def _cases():
    for route, fields in FIELDS.items():
        for f in fields:
            yield route, (f,), BASE[route]
    for route, path, keys in NESTED:
        for k in keys:
            yield route, (*path, k), BASE[route]


def _body(route: str, path: tuple, value) -> dict:
    import copy

    body = copy.deepcopy(BASE[route])
    for (r, name), container in CONTAINERS.items():
        if r == route and path[0] == name:
            body[name] = copy.deepcopy(container)
    if route in ("/v1/chat/completions", "/v1/messages") and path[:3] == ("messages", 0, "content"):
        body["messages"][0]["content"] = [{"type": "text", "text": "hi"}]
    if route == "/v1/responses" and path[:2] == ("input", 0):
        body["input"] = [{"role": "user", "content": "hi"}]
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


def test_every_field_with_every_wrong_type(server):
    problems = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for route, path, _ in _cases():
            for value in WRONG:
                body = _body(route, path, value)
                r = client.post(route, json=body)
                where = f"{route} {'.'.join(map(str, path))}={value!r:.20}"
                if r.status_code >= 500 and r.status_code not in (502, 503, 504):
                    problems.append(f"{where}: {r.status_code} {r.text[:200]}")
                    continue
                try:
                    data = r.json() if "json" in r.headers.get("content-type", "") else None
                except ValueError:
                    data = None
                if r.status_code == 400 and data is not None and isinstance(data.get("error"), (dict, str)):
                    message = data["error"]["message"] if route.startswith("/v1/") else data["error"]
                    named = {str(p) for p in path if isinstance(p, str)} | {"body", "image", "tool"}
                    if not any(n in message for n in named):
                        problems.append(f"{where}: 400 does not name the field: {message[:200]}")
                if r.status_code >= 400:
                    if data is None:
                        problems.append(f"{where}: {r.status_code} not JSON: {r.text[:100]}")
                    elif route.startswith("/v1/messages"):
                        if not (
                            data.get("type") == "error"
                            and isinstance(data.get("error"), dict)
                            and data["error"].get("message")
                            and data["error"].get("type")
                        ):
                            problems.append(f"{where}: not Anthropic's error shape: {r.text[:200]}")
                    elif route.startswith("/v1/"):
                        if not (isinstance(data.get("error"), dict) and data["error"].get("message")):
                            problems.append(f"{where}: not OpenAI's error shape: {r.text[:200]}")
                    elif not isinstance(data.get("error"), str):
                        problems.append(f"{where}: not Ollama's error shape: {r.text[:200]}")
        # the server is still serving
        assert client.post("/api/generate", json={"model": "echo", "prompt": "still"}).json()["response"]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])
