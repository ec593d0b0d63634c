"""Image URLs sent to the server, fetched without SSRF.

A request may name an http(s) image URL; the server downloads it. Without care that
lets anyone who can reach the server make it fetch from its own network: loopback
services, the LAN, a cloud's metadata endpoint (169.254.169.254). So:

- :func:`address_problem` decides, for one IP address, whether it may be fetched:
  only global unicast addresses may. Loopback, private, link-local, shared (CGNAT),
  multicast, reserved, unspecified and documentation addresses are refused, also when
  wrapped in an IPv6 form (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, 6to4
  ``2002::/16``, NAT64 ``64:ff9b::/96``, Teredo).
- :func:`guarded_resolver` resolves host names itself (``getaddrinfo`` on the loop)
  and refuses a name if any of its addresses is refused. It is the ``resolve`` hook of
  the image fetcher's own HTTP client (:class:`gencli.transports.httpclient.Pool`), which connects
  only to the addresses the hook returns, so the address checked is the address
  connected to: a DNS answer that changes between a check and the connection
  (rebinding) cannot slip a private address in. Host name, TLS SNI and the Host header
  stay the URL's. No proxy from the environment is used for images.
- :func:`fetch_image` follows redirects itself (at most 3), checking every hop, caps
  the size (Content-Length first, then while streaming, stopping early) and the total
  time, and checks the first bytes are an image before reading the rest.

``allow_private=True`` (``gencli serve --allow-private-images``) lets loopback,
private and link-local addresses through, for people whose images live on their own
network; multicast, broadcast and unspecified addresses stay refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from gencli.core.budget import MemoryBudget
from gencli.core.errors import ImageError
from gencli.core.images import MAX_IMAGE_BYTES, sniff
from gencli.transports.httpclient import ConnectError, ConnectTimeout, HttpClientError, Pool, ReadTimeout, Resolver

if TYPE_CHECKING:
    from gencli.core.images import ImageQuota

# getaddrinfo as the event loop has it: (host, port, *, type=...) -> [(family, type, proto, name, sockaddr)]
Lookup = Callable[..., Awaitable[list[tuple[Any, ...]]]]
IMAGE_HEADERS = {"User-Agent": "gencli-image-fetch", "Accept": "image/*"}
MAX_REDIRECTS = 3
IMAGE_TIMEOUT = 30.0  # seconds for the whole fetch, redirects included
CONNECT_TIMEOUT = 10.0
REDIRECTS = (301, 302, 303, 307, 308)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
# categories a user may opt into with allow_private
_PRIVATE_KINDS = frozenset({"loopback", "private", "link-local", "shared address space", "site-local", "unique-local"})


def _embedded(addr: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address an IPv6 form carries (mapped, compatible, 6to4,
    NAT64, Teredo), so that a wrapped private address is judged as what it reaches."""
    if isinstance(addr, ipaddress.IPv6Address):
        # these wrappers are pure translations: the IPv4 address inside is what is reached
        if addr.ipv4_mapped is not None:
            return [addr.ipv4_mapped]
        if addr in _NAT64:
            return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
        out: list[IPAddress] = [addr]
        if addr.sixtofour is not None:
            out.append(addr.sixtofour)
        if addr.teredo is not None:
            out.extend(addr.teredo)
        if int(addr) >> 32 == 0 and int(addr) > 0xFFFF:  # IPv4-compatible ::a.b.c.d (deprecated)
            out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        return out
    return [addr]


