"""Issue 11: what real Ollama and OpenAI clients do, against the real ``gencli serve`` in front
of the fake OpenAI upstream. Each test drives the client whose behaviour it is (llm with
llm-ollama, LangChain's ChatOllama, the official ``ollama`` client, the ``openai`` SDK) or
sends the exact request that client sends (LiteLLM, Continue, VS Code Copilot, Zed, Open
WebUI), and checks field types exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import clean_env
from tests.server_fixture import KEY_VAR, ServeProcess

KEY = {"api_key_env": KEY_VAR}


@pytest.fixture(scope="module")
def server(openai_fake, tmp_path_factory):
    base = {"provider": "openai-compatible", "base_url": openai_fake.base_url, **KEY}
    models = {
        "echo": {**base, "model": "echo", "capabilities": ["completion", "vision"]},
        "reason": {**base, "model": "reason-deepseek", "capabilities": ["completion", "thinking"]},
        "coder": {
            **base,
            "model": "echo",
            "capabilities": ["completion", "insert"],
            "context_length": 16384,
            "options": {"stop": ["<END>", "\n\n"], "temperature": 0.2},
        },
        "tools": {**base, "model": "tools", "capabilities": ["completion", "tools"]},
        "qwen:7b": {**base, "model": "echo"},
        "claude": {"provider": "anthropic", "model": "claude-echo", "base_url": "http://127.0.0.1:9", **KEY},
        "gem": {
            "provider": "google",
            "model": "gemini-echo",
            "base_url": "http://127.0.0.1:9",
            **KEY,
            "capabilities": ["completion", "tools"],
        },
    }
    s = ServeProcess(tmp_path_factory.mktemp("clients"), models)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


# -- 1. tags ----------------------------------------------------------------------------------


def test_tags_list_a_tag_and_the_fields_zed_parses(server):
    models = httpx.get(server.url + "/api/tags").json()["models"]
    names = [m["name"] for m in models]
    assert "echo:latest" in names and "qwen:7b" in names and "echo" not in names  # Ollama always lists a tag
    for m in models:
        assert m["model"] == m["name"] and isinstance(m["capabilities"], list)
        for key in ("format", "family", "parameter_size", "quantization_level"):
            assert type(m["details"][key]) is str, (m["name"], key)
        assert type(m["size"]) is int and type(m["digest"]) is str and type(m["modified_at"]) is str


def test_both_spellings_resolve(client):
    for name in ("echo", "echo:latest"):
        assert client.generate(model=name, prompt="hi").response == "You said: hi"
        assert client.show(name).capabilities == ["completion", "vision"]


def test_llm_with_llm_ollama(server, tmp_path):
    """llm-ollama registers ``ollama/NAME:latest`` (and the bare name as an alias): both run."""
    llm = Path(sys.executable).with_name("llm")
    env = clean_env(tmp_path, OLLAMA_HOST=server.url, LLM_USER_PATH=str(tmp_path / "llm"))
    listed = subprocess.run([str(llm), "models", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "ollama/echo:latest" in listed.stdout
    for model in ("ollama/echo:latest", "ollama/echo"):
        r = subprocess.run(
            [str(llm), "-m", model, "hello there", "--no-log"], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "You said: hello there"


def test_langchain_validate_model_on_init(server):
    from langchain_ollama import ChatOllama

    for name in ("echo:latest", "echo"):
        chat = ChatOllama(model=name, base_url=server.url, validate_model_on_init=True)
        assert chat.invoke("hi").content == "You said: hi"
    with pytest.raises(ValueError, match="not found"):
        ChatOllama(model="nope", base_url=server.url, validate_model_on_init=True)
    # reasoning=False is think false: no reasoning in the answer
    msg = ChatOllama(model="reason", base_url=server.url, reasoning=False).invoke("hi")
    assert msg.content == "Here it is: 42." and "reasoning_content" not in msg.additional_kwargs


# -- 2. /api/show -------------------------------------------------------------------------


def test_show_tells_ide_clients_the_truth(server, client):
    raw = post(server, "/api/show", {"model": "coder"}).json()  # Continue sends {"name"}; both work
    assert raw == post(server, "/api/show", {"name": "coder"}).json() | {"modified_at": raw["modified_at"]}
    info = raw["model_info"]
    arch = info["general.architecture"]
    assert arch == "openai-compatible" and info["general.basename"] == "echo"
    assert type(info[f"{arch}.context_length"]) is int and info[f"{arch}.context_length"] == 16384  # Copilot
    params = [line.split(None, 1) for line in raw["parameters"].splitlines()]
    assert ["num_ctx", "16384"] in params and ["stop", '"<END>"'] in params and ["stop", '"\\n\\n"'] in params
    assert ".Suffix" in raw["template"] and "insert" in raw["capabilities"]  # Continue: fill-in-the-middle
    assert "tools" not in raw["template"].lower()  # LiteLLM: "tools" in the template means tool support
    tools = client.show("tools")
    assert "tools" in tools.template.lower() and ".Suffix" not in tools.template and "tools" in tools.capabilities
    plain = client.show("echo")
    assert "tools" not in plain.template.lower() and ".Suffix" not in plain.template
    assert plain.modelinfo["openai-compatible.context_length"] == 32768  # the provider's default


# -- 3. fill-in-the-middle, raw, template ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_fim_on_an_insert_model_reaches_v1_completions(server, client, openai_fake, stream):
    """Continue's autocomplete: {prompt, suffix, raw: true} to /api/generate."""
    mark = openai_fake.mark()
    r = client.generate(
        model="coder",
        prompt="def f(x):",
        suffix="return y",
        raw=True,
        stream=stream,
        options={"num_predict": 40, "temperature": 0},
    )
    text = "".join(p.response for p in r) if stream else r.response
    assert text == "Inserted between: def f(x): | return y"
    sent = [q for q in openai_fake.since(mark)]
    assert [q.path for q in sent] == ["/v1/completions"]
    body = sent[0].body
    assert body["prompt"] == "def f(x):" and body["suffix"] == "return y" and body["max_tokens"] == 40
    assert body["temperature"] == 0 and body["stop"] == ["<END>", "\n\n"] and "messages" not in body


