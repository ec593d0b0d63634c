"""Stored responses of the Responses API (``store: true``, ``previous_response_id``,
``GET``/``DELETE /v1/responses/{id}``), kept where the limits are counted: in this process by
default, in Redis with ``--redis URL`` so that any replica continues any chain.

A record is the JSON of ``{"owner", "response", "conversation", "input"}``: the key name that
made it (only the same key, or the operator's key when it was made with it, reads it; anyone
else gets the 404 a missing id gets), the response object ``GET`` returns, the conversation
(Responses input items) a request naming it as ``previous_response_id`` continues, and where
in it the response's own input items are (``[start, end]``: what ``GET .../input_items``
lists, each item with the id it was given when stored). The bounds below count all of it.

In-process the store is bounded by count (``--responses-max``) and bytes (``--responses-mb``);
when a new record does not fit, the oldest are dropped first; records expire after
``--responses-ttl`` seconds. In Redis each record is one string with that TTL (Redis's own
``maxmemory`` policy bounds the rest); a record larger than ``--responses-mb`` is not kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

from gencli.server.shared import PREFIX, RedisLink


class ResponseStore(Protocol):
    max_bytes: int

    async def put(self, response_id: str, record: bytes) -> bool:
        """Keep ``record``; False when it is larger than the store may hold."""

    async def get(self, response_id: str) -> bytes | None: ...

    async def delete(self, response_id: str) -> bool: ...

    async def close(self) -> None: ...


class LocalStore:
    """Records in this process: at most ``max_count`` records and ``max_bytes`` bytes, each for
    ``ttl`` seconds; the oldest go first."""

    def __init__(self, max_count: int, max_bytes: int, ttl: float, clock: Any = time.monotonic):
        self.max_count, self.max_bytes, self.ttl = max_count, max_bytes, ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def _expire(self, now: float) -> None:
        items = self._items
        while items:
            key, (expires, record) = next(iter(items.items()))
            if expires > now:
                return
            del items[key]
            self.bytes -= len(record)

    async def put(self, response_id: str, record: bytes) -> bool:
        if len(record) > self.max_bytes:
            return False
        now = self._clock()
        self._expire(now)
        old = self._items.pop(response_id, None)
        if old is not None:
            self.bytes -= len(old[1])
        while self._items and (len(self._items) >= self.max_count or self.bytes + len(record) > self.max_bytes):
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= len(dropped)
        self._items[response_id] = (now + self.ttl, record)
        self.bytes += len(record)
        return True

    async def get(self, response_id: str) -> bytes | None:
        found = self._items.get(response_id)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._expire(self._clock())
            self._items.pop(response_id, None)
            return None
        return found[1]

    async def delete(self, response_id: str) -> bool:
        found = self._items.pop(response_id, None)
        if found is None:
            return False
        self.bytes -= len(found[1])
        return bool(found[0] > self._clock())

    def __len__(self) -> int:
        return len(self._items)

    async def close(self) -> None:
        return None


class RedisStore:
    """Records in Redis (``gencli:resp:<id>``, a string with the TTL)."""

    def __init__(self, link: RedisLink, max_bytes: int, ttl: float):
        self.link, self.max_bytes, self.ttl = link, max_bytes, max(1, int(ttl))

    @staticmethod
    def _key(response_id: str) -> str:
        return f"{PREFIX}resp:{response_id}"

    async def put(self, response_id: str, record: bytes) -> bool:
        if len(record) > self.max_bytes:
            return False
        key, ttl = self._key(response_id), self.ttl
        await self.link.run("stored responses", lambda client: client.set(key, record, ex=ttl))
        return True

    async def get(self, response_id: str) -> bytes | None:
        key = self._key(response_id)
        found = await self.link.run("stored responses", lambda client: client.get(key))
        return bytes(found) if found is not None else None

    async def delete(self, response_id: str) -> bool:
        key = self._key(response_id)
        removed: int = await self.link.run("stored responses", lambda client: client.delete(key))
        return removed > 0

    async def close(self) -> None:
        await self.link.close()
