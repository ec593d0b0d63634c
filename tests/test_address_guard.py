"""Image URLs without SSRF (gencli.transports.address_guard).

The address guard is tested by its decision (no connection is ever made to a
non-loopback address). Fetches go to a local image server on 127.0.0.1 through the
real ``gencli serve`` subprocess: refused by default (loopback), served with
``--allow-private-images``, with every redirect hop re-checked, the size capped and
non-image bytes refused. The time cap is checked on ``address_guard.fetch_image`` itself.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading

import httpx
import pytest
from aiohttp import web

from gencli.core.errors import ImageError
from gencli.transports import address_guard
from tests.server_fixture import ServeProcess, models_json

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
MB = 1024 * 1024


# -- the decision ------------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "private"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "shared address space"),
    ("192.0.2.1", "private"),
    ("198.51.100.7", "private"),
    ("203.0.113.9", "private"),
    ("198.18.0.1", "private"),
    ("2001:db8::1", "private"),
    ("fec0::1", "site-local"),
    # IPv6 forms that carry an IPv4 address
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.1.2.3", "private"),
    ("::127.0.0.1", "reserved"),
    ("2002:7f00:0001::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
    ("2002:c0a8:0101::", "private"),  # 6to4 of 192.168.1.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b:1::1", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
    ("not-an-ip", "not an IP address"),
    ("", "not an IP address"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8",
    "2002:0808:0808::1",
    "64:ff9b::808:808",
    "172.32.0.1",
    "100.128.0.1",
    "11.0.0.1",
    "192.169.0.1",
]


@pytest.mark.parametrize("ip,kind", REFUSED)
def test_refused_addresses(ip, kind):
    problem = address_guard.address_problem(ip)
    assert problem is not None, ip
    assert problem.startswith(kind), (ip, problem)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses(ip):
    assert address_guard.address_problem(ip) is None
    assert address_guard.address_problem(ip, allow_private=True) is None


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::1",
        "100.64.0.1",
    ],
)
def test_allow_private_lets_private_through(ip):
    assert address_guard.address_problem(ip) is not None
    assert address_guard.address_problem(ip, allow_private=True) is None


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1"])
def test_allow_private_still_refuses_the_rest(ip):
    assert address_guard.address_problem(ip, allow_private=True) is not None


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://[fe80::1%25eth0]/x.png", "link-local"),
        ("ftp://example.com/x.png", "only http(s)"),
        ("file:///etc/passwd", "only http(s)"),
        ("http:///x.png", "only http(s)"),
        ("http://example.com:99999/x.png", "not a valid URL"),
    ],
)
def test_check_url_refuses_before_connecting(url, message):
    with pytest.raises(ImageError, match=re.escape(message)):
        address_guard.check_url(url, "image", allow_private=False)


def test_resolver_decides_on_resolved_names():
    """localhost resolves (from /etc/hosts) to loopback: refused, unless allowed."""

    async def go(allow):
        return await address_guard.guarded_resolver(allow)("localhost", 80)

    with pytest.raises(address_guard.Refused, match="loopback"):
        asyncio.run(go(False))
    hosts = asyncio.run(go(True))
    assert hosts and all(h in ("127.0.0.1", "::1") for h in hosts)


def answers(table: dict[str, list[str]], calls: list[str]):
    """A getaddrinfo for the resolver that answers from ``table`` (no DNS is asked): a name
    that resolves to a private address without one being reachable from the test."""

    async def lookup(host, port, type=0, **_):
        calls.append(host)
        out = []
        for ip in table[host]:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    return lookup


@pytest.mark.parametrize(
    "ips,kind",
    [(["10.0.0.5"], "private"), (["93.184.215.14", "169.254.169.254"], "link-local"), (["::1"], "loopback")],
)
def test_a_name_resolving_to_a_private_address_is_refused_before_any_connection(monkeypatch, ips, kind):
    """Decided on the resolver's answer: refused with no connection attempted (every
    connection the loop would make is recorded, and any is a failure)."""
    connects: list[object] = []

    async def go():
        loop = asyncio.get_running_loop()

        async def no_connection(*args, **kwargs):  # pragma: no cover - reached only if the guard fails
            connects.append(args[1:3])
            raise OSError("the test makes no connection")

        monkeypatch.setattr(loop, "create_connection", no_connection)
        pool = address_guard.image_pool(lookup=answers({"images.example": ips}, []))
        try:
            return await address_guard.fetch_image(pool, "http://images.example/x.png")
        finally:
            await pool.close()

    with pytest.raises(ImageError, match=f"images.example resolves to .*a {kind} address"):
        asyncio.run(go())
    assert connects == []


def test_the_connection_goes_to_the_checked_address_only(images, monkeypatch):
    """The client connects to the address the guard checked, not to the name again: a
    second lookup (a DNS rebinding) would answer a private address, and the connection
    still goes to 127.0.0.1, the one answer checked (loopback allowed here), with the
    URL's host in the Host header."""
    calls: list[str] = []
    table = {"images.example": ["127.0.0.1"]}
    lookup = answers(table, calls)
    connected: list[tuple[object, object]] = []

    async def go():
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def recorded(factory, host=None, port=None, **kwargs):
            connected.append((host, port))
            assert host == "127.0.0.1"  # loopback only, whatever the guard decided
            table["images.example"] = ["10.9.9.9"]  # what a rebinding DNS would answer next
            return await real(factory, host, port, **kwargs)

        monkeypatch.setattr(loop, "create_connection", recorded)
        pool = address_guard.image_pool(allow_private=True, lookup=lookup)
        try:
            first = await address_guard.fetch_image(
                pool, f"http://images.example:{images.port}/img.png", allow_private=True
            )
            again = await address_guard.fetch_image(
                pool, f"http://images.example:{images.port}/img.png", allow_private=True
            )
            return first, again
        finally:
            await pool.close()

    before = len(images.hits)
    first, again = asyncio.run(go())
    assert first == PNG and again == PNG
    assert connected == [("127.0.0.1", images.port)]  # one connection, kept alive for the second fetch
    assert calls == ["images.example"]
    assert images.hits[before:] == ["/img.png", "/img.png"]
    assert images.hosts[-1] == f"images.example:{images.port}"