def _kind(addr: IPAddress) -> str | None:
    """Why a single (unwrapped) address is not a public unicast one, or None if it is."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_multicast:
        return "multicast"
    if addr == _BROADCAST:
        return "broadcast"
    if addr.is_link_local:
        return "link-local"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "shared address space"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_site_local:
            return "site-local"
        if addr in ipaddress.IPv6Network("fc00::/7"):
            return "unique-local"
        if addr in _NAT64_LOCAL:
            return "private"
    if addr.is_private:
        return "private" if not addr.is_reserved else "reserved"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "reserved"
    return None


def address_problem(ip: str | IPAddress, allow_private: bool = False) -> str | None:
    """None when an image may be fetched from ``ip``; else what the address is
    ("loopback", "private", "link-local", "multicast", "reserved", ...)."""
    if isinstance(ip, str):
        try:
            addr: IPAddress = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return "not an IP address"
    else:
        addr = ip
    for a in _embedded(addr):
        kind = _kind(a)
        if kind is None:
            continue
        if allow_private and kind in _PRIVATE_KINDS:
            continue
        if a is not addr:
            return f"{kind} (inside {addr})"
        return kind
    return None


class Refused(ConnectError):
    """A host whose address may not be fetched (raised by the resolver, before any connection)."""


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _refusal(host: str, ip: str, problem: str) -> Refused:
    return Refused(
        f"{host} resolves to {ip}, a {problem} address; the server fetches image URLs from public "
        f"addresses only (gencli serve --allow-private-images allows private ones)"
    )


def guarded_resolver(allow_private: bool = False, lookup: Lookup | None = None) -> Resolver:
    """The ``resolve`` hook of the image client: a host name to the addresses to connect to,
    each checked by :func:`address_problem`; a name with any refused address is refused whole
    (a mixed answer is a rebinding attempt). ``lookup``: the loop's ``getaddrinfo`` unless given."""

    async def resolve(host: str, port: int) -> list[str]:
        addr = _literal(host)
        if addr is not None:  # an IP address in the URL: checked as it is
            problem = address_problem(addr, allow_private)
            if problem is not None:
                raise _refusal(host, host, problem)
            return [host]
        find = lookup or asyncio.get_running_loop().getaddrinfo
        try:
            infos = await find(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {host} ({exc.strerror})") from None
        out: list[str] = []
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            problem = address_problem(ip, allow_private)
            if problem is not None:
                raise _refusal(host, ip, problem)
            if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
                continue  # scoped (link-local) IPv6: only reachable with allow_private; skip
            if ip not in out:
                out.append(ip)
        if not out:
            raise ConnectError(f"cannot resolve {host} (no usable address)")
        return out

    return resolve


def image_pool(allow_private: bool = False, lookup: Lookup | None = None) -> Pool:
    """The HTTP client of image fetches (in a running loop): gencli's own client with the
    guarded resolver, no proxy from the environment, no cookies, 10 s to connect and per read."""
    return Pool(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=CONNECT_TIMEOUT,
        trust_env=False,
        resolve=guarded_resolver(allow_private, lookup),
    )


def url_problem(url: str, allow_private: bool) -> tuple[str, bool] | None:
    """What can be refused before connecting, or None: a URL that does not parse, a scheme
    other than http(s), no host, a literal IP address that is not public (names are checked by
    the resolver, as they resolve). The text, and whether the address is what was refused
    (the caller then says how to allow it)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL", False
    if parts.scheme.lower() not in ("http", "https") or not host:
        return "only http(s) URLs can be fetched", False
    addr = _literal(host)
    problem = address_problem(addr, allow_private) if addr is not None else None
    if problem is not None:
        return f"{host} is a {problem} address", True
    return None


def check_url(url: str, where: str, allow_private: bool) -> None:
    """An image URL refused before connecting (:func:`url_problem`) is an ImageError."""
    found = url_problem(url, allow_private)
    if found is not None:
        text, address = found
        if address:
            text += (
                "; the server fetches image URLs from public addresses only "
                "(gencli serve --allow-private-images allows private ones)"
            )
        raise ImageError(f"{where}: {text}")


def _short(url: str) -> str:
    url = url.split("#", 1)[0]
    return url if len(url) <= 120 else url[:117] + "..."


class ImageBudget(MemoryBudget):
    """Process-wide bounds on image downloads (``gencli serve``): at most ``fetches`` at
    once (more wait their turn), and at most ``memory`` bytes of downloaded images held at
    once, counting downloads in progress and the images of requests still running (503
    past it: the server is busy, not the request wrong)."""

    __slots__ = ("_slots", "fetches")

    def __init__(self, fetches: int = 8, memory: int = 256 * 1024 * 1024):
        super().__init__(memory, "downloaded images", "--image-memory-mb")
        self.fetches = fetches
        self._slots: asyncio.Semaphore | None = None

    def slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.fetches)
        return self._slots


def _request_url(url: str) -> str:
    """The URL as it goes on the wire: the host IDNA-encoded (a UnicodeError for an empty
    label or one over 63 characters), path and query percent-encoded where they hold
    characters a request line may not (spaces, non-ASCII), as a browser sends them."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _literal(host) is None:
        ascii_host = host.encode("idna").decode("ascii")  # checks the labels
        if ascii_host != host:
            parts = parts._replace(netloc=ascii_host + (f":{parts.port}" if parts.port is not None else ""))
    safe = "/%:@!$&'()*+,;=-._~"
    return urlunsplit(
        parts._replace(path=quote(parts.path, safe=safe), query=quote(parts.query, safe=safe + "?"), fragment="")
    )


def _length(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


async def fetch_image(
    pool: Pool,
    url: str,
    allow_private: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = IMAGE_TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
    quota: ImageQuota | None = None,
) -> bytes:
    """Download an image URL from a public address (see the module docstring) with ``pool``
    (:func:`image_pool`). ``quota`` counts the bytes as they arrive and stops the download
    when the request's or the process's image budget is spent."""
    first = url
    where = f"image {_short(first)}"
    try:
        async with asyncio.timeout(timeout):
            for hop in range(max_redirects + 1):
                check_url(url, where, allow_private)
                r = await pool.request("GET", _request_url(url), IMAGE_HEADERS)
                try:
                    if r.status in REDIRECTS:
                        location = r.headers.get("location")
                        if not location:
                            raise ImageError(f"{where}: redirect {r.status} without a Location")
                        if hop == max_redirects:
                            raise ImageError(f"{where}: more than {max_redirects} redirects")
                        url = urljoin(url, location)
                        continue
                    if r.status >= 400:
                        raise ImageError(f"{where}: the image server answered HTTP {r.status}")
                    if r.status != 200:
                        raise ImageError(f"{where}: the image server answered HTTP {r.status}, not 200")
                    length = _length(r.headers.get("content-length"))
                    if length is not None and length > max_bytes:
                        raise ImageError(
                            f"{where} is {length / 1048576:.1f} MB; the limit is {max_bytes // 1048576} MB an image"
                        )
                    if quota is not None and length is not None and length > quota.room():
                        raise quota.too_large()
                    data = bytearray()
                    checked = False
                    async for chunk in r.iter_bytes():
                        if quota is not None:
                            quota.downloaded(len(chunk))
                        data += chunk
                        if len(data) > max_bytes:
                            raise ImageError(f"{where} is over the {max_bytes // 1048576} MB limit an image")
                        if not checked and len(data) >= 12:
                            checked = True
                            if sniff(bytes(data[:12])) is None:
                                raise ImageError(f"{where} is not an image (expected JPEG, PNG, WebP or GIF bytes)")
                    if sniff(bytes(data[:12])) is None:
                        raise ImageError(f"{where} is not an image (expected JPEG, PNG, WebP or GIF bytes)")
                    return bytes(data)
                finally:
                    r.close()  # read to its end: back to the pool; else the connection is closed
    except ImageError:
        raise
    except TimeoutError:
        raise ImageError(f"{where}: the download took more than {timeout:g} s") from None
    except Refused as exc:
        raise ImageError(f"{where}: {exc}") from None
    except UnicodeError:  # IDNA: an empty label ("a..b") or one over 63 characters
        raise ImageError(f"{where}: not a valid host name (an empty label or one over 63 characters)") from None
    except (ConnectTimeout, ReadTimeout) as exc:
        raise ImageError(f"{where}: cannot download it ({_reason(exc)})") from None
    except ConnectError as exc:
        raise ImageError(f"{where}: cannot connect ({_reason(exc)})") from None
    except (HttpClientError, OSError, ValueError) as exc:
        raise ImageError(f"{where}: cannot download it ({_reason(exc)})") from None
    raise ImageError(f"{where}: more than {max_redirects} redirects")  # pragma: no cover


def _reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())[:200]
