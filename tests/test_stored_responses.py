"""Stored responses of the Responses API, with the official ``openai`` SDK against the real
``gencli serve``: ``store`` (true or left out, OpenAI's default) with ``previous_response_id``,
``GET`` and ``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` (a page of
the response's own input items), ``store: false`` keeping nothing, the in-process store's
bounds (count, bytes, TTL; oldest dropped first), each key seeing only its own; and two
servers sharing one Redis continuing each other's chains and listing each other's items."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import clean_env, run_gencli
from tests.helpers import wait_until
from tests.redis_fixture import redis_server  # noqa: F401  (fixture)
from tests.server_fixture import ServeProcess, models_json


def sdk(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def sent_messages(openai_fake) -> list[dict]:
    return openai_fake.last().body["messages"]


def with_tools(base_url: str) -> dict:
    models = models_json(base_url)
    models["tools"] = {**models["echo"], "model": "tools", "capabilities": ["completion", "tools"]}
    return models


@pytest.fixture(scope="module")
def server(openai_fake, tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("stored"), with_tools(openai_fake.base_url))
    yield s
    s.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_chain_continues_with_previous_response_id(server, openai_fake, stream):
    client = sdk(server)
    if stream:
        with client.responses.stream(model="echo", input="first question") as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model="echo", input="first question")
    assert first.store is True and first.output_text == "You said: first question"
    second = client.responses.create(
        model="echo", input="second question", previous_response_id=first.id, instructions="Be brief."
    )
    assert second.previous_response_id == first.id and second.output_text == "You said: second question"
    assert sent_messages(openai_fake) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "You said: first question"},
        {"role": "user", "content": "second question"},
    ]
    third = client.responses.create(
        model="tokens-5", input=[{"role": "user", "content": "third"}], previous_response_id=second.id
    )
    assert [m["content"] for m in sent_messages(openai_fake)] == [
        "first question",
        "You said: first question",
        "second question",
        "You said: second question",
        "third",
    ]
    assert third.previous_response_id == second.id
    got = client.responses.retrieve(third.id)
    assert got.id == third.id and got.output_text == third.output_text and got.store is True


def test_function_calls_are_carried_into_the_next_turn(server, openai_fake):
    client = sdk(server)
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "name": "get_weather", "parameters": params}]
    first = client.responses.create(model="tools", input="weather in Paris?", tools=tools)
    (call,) = [o for o in first.output if o.type == "function_call"]
    follow = client.responses.create(
        model="tools",
        tools=tools,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert follow.status == "completed"
    sent = sent_messages(openai_fake)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id and sent[1]["tool_calls"][0]["function"]["name"] == call.name
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_get_and_delete_a_stored_response(server):
    client = sdk(server)
    r = client.responses.create(model="echo", input="keep me")
    assert client.responses.retrieve(r.id).output_text == "You said: keep me"
    raw = httpx.delete(f"{server.url}/v1/responses/{r.id}")
    assert raw.status_code == 200 and raw.json() == {"id": r.id, "object": "response", "deleted": True}
    for attempt in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError) as info:
            attempt()
        error = info.value.body
        assert error["type"] == "invalid_request_error" and f"response with id '{r.id}' not found" in error["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="echo", input="again", previous_response_id=r.id)
    assert info.value.body["param"] == "previous_response_id"


def test_input_items_list_what_the_response_was_given(server, openai_fake):
    """Only this response's input (not its chain's), each item with an id kept with it: a
    string content as one input_text part; newest first by default, paged with limit/after."""
    client = sdk(server)
    first = client.responses.create(model="echo", input="before the chain")
    given = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"type": "message", "role": "assistant", "content": "two", "id": "msg_given_by_the_client"},
        {"role": "user", "content": "three"},
    ]
    second = client.responses.create(model="echo", input=given, previous_response_id=first.id)
    assert [m["content"] for m in sent_messages(openai_fake)][-3:] == ["one", "two", "three"]

    newest_first = client.responses.input_items.list(second.id)
    assert newest_first.has_more is False and len(newest_first.data) == 4
    oldest_first = client.responses.input_items.list(second.id, order="asc")
    items = oldest_first.data
    assert [i.id for i in items] == [i.id for i in reversed(newest_first.data)]
    assert [(i.type, i.role, [(c.type, c.text) for c in i.content]) for i in items] == [
        ("message", "developer", [("input_text", "Answer in French.")]),
        ("message", "user", [("input_text", "one")]),
        ("message", "assistant", [("output_text", "two")]),
        ("message", "user", [("input_text", "three")]),
    ]
    assert items[2].id == "msg_given_by_the_client" and all(i.status == "completed" for i in items)
    made = [i.id for i in items if i.id != "msg_given_by_the_client"]
    assert all(i.startswith("msg_") for i in made) and len(set(made)) == 3
    assert oldest_first.first_id == items[0].id and oldest_first.last_id == items[-1].id
    assert [i.id for i in client.responses.input_items.list(second.id, order="asc").data] == [i.id for i in items]

    page = client.responses.input_items.list(second.id, order="asc", limit=3)
    assert [i.id for i in page.data] == [i.id for i in items[:3]] and page.has_more is True
    rest = client.responses.input_items.list(second.id, order="asc", limit=3, after=page.data[-1].id)
    assert [i.id for i in rest.data] == [items[3].id] and rest.has_more is False
    back = client.responses.input_items.list(second.id, limit=2, after=items[2].id)  # desc: after the third
    assert [i.id for i in back.data] == [items[1].id, items[0].id] and back.has_more is False
    every = client.responses.input_items.list(second.id, order="asc", limit=1)  # the SDK follows the pages
    assert [i.id for i in every] == [i.id for i in items]

    (only,) = client.responses.input_items.list(first.id).data
    assert only.type == "message" and only.role == "user" and only.content[0].text == "before the chain"


def test_input_items_of_function_calls_and_their_outputs(server):
    client = sdk(server)
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "name": "get_weather", "parameters": params}]
    first = client.responses.create(model="tools", input="weather in Paris?", tools=tools)
    (call,) = [o for o in first.output if o.type == "function_call"]
    given = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    follow = client.responses.create(model="tools", tools=tools, input=given)
    asked, fc, out = client.responses.input_items.list(follow.id, order="asc").data
    assert asked.type == "message" and asked.content[0].text == "weather in Paris?"
    assert (fc.type, fc.call_id, fc.name, fc.arguments, fc.status) == (
        "function_call",
        call.call_id,
        "get_weather",
        call.arguments,
        "completed",
    )
    assert (out.type, out.call_id, out.output, out.status) == (
        "function_call_output",
        call.call_id,
        "sunny",
        "completed",
    )
    assert fc.id.startswith("fc_") and out.id.startswith("fco_")


def test_input_items_refuse_a_bad_limit_order_or_after_and_404_an_unknown_id(server):
    client = sdk(server)
    r = client.responses.create(model="echo", input="page me")
    for query, param in [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "newest"}, "order"),
        ({"after": "msg_nowhere"}, "after"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.input_items.list(r.id, extra_query=query)
        error = info.value.body
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        assert param in error["message"] and "\n" not in error["message"]
    assert len(client.responses.input_items.list(r.id, limit=100).data) == 1
    for rid in ("resp_" + "0" * 32, "nonsense"):
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.input_items.list(rid)
        assert f"response with id '{rid}' not found" in info.value.body["message"]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)
    raw = httpx.get(f"{server.url}/v1/responses/{r.id}/input_items")
    assert raw.status_code == 404 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_store_false_keeps_nothing(server):
    client = sdk(server)
    r = client.responses.create(model="echo", input="forget me", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="echo", input="x", previous_response_id=r.id)


def test_unknown_and_malformed_ids_are_404(server):
    for rid in ("resp_" + "0" * 32, "nonsense", "resp_x/input_items"):
        r = httpx.get(f"{server.url}/v1/responses/{rid}")
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_in_process_store_drops_the_oldest_and_expires(openai_fake, tmp_path):
    s = ServeProcess(tmp_path, models_json(openai_fake.base_url), ["--responses-max", "2", "--responses-ttl", "2"])
    try:
        client = sdk(s)
        ids = [client.responses.create(model="echo", input=f"turn {i}").id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])  # the oldest, dropped for the third
        assert client.responses.retrieve(ids[2]).output_text == "You said: turn 2"
        time.sleep(2.2)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[2])  # expired
    finally:
        s.stop()


def test_a_response_larger_than_the_store_is_answered_but_not_kept(openai_fake, tmp_path):
    s = ServeProcess(tmp_path, models_json(openai_fake.base_url), ["--responses-mb", "0.001"])
    try:
        client = sdk(s)
        r = client.responses.create(model="echo", input="long " * 400)
        assert r.output_text.startswith("You said: long") and r.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(r.id)
        assert "not stored" in s.stderr()
    finally:
        s.stop()


def test_each_key_sees_only_its_own_responses(openai_fake, tmp_path):
    path = tmp_path / "keys.jsonl"
    issued = {}
    for name in ("alice", "bob"):
        p = run_gencli(["keys", "add", name, "--keys-file", str(path)], clean_env(tmp_path), tmp_path)
        issued[name] = p.stdout.decode().strip()
    s = ServeProcess(tmp_path / "serve", models_json(openai_fake.base_url), ["--keys-file", str(path)])
    try:
        alice, bob = sdk(s, issued["alice"]), sdk(s, issued["bob"])
        r = alice.responses.create(model="echo", input="private")
        assert alice.responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model="echo", input="x", previous_response_id=r.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(r.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.input_items.list(r.id)
        assert alice.responses.retrieve(r.id).id == r.id
        assert alice.responses.input_items.list(r.id).data[0].content[0].text == "private"
    finally:
        s.stop()


def test_two_servers_sharing_redis_continue_each_others_chains(openai_fake, redis_server, tmp_path):
    models = models_json(openai_fake.base_url)
    a = ServeProcess(tmp_path / "a", models, ["--redis", redis_server.url])
    b = ServeProcess(tmp_path / "b", models, ["--redis", redis_server.url])
    try:
        on_a, on_b = sdk(a), sdk(b)
        first = on_a.responses.create(model="echo", input="asked on a")
        with on_b.responses.stream(model="echo", input="asked on b", previous_response_id=first.id) as stream:
            second = stream.get_final_response()
        assert [m["content"] for m in sent_messages(openai_fake)] == [
            "asked on a",
            "You said: asked on a",
            "asked on b",
        ]
        third = on_a.responses.create(model="echo", input="back on a", previous_response_id=second.id)
        assert len(sent_messages(openai_fake)) == 5 and third.previous_response_id == second.id
        assert on_b.responses.retrieve(third.id).output_text == "You said: back on a"
        listed_on_a = on_a.responses.input_items.list(second.id)
        assert [i.content[0].text for i in listed_on_a.data] == ["asked on b"]
        assert [i.id for i in on_b.responses.input_items.list(second.id).data] == [listed_on_a.data[0].id]
        (item,) = on_b.responses.input_items.list(third.id).data
        assert item.content[0].text == "back on a" and item.id != listed_on_a.data[0].id
        ttl = redis_server.client().ttl(f"gencli:resp:{third.id}")
        assert 86000 < ttl <= 86400
        on_b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            on_a.responses.retrieve(first.id)
    finally:
        a.stop()
        b.stop()


def test_stored_responses_stay_within_their_bytes_under_a_memory_limit(openai_fake, tmp_path):
    """40 stored responses of ~6 MB each (a 2 MB input, its echo, the response object) would
    hold ~240 MB; with --responses-mb 16 the oldest go, and once the server is quiet (its heap
    trimmed) it holds little more than those 16 MB."""
    s = ServeProcess(
        tmp_path,
        models_json(openai_fake.base_url),
        ["--responses-mb", "16", "--max-body-mb", "4"],
        env={"MALLOC_ARENA_MAX": "2"},
        memory_mb=1024,
    )
    try:
        client = sdk(s)
        client.responses.create(model="echo", input="warm up")
        base = s.status("VmRSS")
        ids = [client.responses.create(model="echo", input=f"{i} " + "x" * 2_000_000).id for i in range(40)]
        held = wait_until(lambda: (s.status("VmRSS") - base) / 1024 < 100, timeout=20, interval=0.5)
        assert held, f"RSS still {(s.status('VmRSS') - base) / 1024:.0f} MB above the start"
        assert client.responses.retrieve(ids[-1]).output_text.startswith("You said: 39 ")
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])
        assert s.proc.poll() is None
    finally:
        s.stop()
