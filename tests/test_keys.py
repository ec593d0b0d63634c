"""Keys for people (``gencli keys add/list/revoke``) and what ``gencli serve`` does with them:
the operator's key and the keys file's keys accepted, unknown keys 401, models a key may not
use 403, and its requests and tokens per minute counted in the server (429 with Retry-After),
each in the wire's own error shape (Ollama, OpenAI, Anthropic) and with the official clients.
The limits shared through Redis by two servers are in tests/test_redis_shared.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from gencli.config import keys
from tests.conftest import clean_env, run_gencli
from tests.helpers import one_line_error, wait_until
from tests.server_fixture import ServeProcess, models_json

OPERATOR = "operator-secret-5d1e"
MESSAGES = [{"role": "user", "content": "one two three four five six seven"}]


def add_key(tmp: Path, path: Path, name: str, *args: str) -> str:
    p = run_gencli(["keys", "add", name, "--keys-file", str(path), *args], clean_env(tmp), tmp)
    assert p.returncode == 0, p.stderr
    key = p.stdout.decode().strip()
    assert key.startswith("gk_") and len(key) > 50 and "\n" not in key
    return key


# -- the CLI ----------------------------------------------------------------------------


def test_keys_add_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "keys.jsonl"
    key = add_key(tmp_path, path, "alice", "--rpm", "60", "--tpm", "1000", "--models", "echo,tokens-5")
    text = path.read_text()
    assert key not in text and keys.digest(key) in text
    assert path.stat().st_mode & 0o777 == 0o600
    (record,) = keys.load(path)
    assert (record.name, record.rpm, record.tpm, record.models) == ("alice", 60, 1000, ("echo", "tokens-5"))
    listed = run_gencli(["keys", "list", "--keys-file", str(path)], clean_env(tmp_path), tmp_path)
    out = listed.stdout.decode()
    assert listed.returncode == 0 and "alice" in out and "echo,tokens-5" in out and key not in out
    assert key.split("_")[2] not in out and keys.digest(key) not in out
    as_json = json.loads(
        run_gencli(["keys", "list", "--json", "--keys-file", str(path)], clean_env(tmp_path), tmp_path).stdout
    )
    assert as_json["keys"][0]["name"] == "alice" and "sha256" not in as_json["keys"][0]
    # the same name twice, a bad name, a bad limit: exit 2, one line
    assert "exists already" in one_line_error(
        run_gencli(["keys", "add", "alice", "--keys-file", str(path)], clean_env(tmp_path), tmp_path), 2
    )
    assert "NAME" in one_line_error(
        run_gencli(["keys", "add", "bad name", "--keys-file", str(path)], clean_env(tmp_path), tmp_path), 2
    )
    assert "--rpm" in one_line_error(
        run_gencli(["keys", "add", "bob", "--rpm", "0", "--keys-file", str(path)], clean_env(tmp_path), tmp_path), 2
    )
    assert "no key named 'bob'" in one_line_error(
        run_gencli(["keys", "revoke", "bob", "--keys-file", str(path)], clean_env(tmp_path), tmp_path), 2
    )
    done = run_gencli(["keys", "revoke", "alice", "--keys-file", str(path)], clean_env(tmp_path), tmp_path)
    assert done.returncode == 0 and keys.load(path) == []


def test_keys_add_notes_models_the_registry_does_not_know(tmp_path):
    entry = {"provider": "openai-compatible", "model": "e", "base_url": "http://127.0.0.1:9/v1"}
    (tmp_path / "models.json").write_text(json.dumps({"echo": entry}))
    p = run_gencli(
        ["keys", "add", "eve", "--models", "echo,nope", "--keys-file", str(tmp_path / "k.jsonl")],
        clean_env(tmp_path),
        tmp_path,
    )
    assert p.returncode == 0
    note = [ln for ln in p.stderr.decode().splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "nope" in note[0] and "echo" not in note[0].split(":", 2)[2]


def test_the_default_keys_file_is_in_the_xdg_config_dir_and_the_variable_overrides_it(tmp_path):
    p = run_gencli(["keys", "add", "carol"], clean_env(tmp_path), tmp_path)
    assert p.returncode == 0
    assert keys.load(tmp_path / "config" / "gencli" / "keys.jsonl")[0].name == "carol"
    other = tmp_path / "other.jsonl"
    p = run_gencli(["keys", "add", "dave"], clean_env(tmp_path, GENCLI_KEYS_FILE=str(other)), tmp_path)
    assert p.returncode == 0 and keys.load(other)[0].name == "dave"


@pytest.mark.parametrize(
    "line,needle",
    [
        ("{oops", "not valid JSON"),
        ('{"name": "a", "id": "0123456789ab", "sha256": "' + "0" * 64 + '", "rpm": -1}', "rpm must be"),
        ('{"name": "a", "id": "zz", "sha256": "' + "0" * 64 + '"}', "id must be"),
        ('["not", "an", "object"]', "JSON object"),
        ('{"name": "a", "id": "0123456789ab", "sha256": "' + "0" * 64 + '", "colour": 1}', "unknown field"),
    ],
)
def test_a_malformed_keys_file_is_exit_2_naming_its_line(tmp_path, line, needle):
    path = tmp_path / "keys.jsonl"
    add_key(tmp_path, path, "alice")
    path.write_text(path.read_text() + "\n" + line + "\n")
    for args in (["keys", "list"], ["serve", "--port", "0"]):
        text = one_line_error(run_gencli([*args, "--keys-file", str(path)], clean_env(tmp_path), tmp_path), 2)
        assert f"{path} line 3" in text and needle in text


def test_serve_refuses_a_named_keys_file_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.jsonl"
    text = one_line_error(run_gencli(["serve", "--keys-file", str(missing)], clean_env(tmp_path), tmp_path), 2)
    assert str(missing) in text and "gencli keys add" in text
    env = clean_env(tmp_path, GENCLI_KEYS_FILE=str(missing))
    assert "GENCLI_KEYS_FILE" in one_line_error(run_gencli(["serve"], env, tmp_path), 2)


def test_a_keys_file_allows_a_network_bind_without_the_operator_key(tmp_path):
    path = tmp_path / "keys.jsonl"
    add_key(tmp_path, path, "alice")
    refused = run_gencli(["serve", "--host", "0.0.0.0", "--port", "0"], clean_env(tmp_path), tmp_path)
    assert refused.returncode == 2 and b"gencli keys add" in refused.stderr


# -- the server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def team(openai_fake, tmp_path_factory):
    """A server with the operator's key and a keys file: name -> key, and the server."""
    tmp = tmp_path_factory.mktemp("team")
    path = tmp / "keys.jsonl"
    issued = {
        "all": add_key(tmp, path, "all"),
        "echo-only": add_key(tmp, path, "echo-only", "--models", "echo"),
        "tokens": add_key(tmp, path, "tokens", "--tpm", "10"),
        "revoked": add_key(tmp, path, "revoked"),
        **{
            f"rpm-{wire}": add_key(tmp, path, f"rpm-{wire}", "--rpm", "2") for wire in ("ollama", "openai", "anthropic")
        },
        **{
            f"sdk-{wire}": add_key(tmp, path, f"sdk-{wire}", "--rpm", "1") for wire in ("ollama", "openai", "anthropic")
        },
    }
    s = ServeProcess(
        tmp / "serve", models_json(openai_fake.base_url), ["--keys-file", str(path)], env={"GENCLI_API_KEY": OPERATOR}
    )
    s.keys, s.keys_path, s.tmp = issued, path, tmp
    yield s
    s.stop()


