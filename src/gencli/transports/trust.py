"""The roots of trust for TLS, one choice for every client gencli has.

Both the CLI's httpx client (``transports/cli.py``) and ``gencli serve``'s own upstream
client (``httpclient.py``) verify servers against the same CA certificates: certifi's
bundle (Mozilla's roots, the same on every platform, and what httpx itself defaults to),
unless the environment names others: ``SSL_CERT_FILE`` (a PEM bundle) or ``SSL_CERT_DIR``
(a hashed directory, as ``c_rehash`` makes), the variables OpenSSL and httpx honour. A
company's proxy CA, or a self-signed upstream, is added that way. The context is made once
per process, when the first https:// connection needs it (loading the bundle takes tens of
milliseconds: not on the CLI's start-up path).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

_context: ssl.SSLContext | None = None


def roots(env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(cafile, capath)``: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's bundle."""
    env = os.environ if env is None else env
    cafile = (env.get("SSL_CERT_FILE") or "").strip()
    if cafile:
        return cafile, None
    capath = (env.get("SSL_CERT_DIR") or "").strip()
    if capath:
        return None, capath
    import certifi

    return certifi.where(), None


def new_context(env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A client context verifying against :func:`roots` (hostnames checked, TLS 1.2 at least)."""
    cafile, capath = roots(env)
    return ssl.create_default_context(cafile=cafile, capath=capath)


def context() -> ssl.SSLContext:
    """This process's client context (made on first use from the environment)."""
    global _context
    if _context is None:
        _context = new_context()
    return _context
