"""Stateless conversation context.

The ``context`` array Ollama returns is opaque to clients. gencli puts the whole
conversation in it, so a follow-up works across restarts and across server
processes with no server-side state:

    payload = zlib(JSON [[role, content], ...])          # user/assistant turns
    blob    = b"gc" + version(1) + crc32(payload)(4) + payload
    ints    = blob in 3-byte big-endian groups (each int < 2**24), zero padded

The first int is always 0x676301 ("gc", version 1). Each int carries 3 bytes, so
the array is about a third of the compressed conversation's size in ints, grows
linearly with it, and stays within 24 bits (safe for any JSON client). Images are
not kept (only the text of earlier turns). A context that does not start with the
marker, or whose checksum fails, is refused with an error, never ignored.
"""

from __future__ import annotations

import json
import struct
import zlib

import orjson

from gencli.errors import ContextError
from gencli.request import Message

MAGIC = b"gc\x01"
MAX_INTS = 16 * 1024 * 1024  # a context above 48 MB is not one we produced


def encode(messages: list[Message]) -> list[int]:
    turns = [[m.role, m.content] for m in messages if m.role in ("user", "assistant")]
    data = orjson.dumps(turns)  # the same bytes as compact json.dumps(ensure_ascii=False), faster
    # A window no larger than the data, and a small hash table (memLevel 4) below 16 KB: the
    # same compressed size for a short conversation, but a ~10 KB deflate state instead of
    # ~260 KB, which glibc would mmap, fault in and unmap again on every response (measured in
    # the server: 150 us a response, now ~15). Any window decompresses with the default.
    size = len(data)
    packer = zlib.compressobj(6, zlib.DEFLATED, max(9, min(15, (size - 1).bit_length())), 4 if size < 16384 else 8)
    payload = packer.compress(data) + packer.flush()
    blob = MAGIC + struct.pack(">II", zlib.crc32(payload), len(payload)) + payload
    blob += b"\0" * (-len(blob) % 3)
    n = len(blob) // 3
    wide = bytearray(4 * n)  # each 3-byte group as a big-endian 4-byte int, unpacked at once
    wide[1::4], wide[2::4], wide[3::4] = blob[0::3], blob[1::3], blob[2::3]
    return list(struct.unpack(f">{n}I", wide))


def decode(ints: object) -> list[Message]:
    """The conversation a context array holds; ContextError if it is not ours or damaged."""
    if not ints:
        return []
    if not isinstance(ints, list):
        raise ContextError("context must be an array of integers")
    if len(ints) > MAX_INTS:
        raise ContextError("context is too large to be one gencli produced")
    try:
        blob = b"".join(i.to_bytes(3, "big") for i in ints)  # type: ignore[union-attr]
    except (AttributeError, OverflowError, TypeError):
        raise ContextError("context must be an array of integers from 0 to 16777215 as gencli returned it") from None
    if any(type(i) is not int for i in ints):
        raise ContextError("context must be an array of integers")
    if not blob.startswith(MAGIC):
        raise ContextError("context was not produced by gencli (send back the context array of a previous response)")
    if len(blob) < 11:
        raise ContextError("context is truncated")
    crc, size = struct.unpack(">II", blob[3:11])
    payload = blob[11:11 + size]
    if len(payload) != size or zlib.crc32(payload) != crc or blob[11 + size:].strip(b"\0"):
        raise ContextError("context is damaged or truncated (checksum mismatch)")
    try:
        turns = json.loads(zlib.decompress(payload))
        return [Message(role, content) for role, content in turns if role in ("user", "assistant")]
    except Exception:
        raise ContextError("context is damaged (cannot decode the conversation)") from None
