"""A request's images onto their messages: base64 and data URLs decoded and checked when the
plan is made, http(s) URLs downloaded before the run (by the CLI's or the server's fetcher),
each image keeping its place among its message's images and counted by the request's quota.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gencli.core import images as img
from gencli.core.errors import ImageError, UsageError
from gencli.core.request import Message
from gencli.providers.base import AsyncImageFetcher, ImageFetcher

if TYPE_CHECKING:
    from gencli.engine.plan import Plan


def place(plan: Plan, raw_images: list[tuple[Message, Any]]) -> None:
    """Check and decode a request's images onto their messages; URLs wait in ``plan.image_urls``
    for :func:`fetch_images` (or :func:`afetch_images`), each keeping its place."""
    entry, quota, types = plan.entry, plan.quota, plan.adapter.image_types
    if "vision" not in entry.capabilities:
        raise UsageError(f"model '{entry.name}' does not take images (no 'vision' capability)", "images")
    places: dict[int, int] = {}  # id(message) -> the place of its next image
    for n, (message, raw) in enumerate(raw_images):
        where = f"image {n + 1}"
        at = places.get(id(message), len(message.images))
        places[id(message)] = at + 1
        if isinstance(raw, (bytes, bytearray)):
            data = bytes(raw)
        elif not isinstance(raw, str) or not raw:
            raise ImageError(f"{where} must be a base64 string or an http(s) URL")
        elif img.is_url(raw):
            plan.image_urls.append((message, at, n, raw))
            continue
        else:
            data = img.decode_base64(raw, where)
        if quota is not None:
            quota.add(len(data))
        message.images.append(img.from_bytes(data, where, types))


def fetch_images(plan: Plan, fetcher: ImageFetcher | None) -> None:
    """Download the plan's image URLs (the CLI: httpx) onto their messages, in their places."""
    pending, plan.image_urls = plan.image_urls, []
    if not pending:
        return
    if fetcher is None:
        raise UsageError("image URLs cannot be downloaded here; send the image data instead", "images")
    for message, at, n, url in pending:
        data = fetcher.fetch_image(url)
        if plan.quota is not None:
            plan.quota.add(len(data))
        message.images.insert(at, img.from_bytes(data, f"image {n + 1}", plan.adapter.image_types))


async def afetch_images(plan: Plan, fetcher: AsyncImageFetcher | None) -> None:
    """Download the plan's image URLs on the event loop (the server), counted by ``plan.quota``
    as the bytes arrive, onto their messages in their places."""
    pending, plan.image_urls = plan.image_urls, []
    if not pending:
        return
    if fetcher is None:
        raise UsageError("image URLs cannot be downloaded here; send the image data instead", "images")
    for message, at, n, url in pending:
        data = await fetcher.fetch_image(url, plan.quota)
        message.images.insert(at, img.from_bytes(data, f"image {n + 1}", plan.adapter.image_types))
