"""Image URLs sent to the server, fetched without SSRF.

A request may name an http(s) image URL; the server downloads it. Without care that
lets anyone who can reach the server make it fetch from its own network: loopback
services, the LAN, a cloud's metadata endpoint (169.254.169.254). So:

- :func:`address_problem` decides, for one IP address, whether it may be fetched:
  only global unicast addresses may. Loopback, private, link-local, shared (CGNAT),
  multicast, reserved, unspecified and documentation addresses are refused, also when
  wrapped in an IPv6 form (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, 6to4
  ``2002::/16``, NAT64 ``64:ff9b::/96``, Teredo).
- :class:`GuardedResolver` resolves host names itself (``getaddrinfo`` on the loop)
  and refuses a name if any of its addresses is refused. aiohttp connects only to the
  addresses a resolver returns, so the address checked is the address connected to: a
  DNS answer that changes between a check and the connection (rebinding) cannot slip
  a private address in. Host name, TLS SNI and the Host header stay the URL's.
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
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.abc

from gencli.budget import MemoryBudget
from gencli.errors import ImageError
from gencli.images import MAX_IMAGE_BYTES, sniff

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

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


class Refused(OSError):
    """A host whose address may not be fetched (carried through aiohttp's connect errors)."""


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Resolves with ``getaddrinfo`` on the loop and returns only checked addresses; a name
    with any refused address is refused whole (a mixed answer is a rebinding attempt)."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host} ({exc.strerror})") from None
        out: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            ip = str(sockaddr[0])
            problem = address_problem(ip, self.allow_private)
            if problem is not None:
                raise Refused(
                    f"{host} resolves to {ip}, a {problem} address; the server fetches image "
                    f"URLs from public addresses only (gencli serve --allow-private-images "
                    f"allows private ones)"
                )
            if fam == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
                continue  # scoped (link-local) IPv6: only reachable with allow_private; skip
            out.append(
                {
                    "hostname": host,
                    "host": ip,
                    "port": int(sockaddr[1]),
                    "family": fam,
                    "proto": proto,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        if not out:
            raise OSError(f"cannot resolve {host} (no usable address)")
        return out

    async def close(self) -> None:
        return None


def image_session(allow_private: bool = False) -> aiohttp.ClientSession:
    """A session for image fetches: guarded resolver, no DNS cache, no proxy, no cookies."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_private), use_dns_cache=False, limit=64, limit_per_host=8
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=CONNECT_TIMEOUT),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "gencli-image-fetch", "Accept": "image/*"},
        auto_decompress=False,
    )


def check_url(url: str, where: str, allow_private: bool) -> None:
    """Refuse what can be refused before connecting: the scheme, a missing host, a
    literal IP address that is not public (names are checked by the resolver)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ImageError(f"{where}: not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ImageError(f"{where}: only http(s) URLs can be fetched")
    addr = _literal(host)
    if addr is not None:
        problem = address_problem(addr, allow_private)
        if problem is not None:
            raise ImageError(
                f"{where}: {host} is a {problem} address; the server fetches image URLs from "
                f"public addresses only (gencli serve --allow-private-images allows private ones)"
            )


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


async def fetch_image(
    session: aiohttp.ClientSession,
    url: str,
    allow_private: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = IMAGE_TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
    quota=None,
) -> bytes:
    """Download an image URL from a public address (see the module docstring). ``quota``
    (:class:`gencli.images.ImageQuota`) counts the bytes as they arrive and stops the
    download when the request's or the process's image budget is spent."""
    first = url
    where = f"image {_short(first)}"
    try:
        async with asyncio.timeout(timeout):
            for hop in range(max_redirects + 1):
                check_url(url, where, allow_private)
                async with session.get(url, allow_redirects=False) as r:
                    if r.status in REDIRECTS:
                        location = r.headers.get("Location")
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
                    if r.content_length is not None and r.content_length > max_bytes:
                        raise ImageError(
                            f"{where} is {r.content_length / 1048576:.1f} MB; the limit is "
                            f"{max_bytes // 1048576} MB an image"
                        )
                    if quota is not None and r.content_length is not None and r.content_length > quota.room():
                        raise quota.too_large()
                    data = bytearray()
                    checked = False
                    async for chunk in r.content.iter_any():
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
    except ImageError:
        raise
    except TimeoutError:
        raise ImageError(f"{where}: the download took more than {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, Refused):
            raise ImageError(f"{where}: {exc.os_error}") from None
        raise ImageError(f"{where}: cannot connect ({_reason(exc.os_error)})") from None
    except aiohttp.InvalidURL:
        raise ImageError(f"{where}: not a valid URL (or a non-canonical IP address)") from None
    except UnicodeError:  # the resolver's IDNA encoding: an empty label ("a..b") or one over 63 characters
        raise ImageError(f"{where}: not a valid host name (an empty label or one over 63 characters)") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ImageError(f"{where}: cannot download it ({_reason(exc)})") from None
    raise ImageError(f"{where}: more than {max_redirects} redirects")  # pragma: no cover


def _reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())[:200]
