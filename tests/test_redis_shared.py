"""Per-key limits shared through a real ``redis-server`` by two ``gencli serve`` processes
(one budget for both), and what each does while Redis is down: ``--redis-fail open`` admits
requests uncounted, ``closed`` answers 503 with Retry-After, both say so on stderr once and
again when Redis is back, and neither crashes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import clean_env, run_gencli
from tests.helpers import wait_until
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.server_fixture import ServeProcess, models_json

MESSAGES = [{"role": "user", "content": "one two three four five six seven"}]


def issue(tmp, path, name: str, *args: str) -> str:
    p = run_gencli(["keys", "add", name, "--keys-file", str(path), *args], clean_env(tmp), tmp)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


def chat(server, key: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "echo", "messages": MESSAGES},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def pair(openai_fake, redis_server, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("pair")
    path = tmp / "keys.jsonl"
    issued = {
        "rpm": issue(tmp, path, "shared-rpm", "--rpm", "4"),
        "tpm": issue(tmp, path, "shared-tpm", "--tpm", "20"),
    }
    models = models_json(openai_fake.base_url)
    args = ["--keys-file", str(path), "--redis", redis_server.url]
    a, b = ServeProcess(tmp / "a", models, args), ServeProcess(tmp / "b", models, args)
    yield a, b, issued
    a.stop()
    b.stop()


def test_two_servers_share_one_requests_per_minute_budget(pair, redis_server):  # noqa: F811
    a, b, issued = pair
    key = issued["rpm"]
    assert [chat(s, key).status_code for s in (a, b, a, b)] == [200] * 4
    for s in (a, b):
        r = chat(s, key)
        assert r.status_code == 429 and "4 requests per minute" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
    buckets = redis_server.client().hgetall("gencli:{limits}:shared-rpm:r")
    assert sum(int(v) for v in buckets.values()) == 4


def test_two_servers_share_one_tokens_per_minute_budget(pair):
    a, b, issued = pair
    key = issued["tpm"]
    used = 0
    while used < 20:  # each answer's tokens count on both servers
        r = chat(a, key)
        assert r.status_code == 200
        used += r.json()["usage"]["total_tokens"]
    # the other server sees them within FLUSH (0.5 s) of the answer, with no request in between
    r = wait_until(lambda: (lambda r: r if r.status_code == 429 else None)(chat(b, key)), timeout=3, interval=0.2)
    assert "20 tokens per minute" in r.json()["error"]["message"]


def test_redis_down_fails_open_or_closed_as_told_and_never_crashes(openai_fake, tmp_path):
    (tmp_path / "redis-data").mkdir()
    redis = RedisServer(tmp_path / "redis-data")
    path = tmp_path / "keys.jsonl"
    key = issue(tmp_path, path, "alice", "--rpm", "100")
    models = models_json(openai_fake.base_url)
    base = ["--keys-file", str(path), "--redis", redis.url]
    open_ = ServeProcess(tmp_path / "open", models, base)
    closed = ServeProcess(tmp_path / "closed", models, [*base, "--redis-fail", "closed"])
    try:
        assert chat(open_, key).status_code == 200 and chat(closed, key).status_code == 200
        redis.stop()
        for _ in range(3):
            assert chat(open_, key).status_code == 200  # admitted uncounted
            r = chat(closed, key)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "is not answering" in r.json()["error"]["message"] and "--redis-fail closed" in r.text
        # stored responses need Redis whatever the policy: 503 in the Responses error shape
        got = httpx.get(open_.url + "/v1/responses/resp_" + "0" * 32, headers={"authorization": f"Bearer {key}"})
        message = got.json()["error"]["message"]
        assert got.status_code == 503 and "Redis is not answering, so stored responses" in message
        assert str(redis.port) not in message  # clients are not told where Redis is
        for s in (open_, closed):
            down = [ln for ln in s.stderr().splitlines() if "is not answering" in ln]
            assert len(down) == 1 and f"Redis at redis://127.0.0.1:{redis.port}/0" in down[0]
            assert ("--redis-fail closed" if s is closed else "--redis-fail open") in down[0]
            assert s.proc.poll() is None
        redis.start()
        wait_until(lambda: chat(closed, key).status_code == 200, timeout=10, interval=0.3)
        assert chat(open_, key).status_code == 200
        wait_until(lambda: "answers again" in open_.stderr() and "answers again" in closed.stderr(), timeout=5)
    finally:
        open_.stop()
        closed.stop()
        redis.stop()


def test_a_bad_redis_url_or_policy_is_exit_2(tmp_path):
    for args, needle in (
        (["--redis", "http://127.0.0.1:1"], "redis://"),
        (["--redis", "redis://:secret-pw@127.0.0.1:99999"], "--redis"),
        (["--redis-fail", "maybe"], "--redis-fail"),
    ):
        p = run_gencli(["serve", "--port", "0", *args], clean_env(tmp_path), tmp_path)
        text = p.stderr.decode()
        assert p.returncode == 2 and needle in text and "secret-pw" not in text, text
    p = run_gencli(["serve", "--port", "0"], clean_env(tmp_path, GENCLI_REDIS_FAIL="sometimes"), tmp_path)
    assert p.returncode == 2 and b"GENCLI_REDIS_FAIL" in p.stderr


def test_redis_down_fail_closed_is_counted_as_reason_redis_in_each_wire_shape(openai_fake, tmp_path):
    """The 503 of ``--redis-fail closed`` while Redis is down is a rejected request of its own
    reason, ``redis`` (not ``busy``, the memory budgets' and local queue's): in /metrics and in
    the access log; each wire gets it in its own error shape."""
    from prometheus_client.parser import text_string_to_metric_families

    (tmp_path / "redis-data").mkdir()
    redis = RedisServer(tmp_path / "redis-data")
    path = tmp_path / "keys.jsonl"
    key = issue(tmp_path, path, "carol", "--rpm", "100")
    args = ["--keys-file", str(path), "--redis", redis.url, "--redis-fail", "closed", "--log-format", "json"]
    s = ServeProcess(tmp_path / "serve", models_json(openai_fake.base_url), args)
    auth = {"authorization": f"Bearer {key}"}

    def rejected() -> dict[str, float]:
        text = httpx.get(s.url + "/metrics", headers=auth, timeout=10).text
        return {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "gencli_rejected_requests"
            for sample in family.samples
            if sample.name == "gencli_rejected_requests_total"
        }

    try:
        assert chat(s, key).status_code == 200
        before = rejected()
        redis.stop()
        wires = {
            "/v1/chat/completions": {"model": "echo", "messages": MESSAGES},
            "/v1/messages": {"model": "echo", "max_tokens": 16, "messages": MESSAGES},
            "/api/chat": {"model": "echo", "messages": MESSAGES, "stream": False},
        }
        got = {}
        for i, (route, body) in enumerate(wires.items()):
            r = httpx.post(s.url + route, json=body, headers={**auth, "x-request-id": f"down-{i}"}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", (route, r.text)
            got[route] = r.json()
        openai_error = got["/v1/chat/completions"]["error"]
        assert "is not answering" in openai_error["message"] and "--redis-fail closed" in openai_error["message"]
        assert openai_error["type"] == "overloaded_error"
        anthropic_error = got["/v1/messages"]
        assert anthropic_error["type"] == "error" and anthropic_error["error"]["type"] == "overloaded_error"
        assert "is not answering" in anthropic_error["error"]["message"]
        assert isinstance(got["/api/chat"]["error"], str) and "is not answering" in got["/api/chat"]["error"]
        assert str(redis.port) not in json.dumps(got)  # clients are not told where Redis is
        after = rejected()
        assert after.get("redis", 0) - before.get("redis", 0) == 3
        assert after.get("busy", 0) == before.get("busy", 0)  # not counted twice, nor as busy

        def logged() -> list[dict] | None:
            lines = [json.loads(ln) for ln in s.stderr().splitlines() if ln.startswith('{"time"')]
            return [ln for ln in lines if str(ln["request_id"]).startswith("down-")] or None

        lines = wait_until(lambda: (lambda found: found if found and len(found) == 3 else None)(logged()), timeout=5)
        assert len(lines) == 3 and all(ln["status"] == 503 and ln["rejected"] == "redis" for ln in lines)
        assert all(ln["key"] == "carol" for ln in lines) and key not in s.stderr()
    finally:
        s.stop()
        redis.stop()
