"""Images: decode what users send and detect the format from the bytes.

Accepted inputs: standard or URL-safe base64, ``data:`` URLs, http(s) URLs (fetched
by the transport), and on the CLI file paths. The format is always sniffed from the
bytes; anything that is not JPEG, PNG, WebP or GIF is refused, never relabelled.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING

from gencli.core.errors import ImageError
from gencli.core.request import Image

if TYPE_CHECKING:
    from gencli.core.budget import MemoryBudget

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MB = 1024 * 1024
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


def decoded_size(image: Image) -> int:
    """The byte size of an image from its base64 data (without decoding it)."""
    data = image.data
    return len(data) * 3 // 4 - data[-2:].count("=")


class ImageQuota:
    """One request's images (``gencli serve``): at most ``max_images`` of them and
    ``max_bytes`` in all (decoded, URLs and base64 together), and the bytes downloaded for
    it charged to the process-wide ``budget`` (:class:`gencli.transports.address_guard.ImageBudget`)
    until :meth:`release` (the end of the request)."""

    __slots__ = ("max_images", "max_bytes", "budget", "total", "charged")

    def __init__(self, max_images: int, max_bytes: int, budget: MemoryBudget | None = None) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.budget = budget
        self.total = 0
        self.charged = 0

    def check_count(self, n: int) -> None:
        if n > self.max_images:
            if self.max_images == 0:
                raise ImageError("this server takes no images (gencli serve --max-images 0)")
            raise ImageError(
                f"too many images: {n}; this server takes at most {self.max_images} a request "
                "(gencli serve --max-images)"
            )

    def room(self) -> int:
        return self.max_bytes - self.total

    def too_large(self) -> ImageError:
        limit = self.max_bytes
        size = f"{limit // MB} MB" if limit % MB == 0 else f"{limit / MB:.3g} MB"
        exc = ImageError(
            f"the images of this request are over this server's limit of {size} a request "
            "(gencli serve --max-images-mb)"
        )
        exc.status = 413
        return exc

    def add(self, n: int) -> None:
        """Count ``n`` more image bytes of this request (413 past the limit)."""
        self.total += n
        if self.total > self.max_bytes:
            raise self.too_large()

    def downloaded(self, n: int) -> None:
        """Count ``n`` more downloaded bytes: against this request, then the process budget."""
        self.add(n)
        if self.budget is not None:
            self.budget.charge(n)
            self.charged += n

    def release(self) -> None:
        if self.budget is not None and self.charged:
            self.budget.release(self.charged)
        self.charged = 0
