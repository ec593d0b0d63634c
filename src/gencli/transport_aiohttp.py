"""The server's transport: aiohttp with one shared connection pool per process.

``open(http_request, call)`` is an async context manager yielding a response with
``.status``, ``.headers``, ``await .read()`` and ``async for .iter_bytes()`` — what
:func:`gencli.engine.aexecute` expects. Leaving the context early (an error, or the
task cancelled because the client went away) closes the upstream connection at
once, so the upstream stops generating; a fully read response goes back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from typing import Any, AsyncIterator
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.abc

from gencli.errors import ImageError, UpstreamTimeout, UpstreamUnreachable
from gencli.images import MAX_IMAGE_BYTES
from gencli.providers.base import HttpRequest

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
IMAGE_TIMEOUT = 30.0
MAX_REDIRECTS = 5


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def _reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())[:200]


def public_address(ip: str) -> bool:
    """True when ``ip`` is a global unicast address (not loopback, private, link-local,
    multicast, reserved or unspecified). Image URLs sent to the server may only reach these."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


class _PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """Resolves like the default resolver, then refuses non-public addresses, so a DNS name
    cannot point an image fetch at the server's own network (checked at connect time)."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        infos = await self._inner.resolve(host, port, family)
        good = [i for i in infos if public_address(i["host"])]
        if not good:
            raise OSError(f"{host} resolves to a private or local address; image URLs must be public")
        return good

    async def close(self) -> None:
        await self._inner.close()


class Response:
    __slots__ = ("_r", "call", "url")

    def __init__(self, r: aiohttp.ClientResponse, call, url: str):
        self._r = r
        self.call = call
        self.url = url

    @property
    def status(self) -> int:
        return self._r.status

    @property
    def headers(self):
        return self._r.headers

    async def read(self) -> bytes:
        try:
            return await self._r.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{self.call.name}: {_host(self.url)} stopped sending (read timeout)") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"{self.call.name}: the connection to {_host(self.url)} failed mid-response ({_reason(exc)})"
            ) from None

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        content = self._r.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{self.call.name}: {_host(self.url)} stopped sending (read timeout)") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"{self.call.name}: the connection to {_host(self.url)} failed mid-response ({_reason(exc)})"
            ) from None


class AiohttpTransport:
    """One per process: created at ASGI lifespan startup, closed at shutdown.

    ``allow_private_images`` lets image URLs reach loopback/private addresses (off by
    default: a request must not make the server fetch from its own network).
    """

    def __init__(self, allow_private_images: bool = False):
        self.allow_private_images = allow_private_images
        self.session: aiohttp.ClientSession | None = None
        self._images: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        if self.session is not None:
            return
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            auto_decompress=True,
            trust_env=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        for s in (self.session, self._images):
            if s is not None:
                await s.close()
        self.session = self._images = None

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout | None:
        if seconds is None:
            return None
        t = self._timeouts.get(seconds)
        if t is None:
            t = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=None, connect=min(seconds, CONNECT_TIMEOUT), sock_read=seconds)
        return t

    @contextlib.asynccontextmanager
    async def open(self, req: HttpRequest, call) -> AsyncIterator[Response]:
        if self.session is None:
            await self.start()
        timeout = self._timeout(call.extra.get("timeout") if call.extra else None)
        try:
            if timeout is None:
                r = await self.session.request(req.method, req.url, headers=req.headers, data=req.body,
                                               allow_redirects=False)
            else:
                r = await self.session.request(req.method, req.url, headers=req.headers, data=req.body,
                                               allow_redirects=False, timeout=timeout)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{call.name}: {_host(req.url)} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"{call.name}: cannot reach {_host(req.url)} ({_reason(exc)})") from None
        try:
            yield Response(r, call, req.url)
        except BaseException:
            r.close()  # drop the connection: the upstream sees it close and stops
            raise
        else:
            r.release()  # back to the pool when fully read, else closed

    async def fetch_image(self, url: str) -> bytes:
        """Download an image URL named in a request (public addresses only unless allowed),
        following at most 5 redirects, refusing more than 20 MB."""
        if self._images is None:
            resolver = None if self.allow_private_images else _PublicOnlyResolver()
            self._images = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=16),
                timeout=aiohttp.ClientTimeout(total=IMAGE_TIMEOUT),
                trust_env=False,
            )
        where = f"image {url[:200]}"
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ImageError(f"{where}: only http(s) URLs can be fetched")
            if not self.allow_private_images:
                host = parts.hostname
                try:
                    ipaddress.ip_address(host.split("%", 1)[0])
                    literal = True
                except ValueError:
                    literal = False
                if literal and not public_address(host):
                    raise ImageError(f"{where}: private or local addresses are not fetched")
            try:
                async with self._images.get(url, allow_redirects=False) as r:
                    if r.status in (301, 302, 303, 307, 308) and "Location" in r.headers:
                        url = urljoin(url, r.headers["Location"])
                        continue
                    if r.status >= 400:
                        raise ImageError(f"{where}: the server answered HTTP {r.status}")
                    if r.content_length is not None and r.content_length > MAX_IMAGE_BYTES:
                        raise ImageError(f"{where} is over the 20 MB limit")
                    data = bytearray()
                    async for chunk in r.content.iter_any():
                        data += chunk
                        if len(data) > MAX_IMAGE_BYTES:
                            raise ImageError(f"{where} is over the 20 MB limit")
                    return bytes(data)
            except ImageError:
                raise
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ImageError(f"{where}: cannot download it ({_reason(exc)})") from None
        raise ImageError(f"{where}: too many redirects")

    async def run_in_thread(self, adapter, call) -> AsyncIterator[list]:
        """Iterate an in-process adapter's blocking ``adapter.run(call)`` generator in a
        worker thread. Stopping early (cancellation) tells the thread to stop at its next step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone
                stop.set()

        def work() -> None:
            try:
                for events in gen:
                    if stop.is_set():
                        break
                    put((0, events))
            except BaseException as exc:  # handed to the event loop
                put((1, exc))
            else:
                put((2, None))
            finally:
                gen.close()

        future = loop.run_in_executor(None, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == 0:
                    yield value
                elif kind == 1:
                    raise value
        # Started on the loop: a local model's full queue fails here at once (503), and its
        # turn is awaited here without holding a worker thread (gencli.local_model.LocalRun).
        gen = adapter.run(call)
        ready = getattr(gen, "ready", None)
        if ready is not None:
            try:
                await ready()
            except BaseException:
                gen.close()
                raise

                else:
                    break
        finally:
            stop.set()
            if future.done():
                future.exception()
            cancel = getattr(gen, "cancel", None)
            if cancel is not None:  # thread-safe: stops before the next token
                cancel()
