"""What an operator watches: ``GET /metrics`` (Prometheus), ``GET /health``, ``GET /ready``
and the request id of every request.

:class:`Observe` wraps the guarded app (the outermost layer, so the guard's refusals are
seen too). For each request it takes the client's ``X-Request-Id`` (at most 128 of
``A-Z a-z 0-9 . _ : -``; anything else is replaced) or makes one, returns it as a response
header and notes it in ``scope["gencli"]`` for the access log; with metrics on it counts
the request when it ends.

Metrics (prometheus_client; one :class:`Metrics` per process):

- ``gencli_requests_total{route, method, model, status}``
- ``gencli_upstream_latency_seconds{model, deployment}``: from the request's preparation to
  the answer's end (retries and fallbacks included), for answered generations
- ``gencli_time_to_first_token_seconds{model, deployment}``: to the first token of a streamed answer
- ``gencli_tokens_total{model, key, direction}``: direction ``in`` (prompt) or ``out``
- ``gencli_in_flight_requests``
- ``gencli_rejected_requests_total{reason}``: ``auth``, ``forbidden`` (host or origin),
  ``size``, ``limit`` (a person's key over its rpm/tpm: 429), ``busy`` (a memory budget or
  a local model's queue full: 503), ``model`` (a model a person's key may not use: 403),
  ``redis`` (the server's ``--redis`` not answering: 503; a limited key's request under
  ``--redis-fail closed``, or one that needs stored responses). A fixed set of seven.
- ``gencli_fallbacks_total{model, to}``: a request answered by another deployment or fallback

Every label value comes from a bounded set, never from request text: ``route`` and
``method`` from the route table (``other`` for anything else), ``model`` and ``deployment``
from the registry (``-`` for a name it does not hold), ``key`` the name of the key the
request came with (a person's key's name in the keys file, ``operator`` for the server's
API key, ``-`` without one; as many values as the keys file has keys), which the guard
notes as ``scope["gencli"]["key"]``, ``status`` an HTTP status.

``--workers N``: prometheus_client's multiprocess mode. ``gencli serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it forks (prometheus_client reads
it there, the one setting passed by the environment), every worker writes its values to
its own files, and a scrape, whichever worker takes it, adds up all of them: the counters
and histograms are the server's totals, ``gencli_in_flight_requests`` the sum over the live
workers. The directory is removed when the server stops.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from gencli.server.asgi import ASGIApp, Message, Receive, Scope, Send, send_bytes, send_json

if TYPE_CHECKING:
    from gencli.server.state import State

MAX_REQUEST_ID = 128
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def request_id(value: bytes | None) -> bytes:
    """The client's X-Request-Id when it is a safe token, else a new one (16 hex digits)."""
    if value is not None and 0 < len(value) <= MAX_REQUEST_ID and _ID_CHARS.issuperset(value):
        return value
    return os.urandom(8).hex().encode()


class _Count:
    """One labelled counter of one process (no lock: only the event loop's thread counts)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Spread:
    """One labelled histogram of one process: a count per bucket (its upper bound, inclusive)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """A metric of one process, kept as plain numbers and turned into prometheus_client's
    metric families when scraped (:class:`_Collector`): counting a request takes no lock."""

    __slots__ = ("name", "doc", "labelnames", "bounds", "children")

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...], bounds: tuple[float, ...] | None = None):
        self.name, self.doc, self.labelnames, self.bounds = name, doc, labelnames, bounds
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Count() if self.bounds is None else _Spread(self.bounds)
        return child


class _Collector:
    """prometheus_client's view of the :class:`_Family` metrics (and the in-flight count)."""

    def __init__(self, families: list[_Family], active: Any):
        self.families = families
        self.active = active

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for f in self.families:
            if f.bounds is None:
                counter = CounterMetricFamily(f.name, f.doc, labels=f.labelnames)
                for values, child in list(f.children.items()):
                    counter.add_metric(values, child.value)
                yield counter
                continue
            histogram = HistogramMetricFamily(f.name, f.doc, labels=f.labelnames)
            for values, child in list(f.children.items()):
                total, buckets = 0, []
                for bound, n in zip((*f.bounds, float("inf")), child.counts, strict=True):
                    total += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
                histogram.add_metric(values, buckets, child.sum)
            yield histogram
        gauge = GaugeMetricFamily("gencli_in_flight_requests", "Requests being answered now")
        gauge.add_metric((), self.active())
        yield gauge