# -- a local image server -----------------------------------------------------------------------


class ImageServer:
    """Serves images, redirects, oversized and non-image bodies on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = 0
        self.big_sent = 0
        self.hits: list[str] = []
        self.hosts: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    async def png(self, request):
        self.hits.append(request.path)
        self.hosts.append(request.headers.get("Host"))
        return web.Response(body=PNG, content_type="image/png")

    async def text(self, request):
        self.hits.append(request.path)
        return web.Response(text="<html>not an image</html>" * 10, content_type="image/png")

    async def redirect(self, request):
        """/redirect/N -> /redirect/N-1 ... -> /img.png"""
        self.hits.append(request.path)
        n = int(request.match_info["n"])
        raise web.HTTPFound("/img.png" if n <= 1 else f"/redirect/{n - 1}")

    async def goto(self, request):
        self.hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    async def big(self, request):
        """64 MB of PNG-looking bytes, chunked (no Content-Length)."""
        self.hits.append(request.path)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = PNG + b"\x00" * (MB - len(PNG))
        try:
            for _ in range(64):
                await resp.write(chunk)
                self.big_sent += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            raise
        return resp

    async def declared(self, request):
        """A Content-Length of 30 MB: refused from the header alone."""
        self.hits.append(request.path)
        resp = web.StreamResponse(headers={"Content-Length": str(30 * MB), "Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(PNG)
        await asyncio.sleep(2)
        return resp

    async def slow(self, request):
        self.hits.append(request.path)
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(PNG[:12])
        for _ in range(100):
            await asyncio.sleep(0.1)
            await resp.write(b"\x00")
        return resp

    def start(self) -> ImageServer:
        app = web.Application()
        app.router.add_get("/img.png", self.png)
        app.router.add_get("/page.html", self.text)
        app.router.add_get("/redirect/{n}", self.redirect)
        app.router.add_get("/goto", self.goto)
        app.router.add_get("/big.png", self.big)
        app.router.add_get("/declared.png", self.declared)
        app.router.add_get("/slow.png", self.slow)
        ready = threading.Event()

        def main():
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve():
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
                await self._runner.setup()
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
                await web.SockSite(self._runner, sock).start()

            loop.run_until_complete(serve())
            ready.set()
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def images():
    s = ImageServer().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict(openai_fake, tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("strict"), models_json(openai_fake.base_url))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def lenient(openai_fake, tmp_path_factory):
    s = ServeProcess(
        tmp_path_factory.mktemp("lenient"), models_json(openai_fake.base_url), args=["--allow-private-images"]
    )
    yield s
    s.stop()


def generate(server: ServeProcess, image: str) -> httpx.Response:
    return httpx.post(
        server.url + "/api/generate", json={"model": "echo", "prompt": "describe", "images": [image]}, timeout=60
    )


def chat_openai(server: ServeProcess, image: str) -> httpx.Response:
    body = {
        "model": "echo",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": image}}],
            }
        ],
    }
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def sent_image(openai_fake) -> bytes:
    content = openai_fake.last().body["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    assert len(urls) == 1
    return base64.b64decode(urls[0].split(",", 1)[1])


# -- through the server ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.1", "2130706433"])
def test_server_refuses_loopback_by_default(strict, images, host):
    before = len(images.hits)
    r = generate(strict, images.url("/img.png", host))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "\n" not in err
    assert "image" in err and ("loopback" in err or "not a valid URL" in err), err
    assert len(images.hits) == before  # never connected


def test_server_refuses_metadata_address_on_all_routes(strict):
    for r in (
        generate(strict, "http://169.254.169.254/latest/meta-data/iam/"),
        chat_openai(strict, "http://169.254.169.254/latest/meta-data/iam/"),
    ):
        assert r.status_code == 400, r.text
        assert "link-local" in r.text
    r = httpx.post(
        strict.url + "/api/chat",
        json={
            "model": "echo",
            "messages": [{"role": "user", "content": "x", "images": ["http://[::ffff:a9fe:a9fe]/"]}],
        },
        timeout=30,
    )
    assert r.status_code == 400 and "link-local" in r.text, r.text


def test_server_never_reads_local_paths(strict, tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    for image in (str(path), "file://" + str(path), "/etc/passwd"):
        r = generate(strict, image)
        assert r.status_code == 400, r.text
        assert "image 1" in r.json()["error"]


def test_allowed_private_image_is_fetched(lenient, images, openai_fake):
    r = generate(lenient, images.url("/img.png"))
    assert r.status_code == 200, r.text
    assert sent_image(openai_fake) == PNG
    r = chat_openai(lenient, images.url("/img.png", "localhost"))
    assert r.status_code == 200, r.text
    assert sent_image(openai_fake) == PNG


def test_redirects_followed_up_to_three(lenient, images, openai_fake):
    r = generate(lenient, images.url("/redirect/3"))
    assert r.status_code == 200, r.text
    assert sent_image(openai_fake) == PNG
    r = generate(lenient, images.url("/redirect/4"))
    assert r.status_code == 400
    assert "more than 3 redirects" in r.json()["error"]


def test_every_redirect_hop_is_rechecked(lenient, strict, images):
    # even when private addresses are allowed, a hop to 0.0.0.0 (which Linux would connect
    # to loopback) or to a non-http scheme is refused at that hop
    before = len(images.hits)
    target = images.url("/img.png", "0.0.0.0")
    r = generate(lenient, images.url(f"/goto?to={target}"))
    assert r.status_code == 400, r.text
    assert "unspecified" in r.json()["error"]
    assert images.hits[before:] == ["/goto"]  # the second hop never happened
    r = generate(lenient, images.url("/goto?to=file:///etc/passwd"))
    assert r.status_code == 400 and "only http(s)" in r.json()["error"]
    # a hop to the metadata address is refused without connecting
    r = generate(lenient, images.url("/goto?to=http://[ff02::1]/x.png"))
    assert r.status_code == 400 and "multicast" in r.json()["error"]
    # the strict server refuses the first hop already
    r = generate(strict, images.url(f"/goto?to={target}"))
    assert r.status_code == 400 and "loopback" in r.json()["error"]


def test_size_cap_streamed_and_declared(lenient, images):
    r = generate(lenient, images.url("/big.png"))
    assert r.status_code == 400, r.text
    assert "20 MB" in r.json()["error"]
    assert images.big_sent < 40 * MB  # stopped early, not read to the end (64 MB)
    r = generate(lenient, images.url("/declared.png"))
    assert r.status_code == 400, r.text
    assert "30.0 MB; the limit is 20 MB" in r.json()["error"]
    assert r.elapsed.total_seconds() < 1.5  # refused from the header, not after the body


def test_non_image_bytes_refused(lenient, images):
    r = generate(lenient, images.url("/page.html"))
    assert r.status_code == 400, r.text
    assert "is not an image" in r.json()["error"]
    r = generate(lenient, images.url("/missing.png"))
    assert r.status_code == 400 and "HTTP 404" in r.json()["error"]


def test_server_keeps_serving(lenient, strict):
    for s in (lenient, strict):
        r = httpx.post(s.url + "/api/generate", json={"model": "echo", "prompt": "hi"}, timeout=30)
        assert r.status_code == 200 and "hi" in r.json()["response"]


# -- the time cap (in-process, on the real function) --------------------------------------------


def test_total_time_cap(images):
    async def go():
        pool = address_guard.image_pool(allow_private=True)
        try:
            return await address_guard.fetch_image(pool, images.url("/slow.png"), allow_private=True, timeout=0.5)
        finally:
            await pool.close()

    with pytest.raises(ImageError, match=r"took more than 0.5 s"):
        asyncio.run(go())


def test_fetch_refuses_loopback_without_allow(images):
    async def go():
        pool = address_guard.image_pool(allow_private=False)
        try:
            return await address_guard.fetch_image(pool, images.url("/img.png", "localhost"))
        finally:
            await pool.close()

    before = len(images.hits)
    with pytest.raises(ImageError, match="loopback"):
        asyncio.run(go())
    assert len(images.hits) == before


@pytest.mark.parametrize("host", ["a..example", "x" * 70 + ".example"])
def test_a_host_name_idna_cannot_encode_is_an_image_error(host):
    """An empty label or one over 63 characters fails in the resolver's IDNA encoding, before
    any lookup: a 400-class ImageError naming it, not a 500 (found by the fuzz on count_tokens)."""

    async def go():
        pool = address_guard.image_pool(allow_private=False)
        try:
            return await address_guard.fetch_image(pool, f"http://{host}/x.png")
        finally:
            await pool.close()

    with pytest.raises(ImageError, match="not a valid host name"):
        asyncio.run(go())
