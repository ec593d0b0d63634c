"""The OpenAPI document (src/gencli/server/openapi.json, served at /openapi.json) and a
bounded schemathesis fuzz of the real ``gencli serve`` subprocess against it.

Every operation gets schema-valid (positive) and schema-violating (negative) requests,
derandomized (a fixed seed: the same examples on every run). No response may be a 5xx;
every response must use a documented status and content type and match its schema.
Half of the generated model names are swapped for a real model so that requests reach
past the model lookup into validation and generation.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gencli.config.registry import Registry  # noqa: E402
from gencli.server.app import App  # noqa: E402
from tests.server_fixture import KEY_VAR, ServeProcess  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "src" / "gencli" / "server" / "openapi.json"
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OUTCOMES: Counter = Counter()
DEBUG = __import__("os").environ.get("FUZZ_DEBUG") == "1"


def fuzz_models(base_url: str) -> dict:
    common = {"provider": "openai-compatible", "base_url": base_url, "api_key_env": KEY_VAR}
    return {
        "echo": {**common, "model": "echo", "capabilities": ["completion", "vision", "tools"]},
        "reason": {**common, "model": "reason-deepseek", "capabilities": ["completion", "thinking"]},
        "emb": {**common, "model": "text-embedding-3-small", "capabilities": ["embedding"]},
    }


@pytest.fixture(scope="module")
def fuzz_server(openai_fake, tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("fuzz"), fuzz_models(openai_fake.base_url))
    yield s
    s.stop()


def test_document_is_served_and_packaged(fuzz_server):
    r = httpx.get(fuzz_server.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == json.loads(DOC.read_text())
    from importlib.resources import files

    assert json.loads(files("gencli.server").joinpath("openapi.json").read_text())["openapi"].startswith("3.")
    pyproject = (DOC.parents[3] / "pyproject.toml").read_text()
    assert '"server/openapi.json"' in pyproject


def test_document_lists_every_route(tmp_path):
    """Every (method, path) the app routes is documented, and nothing else is."""
    models = tmp_path / "models.json"
    models.write_text(json.dumps(fuzz_models("http://127.0.0.1:9/v1")))
    app = App(registry=Registry.load(str(models)))
    served = {(m.lower(), p) for m, p in app.routes}
    doc = json.loads(DOC.read_text())
    for method, prefix, _ in app.prefixes:  # a path with a parameter: /v1/models/{model}
        below = ("", *app.subpaths.get((method, prefix), ()))  # and what it serves below it: .../input_items
        served |= {
            (method.lower(), p)
            for p in doc["paths"]
            if p.startswith(prefix) and p[len(prefix) :].startswith("{") and p[p.index("}") + 1 :] in below
        }
    documented = {
        (m, p)
        for p, ops in doc["paths"].items()
        for m in ops
        if m in ("get", "head", "post", "put", "patch", "delete", "options")
    }
    assert served - documented == set(), "routes missing from openapi.json"
    assert documented - served == set(), "openapi.json documents routes the app does not serve"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId") and op.get("responses"), (method, path)


def _real_model(case) -> None:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 2 == 0:
        body["model"] = "emb" if "embed" in case.path else "echo"


def _operations():
    schema = schemathesis.openapi.from_path(str(DOC))
    out = []
    for result in schema.get_all_operations():
        op = result.ok()
        out.append(pytest.param(op, id=f"{op.method.upper()} {op.path}"))
    return out


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("operation", _operations())
def test_fuzz(fuzz_server, operation, mode):
    if mode is GenerationMode.NEGATIVE and (
        operation.method.upper() in ("GET", "HEAD") or operation.path == "/v1/responses/{response_id}"
    ):  # a stored response's DELETE takes only its id: any string is a valid (maybe unknown) id
        pytest.skip("no request data to make invalid")
    seen: Counter = Counter()
    session = __import__("requests").Session()

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        _real_model(case)
        response = case.call(base_url=fuzz_server.url, session=session, timeout=30)
        seen[response.status_code] += 1
        if DEBUG and response.status_code == 400:
            print("   400:", response.text[:160])
        assert response.status_code < 500, (response.status_code, response.text[:300], case.body)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    finally:
        session.close()
        key = f"{operation.method.upper()} {operation.path} {mode.value}"
        OUTCOMES[key] = sum(seen.values())
        print(f"\n{key}: {sum(seen.values())} examples, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) > 0


def test_server_survived_the_fuzz(fuzz_server):
    r = httpx.post(fuzz_server.url + "/api/generate", json={"model": "echo", "prompt": "after the fuzz"}, timeout=30)
    assert r.status_code == 200 and "after the fuzz" in r.json()["response"]
    err = fuzz_server.stderr()
    assert "Traceback" not in err and "internal server error" not in err, err[-2000:]
    print(f"\nfuzz examples run: {sum(OUTCOMES.values())} over {len(OUTCOMES)} operation/mode pairs")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/generate", {"model": "echo", "stream": True, "prompt": "hi"}),
        ("/v1/completions", {"model": "echo", "stream": True, "prompt": "hi"}),
        ("/api/chat", {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"model": "reason", "stream": True, "input": "hi"}),
        (
            "/v1/messages",
            {"model": "reason", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
)
def test_streamed_replies_conform(fuzz_server, path, body):
    """Streamed replies (SSE, NDJSON) checked against the document, every run."""
    schema = schemathesis.openapi.from_path(str(DOC))
    case = schema.make_case(operation=schema[path]["POST"], body=body, media_type="application/json")
    response = case.call(base_url=fuzz_server.url, timeout=30)
    assert response.status_code == 200
    case.validate_response(response, checks=CHECKS)


def test_input_items_conform(fuzz_server):
    """A stored response's input items (the fuzz only meets unknown ids: 404s) checked against the document."""
    given = [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"},
    ]
    r = httpx.post(fuzz_server.url + "/v1/responses", json={"model": "echo", "input": given}, timeout=30)
    assert r.status_code == 200, r.text
    schema = schemathesis.openapi.from_path(str(DOC))
    case = schema.make_case(
        operation=schema["/v1/responses/{response_id}/input_items"]["GET"],
        path_parameters={"response_id": r.json()["id"]},
        query={"limit": 2, "order": "asc"},
    )
    response = case.call(base_url=fuzz_server.url, timeout=30)
    assert response.status_code == 200 and [i["type"] for i in response.json()["data"]] == ["message", "function_call"]
    case.validate_response(response, checks=CHECKS)
