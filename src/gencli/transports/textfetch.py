"""Download a text page for ``gencli generate -f URL`` behind the server's address guard.

The decision is :func:`gencli.transports.address_guard.address_problem`, the one the server's image
downloads obey: only public unicast addresses, unless the user allows private ones
(``--allow-private-fragments``). Here it is applied where the connection is made: an
httpcore network backend resolves the host itself, refuses it when any of its addresses
is refused, and connects to a checked address (TLS SNI and the Host header stay the
URL's), so a DNS answer that changes between a check and the connection cannot slip a
private address in. Redirects are followed here (at most 3), each hop checked the same
way. The size is capped (Content-Length first, then while reading) and so is the time.

No proxy is used (a proxy would make the address checked the proxy's).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any
from urllib.parse import urljoin

import httpcore

from gencli.core.errors import UsageError
from gencli.transports.address_guard import address_problem, url_problem

MAX_REDIRECTS = 3
TIMEOUT = 30.0  # seconds for the whole download, redirects included
CONNECT_TIMEOUT = 10.0
REDIRECTS = (301, 302, 303, 307, 308)
HINT = "--allow-private-fragments (or GENCLI_ALLOW_PRIVATE_FRAGMENTS=1) allows private ones"


class FetchError(UsageError):
    """A -f URL that cannot be used (exit code 2, as for a file that cannot be read)."""


class Refused(Exception):
    """The host's address may not be reached."""


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses :func:`address_problem` allows."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(f"cannot resolve {host} ({exc.strerror})") from None
        addresses = []
        for _family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            problem = address_problem(ip, self.allow_private)
            if problem is not None:
                raise Refused(f"{host} resolves to {ip}, a {problem} address; -f fetches public addresses only; {HINT}")
            addresses.append(ip)
        last: Exception | None = None
        for ip in dict.fromkeys(addresses):
            try:
                return super().connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last if last is not None else Refused(f"cannot resolve {host} (no address)")


def _check(url: str, where: str, allow_private: bool) -> None:
    found = url_problem(url, allow_private)
    if found is not None:
        text, address = found
        raise FetchError(
            f"{where}: {text}; -f fetches public addresses only; {HINT}" if address else f"{where}: {text}"
        )


def fetch_text(url: str, max_bytes: int, allow_private: bool = False, timeout: float = TIMEOUT) -> tuple[bytes, str]:
    """The body of ``url`` (at most ``max_bytes``) and its Content-Type."""
    where = f"-f {url if len(url) <= 120 else url[:117] + '...'}"
    deadline = time.monotonic() + timeout
    pool = httpcore.ConnectionPool(
        ssl_context=ssl.create_default_context(), network_backend=GuardedBackend(allow_private), retries=0
    )
    try:
        for hop in range(MAX_REDIRECTS + 1):
            _check(url, where, allow_private)
            left = max(0.1, deadline - time.monotonic())
            ext = {"timeout": {"connect": min(CONNECT_TIMEOUT, left), "read": left, "write": left, "pool": left}}
            headers = [(b"User-Agent", b"gencli-fragment"), (b"Accept", b"text/*, application/json, */*;q=0.5")]
            with pool.stream("GET", url, headers=headers, extensions=ext) as r:
                head = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in r.headers}
                if r.status in REDIRECTS:
                    location = head.get("location")
                    if not location:
                        raise FetchError(f"{where}: redirect {r.status} without a Location")
                    if hop == MAX_REDIRECTS:
                        break
                    url = urljoin(url, location)
                    continue
                if r.status != 200:
                    raise FetchError(f"{where}: the server answered HTTP {r.status}")
                length = head.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise FetchError(f"{where} is {int(length) / 1048576:.1f} MB; {_limit(max_bytes)}")
                data = bytearray()
                for chunk in r.iter_stream():
                    data += chunk
                    if len(data) > max_bytes:
                        raise FetchError(f"{where} is over the limit; {_limit(max_bytes)}")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{where}: the download took more than {timeout:g} s")
                return bytes(data), head.get("content-type", "")
        raise FetchError(f"{where}: more than {MAX_REDIRECTS} redirects")
    except Refused as exc:
        raise FetchError(f"{where}: {exc}") from None
    except httpcore.TimeoutException:
        raise FetchError(f"{where}: the download took more than {timeout:g} s") from None
    except httpcore.UnsupportedProtocol:
        raise FetchError(f"{where}: only http(s) URLs can be fetched") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        reason = " ".join((str(exc) or exc.__class__.__name__).split())[:200]
        raise FetchError(f"{where}: cannot download it ({reason})") from None
    finally:
        pool.close()


def _limit(max_bytes: int) -> str:
    return f"a fragment is at most {max_bytes // 1024} KB of text"
