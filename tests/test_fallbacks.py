"""Fallbacks and deployments (models.json ``fallbacks``, ``deployments``, ``routing``):
checked at load (loops, unknown names, bad deployments), taken by both engine loops when a
candidate fails before any output (500, 429 after retries, no connection, a timeout) and
never after output went out, spread over deployments round robin or least-busy, and seen
through the ``gencli`` command and ``gencli serve`` (X-Gencli-Model / X-Gencli-Deployment,
the access log's ``served=``; Ollama's ``model`` stays the name asked for). Upstreams are
the fake OpenAI servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx
import pytest

from gencli import engine
from gencli.config.registry import Registry
from gencli.core.errors import ConfigError, UpstreamAuthError, UpstreamError
from gencli.core.events import Done
from gencli.core.request import GenerateRequest
from gencli.transports.cli import HttpxTransport
from gencli.transports.server import ServerTransport
from tests.conftest import clean_env, run_gencli
from tests.fakes.openai_upstream import FAKE_KEY, FakeOpenAI
from tests.helpers import RUNNERS, ndjson, post, run_sync, text_of, wait_until
from tests.server_fixture import KEY_VAR, ServeProcess


def entry(base_url: str, model: str, **kw) -> dict:
    return {"provider": "openai-compatible", "model": model, "base_url": base_url, "api_key_env": KEY_VAR, **kw}


def registry(tmp_path, models: dict, **env: str) -> Registry:
    path = tmp_path / f"models-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(models))
    return Registry.load(path=str(path), env={KEY_VAR: FAKE_KEY, **env})


def tag(model: str) -> str:
    """A model id the fake answers like ``model`` (echo for any unknown one), counted apart."""
    return f"{model}@{uuid.uuid4().hex[:8]}"


def asked(fake: FakeOpenAI, mark: int, model: str) -> int:
    """How many requests for ``model`` reached ``fake`` since ``mark``."""
    return sum(1 for r in fake.since(mark) if isinstance(r.body, dict) and r.body.get("model") == model)


# -- models.json ------------------------------------------------------------------------------


def test_fallback_loops_are_refused_at_load_naming_the_entries(tmp_path):
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match=r"fallback loop: a -> b -> a; remove one"):
        registry(tmp_path, {"a": entry(url, "x", fallbacks=["b"]), "b": entry(url, "y", fallbacks=["a"])})
    with pytest.raises(ConfigError, match=r"fallback loop: (b -> c -> d -> b|c -> d -> b -> c|d -> b -> c -> d)"):
        registry(
            tmp_path,
            {
                "a": entry(url, "x", fallbacks=["b"]),
                "b": entry(url, "y", fallbacks=["c"]),
                "c": entry(url, "y", fallbacks=["d"]),
                "d": entry(url, "y", fallbacks=["b"]),
            },
        )
    with pytest.raises(ConfigError, match=r"fallback loop: a -> a"):
        registry(tmp_path, {"a": entry(url, "x", fallbacks=["a"])})
    # a diamond is no loop
    reg = registry(
        tmp_path,
        {
            "a": entry(url, "x", fallbacks=["b", "c"]),
            "b": entry(url, "y", fallbacks=["d"]),
            "c": entry(url, "y", fallbacks=["d"]),
            "d": entry(url, "y"),
        },
    )
    assert [e.name for e in reg.route(reg.models["a"])] == ["a", "b", "d", "c"]  # a fallback's own after it


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"fallbacks": ["nope"]}, "fallback 'nope' is not a model in the registry"),
        ({"fallbacks": "b"}, "field 'fallbacks' must be a list"),
        ({"fallbacks": [1]}, "'fallbacks' must be a list of model names"),
        ({"fallbacks": ["b", "b"]}, "'fallbacks' names each model once"),
        ({"routing": "random"}, "field 'routing' must be one of round-robin, least-busy (not 'random')"),
        ({"deployments": [{"base_url": "http://127.0.0.1:9/v1", "zone": "x"}]}, "deployment 1: unknown field 'zone'"),
        ({"deployments": [{"api_key": "sk-x"}]}, "deployment 1: keys do not belong in models.json"),
        ({"deployments": ["http://x"]}, "deployment 1: expected an object"),
        ({"deployments": [{"name": "e", "model": "m"}, {"name": "e"}]}, "deployment 2: 'name' must be unique"),
        ({"deployments": [{"base_url": ""}]}, "deployment 1: field 'base_url' must be a non-empty string"),
    ],
)
def test_bad_fallbacks_and_deployments_name_the_entry_and_fault(tmp_path, raw, words):
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError) as info:
        registry(tmp_path, {"a": entry(url, "x", **raw), "b": entry(url, "y")})
    assert "model 'a'" in str(info.value) and words in str(info.value), str(info.value)


# -- the engine -------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", RUNNERS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("failure", ["burst503-100", "unreachable", "hang", "retry-after-0.01-9"])
def test_a_failure_before_output_falls_back_in_order(tmp_path, openai_fake, loop, stream, failure):
    url = openai_fake.base_url
    first = entry("http://127.0.0.1:9/v1" if failure == "unreachable" else url, tag(failure), retries=1)
    if failure == "hang":
        first["timeout"] = 0.3
    target = tag("echo")
    reg = registry(
        tmp_path,
        {
            "a": {**first, "fallbacks": ["needs-key", "embed-only", "b"]},
            "needs-key": entry(url, tag("echo"), api_key_env="UNSET_KEY_VAR"),  # skipped: its key is not set
            "embed-only": entry(url, tag("echo"), capabilities=["embedding"]),  # skipped: no completion
            "b": entry(url, target),
        },
    )
    mark = openai_fake.mark()
    waits: list = []
    events = RUNNERS[loop](reg, "a", stream=stream, waits=waits)
    done = events[-1]
    assert isinstance(done, Done) and done.model == "a" and done.served == "b"
    assert text_of(events) == "You said: hello there" or done.text == "You said: hello there"
    assert asked(openai_fake, mark, target) == 1
    if failure in ("burst503-100", "retry-after-0.01-9"):
        assert asked(openai_fake, mark, first["model"]) == 2  # its own retry first, then the fallback
        assert len(waits) == 1
    if failure == "hang":
        assert asked(openai_fake, mark, first["model"]) == 1  # a timeout is not retried, but falls back


@pytest.mark.parametrize("loop", RUNNERS)
def test_no_fallback_once_output_went_out(tmp_path, openai_fake, loop):
    url = openai_fake.base_url
    target = tag("echo")
    reg = registry(tmp_path, {"a": entry(url, tag("close-midstream"), fallbacks=["b"]), "b": entry(url, target)})
    mark = openai_fake.mark()
    seen: list = []
    with pytest.raises(UpstreamError, match="failed mid-response") as info:
        if loop == "sync":
            plan = engine.prepare(GenerateRequest(model="a", prompt="hi", stream=True), reg)
            transport = HttpxTransport(tls=False)
            try:
                for ev in engine.execute(plan, transport):
                    seen.append(ev)
            finally:
                transport.close()
        else:
            RUNNERS[loop](reg, "a")
    assert "every deployment and fallback failed" not in str(info.value)
    assert asked(openai_fake, mark, target) == 0
    if loop == "sync":
        assert text_of(seen).startswith("Partial ")


@pytest.mark.parametrize("loop", RUNNERS)
def test_no_fallback_on_a_bad_key_or_a_bad_request(tmp_path, openai_fake, loop):
    url = openai_fake.base_url
    target = tag("echo")
    reg = registry(
        tmp_path,
        {
            "a": entry(url, "error-401", fallbacks=["b"]),
            "c": entry(url, "error-404", fallbacks=["b"]),
            "b": entry(url, target),
        },
    )
    mark = openai_fake.mark()
    with pytest.raises(UpstreamAuthError):
        RUNNERS[loop](reg, "a")
    with pytest.raises(UpstreamError):
        RUNNERS[loop](reg, "c")
    assert asked(openai_fake, mark, target) == 0


@pytest.mark.parametrize("loop", RUNNERS)
def test_every_candidate_failing_names_each_failure(tmp_path, openai_fake, loop):
    url = openai_fake.base_url
    reg = registry(
        tmp_path,
        {
            "a": entry(url, "error-500", retries=0, fallbacks=["b"]),
            "b": entry("http://127.0.0.1:9/v1", "echo", retries=0),
        },
    )
    with pytest.raises(UpstreamError) as info:
        RUNNERS[loop](reg, "a")
    message = str(info.value)
    assert message.startswith("a: every deployment and fallback failed: a: ")
    assert "HTTP 500" in message and "; then b: cannot reach 127.0.0.1:9" in message
    assert info.value.status == 502


def test_a_fallback_that_cannot_take_the_request_is_skipped(tmp_path, openai_fake):
    url = openai_fake.base_url
    target = tag("echo")
    reg = registry(
        tmp_path,
        {
            "a": entry(url, "error-500", retries=0, capabilities=["completion", "thinking"], fallbacks=["plain", "b"]),
            "plain": entry(url, target),  # no thinking: skipped when the request thinks
            "b": entry(url, tag("echo"), capabilities=["completion", "thinking"]),
        },
    )
    mark = openai_fake.mark()
    done = run_sync(reg, "a", think=True)[-1]
    assert done.served == "b" and asked(openai_fake, mark, target) == 0
    done = run_sync(reg, "a")[-1]  # without think, 'plain' takes it
    assert done.served == "plain" and asked(openai_fake, mark, target) == 1


# -- deployments ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_fakes():
    one, two = FakeOpenAI(api_key="sk-one").start(), FakeOpenAI(api_key="sk-two").start()
    yield one, two
    one.stop()
    two.stop()


def deployed(one: FakeOpenAI, two: FakeOpenAI, model: str, **kw) -> dict:
    return {
        "provider": "openai-compatible",
        "model": model,
        "deployments": [
            {"name": "one", "base_url": one.base_url, "api_key_env": "KEY_ONE"},
            {"name": "two", "base_url": two.base_url, "api_key_env": "KEY_TWO"},
        ],
        **kw,
    }


@pytest.mark.parametrize("loop", RUNNERS)
def test_round_robin_spreads_requests_over_the_deployments_and_their_keys(tmp_path, two_fakes, loop):
    one, two = two_fakes
    model = tag("echo")
    reg = registry(tmp_path, {"m": deployed(one, two, model)}, KEY_ONE="sk-one", KEY_TWO="sk-two")
    marks = one.mark(), two.mark()
    served = [RUNNERS[loop](reg, "m")[-1].served for _ in range(4)]
    assert served == ["m/one", "m/two", "m/one", "m/two"]
    assert asked(one, marks[0], model) == 2 and asked(two, marks[1], model) == 2
    assert {r.headers["authorization"] for r in one.since(marks[0])} == {"Bearer sk-one"}
    assert {r.headers["authorization"] for r in two.since(marks[1])} == {"Bearer sk-two"}


def test_a_failing_deployment_moves_on_at_once_and_one_without_its_key_is_skipped(tmp_path, two_fakes):
    one, two = two_fakes
    model = tag("burst503-100")
    reg = registry(tmp_path, {"m": deployed(one, two, model, retries=2)}, KEY_ONE="sk-one", KEY_TWO="sk-two")
    marks = one.mark(), two.mark()
    waits: list = []
    with pytest.raises(UpstreamError, match=r"^m: every deployment and fallback failed: m: .*; then m: .*three times"):
        run_sync(reg, "m", waits=waits)
    # the first deployment once (the next one is another upstream), the last one with the model's retries
    assert asked(one, marks[0], model) + asked(two, marks[1], model) == 4 and len(waits) == 2
    reg = registry(tmp_path, {"m": deployed(one, two, tag("echo"))}, KEY_ONE="sk-one")  # KEY_TWO unset
    assert [run_sync(reg, "m")[-1].served for _ in range(3)] == ["m/one"] * 3


def test_least_busy_starts_at_the_deployment_with_the_fewest_running(tmp_path, two_fakes):
    one, two = two_fakes
    slow = "slow-300-2"
    reg = registry(tmp_path, {"m": deployed(one, two, slow, routing="least-busy")}, KEY_ONE="sk-one", KEY_TWO="sk-two")
    router = reg.router(reg.models["m"])
    first, second = router.deployments
    assert [d.deployment for d in router.order()] == ["one", "two"]
    router.begin(first)
    assert [d.deployment for d in router.order()] == ["two", "one"]  # one is busy
    assert [d.deployment for d in router.order()] == ["two", "one"]  # still
    router.begin(second)
    router.begin(second)
    assert router.order()[0] is first  # 1 running against 2
    router.end(first), router.end(second), router.end(second)

    async def main() -> list[str]:
        transport = ServerTransport()
        try:

            async def one_run() -> str:
                plan = engine.prepare(GenerateRequest(model="m", prompt="hi"), reg)
                events = [ev async for ev in engine.aexecute(plan, transport)]
                return events[-1].served

            first = asyncio.create_task(one_run())  # still running while the next three start
            await asyncio.sleep(0.1)
            rest = [asyncio.create_task(one_run()) for _ in range(3)]
            return [await first, *[await t for t in rest]]
        finally:
            await transport.close()

    served = asyncio.run(main())
    assert served[0] == "m/one" and served[1] == "m/two"  # one was busy when the second started
    assert router.busy == [0, 0]  # every attempt's count given back


# -- the gencli command and gencli serve ----------------------------------------------------


def test_models_lists_fallbacks_and_deployments_ready_when_one_has_its_key(tmp_path, workdir, two_fakes):
    one, two = two_fakes
    path = tmp_path / "models.json"
    models = {"m": {**deployed(one, two, "echo"), "fallbacks": ["n"]}, "n": entry(one.base_url, "echo")}
    models["m"]["api_key_env"] = "KEY_NOT_SET"  # the entry's own: each deployment names its own
    path.write_text(json.dumps(models))
    for env, ready in (({"KEY_TWO": "sk-two"}, True), ({}, False)):
        r = run_gencli(["models", "--json"], clean_env(tmp_path, GENCLI_MODELS=str(path), **env), workdir)
        rows = {m["name"]: m for m in json.loads(r.stdout)["models"]}
        assert rows["m"]["fallbacks"] == ["n"] and rows["m"]["deployments"] == ["one", "two"]
        assert rows["m"]["ready"] is ready and rows["n"]["deployments"] == []
        assert rows["m"]["missing"] == (None if ready else "KEY_ONE")


def test_cli_takes_the_fallback_and_says_so(tmp_path, workdir, openai_fake):
    url = openai_fake.base_url
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"a": entry(url, "error-500", retries=0, fallbacks=["b"]), "b": entry(url, "echo")}))
    env = clean_env(tmp_path, **{KEY_VAR: FAKE_KEY, "GENCLI_MODELS": str(path)})
    r = run_gencli(["generate", "-m", "a", "hello fallback"], env, workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "You said: hello fallback"
    err = r.stderr.decode()
    assert "gencli: warning: a: " in err and "HTTP 500" in err and "trying b instead" in err
    r = run_gencli(["generate", "-m", "a", "--json", "hello"], env, workdir)
    assert json.loads(r.stdout.splitlines()[-1])["model"] == "a"  # the name asked for


@pytest.fixture(scope="module")
def routed(openai_fake, two_fakes, tmp_path_factory):
    one, two = two_fakes
    url = openai_fake.base_url
    models = {
        "a": entry(url, "error-500", retries=0, fallbacks=["b"]),
        "b": deployed(one, two, "echo"),
        "mid": entry(url, "error-midstream", fallbacks=["b"]),
        "plain": entry(url, "echo"),
    }
    s = ServeProcess(tmp_path_factory.mktemp("serve-routed"), models, env={"KEY_ONE": "sk-one", "KEY_TWO": "sk-two"})
    yield s
    s.stop()


def test_serve_names_what_answered_in_headers_and_the_log(routed):
    r = post(routed, "/api/generate", {"model": "a", "prompt": "hi there"})
    assert r.status_code == 200 and r.json()["model"] == "a" and r.json()["response"] == "You said: hi there"
    assert r.headers["x-gencli-model"] == "b" and r.headers["x-gencli-deployment"] in ("one", "two")
    with httpx.stream(
        "POST", routed.url + "/api/chat", json={"model": "a", "messages": [{"role": "user", "content": "yo"}]}
    ) as s:
        body = s.read()
        assert s.status_code == 200 and s.headers["x-gencli-model"] == "b"
        second = s.headers["x-gencli-deployment"]
    assert {second, r.headers["x-gencli-deployment"]} == {"one", "two"}  # round robin
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert all(line["model"] == "a" for line in lines) and lines[-1]["done"] is True
    openai = httpx.post(
        routed.url + "/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "x"}]}
    )
    assert openai.status_code == 200 and openai.json()["model"] == "a" and openai.headers["x-gencli-model"] == "b"
    plain = post(routed, "/api/generate", {"model": "plain", "prompt": "x"})
    assert "x-gencli-model" not in plain.headers  # a model without deployments or fallbacks: nothing to name
    lines = wait_until(lambda: [ln for ln in routed.stderr().splitlines() if "model=a" in ln and " served=b/" in ln])
    assert lines and all(re.search(r" served=b/(one|two) id=[0-9a-f]{16}$", ln) for ln in lines), lines
    from prometheus_client.parser import text_string_to_metric_families

    metrics = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(httpx.get(routed.url + "/metrics").text)
        for s in fam.samples
    }
    assert metrics[("gencli_fallbacks_total", (("model", "a"), ("to", "b")))] >= 3
    deployments = {dict(k[1]).get("deployment") for k in metrics if k[0] == "gencli_upstream_latency_seconds_count"}
    assert {"one", "two"} <= deployments  # the latency of each deployment apart


def test_real_clients_see_the_name_they_asked_for(routed):
    import ollama
    import openai

    out = ollama.Client(host=routed.url).generate(model="a", prompt="from ollama")
    assert out.model == "a" and out.response == "You said: from ollama"
    client = openai.OpenAI(base_url=routed.url + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="a", messages=[{"role": "user", "content": "from openai"}]
    )
    reply = raw.parse()
    assert reply.model == "a" and reply.choices[0].message.content == "You said: from openai"
    assert raw.headers["x-gencli-model"] == "b" and raw.headers["x-gencli-deployment"] in ("one", "two")
    chunks = list(client.chat.completions.create(model="a", messages=[{"role": "user", "content": "s"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: s"


def test_serve_does_not_fall_back_mid_stream(routed):
    r = post(routed, "/api/generate", {"model": "mid", "prompt": "one two", "stream": True})
    lines = ndjson(r)
    assert r.status_code == 200 and r.headers["x-gencli-model"] == "mid"
    assert "".join(line.get("response", "") for line in lines[:-1]).startswith("Partial ")
    assert "error" in lines[-1] and "every deployment and fallback failed" not in lines[-1]["error"]


def test_header_values_are_printable_ascii():
    from gencli.server.api.streaming import _header_value

    assert _header_value("b") == b"b"
    assert _header_value("ünï\r\nX-Evil: 1") == b"\\xfcn\\xef??X-Evil: 1"
    assert len(_header_value("x" * 1000)) == 200