def test_suffix_on_a_model_without_insert_is_a_400(client, openai_fake):
    mark = openai_fake.mark()
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="echo", prompt="a", suffix="b")
    assert err.value.status_code == 400 and "does not support insert" in err.value.error
    assert openai_fake.since(mark) == []


def test_raw_sends_the_prompt_as_it_is(client, openai_fake, server):
    r = client.generate(model="echo", prompt="<|im_start|>user\nhi<|im_end|>", raw=True)
    assert r.response == "You said: <|im_start|>user\nhi<|im_end|>"
    body = openai_fake.last("/v1/completions").body
    assert body["prompt"] == "<|im_start|>user\nhi<|im_end|>" and "suffix" not in body
    for extra, word in (
        ({"system": "s"}, "raw mode does not support"),
        ({"context": [1, 2]}, "raw mode"),
        ({"template": "{{ .Prompt }}"}, "raw mode"),
    ):
        resp = post(server, "/api/generate", {"model": "echo", "prompt": "x", "raw": True, **extra})
        assert resp.status_code == 400 and word in resp.json()["error"]
    # an upstream with no text-completion endpoint: a clear 400, nothing sent
    resp = post(server, "/api/generate", {"model": "gem", "prompt": "x", "raw": True})
    assert resp.status_code == 400 and "no text-completion endpoint" in resp.json()["error"]


