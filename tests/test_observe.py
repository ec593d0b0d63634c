"""Observability of ``gencli serve``: GET /metrics (read back with prometheus_client's own
parser), /health and /ready, the request id, ``--log-format json``, bounded label values and
``--workers`` (prometheus_client's multiprocess mode), against the real server in front of
the fake OpenAI upstream."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import threading
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GENCLI, clean_env
from tests.helpers import post, wait_until
from tests.server_fixture import ServeProcess, models_json

SERVER_KEY = "sk-gencli-observe-test"
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, ls, v in samples(text) if n == name and all(ls.get(k) == x for k, x in labels.items()))


def scrape(server: ServeProcess, headers: dict | None = None) -> str:
    r = httpx.get(server.url + "/metrics", headers=AUTH if headers is None else headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


@pytest.fixture(scope="module")
def keyed(openai_fake, tmp_path_factory):
    s = ServeProcess(
        tmp_path_factory.mktemp("observe"),
        models_json(openai_fake.base_url),
        args=["--log-format", "json"],
        env={"GENCLI_API_KEY": SERVER_KEY},
    )
    yield s
    s.stop()


def test_metrics_count_requests_tokens_latency_and_refusals(keyed):
    before = scrape(keyed)
    for stream in (False, True):
        r = httpx.post(
            keyed.url + "/api/generate",
            json={"model": "echo", "prompt": "one two three", "stream": stream},
            headers=AUTH,
        )
        assert r.status_code == 200
    assert httpx.post(keyed.url + "/api/generate", json={"model": "echo", "prompt": "x"}).status_code == 401
    big = httpx.post(
        keyed.url + "/api/generate",
        content=b"x" * (33 * 1024 * 1024),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert big.status_code == 413
    assert httpx.post(keyed.url + "/api/generate", json={"model": "broken", "prompt": "x"}, headers=AUTH).status_code
    after = scrape(keyed)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "/api/generate", "method": "POST", "model": "echo", "status": "200"}
    assert grew("gencli_requests_total", **ok) == 2
    assert grew("gencli_requests_total", route="/api/generate", status="401", model="-") == 1
    assert grew("gencli_requests_total", route="/api/generate", status="413") == 1
    assert grew("gencli_requests_total", route="/api/generate", model="broken", status="502") == 1
    assert grew("gencli_rejected_requests_total", reason="auth") == 1
    assert grew("gencli_rejected_requests_total", reason="size") == 1
    # "one two three": 3 words in, "You said: one two three" 5 words out, twice, by the operator's key
    assert grew("gencli_tokens_total", model="echo", key="operator", direction="in") == 6
    assert grew("gencli_tokens_total", model="echo", key="operator", direction="out") == 10
    assert grew("gencli_upstream_latency_seconds_count", model="echo") == 2
    assert grew("gencli_time_to_first_token_seconds_count", model="echo") == 1  # the streamed one
    assert 0 < grew("gencli_upstream_latency_seconds_sum", model="echo") < 10
    assert grew("gencli_requests_total", route="/metrics", status="200") >= 1


def test_in_flight_counts_a_running_stream(keyed):
    done = threading.Event()

    def slow() -> None:
        post_body = {"model": "slow", "prompt": "x", "stream": True}
        with httpx.stream("POST", keyed.url + "/api/generate", json=post_body, headers=AUTH, timeout=30) as r:
            for _ in r.iter_bytes():
                if done.is_set():
                    break

    t = threading.Thread(target=slow)
    t.start()
    try:
        # the scrape itself is in flight too
        assert wait_until(lambda: value(scrape(keyed), "gencli_in_flight_requests") >= 2, timeout=10)
    finally:
        done.set()
        t.join(30)
    assert wait_until(lambda: value(scrape(keyed), "gencli_in_flight_requests") == 1)


def test_labels_never_carry_request_text(keyed):
    marker = "evil" + uuid.uuid4().hex
    httpx.post(keyed.url + "/api/generate", json={"model": marker, "prompt": marker}, headers=AUTH)
    httpx.get(keyed.url + f"/{marker}", headers=AUTH)
    httpx.get(keyed.url + f"/v1/models/{marker}", headers=AUTH)
    httpx.request("PATCH", keyed.url + "/api/generate", headers=AUTH)
    text = scrape(keyed)
    assert marker not in text
    assert value(text, "gencli_requests_total", route="/api/generate", model="-", status="404") >= 1
    assert value(text, "gencli_requests_total", route="other", method="other", status="404") >= 1
    assert value(text, "gencli_requests_total", route="/v1/models/{id}", method="GET", status="404") >= 1
    routes = {ls["route"] for n, ls, _ in samples(text) if n == "gencli_requests_total"}
    assert routes <= {"other", "/metrics", "/api/generate", "/v1/models/{id}", "/", "/health", "/ready", "/api/chat"}


def test_metrics_need_the_key_health_and_ready_do_not(keyed):
    r = httpx.get(keyed.url + "/metrics")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(keyed.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    health = httpx.get(keyed.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(keyed.url + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["models_ready"] >= 10
    assert httpx.head(keyed.url + "/health").status_code == 200


def test_not_ready_without_a_ready_model(tmp_path, openai_fake):
    models = {"only": {"provider": "openai-compatible", "model": "echo", "base_url": openai_fake.base_url}}
    models["only"]["api_key_env"] = "GENCLI_TEST_UNSET_KEY"
    s = ServeProcess(tmp_path, {**models, **{n: None for n in _builtins()}})
    try:
        r = httpx.get(s.url + "/ready")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert any("no model is ready" in p for p in r.json()["problems"])
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def _builtins() -> list[str]:
    from gencli.config.registry import BUILTIN_PATH

    return list(json.loads(BUILTIN_PATH.read_text()))


def test_request_ids_are_taken_when_safe_made_otherwise_and_logged(keyed):
    mine = "trace-" + uuid.uuid4().hex[:12]
    r = httpx.post(
        keyed.url + "/api/generate", json={"model": "echo", "prompt": "x"}, headers={**AUTH, "X-Request-Id": mine}
    )
    assert r.headers["x-request-id"] == mine
    made = {httpx.get(keyed.url + "/health").headers["x-request-id"] for _ in range(5)}
    assert len(made) == 5 and all(len(m) == 16 and int(m, 16) >= 0 for m in made)
    for bad in ("a" * 129, "has space", "semi;colon", 'quote"', ""):
        got = httpx.get(keyed.url + "/health", headers={"X-Request-Id": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 16
    refused = httpx.get(keyed.url + "/api/tags", headers={"X-Request-Id": "refused-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "refused-1"  # the guard's replies too

    def logged() -> list[dict]:
        return [json.loads(ln) for ln in keyed.stderr().splitlines() if ln.startswith("{")]

    wanted = (mine, "refused-1")
    by_id = wait_until(lambda: (ids := {d["request_id"]: d for d in logged()}).keys() >= set(wanted) and ids, 5)
    line = by_id[mine]
    assert line["route"] == "/api/generate" and line["model"] == "echo" and line["status"] == 200
    assert line["key"] == "operator" and line["tokens_in"] == 1 and line["tokens_out"] == 3
    assert isinstance(line["latency_ms"], float)
    assert by_id["refused-1"]["key"] == "-" and by_id["refused-1"]["status"] == 401
    assert SERVER_KEY not in keyed.stderr()


def test_no_metrics_flag_and_a_bad_log_format(tmp_path, openai_fake):
    s = ServeProcess(tmp_path / "off", models_json(openai_fake.base_url), args=["--no-metrics"])
    try:
        assert httpx.get(s.url + "/metrics").status_code == 404
        r = post(s, "/api/generate", {"model": "echo", "prompt": "x"})
        assert r.status_code == 200 and len(r.headers["x-request-id"]) == 16  # ids stay
    finally:
        s.stop()
    for args, env, where in (
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"GENCLI_LOG_FORMAT": "yaml"}, "GENCLI_LOG_FORMAT"),
    ):
        p = subprocess.run(
            [GENCLI, "serve", "--port", "0", *args],
            env=clean_env(tmp_path, **env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert where in p.stderr and "text, json" in p.stderr


def test_workers_share_their_metrics(tmp_path, openai_fake):
    s = ServeProcess(tmp_path, models_json(openai_fake.base_url), args=["--workers", "2"])
    try:
        n = 12
        for _ in range(n):
            # a fresh connection each: the kernel spreads them over both workers
            assert httpx.post(s.url + "/api/generate", json={"model": "echo", "prompt": "a b"}).status_code == 200
        totals = {
            value(scrape(s, {}), "gencli_requests_total", route="/api/generate", model="echo", status="200")
            for _ in range(6)
        }
        assert totals == {n}  # whichever worker answers the scrape: the sum of both
        text = scrape(s, {})
        assert value(text, "gencli_tokens_total", model="echo", direction="in") == 2 * n
        assert value(text, "gencli_in_flight_requests") == 1  # the scrape itself, over both workers
        workers = open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read().split()
        assert len(workers) == 2
        # this server's directory (other servers may have theirs in the same temporary folder): the
        # files its workers have mapped
        mapped = [open(f"/proc/{pid}/maps").read() for pid in workers]
        dirs = {os.path.dirname(m.split()[-1]) for text in mapped for m in text.splitlines() if "/gencli-metrics-" in m}
        assert len(dirs) == 1
        directory = dirs.pop()
        files = sorted(glob.glob(f"{directory}/counter_*.db"))
        # each worker that counted writes its own values (the kernel may hand one worker every connection)
        assert files and all(os.path.basename(f)[len("counter_") : -3] in workers for f in files)
    finally:
        s.stop()
    assert wait_until(lambda: not os.path.exists(directory), timeout=5)


def test_a_person_key_is_named_in_the_metrics_and_the_log_and_its_refusals_counted(tmp_path, openai_fake):
    """Issue 20's two halves together: a key of the keys file (gencli keys) is counted and
    logged under its name (never the key), its 429 over rpm as reason ``limit`` and its 403
    for a model it may not use as reason ``model``."""
    keys_file = tmp_path / "keys.jsonl"
    made = subprocess.run(
        [GENCLI, "keys", "add", "alice", "--rpm", "2", "--models", "echo", "--keys-file", str(keys_file)],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    person = made.stdout.strip()
    s = ServeProcess(
        tmp_path / "serve",
        models_json(openai_fake.base_url),
        args=["--log-format", "json", "--keys-file", str(keys_file)],
        env={"GENCLI_API_KEY": SERVER_KEY},
    )
    try:
        mine = {"Authorization": f"Bearer {person}"}
        before = scrape(s)
        for i in range(2):
            r = httpx.post(
                s.url + "/api/generate",
                json={"model": "echo", "prompt": "one two three", "stream": False},
                headers={**mine, "X-Request-Id": f"alice-{i}"},
            )
            assert r.status_code == 200, r.text
        other = httpx.post(s.url + "/api/generate", json={"model": "slow", "prompt": "x"}, headers=mine)
        assert other.status_code == 403
        over = httpx.post(
            s.url + "/api/generate", json={"model": "echo", "prompt": "x"}, headers={**mine, "X-Request-Id": "over"}
        )
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
        after = scrape(s)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        # "one two three": 3 words in, "You said: one two three" 5 out, twice, under alice's name
        assert grew("gencli_tokens_total", model="echo", key="alice", direction="in") == 6
        assert grew("gencli_tokens_total", model="echo", key="alice", direction="out") == 10
        assert grew("gencli_tokens_total", key="operator") == 0
        assert grew("gencli_rejected_requests_total", reason="limit") == 1
        assert grew("gencli_rejected_requests_total", reason="model") == 1
        assert grew("gencli_rejected_requests_total", reason="auth") == 0
        assert grew("gencli_requests_total", route="/api/generate", model="echo", status="429") == 1
        assert person not in after

        def logged() -> dict[str, dict]:
            lines = [json.loads(ln) for ln in s.stderr().splitlines() if ln.startswith("{")]
            return {d["request_id"]: d for d in lines}

        by_id = wait_until(lambda: (ids := logged()).keys() >= {"alice-0", "alice-1", "over"} and ids, 5)
        assert by_id["alice-0"]["key"] == "alice" and by_id["alice-0"]["status"] == 200
        assert by_id["alice-0"]["tokens_in"] == 3 and by_id["alice-0"]["tokens_out"] == 5
        assert by_id["over"]["key"] == "alice" and by_id["over"]["status"] == 429
        assert by_id["over"]["rejected"] == "limit"
        assert person not in s.stderr() and SERVER_KEY not in s.stderr()
        # the operator's key is still "operator"
        r = httpx.post(s.url + "/api/generate", json={"model": "echo", "prompt": "a"}, headers=AUTH)
        assert r.status_code == 200
        assert value(scrape(s), "gencli_tokens_total", model="echo", key="operator", direction="in") == 1
    finally:
        s.stop()
