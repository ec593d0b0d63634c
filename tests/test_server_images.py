"""Images on every route go through the engine: the same vision check, decoding, URL
downloads (in their place among the other images), and the server's limits (count and
bytes a request, checked before any download) on /api/generate, /api/chat,
/v1/chat/completions, /v1/responses and /v1/messages; and the engine alone (prepare with
a quota, then the CLI's downloads)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from aiohttp import web

from gencli.config.registry import Registry
from gencli.core.errors import ImageError
from gencli.core.images import ImageQuota
from gencli.core.request import GenerateRequest, Message
from gencli.engine import fetch_images, prepare
from gencli.transports.cli import HttpxTransport
from tests.fakes.threaded import ThreadedServer
from tests.server_fixture import KEY_VAR, ServeProcess, models_json

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(40))
GIF = b"GIF89a" + bytes(range(40))
MB = 1024 * 1024


class ImageFiles(ThreadedServer):
    """``/jpeg``, ``/gif`` and ``/big`` (2 MB of PNG-looking bytes) on 127.0.0.1, counting hits."""

    thread_name = "fake-image-files"

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self.serve)
        return app

    async def serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = {"jpeg": JPEG, "gif": GIF, "big": PNG + b"\0" * (2 * MB)}[request.match_info["name"]]
        return web.Response(body=body, content_type="application/octet-stream")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def files():
    s = ImageFiles().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(openai_fake, tmp_path_factory):
    s = ServeProcess(
        tmp_path_factory.mktemp("serve-images"),
        models_json(openai_fake.base_url),
        args=["--allow-private-images", "--max-images", "3", "--max-images-mb", "1"],
    )
    yield s
    s.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


# Each route's body for a user turn "look" with these images (URLs, or PNG bytes as base64).
def _generate(model: str, images: list) -> dict:
    return {
        "model": model,
        "prompt": "look",
        "stream": False,
        "images": [i if isinstance(i, str) else b64(i) for i in images],
    }


def _chat(model: str, images: list) -> dict:
    return {
        "model": model,
        "stream": False,
        "messages": [
            {"role": "user", "content": "look", "images": [i if isinstance(i, str) else b64(i) for i in images]}
        ],
    }


def _completions(model: str, images: list) -> dict:
    parts = [{"type": "text", "text": "look"}]
    parts += [{"type": "image_url", "image_url": {"url": i if isinstance(i, str) else data_url(i)}} for i in images]
    return {"model": model, "messages": [{"role": "user", "content": parts}]}


def _responses(model: str, images: list) -> dict:
    parts = [{"type": "input_text", "text": "look"}]
    parts += [{"type": "input_image", "image_url": i if isinstance(i, str) else data_url(i)} for i in images]
    return {"model": model, "input": [{"role": "user", "content": parts}]}


def _messages(model: str, images: list) -> dict:
    blocks = [
        {
            "type": "image",
            "source": {"type": "url", "url": i}
            if isinstance(i, str)
            else {"type": "base64", "media_type": "image/png", "data": b64(i)},
        }
        for i in images
    ]
    return {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "look"}]}],
    }


ROUTES = [
    ("/api/generate", _generate),
    ("/api/chat", _chat),
    ("/v1/chat/completions", _completions),
    ("/v1/responses", _responses),
    ("/v1/messages", _messages),
]


def error_of(path: str, r: httpx.Response) -> str:
    """The error message in the route's own shape (Ollama's, OpenAI's or Anthropic's)."""
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        return body["error"]["message"]
    if path.startswith("/v1/"):
        return body["error"]["message"]
    return body["error"]


def sent_images(openai_fake) -> list[str]:
    """The MIME types of the images the upstream got in the last user turn, in order."""
    content = openai_fake.last().body["messages"][-1]["content"]
    return [p["image_url"]["url"].split(";")[0][5:] for p in content if p.get("type") == "image_url"]


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_urls_and_base64_reach_the_upstream_in_order(server, files, openai_fake, path, body):
    r = httpx.post(server.url + path, json=body("echo", [files.url("jpeg"), PNG, files.url("gif")]), timeout=30)
    assert r.status_code == 200, r.text
    assert sent_images(openai_fake) == ["image/jpeg", "image/png", "image/gif"]


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_too_many_images_is_refused_before_any_download(server, files, path, body):
    hits = files.hits
    r = httpx.post(server.url + path, json=body("echo", [files.url("jpeg")] * 3 + ["not base64!"]), timeout=30)
    assert r.status_code == 400
    assert "too many images: 4" in error_of(path, r) and "--max-images" in error_of(path, r)
    assert files.hits == hits


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_image_bytes_a_request_are_bounded_for_urls(server, files, path, body):
    r = httpx.post(server.url + path, json=body("echo", [files.url("big")]), timeout=30)
    assert r.status_code == 413 and "--max-images-mb" in error_of(path, r)


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_image_bytes_a_request_are_bounded_for_base64(server, files, path, body):
    hits = files.hits
    half = PNG + b"\0" * (MB // 2)
    r = httpx.post(server.url + path, json=body("echo", [half, half, files.url("jpeg")]), timeout=30)
    assert r.status_code == 413 and "--max-images-mb" in error_of(path, r)
    assert files.hits == hits  # refused while decoding, before the download


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_a_model_without_vision_gets_no_images(server, files, path, body):
    hits = files.hits
    r = httpx.post(server.url + path, json=body("tokens-5", [files.url("jpeg")]), timeout=30)
    assert r.status_code == 400 and "no 'vision' capability" in error_of(path, r)
    assert files.hits == hits


def test_count_tokens_counts_downloaded_images(server, files):
    body = _messages("echo", [files.url("jpeg"), PNG])
    del body["max_tokens"]
    r = httpx.post(server.url + "/v1/messages/count_tokens", json=body, timeout=30)
    assert r.status_code == 200
    assert r.json()["input_tokens"] == 4 + 2 * 1600 + 1  # a message, two images, "look"


# -- the engine alone -------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, files):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(models_json("http://127.0.0.1:9/v1")))
    return Registry.load(str(path), env={KEY_VAR: "k"}, cwd=tmp_path)


def test_prepare_checks_the_count_before_decoding(registry):
    req = GenerateRequest(model="echo", prompt="look", images=[b64(PNG), "!!", "!!"])
    with pytest.raises(ImageError, match="too many images: 3"):
        prepare(req, registry, quota=ImageQuota(2, MB))
    with pytest.raises(ImageError, match="image 2 is neither valid base64"):
        prepare(req, registry, quota=ImageQuota(3, MB))


def test_prepare_and_fetch_keep_each_image_in_its_place(registry, files):
    first, second = Message("user", "a"), Message("user", "b")
    req = GenerateRequest(
        model="echo",
        messages=[first, Message("assistant", "x"), second],
        message_images=[(first, files.url("gif")), (first, b64(PNG)), (second, b64(JPEG)), (second, files.url("jpeg"))],
        images=[PNG],
    )
    quota = ImageQuota(5, MB)
    plan = prepare(req, registry, quota=quota)
    assert [i.mime for i in first.images] == ["image/png"] and len(plan.image_urls) == 2
    assert quota.total == 2 * len(PNG) + len(JPEG)
    transport = HttpxTransport()
    try:
        fetch_images(plan, transport)
    finally:
        transport.close()
    assert [i.mime for i in first.images] == ["image/gif", "image/png"]
    assert [i.mime for i in second.images] == ["image/jpeg", "image/jpeg", "image/png"]
    assert plan.call.messages[-1] is second and not plan.image_urls
    assert quota.total == 2 * len(PNG) + 2 * len(JPEG) + len(GIF)