def test_template_is_rendered_or_refused(client, openai_fake, server):
    tpl = "{{ if .System }}<sys>{{ .System }}</sys>\n{{ end }}<user>{{ .Prompt }}</user>{{ .Response }}"
    client.generate(model="echo", prompt="hi", system="be brief", template=tpl)
    assert openai_fake.last("/v1/completions").body["prompt"] == "<sys>be brief</sys>\n<user>hi</user>"
    client.generate(model="echo", prompt="hi", template=tpl)
    assert openai_fake.last("/v1/completions").body["prompt"] == "<user>hi</user>"
    resp = post(
        server,
        "/api/generate",
        {"model": "echo", "prompt": "x", "template": "{{ range .Messages }}{{ .Content }}{{ end }}"},
    )
    assert resp.status_code == 400 and "cannot render" in resp.json()["error"]


# -- 4. keep_alive -------------------------------------------------------------------------


def _ps(client) -> dict:
    return {m.model: m for m in client.ps().models}


def test_keep_alive_sets_expires_at_and_zero_unloads(client):
    client.generate(model="echo", prompt="hi", keep_alive="10m")
    entry = _ps(client)["echo:latest"]
    left = (entry.expires_at - datetime.now(UTC)).total_seconds()
    assert 540 < left <= 600 and isinstance(entry.size_vram, int)
    client.generate(model="echo", prompt="hi", keep_alive=-1)
    assert _ps(client)["echo:latest"].expires_at.year >= 2300  # kept for good
    r = client.generate(model="echo", prompt="", keep_alive=0)  # Open WebUI's unload button
    assert r.done and r.done_reason == "unload" and r.response == ""
    assert "echo:latest" not in _ps(client)
    client.chat(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert "echo:latest" in _ps(client)
    c = client.chat(model="echo", messages=[], keep_alive=0)
    assert c.done_reason == "unload" and c.message.role == "assistant" and "echo:latest" not in _ps(client)


def test_keep_alive_is_validated(server):
    for bad in ("soon", True, [1], "5x"):
        resp = post(server, "/api/generate", {"model": "echo", "prompt": "x", "keep_alive": bad})
        assert resp.status_code == 400 and "keep_alive" in resp.json()["error"], bad


# -- 5. think -------------------------------------------------------------------------------


def test_think_false_has_no_reasoning_and_true_needs_the_capability(client):
    r = client.chat(model="reason", messages=[{"role": "user", "content": "?"}], think=False)
    assert r.message.thinking is None and r.message.content == "Here it is: 42."
    r = client.chat(model="reason", messages=[{"role": "user", "content": "?"}], think=True)
    assert r.message.thinking == "Hmm, the user wants an answer."
    for think in (True, "high"):
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model="echo", messages=[{"role": "user", "content": "?"}], think=think)
        assert err.value.status_code == 400 and "does not support thinking" in err.value.error


# -- 6. logprobs ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_on_ollama_routes(client, openai_fake, stream):
    r = client.generate(model="echo", prompt="one two", logprobs=True, top_logprobs=2, stream=stream)
    parts = list(r) if stream else [r]
    text = "".join(p.response for p in parts)
    lps = [lp for p in parts for lp in (p.logprobs or [])]
    assert text == "You said: one two" and "".join(lp.token for lp in lps) == text
    assert all(type(lp.logprob) is float and len(lp.top_logprobs) == 2 for lp in lps)
    assert openai_fake.last().body["logprobs"] is True and openai_fake.last().body["top_logprobs"] == 2
    c = client.chat(model="echo", messages=[{"role": "user", "content": "hey"}], logprobs=True, stream=stream)
    parts = list(c) if stream else [c]
    lps = [lp for p in parts for lp in (p.logprobs or [])]
    assert "".join(lp.token for lp in lps) == "You said: hey" and all(not lp.top_logprobs for lp in lps)


