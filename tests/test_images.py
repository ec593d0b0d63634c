"""Image decoding and format detection from the bytes."""

import base64

import pytest

from gencli.core import images
from gencli.core.errors import ImageError

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32
WEBP = b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 16
GIF = b"GIF89a" + b"\0" * 16
ALL = ("image/jpeg", "image/png", "image/webp", "image/gif")


@pytest.mark.parametrize(
    "data, mime", [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (GIF, "image/gif")]
)
def test_sniffs_format_from_bytes(data, mime):
    assert images.sniff(data) == mime
    assert images.from_bytes(data, "image 1", ALL).mime == mime


def test_unknown_bytes_are_refused_not_relabelled():
    with pytest.raises(ImageError, match="image 1 is not an image"):
        images.from_bytes(b"%PDF-1.7 hello", "image 1", ALL)


def test_format_the_provider_does_not_take():
    with pytest.raises(ImageError, match="GIF; this model takes JPEG, PNG, WEBP"):
        images.from_bytes(GIF, "image 2", ("image/jpeg", "image/png", "image/webp"))


def test_size_cap():
    with pytest.raises(ImageError, match="20 MB"):
        images.from_bytes(JPEG + b"\0" * (20 * 1024 * 1024), "image 1", ALL)


def test_base64_forms():
    std = base64.b64encode(PNG).decode()
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert images.decode_base64(std, "i") == PNG
    assert images.decode_base64(urlsafe, "i") == PNG
    assert images.decode_base64("data:image/png;base64," + std, "i") == PNG
    assert images.decode_base64(std[:20] + "\n" + std[20:], "i") == PNG


@pytest.mark.parametrize("bad", ["not base64 at all!!", "data:image/png,rawdata", "abcde"])
def test_invalid_base64(bad):
    with pytest.raises(ImageError):
        images.decode_base64(bad, "image 1")


def test_url_detection():
    assert images.is_url("https://example.com/a.jpg")
    assert images.is_url("HTTP://x/y.png")
    assert not images.is_url("aGVsbG8=")