class Metrics:
    """The server's Prometheus metrics (see the module docstring). ``models``: the registry's
    names, the only model label values. One process: plain numbers that prometheus_client
    turns into its text format when scraped; several (``--workers``): prometheus_client's
    own metrics in its multiprocess mode, so that every worker's values are added up."""

    def __init__(self, models: set[str], deployments: set[str]):
        from prometheus_client import CollectorRegistry

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.models = models
        self.deployments = deployments
        self.active = 0  # requests in this process now (Observe counts them)
        # the labelled children, by metric and label values (bounded sets)
        self._children: dict[tuple[Any, ...], Any] = {}
        rows: list[tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = [
            ("gencli_requests", "HTTP requests answered", ("route", "method", "model", "status"), None),
            (
                "gencli_upstream_latency_seconds",
                "Time from a generation's preparation to its answer's end (retries and fallbacks included)",
                ("model", "deployment"),
                LATENCY_BUCKETS,
            ),
            (
                "gencli_time_to_first_token_seconds",
                "Time from a streamed generation's preparation to its first token",
                ("model", "deployment"),
                TTFT_BUCKETS,
            ),
            ("gencli_tokens", "Tokens in (prompt) and out (completion)", ("model", "key", "direction"), None),
            ("gencli_rejected_requests", "Requests refused before any work, by reason", ("reason",), None),
            ("gencli_fallbacks", "Requests answered by another deployment or a fallback", ("model", "to"), None),
        ]
        made: list[Any] = []
        self.live: Any = None
        if self.multiprocess:
            from prometheus_client import Counter, Gauge, Histogram

            for name, doc, labels, bounds in rows:
                if bounds is None:
                    made.append(Counter(name, doc, labels, registry=registry))
                else:
                    made.append(Histogram(name, doc, labels, buckets=bounds, registry=registry))
            # each worker's share, written to its file as it changes; the scrape sums the live ones
            self.live = Gauge(
                "gencli_in_flight_requests",
                "Requests being answered now",
                registry=registry,
                multiprocess_mode="livesum",
            )
        else:
            families = [_Family(*row) for row in rows]
            made.extend(families)
            registry.register(_Collector(families, lambda: self.active))
        self.requests, self.latency, self.ttft, self.tokens, self.rejected, self.fallbacks = made

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def model(self, name: Any) -> str:
        return name if type(name) is str and name in self.models else "-"

    def record(self, route: str, method: str, status: int, info: dict[str, Any] | None) -> None:
        model = "-"
        if info:
            model = self.model(info.get("model"))
            served = info.get("served_by")
            if served is not None:
                name = self.model(served[0])
                deployment = served[1] if served[1] in self.deployments else "-"
            else:
                name, deployment = model, "-"
            timing = info.get("timing")
            if timing is not None:
                total, first = timing
                self.child(self.latency, name, deployment).observe(total / 1e9)
                if first is not None:
                    self.child(self.ttft, name, deployment).observe(first / 1e9)
            tokens = info.get("tokens")
            if tokens:
                key = info.get("key") or "-"
                tin, tout = tokens.get("prompt"), tokens.get("completion")
                if tin:
                    self.child(self.tokens, name, key, "in").inc(tin)
                if tout:
                    self.child(self.tokens, name, key, "out").inc(tout)
            if info.get("fell_back") and served is not None:
                self.child(self.fallbacks, model, name).inc()
            reason = info.get("rejected")
            if reason is not None:
                self.child(self.rejected, reason).inc()
        if status == 413 and not (info and info.get("rejected")):
            self.child(self.rejected, "size").inc()  # a body or JSON value over a bound, found while reading it
        elif status == 503 and not (info and info.get("rejected")):
            self.child(self.rejected, "busy").inc()  # a memory budget or a local model's queue is full
        self.child(self.requests, route, method, model, str(status)).inc()

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class Observe:
    """ASGI middleware: the request id, the in-flight count and the metrics of each request
    (see the module docstring). ``route_of(method, path)``: the route table's (route,
    method) labels."""

    def __init__(self, app: ASGIApp, state: State, route_of: Any):
        self.app = app
        self.state = state
        self.metrics = state.metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
                break
        rid = request_id(given)
        info = scope.get("gencli")
        if info is None:
            info = scope["gencli"] = {}
        info["request_id"] = rid
        header = (b"x-request-id", rid)
        status = 0

        async def send_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        metrics = self.metrics
        if metrics is None:
            await self.app(scope, receive, send_id)
            return
        live = metrics.live  # --workers: prometheus_client's gauge
        metrics.active += 1
        if live is not None:
            live.inc()
        try:
            await self.app(scope, receive, send_id)
        finally:
            metrics.active -= 1
            if live is not None:
                live.dec()
            route, method = self.route_of(scope["method"], scope["path"])
            metrics.record(route, method, status or 499, scope.get("gencli"))


# -- the routes -------------------------------------------------------------------------------


def routes(state: State) -> dict[tuple[str, str], Any]:
    """/health, /ready (no key needed: the guard lets them through) and /metrics (when on)."""

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        """Alive: the process answers."""
        await send_json(send, 200, {"status": "ok"}, head=scope["method"] == "HEAD")

    async def ready(scope: Scope, receive: Receive, send: Send) -> None:
        """Ready: settings were valid at start (else the process would not run), the upstream
        pool is open, and at least one model can answer (its key is set)."""
        pool = state.transport.pool
        problems = []
        if pool is None or pool.closed:
            problems.append("the upstream connection pool is not open")
        ready_models = len(state.ready_models())
        if not ready_models:
            problems.append("no model is ready (set a provider key; see 'gencli models')")
        body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "models_ready": ready_models}
        if problems:
            body["problems"] = problems
        await send_json(send, 503 if problems else 200, body, head=scope["method"] == "HEAD")

    table: dict[tuple[str, str], Any] = {
        ("GET", "/health"): health,
        ("HEAD", "/health"): health,
        ("GET", "/ready"): ready,
        ("HEAD", "/ready"): ready,
    }
    metrics = state.metrics
    if metrics is not None:

        async def exposition(scope: Scope, receive: Receive, send: Send) -> None:
            """The metrics in Prometheus' text format."""
            await send_bytes(send, 200, metrics.exposition(), [(b"content-type", METRICS_TYPE)])

        table[("GET", "/metrics")] = exposition
    return table