def test_logprobs_are_refused_where_they_cannot_be(server):
    resp = post(
        server, "/api/chat", {"model": "claude", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
    )
    assert resp.status_code == 400 and "log probabilities" in resp.json()["error"]
    resp = post(server, "/api/generate", {"model": "echo", "prompt": "x", "logprobs": True, "top_logprobs": 21})
    assert resp.status_code == 400 and "top_logprobs" in resp.json()["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_on_v1(oai, stream):
    kw = {"model": "echo", "messages": [{"role": "user", "content": "a b"}], "logprobs": True, "top_logprobs": 3}
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kw))
        content = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        r = oai.chat.completions.create(**kw)
        content, text = r.choices[0].logprobs.content, r.choices[0].message.content
    assert text == "You said: a b" and "".join(t.token for t in content) == text
    assert all(type(t.logprob) is float and len(t.top_logprobs) == 3 and isinstance(t.bytes, list) for t in content)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        oai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], top_logprobs=2)


# -- 7. /v1 -------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tool_choice_passes_through_exactly(oai, openai_fake, choice):
    oai.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "Rome"}], tools=[WEATHER], tool_choice=choice
    )
    body = openai_fake.last().body
    assert body["tool_choice"] == choice and body["tools"] == [WEATHER]


def test_json_schema_keeps_name_and_strict(oai, openai_fake):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    oai.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}},
    )
    want = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    assert openai_fake.last().body["response_format"] == want
    oai.responses.create(
        model="echo",
        input="x",
        text={"format": {"type": "json_schema", "name": "person", "strict": True, "schema": schema}},
    )
    assert openai_fake.last().body["response_format"] == want  # the Responses API's text.format too
    with pytest.raises(openai.BadRequestError, match="name"):
        oai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": schema}},
        )


