"""What one server process shares across its routes: its settings, the registry, the
upstream transport (one pool per process, which also downloads image URLs), which
models were used when and stay loaded until when (Ollama's keep_alive and /api/ps), and
where the per-key limits are counted and stored responses kept (this process, or Redis)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import TYPE_CHECKING, Any

from gencli.config.registry import ModelEntry, Registry
from gencli.core import images as img
from gencli.core.budget import MemoryBudget
from gencli.server.asgi import Receive, Scope, field_model, read_json, refusal
from gencli.server.config import ServeConfig
from gencli.server.limits import Limiter, LocalLimiter, OverLimit, RedisLimiter
from gencli.server.shared import RedisDown
from gencli.server.store import LocalStore, RedisStore, ResponseStore
from gencli.transports.server import ServerTransport

if TYPE_CHECKING:
    from gencli.config.keys import KeyRecord
    from gencli.server.observe import Metrics

KEEP_ALIVE = 300.0  # seconds a model stays loaded (listed in /api/ps; a local model in memory) after a request


class State:
    def __init__(self, config: ServeConfig, registry: Registry | None = None):
        from gencli.core import context

        self.config = config
        self.registry = registry if registry is not None else Registry.load(config.models_path)
        from gencli.server.memory import trim

        self.transport = ServerTransport(
            allow_private_images=config.allow_private_images,
            image_fetches=config.image_fetches,
            image_memory=config.image_memory,
            on_quiet=trim,
        )  # quiet: idle upstream connections closed, memory trimmed
        self.max_body = config.max_body
        self.bodies = MemoryBudget(config.body_memory, "request bodies", "--body-memory-mb")  # held at once
        context.set_limit(self.max_body)  # a conversation in `context` is no larger than a body
        self.limiter: Limiter
        self.store: ResponseStore
        if config.redis_url:
            from gencli.server.shared import RedisLink

            policy = (
                "requests are admitted without counting their limits (--redis-fail open)"
                if config.redis_fail_open
                else "requests with limited keys get 503 (--redis-fail closed)"
            )
            # connects in the worker's loop, on first use
            link = RedisLink(config.redis_url, f"{policy} and stored responses are unavailable until it answers")
            self.limiter = RedisLimiter(link, config.redis_fail_open)
            self.store = RedisStore(link, config.responses_bytes, config.responses_ttl)
        else:
            self.limiter = LocalLimiter()
            self.store = LocalStore(config.responses_max, config.responses_bytes, config.responses_ttl)
        # the in-process limits decide at once: State.admit calls them without a coroutine
        self._check = self.limiter.check if isinstance(self.limiter, LocalLimiter) else None
        self.started = time.time()
        self.last_used: dict[str, int] = {}  # model name -> time.time_ns() of its last request
        self.expires: dict[str, float] = {}  # model name -> when /api/ps stops listing it (time.time(); inf: never)
        mtime = self.started
        if self.registry.source is not None:
            try:
                mtime = os.stat(self.registry.source).st_mtime
            except OSError:
                pass
        self.modified_ts = int(mtime)
        self.modified_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        self.metrics: Metrics | None = None
        if config.metrics:
            from gencli.server.observe import Metrics

            models = self.registry.models
            deployments = {d.deployment for e in models.values() for d in e.deployments}
            self.metrics = Metrics(set(models), deployments)

    async def read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The request's JSON body, counted against the worker's body budget until the request
        ends (``App`` gives ``scope["gencli.body"]`` back); a refused or failed read gives its
        bytes back at once."""
        bodies = self.bodies
        held = 0

        def charge(n: int) -> None:
            nonlocal held
            bodies.charge(n)
            held += n

        try:
            data = await read_json(receive, self.max_body, charge)
        except BaseException:
            bodies.release(held)
            raise
        scope["gencli.body"] = held
        return data

    def ready_models(self, scope: Scope | None = None) -> list[ModelEntry]:
        """The models a request can use now (their provider's key is set, and the request's key
        of the keys file allows them)."""
        record: KeyRecord | None = scope.get("gencli.key") if scope is not None else None
        return [
            e
            for e in self.registry.models.values()
            if self.registry.missing_key(e) is None and (record is None or record.allows(e.name))
        ]

    def resolve(self, name: str) -> ModelEntry:
        return self.registry.resolve(self.model_name(name))

    def model_name(self, name: str) -> str:
        """The registry name for a requested name (Ollama clients may add ':latest')."""
        if name not in self.registry.models and name.endswith(":latest") and name[:-7] in self.registry.models:
            return name[:-7]
        return name

    async def admit(self, scope: Scope, data: dict[str, Any]) -> str:
        """The registry name of the model a request body names (its required ``model``), noted
        on the scope for the access log. A request made with a key of the keys file must name
        a model the key allows (403 otherwise) and is counted against the key's limits (429
        over them; 503 when they are counted in a Redis that does not answer and the policy is
        ``--redis-fail closed``), before any work."""
        model = self.model_name(field_model(data))
        info = scope.setdefault("gencli", {})
        info["model"] = model
        record: KeyRecord | None = scope.get("gencli.key")
        if record is not None:
            if record.models is not None and model not in record.models:  # record.allows(model), inlined
                info["rejected"] = "model"  # counted by the metrics and named in the access log
                allowed = ", ".join(record.models or ())
                raise refusal(
                    403,
                    f"key {record.name!r} may not use model {model[:100]!r} (its models: {allowed}); "
                    "ask the server's operator for another key",
                    "permission_error",
                )
            if record.rpm or record.tpm:
                try:
                    if self._check is not None:
                        self._check(record)
                    else:
                        await self.limiter.admit(record)
                except OverLimit:
                    info["rejected"] = "limit"
                    raise
                except RedisDown:  # --redis-fail closed: 503 while Redis does not answer
                    info["rejected"] = "redis"
                    raise
        return model

    def spend(self, record: KeyRecord, scope: Scope) -> None:
        """Count a finished request's tokens (prompt + completion) against its key's limit."""
        info = scope.get("gencli")
        tokens = info.get("tokens") if info is not None else None
        if not tokens:
            return
        try:
            self.limiter.spend(record, int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0))
        except Exception as exc:  # pragma: no cover - the limiter logs its own failures
            import sys

            sys.stderr.write(f"gencli serve: could not count the tokens of key {record.name!r}: {exc}\n")

    async def close(self) -> None:
        await self.limiter.close()
        await self.store.close()

    def touch(self, name: str, keep_alive: float | None = None) -> None:
        """A request used the model: /api/ps lists it for ``keep_alive`` seconds (the default
        when None; negative: for good; 0: not after this request)."""
        now = time.time_ns()
        self.last_used[name] = now
        seconds = KEEP_ALIVE if keep_alive is None else keep_alive
        self.expires[name] = math.inf if seconds < 0 else now / 1e9 + seconds

    async def unload(self, entry: ModelEntry) -> None:
        """Ollama's unload (keep_alive 0, nothing to generate): a local model's memory is freed
        (after what runs on it) and the model leaves /api/ps."""
        from gencli.engine import unload

        self.last_used.pop(entry.name, None)
        self.expires.pop(entry.name, None)
        await asyncio.to_thread(unload, entry, self.registry)

    def image_quota(self) -> img.ImageQuota:
        """A request's image limits (count, bytes) and its share of the process's image budget."""
        c = self.config
        return img.ImageQuota(c.max_images, c.max_images_bytes, self.transport.images)