def call(server, wire: str, key: str | None, model: str = "echo") -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    if wire == "ollama":
        return httpx.post(
            server.url + "/api/chat", json={"model": model, "messages": MESSAGES, "stream": False}, headers=headers
        )
    if wire == "openai":
        return httpx.post(
            server.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=headers
        )
    headers = {} if key is None else {"x-api-key": key}
    return httpx.post(
        server.url + "/v1/messages",
        json={"model": model, "max_tokens": 50, "messages": MESSAGES},
        headers={**headers, "anthropic-version": "2023-06-01"},
    )


def shape(wire: str, resp: httpx.Response, anthropic_type: str, openai_type: str) -> str:
    """The error message, checked to be in the wire's error shape."""
    body = resp.json()
    if wire == "ollama":
        assert set(body) == {"error"}
        return body["error"]
    if wire == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["type"] == openai_type
        return body["error"]["message"]
    assert body["type"] == "error" and body["error"]["type"] == anthropic_type
    return body["error"]["message"]


WIRES = ("ollama", "openai", "anthropic")


@pytest.mark.parametrize("wire", WIRES)
def test_the_operator_key_and_a_person_key_are_accepted(team, wire):
    assert call(team, wire, OPERATOR).status_code == 200
    assert call(team, wire, team.keys["all"]).status_code == 200
    assert call(team, wire, team.keys["all"], "tokens-5").status_code == 200


