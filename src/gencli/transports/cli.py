"""The CLI's transport: synchronous httpx. Maps transport failures to typed errors."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

# httpx's __init__ imports its optional command-line client (httpx._main: rich, pygments) when
# those happen to be installed; gencli never uses it and it about doubles generate's start-up.
# A None entry in sys.modules makes that import fail, and httpx then defines a stub instead.
# (An httpx internal: tests/test_terminal.py fails if Rich or Pygments come back on the piped
# path, and every CLI test fails if httpx stops guarding that import.)
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

from gencli.core.errors import ImageError, UpstreamTimeout, UpstreamUnreachable
from gencli.core.images import MAX_IMAGE_BYTES
from gencli.providers.base import Call, HttpRequest, ImageFetcher, SyncTransport

if TYPE_CHECKING:
    import ssl

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=10.0)


class Response:
    __slots__ = ("_r",)

    def __init__(self, r: httpx.Response):
        self._r = r

    @property
    def status(self) -> int:
        return self._r.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._r.headers

    def read(self) -> bytes:
        return self._r.read()

    def iter_bytes(self) -> Iterator[bytes]:
        return self._r.iter_raw()


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] or url


class HttpxTransport:
    """One client per CLI run; ``open`` sends an HttpRequest (gencli.providers.base.SyncTransport)
    and ``fetch_image`` downloads an image URL (ImageFetcher).

    ``timeout`` is the read timeout when a call has none of its own (None: 300 s).
    Servers are verified against gencli's one trust store (:mod:`gencli.transports.trust`: certifi's
    roots, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), the same as ``gencli serve``'s client.
    ``tls=False`` is for a plain-http upstream (e.g. a local server): the client is made
    with ``verify=False``, so no CA bundle is loaded (about 50 ms of start-up; httpx still
    makes an SSL context). Only for an http:// base URL: an https:// upstream would then go
    unverified (redirects are not followed)."""

    def __init__(self, timeout: float | None = None, tls: bool = True):
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.client = httpx.Client(
            timeout=self.timeout, follow_redirects=False, trust_env=True, verify=_trusted() if tls else False
        )
        self._fetcher: httpx.Client | None = None

    def close(self) -> None:
        self.client.close()
        if self._fetcher is not None:
            self._fetcher.close()

    @contextlib.contextmanager
    def open(self, req: HttpRequest, call: Call) -> Iterator[Response]:
        seconds = call.timeout  # --timeout, the model's, or the settings' (resolved by engine.prepare)
        timeout = httpx.Timeout(seconds, connect=min(seconds, 10.0)) if seconds else self.timeout
        request = self.client.build_request(req.method, req.url, headers=req.headers, content=req.body, timeout=timeout)
        try:
            r = self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{call.name}: {_host(req.url)} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(f"{call.name}: cannot reach {_host(req.url)} ({_reason(exc, call)})") from None
        try:
            yield _Guarded(r, call, req.url)
        finally:
            r.close()

    def fetch_image(self, url: str) -> bytes:
        """Download an image URL (the CLI may read any address the user names)."""
        if self._fetcher is None:
            self._fetcher = httpx.Client(timeout=30.0, follow_redirects=True, trust_env=True, verify=_trusted())
        try:
            with self._fetcher.stream("GET", url) as r:
                if r.status_code >= 400:
                    raise ImageError(f"image {url}: the server answered HTTP {r.status_code}")
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise ImageError(f"image {url} is over the 20 MB limit")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise ImageError(f"image {url}: cannot download it ({_reason(exc)})") from None


class _Guarded(Response):
    """A response whose body reads map httpx errors to typed errors."""

    __slots__ = ("call", "url")

    def __init__(self, r: httpx.Response, call: Call, url: str):
        super().__init__(r)
        self.call = call
        self.url = url

    def read(self) -> bytes:
        with self._errors():
            return self._r.read()

    def iter_bytes(self) -> Iterator[bytes]:
        with self._errors():
            yield from self._r.iter_raw()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{self.call.name}: {_host(self.url)} stopped sending (read timeout)") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(
                f"{self.call.name}: the connection to {_host(self.url)} failed mid-response ({_reason(exc, self.call)})"
            ) from None


def _trusted() -> ssl.SSLContext:
    from gencli.transports import trust

    return trust.context()


def _reason(exc: Exception, call: Call | None = None) -> str:
    from gencli.providers.common import call_secrets, scrub

    text = str(exc) or exc.__class__.__name__  # a URL in the message may carry a key
    text = scrub(text, call.api_key, call_secrets(call)) if call is not None else scrub(text)
    return text if len(text) <= 200 else text[:197] + "..."


if TYPE_CHECKING:  # mypy checks that the class is what the engine takes
    _check: tuple[type[SyncTransport], type[ImageFetcher]] = (HttpxTransport, HttpxTransport)
