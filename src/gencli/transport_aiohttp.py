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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from gencli.errors import UpstreamTimeout, UpstreamUnreachable
from gencli.providers.base import AsyncImageFetcher, AsyncTransport, Call, HttpRequest

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def _reason(exc: BaseException) -> str:
    from gencli.providers.common import scrub

    text = scrub(str(exc) or exc.__class__.__name__)  # a URL in the message may carry a key
    return text if len(text) <= 200 else text[:197] + "..."


class Response:
    __slots__ = ("_r", "call", "url")

    def __init__(self, r: aiohttp.ClientResponse, call: Call, url: str):
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
    """One per process: created at ASGI lifespan startup, closed at shutdown. ``open`` sends
    an HttpRequest (gencli.providers.base.AsyncTransport), ``fetch_image`` downloads an
    image URL (AsyncImageFetcher).

    ``allow_private_images`` lets image URLs reach loopback/private addresses (off by
    default: a request must not make the server fetch from its own network).
    """

    def __init__(self, allow_private_images: bool = False, image_fetches: int = 8,
                 image_memory: int = 256 * 1024 * 1024):
        from gencli.netguard import ImageBudget

        self.allow_private_images = allow_private_images
        self.images = ImageBudget(image_fetches, image_memory)  # process-wide (one transport per process)
        self.session: aiohttp.ClientSession | None = None
        self._images: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._proxies: dict[str, tuple[str | None, aiohttp.BasicAuth | None]] = {}

    async def start(self) -> None:
        if self.session is not None:
            return
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            auto_decompress=True,
            # Not trust_env: aiohttp would then re-read the proxy variables and ~/.netrc in a
            # thread on every request (the top cost in a profile); _proxy() does it once per URL.
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    def _proxy(self, url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """HTTP(S)_PROXY / NO_PROXY for an upstream URL, looked up once and cached."""
        found = self._proxies.get(url)
        if found is None:
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            try:
                proxy, auth = get_env_proxy_for_url(URL(url))
                found = (str(proxy), auth)
            except LookupError:
                found = (None, None)
            if len(self._proxies) > 256:
                self._proxies.clear()
            self._proxies[url] = found
        return found

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
    async def open(self, req: HttpRequest, call: Call) -> AsyncIterator[Response]:
        if self.session is None:
            await self.start()
        assert self.session is not None
        timeout = self._timeout(call.timeout)
        proxy, proxy_auth = self._proxy(req.url)
        try:
            if timeout is None:
                r = await self.session.request(req.method, req.url, headers=req.headers, data=req.body,
                                               allow_redirects=False, proxy=proxy, proxy_auth=proxy_auth)
            else:
                r = await self.session.request(req.method, req.url, headers=req.headers, data=req.body,
                                               allow_redirects=False, timeout=timeout, proxy=proxy,
                                               proxy_auth=proxy_auth)
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

    async def fetch_image(self, url: str, quota=None) -> bytes:
        """Download an image URL named in a request: public addresses only unless allowed,
        every redirect re-checked (at most 3), 20 MB and 30 s at most (gencli.netguard);
        at most ``image_fetches`` at once in this process, the bytes counted by ``quota``
        (the request's :class:`gencli.images.ImageQuota`)."""
        from gencli import netguard

        if self._images is None:
            self._images = netguard.image_session(self.allow_private_images)
        self.images.charge(0)  # a spent budget fails before a connection is made (and after the wait)
        async with self.images.slot():
            self.images.charge(0)
            return await netguard.fetch_image(self._images, url, allow_private=self.allow_private_images,
                                              quota=quota)


if TYPE_CHECKING:  # mypy checks that the class is what the engine takes
    _check: tuple[type[AsyncTransport], type[AsyncImageFetcher]] = (AiohttpTransport, AiohttpTransport)