@pytest.mark.parametrize("wire", WIRES)
def test_an_unknown_key_is_401_in_the_wire_shape(team, wire):
    real = team.keys["all"]
    for bad in (real[:-2] + ("aa" if not real.endswith("aa") else "bb"), "gk_000000000000_x", "nonsense", None):
        r = call(team, wire, bad)
        assert r.status_code == 401, (bad, r.text)
        message = shape(wire, r, "authentication_error", "invalid_request_error")
        assert ("missing API key" if bad is None else "invalid API key") in message


@pytest.mark.parametrize("wire", WIRES)
def test_a_model_the_key_may_not_use_is_403_in_the_wire_shape(team, wire):
    key = team.keys["echo-only"]
    assert call(team, wire, key).status_code == 200
    r = call(team, wire, key, "tokens-5")
    assert r.status_code == 403
    message = shape(wire, r, "permission_error", "permission_error")
    assert "key 'echo-only' may not use model 'tokens-5'" in message and "echo" in message
    # a model that does not exist is refused the same way (the key learns nothing about the registry)
    assert call(team, wire, key, "no-such-model").status_code == 403


def test_model_lists_show_a_key_only_its_models(team):
    def listed(key: str) -> tuple[list[str], list[str]]:
        headers = {"authorization": f"Bearer {key}"}
        tags = httpx.get(team.url + "/api/tags", headers=headers).json()["models"]
        models = httpx.get(team.url + "/v1/models", headers=headers).json()["data"]
        return [m["name"] for m in tags], [m["id"] for m in models]

    assert listed(team.keys["echo-only"]) == (["echo:latest"], ["echo"])
    everything = listed(team.keys["all"])
    assert "tokens-5:latest" in everything[0] and everything == listed(OPERATOR)


@pytest.mark.parametrize("wire", WIRES)
def test_over_the_requests_per_minute_is_429_with_retry_after_in_the_wire_shape(team, wire):
    key = team.keys[f"rpm-{wire}"]
    assert [call(team, wire, key).status_code for _ in range(2)] == [200, 200]
    r = call(team, wire, key)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    message = shape(wire, r, "rate_limit_error", "rate_limit_error")
    assert f"key 'rpm-{wire}' is over its limit of 2 requests per minute" in message
    if wire == "openai":
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert call(team, wire, OPERATOR).status_code == 200  # the operator's key has no limit


def test_the_official_clients_see_the_429(team):
    oai = openai.OpenAI(base_url=team.url + "/v1", api_key=team.keys["sdk-openai"], max_retries=0)
    oai.chat.completions.create(model="echo", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="echo", messages=MESSAGES)
    assert info.value.response.headers["retry-after"]
    claude = anthropic.Anthropic(base_url=team.url, api_key=team.keys["sdk-anthropic"], max_retries=0)
    claude.messages.create(model="echo", max_tokens=20, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="echo", max_tokens=20, messages=MESSAGES)
    client = ollama.Client(host=team.url, headers={"authorization": "Bearer " + team.keys["sdk-ollama"]})
    client.chat(model="echo", messages=MESSAGES)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="echo", messages=MESSAGES)
    assert err.value.status_code == 429 and "requests per minute" in err.value.error


