"""Stateless conversation context.

The ``context`` array Ollama returns is opaque to clients. gencli puts the whole
conversation in it, so a follow-up works across restarts and across server
processes with no server-side state:

    payload = zlib(JSON [[role, content], ...])          # user/assistant turns
    blob    = b"gc" + version(1) + crc32(payload)(4) + len(payload)(4) + payload   # big-endian
    ints    = blob in 3-byte big-endian groups (each int < 2**24), zero padded

The first int is always 0x676301 ("gc", version 1). Each int carries 3 bytes, so
the array is about a third of the compressed conversation's size in ints, grows
linearly with it, and stays within 24 bits (safe for any JSON client). Images are
not kept (only the text of earlier turns). A context that does not start with the
marker, or whose checksum fails, is refused with an error, never ignored.
"""

from __future__ import annotations

import struct
import zlib

import orjson

from gencli.core.errors import ContextError
from gencli.core.request import Message

MAGIC = b"gc\x01"
HEADER = 11  # magic, crc32, payload length
STORED = 512  # conversations (JSON bytes) shorter than this are stored uncompressed
# The largest conversation a context may hold, in bytes of JSON: the server sets it to its
# body limit (a conversation that could not be sent as a body is not accepted as a context).
_limit = 32 * 1024 * 1024


def set_limit(max_bytes: int) -> None:
    """Set the largest conversation (bytes) :func:`decode` inflates (``gencli serve`` sets its body cap)."""
    global _limit
    _limit = int(max_bytes)


def max_ints(max_bytes: int) -> int:
    """The longest context array a conversation of ``max_bytes`` can be: deflate output is at
    most the input plus 5 bytes per 16 KB block plus the zlib header and checksum."""
    payload = max_bytes + 5 * (max_bytes // 16384 + 1) + 6
    return (HEADER + payload + 2) // 3


def encode(messages: list[Message]) -> list[int]:
    turns = [[m.role, m.content] for m in messages if m.role in ("user", "assistant")]
    data = orjson.dumps(turns)  # the same bytes as compact json.dumps(ensure_ascii=False), faster
    # A window no larger than the data, and a small hash table (memLevel 4) below 16 KB: the
    # same compressed size for a short conversation, but a ~10 KB deflate state instead of
    # ~260 KB, which glibc would mmap, fault in and unmap again on every response (measured in
    # the server: 150 us a response, now ~15). Any window decompresses with the default.
    size = len(data)
    # Below STORED bytes the conversation is stored, not compressed (level 0, the same zlib
    # format): deflating a few hundred bytes costs ~7 us for a few dozen ints saved.
    level = 0 if size < STORED else 6
    packer = zlib.compressobj(level, zlib.DEFLATED, max(9, min(15, (size - 1).bit_length())), 4 if size < 16384 else 8)
    payload = packer.compress(data) + packer.flush()
    blob = MAGIC + struct.pack(">II", zlib.crc32(payload), len(payload)) + payload
    blob += b"\0" * (-len(blob) % 3)
    n = len(blob) // 3
    wide = bytearray(4 * n)  # each 3-byte group as a big-endian 4-byte int, unpacked at once
    wide[1::4], wide[2::4], wide[3::4] = blob[0::3], blob[1::3], blob[2::3]
    return list(struct.unpack(f">{n}I", wide))


def decode(ints: object, max_bytes: int | None = None) -> list[Message]:
    """The conversation a context array holds; ContextError if it is not ours, damaged, or
    holds more than ``max_bytes`` (default: the limit from :func:`set_limit`) of conversation.

    The array's length is checked before anything is decoded, and the payload is inflated
    with an output cap, so a small context cannot expand into a large conversation."""
    if not ints:
        return []
    if not isinstance(ints, list):
        raise ContextError("context must be an array of integers")
    limit = _limit if max_bytes is None else max_bytes
    if len(ints) > max_ints(limit):
        raise ContextError(
            f"context is longer than a conversation of {_size(limit)} (this server's limit) "
            "can be; start a new conversation"
        )
    if any(type(i) is not int for i in ints):
        raise ContextError("context must be an array of integers")
    try:
        blob = b"".join(i.to_bytes(3, "big") for i in ints)
    except OverflowError:
        raise ContextError("context must be an array of integers from 0 to 16777215 as gencli returned it") from None
    if not blob.startswith(MAGIC):
        raise ContextError("context was not produced by gencli (send back the context array of a previous response)")
    if len(blob) < HEADER:
        raise ContextError("context is truncated")
    crc, size = struct.unpack(">II", blob[3:HEADER])
    payload = blob[HEADER : HEADER + size]
    if len(payload) != size or zlib.crc32(payload) != crc or blob[HEADER + size :].strip(b"\0"):
        raise ContextError("context is damaged or truncated (checksum mismatch)")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, limit + 1)
    except zlib.error:
        raise ContextError("context is damaged (cannot decode the conversation)") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ContextError(
            f"context holds a conversation larger than {_size(limit)}, this server's limit; start a new conversation"
        )
    try:
        turns = orjson.loads(data)  # refuses what encode() never writes (lone surrogates, NaN)
    except orjson.JSONDecodeError:
        turns = None
    if not isinstance(turns, list) or not all(
        isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], str) for t in turns
    ):
        raise ContextError("context is damaged (cannot decode the conversation)")
    return [Message(role, content) for role, content in turns if role in ("user", "assistant")]


def _size(n: int) -> str:
    mb = n / (1024 * 1024)
    return f"{mb:g} MB" if mb >= 1 else f"{n} bytes"