def test_models_retrieve(oai):
    assert oai.models.retrieve("echo").id == "echo"
    m = oai.models.retrieve("echo:latest")
    assert m.id == "echo" and m.object == "model" and type(m.created) is int
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_legacy_completions_streamed_and_not_with_suffix(oai, openai_fake):
    r = oai.completions.create(model="coder", prompt="x = ", suffix="\nprint(x)", max_tokens=30)
    assert r.object == "text_completion" and r.choices[0].text == "Inserted between: x =  | \nprint(x)"
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0
    assert openai_fake.last("/v1/completions").body["suffix"] == "\nprint(x)"
    chunks = list(
        oai.completions.create(model="echo", prompt="stream me", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "You said: stream me"
    assert chunks[-1].usage.completion_tokens == 4
    lp = oai.completions.create(model="echo", prompt="p q", logprobs=2).choices[0].logprobs
    assert "".join(lp.tokens) == "You said: p q" and all(len(t) == 2 for t in lp.top_logprobs)
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        oai.completions.create(model="echo", prompt="a", suffix="b")


def test_unsupported_parameters_are_a_400(oai, openai_fake):
    mark = openai_fake.mark()
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="echo", messages=msgs, n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        oai.chat.completions.create(model="echo", messages=msgs, logit_bias={"50256": -100})
    with pytest.raises(openai.BadRequestError, match="best_of"):
        oai.completions.create(model="echo", prompt="x", best_of=3)
    assert openai_fake.since(mark) == []


# -- 8. Open WebUI's model manager, and what is not here ---------------------------------------


def test_pull_of_a_registry_name_succeeds_in_ollama_shape(client, server):
    assert client.pull("echo").status == "success"
    progress = list(client.pull("echo:latest", stream=True))
    assert progress[-1].status == "success" and all(type(p.status) is str for p in progress)
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3.1")
    assert err.value.status_code == 404 and "models.json" in err.value.error


def test_push_create_copy_delete_blobs_are_clear_errors(client, server):
    for call in (
        lambda: client.delete("echo"),
        lambda: client.copy("echo", "echo2"),
        lambda: client.push("echo"),
        lambda: client.create(model="x", from_="echo"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and "models.json" in err.value.error
    r = httpx.post(server.url + "/api/blobs/sha256:abc", content=b"x")
    assert r.status_code == 400 and "models.json" in r.json()["error"]


def test_builtin_capabilities_match_the_upstream_models(tmp_path):
    from gencli.config.registry import Registry

    reg = Registry.load(env=clean_env(tmp_path), cwd=tmp_path)
    assert "tools" in reg.models["deepseek-r1"].capabilities  # R1-0528 calls functions
    for entry in reg.models.values():
        if "embedding" not in entry.capabilities:
            assert "completion" in entry.capabilities, entry.name


def test_version_is_numeric(server):
    v = httpx.get(server.url + "/api/version").json()["version"]
    assert [int(p) for p in v.split(".")] >= [0, 13, 3]  # /v1/responses and /v1/messages are served


def test_ps_drops_expired_models(client):
    client.generate(model="qwen:7b", prompt="hi", keep_alive=1)
    assert "qwen:7b" in _ps(client)
    deadline = time.monotonic() + 30
    while "qwen:7b" in _ps(client):
        assert time.monotonic() < deadline, "qwen:7b still listed after its keep_alive ran out"
        time.sleep(0.2)
    assert json.dumps(httpx.get(client._client.base_url.join("/api/ps")).json())  # still valid JSON


def test_clients_send_the_server_key(openai_fake, tmp_path_factory, tmp_path):
    """With GENCLI_API_KEY set, each client sends it the way the README's Clients table says."""
    key = "gencli-test-server-key-1234"
    models = {"echo": {"provider": "openai-compatible", "model": "echo", "base_url": openai_fake.base_url, **KEY}}
    s = ServeProcess(tmp_path_factory.mktemp("keyed"), models, env={"GENCLI_API_KEY": key})
    try:
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=s.url).list()
        assert err.value.status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert ollama.Client(host=s.url, headers=auth).generate(model="echo", prompt="k").response == "You said: k"
        from langchain_ollama import ChatOllama

        chat = ChatOllama(model="echo", base_url=s.url, client_kwargs={"headers": auth}, validate_model_on_init=True)
        assert chat.invoke("k").content == "You said: k"
        llm = Path(sys.executable).with_name("llm")
        env = clean_env(tmp_path, OLLAMA_HOST=s.url, LLM_USER_PATH=str(tmp_path / "llm"), OLLAMA_API_KEY=key)
        r = subprocess.run(
            [str(llm), "-m", "ollama/echo", "k", "--no-log"], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0 and r.stdout.strip() == "You said: k", r.stderr
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        assert oai.models.retrieve("echo").id == "echo"
    finally:
        s.stop()


JS = Path(__file__).with_name("js")


@pytest.mark.skipif(
    not (JS / "node_modules" / "ollama").is_dir(),
    reason="the JS client is not installed (.ci/run runs npm ci in tests/js)",
)
def test_the_javascript_ollama_client(openai_fake, tmp_path_factory):
    """The official JS client, with the Authorization header it needs for a host that is not ollama.com."""
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    key = "gencli-test-server-key-js-5678"
    models = {"echo": {"provider": "openai-compatible", "model": "echo", "base_url": openai_fake.base_url, **KEY}}
    s = ServeProcess(tmp_path_factory.mktemp("js"), models, env={"GENCLI_API_KEY": key})
    try:
        r = subprocess.run(
            [node, str(JS / "ollama_client.mjs"), s.url, key], capture_output=True, text=True, timeout=120, cwd=JS
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert "echo:latest" in out["models"] and [int(p) for p in out["version"].split(".")] >= [0, 6, 4]
        assert out["show"]["capabilities"] == ["completion"] and isinstance(out["show"]["model_info"], dict)
        assert out["generate"]["response"] == "You said: from js" and out["chat"] == "You said: stream js"
        assert out["unload"] == "unload" and "models.json" in out["pull"]
        denied = subprocess.run(
            [node, str(JS / "ollama_client.mjs"), s.url], capture_output=True, text=True, timeout=120, cwd=JS
        )
        assert denied.returncode != 0 and "API key" in denied.stderr
    finally:
        s.stop()