def test_tokens_per_minute_count_the_answers_tokens(team):
    key = team.keys["tokens"]
    first = call(team, "openai", key)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] >= 10  # the fake counts words: past the limit of 10
    r = call(team, "openai", key)
    assert r.status_code == 429 and "10 tokens per minute" in r.json()["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_a_revoked_key_stops_working_on_the_running_server(team):
    key = team.keys["revoked"]
    assert call(team, "openai", key).status_code == 200
    time.sleep(0.05)
    p = run_gencli(["keys", "revoke", "revoked", "--keys-file", str(team.keys_path)], clean_env(team.tmp), team.tmp)
    assert p.returncode == 0
    wait_until(lambda: call(team, "openai", key).status_code == 401, timeout=5, interval=0.2)
    assert call(team, "openai", team.keys["all"]).status_code == 200
    assert "reloaded" in team.stderr()


def test_no_key_reaches_the_server_output(team):
    call(team, "openai", team.keys["all"])
    out = team.stderr() + team.out_path.read_text(errors="replace")
    for key in team.keys.values():
        assert key not in out and key.split("_", 2)[2] not in out
    assert OPERATOR not in out


# -- the window itself (a clock the test moves) ----------------------------------------------


def test_the_sliding_window_admits_again_as_the_oldest_requests_leave_it():
    import asyncio

    from gencli.server.limits import LocalLimiter, OverLimit

    now = [1000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    record = keys.KeyRecord("w", "0123456789ab", "0" * 64, rpm=3, tpm=100)

    async def admit() -> float | None:
        try:
            await limiter.admit(record)
        except OverLimit as exc:
            return exc.retry_after
        return None

    async def scenario() -> None:
        assert await admit() is None  # t=1000
        now[0] = 1010.5
        assert await admit() is None and await admit() is None  # t=1010
        now[0] = 1030.2
        assert await admit() == 30  # the request of t=1000 leaves the window at t=1060: 29.8 s, said as 30
        now[0] = 1060.0
        assert await admit() is None  # it left; the two of t=1010 stay until t=1070
        assert await admit() == 10
        now[0] = 1071.0
        limiter.spend(record, 150)  # one answer past the token limit
        assert await admit() == 60  # tokens of t=1071 leave at t=1131
        now[0] = 1131.0
        assert await admit() is None

    asyncio.run(scenario())


def test_a_keys_file_broken_while_serving_keeps_the_keys_loaded_before(openai_fake, tmp_path):
    path = tmp_path / "keys.jsonl"
    key = add_key(tmp_path, path, "alice")
    s = ServeProcess(tmp_path / "serve", models_json(openai_fake.base_url), ["--keys-file", str(path)])
    try:
        assert call(s, "openai", key).status_code == 200
        path.write_text(path.read_text() + "{broken\n")
        # read again on a request at most a second after the change
        wait_until(
            lambda: call(s, "openai", key).status_code == 200 and "keeping the keys loaded before" in s.stderr(),
            timeout=5,
            interval=0.3,
        )
        assert f"{path} line 2" in s.stderr()
        assert call(s, "openai", key).status_code == 200
        assert call(s, "openai", "gk_000000000000_nope").status_code == 401
    finally:
        s.stop()


def test_a_person_key_in_x_api_key_works_beside_another_authorization(team):
    r = httpx.post(
        team.url + "/v1/messages",
        json={"model": "echo", "max_tokens": 20, "messages": MESSAGES},
        headers={"authorization": "Bearer not-a-key", "x-api-key": team.keys["all"], "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200, r.text
