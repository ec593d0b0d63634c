"""Images: decode what users send and detect the format from the bytes.

Accepted inputs: standard or URL-safe base64, ``data:`` URLs, http(s) URLs (fetched
by the transport), and on the CLI file paths. The format is always sniffed from the
bytes; anything that is not JPEG, PNG, WebP or GIF is refused, never relabelled.
"""

from __future__ import annotations

import base64
import binascii
import re

from gencli.errors import ImageError
from gencli.request import Image

MAX_IMAGE_BYTES = 20 * 1024 * 1024
_B64_CLEAN = re.compile(rb"\s+")


def sniff(data: bytes) -> str | None:
    """The MIME type of image ``data`` judged by its magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def from_bytes(data: bytes, where: str, accepted: tuple[str, ...]) -> Image:
    """Check size and format of raw image bytes; ``where`` names the image in errors."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{where} is {len(data) / 1048576:.1f} MB; the limit is 20 MB an image")
    mime = sniff(data)
    if mime is None:
        raise ImageError(f"{where} is not an image (expected JPEG, PNG, WebP or GIF bytes)")
    if mime not in accepted:
        names = ", ".join(m.split("/")[1].upper() for m in accepted)
        raise ImageError(f"{where} is {mime.split('/')[1].upper()}; this model takes {names}")
    return Image(mime, base64.b64encode(data).decode("ascii"))


def decode_base64(value: str, where: str) -> bytes:
    """Decode a base64 string or data URL (either alphabet, padding optional)."""
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or ";base64" not in head:
            raise ImageError(f"{where} is a data URL without base64 data")
    raw = _B64_CLEAN.sub(b"", value.encode("ascii", "replace"))
    if len(raw) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageError(f"{where} is over the 20 MB limit")
    raw = raw.replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{where} is neither valid base64 nor an http(s) URL") from None
