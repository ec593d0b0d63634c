"""The server's transport: gencli's own HTTP/1.1 client (:mod:`gencli.transports.httpclient`), one
connection pool per process.

``open(http_request, call)`` is an async context manager yielding a response with
``.status``, ``.headers``, ``await .read()`` and ``async for .iter_bytes()`` — what
:func:`gencli.engine.aexecute` expects. Leaving the context early (an error, or the
task cancelled because the client went away) closes the upstream connection at
once, so the upstream stops generating; a fully read response goes back to the pool.
The pool closes its idle connections once the server has had no upstream request in
progress for a moment, then calls ``on_quiet`` (the server trims its memory).

Image URLs named in requests are fetched through the SSRF guard (:mod:`gencli.transports.address_guard`:
the same client, in a pool of its own whose resolver checks every address it connects to;
made when the first image URL comes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gencli.core.images import ImageQuota

from gencli.core.errors import UpstreamTimeout, UpstreamUnreachable
from gencli.providers.base import AsyncImageFetcher, AsyncTransport, Call, HttpRequest
from gencli.transports.httpclient import ConnectTimeout, HttpClientError, Pool, ReadTimeout, Response

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def _reason(exc: BaseException, call: Call) -> str:
    from gencli.providers.common import call_secrets, scrub

    text = scrub(str(exc) or exc.__class__.__name__, call.api_key, call_secrets(call))  # a URL may carry a key
    return text if len(text) <= 200 else text[:197] + "..."


class _Open:
    """``async with transport.open(request, call) as response``."""

    __slots__ = ("transport", "req", "call", "resp")

    def __init__(self, transport: ServerTransport, req: HttpRequest, call: Call):
        self.transport = transport
        self.req = req
        self.call = call
        self.resp: Response | None = None

    async def __aenter__(self) -> Response:
        req, call = self.req, self.call
        pool = self.transport.pool
        if pool is None:
            pool = await self.transport.start()
        seconds = call.timeout
        try:
            if seconds is None:
                r = await pool.request(req.method, req.url, req.headers, req.body)
            else:
                r = await pool.request(
                    req.method,
                    req.url,
                    req.headers,
                    req.body,
                    read_timeout=seconds,
                    connect_timeout=min(seconds, CONNECT_TIMEOUT),
                )
        except (ConnectTimeout, ReadTimeout):
            raise UpstreamTimeout(f"{call.name}: {_host(req.url)} did not answer in time") from None
        except (HttpClientError, ValueError) as exc:
            raise UpstreamUnreachable(f"{call.name}: cannot reach {_host(req.url)} ({_reason(exc, call)})") from None
        r.errors = self._mid_response
        self.resp = r
        return r

    def _mid_response(self, exc: HttpClientError) -> BaseException:
        url, name = self.req.url, self.call.name
        if isinstance(exc, ReadTimeout):
            return UpstreamTimeout(f"{name}: {_host(url)} stopped sending (read timeout)")
        return UpstreamUnreachable(
            f"{name}: the connection to {_host(url)} failed mid-response ({_reason(exc, self.call)})"
        )

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        # back to the pool when read to its end; else closed (the upstream sees it and stops)
        assert self.resp is not None
        self.resp.close()


class ServerTransport:
    """One per process: started at ASGI lifespan startup, closed at shutdown. ``open`` sends
    an HttpRequest (gencli.providers.base.AsyncTransport), ``fetch_image`` downloads an
    image URL (AsyncImageFetcher).

    ``allow_private_images`` lets image URLs reach loopback/private addresses (off by
    default: a request must not make the server fetch from its own network).
    ``on_quiet``: called when the pool went quiet and closed its idle connections.
    """

    def __init__(
        self,
        allow_private_images: bool = False,
        image_fetches: int = 8,
        image_memory: int = 256 * 1024 * 1024,
        on_quiet: Callable[[], None] | None = None,
    ):
        from gencli.transports.address_guard import ImageBudget

        self.allow_private_images = allow_private_images
        self.images = ImageBudget(image_fetches, image_memory)  # process-wide (one transport per process)
        self.pool: Pool | None = None
        self.on_quiet = on_quiet
        self._images: Pool | None = None  # the image fetcher's own pool (guarded resolver), made on the first image URL

    async def start(self) -> Pool:
        if self.pool is None:
            self.pool = Pool(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, on_quiet=self._quiet)
        return self.pool

    def _quiet(self) -> None:
        if self.on_quiet is not None:
            self.on_quiet()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._images is not None:
            await self._images.close()
            self._images = None

    def open(self, req: HttpRequest, call: Call) -> _Open:
        return _Open(self, req, call)

    async def fetch_image(self, url: str, quota: ImageQuota | None = None) -> bytes:
        """Download an image URL named in a request: public addresses only unless allowed,
        every redirect re-checked (at most 3), 20 MB and 30 s at most (gencli.transports.address_guard);
        at most ``image_fetches`` at once in this process, the bytes counted by ``quota``
        (the request's :class:`gencli.core.images.ImageQuota`)."""
        from gencli.transports import address_guard

        if self._images is None:
            self._images = address_guard.image_pool(self.allow_private_images)
        self.images.charge(0)  # a spent budget fails before a connection is made (and after the wait)
        async with self.images.slot():
            self.images.charge(0)
            return await address_guard.fetch_image(
                self._images, url, allow_private=self.allow_private_images, quota=quota
            )


if TYPE_CHECKING:  # mypy checks that the class is what the engine takes
    _check: tuple[type[AsyncTransport], type[AsyncImageFetcher]] = (ServerTransport, ServerTransport)
