"""Prometheus collectors.

Collectors live in a registry owned by one application (not the process-global one), so
several apps in one process (tests, benchmarks) never clash. Metric names are a contract.

The counts made on every request (cache lookups, requests served, their durations) are
kept in plain dicts and added to their collectors in batches: at every scrape
(`exposition`), and once PENDING_MAX of them wait (on the loop's next turn). A warm request
so pays a dict update instead of a labelled child lookup and a lock per count; a scrape
sees every request that finished before it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.cache import Cache, CacheObserver, RedisTier, Result
from gateway.upstream.client import UpstreamObserver

# Counts kept before they are added to their collectors anyway, on the loop's next turn:
# few enough that adding them (about a microsecond each) holds the loop up a fraction of a
# millisecond at most.
PENDING_MAX = 256

# gateway.prefetch.Outcome's values, each exported from the start (a test checks they agree).
PREFETCH_OUTCOMES = ("fetched", "skipped_fresh", "dropped_full", "deferred_busy",
                     "paused_breaker", "failed")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0,
                    1.5, 2.5, 5.0, 10.0, 30.0)


class Metrics(CacheObserver, UpstreamObserver):
    """Every collector of one app; the cache and the upstream client report through the
    observer methods at the bottom, so neither imports prometheus_client."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cache_lookups = Counter(
            "gateway_cache_lookups", "Cache lookups by phase result.", ["kind", "result"],
            registry=r,
        )
        self.cache_entries = Gauge("gateway_cache_entries", "Entries in the cache.", registry=r)
        self.cache_bytes = Gauge(
            "gateway_cache_bytes", "Bytes held by the cache (bodies + overhead).", registry=r
        )
        self.invalidations = Counter(
            "gateway_invalidations", "Cache keys invalidated.", ["kind"], registry=r
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests", "Requests sent upstream, by endpoint template and "
            "HTTP status (or 'error' for no answer).", ["endpoint", "status"], registry=r,
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_request_seconds", "Upstream request duration.", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_inflight = Gauge(
            "gateway_upstream_inflight", "Upstream requests in flight now.", registry=r
        )
        self.breaker_state = Gauge(
            "gateway_upstream_breaker_state",
            "Upstream circuit breaker: 0 closed, 1 half-open (probing), 2 open.", registry=r,
        )
        self.overrides = Counter(
            "gateway_overrides", "Override saves by outcome (saved, unchanged, rejected, "
            "not_found, conflict, upstream_error).", ["outcome"], registry=r,
        )
        self.http_requests = Counter(
            "gateway_http_requests", "Requests served, by route template.",
            ["route", "method", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "gateway_http_request_seconds", "Time to serve a request.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        # By kind of caller only (key, token, address): a label per caller name or address
        # would grow without bound.
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused with 429 because their caller had "
            "used up its requests (limits.requests_per_s, limits.burst), by kind of caller.",
            ["caller_kind"], registry=r,
        )
        for kind in ("key", "token", "address"):  # every series exported from the start
            self.rate_limited.labels(kind)
        self.prefetches = Counter(
            "gateway_prefetch", "Prefetch wishes (events a seller list shows, an event's next "
            "page of lots) by how each ended: fetched, skipped_fresh, dropped_full, "
            "deferred_busy, paused_breaker, failed.", ["outcome"], registry=r,
        )
        for outcome in PREFETCH_OUTCOMES:
            self.prefetches.labels(outcome)
        # Not yet added to their collectors (see the module docstring). Only the event loop
        # thread touches them; `_pending` counts the entries of all three.
        self._lookups: dict[tuple[str, Result], int] = defaultdict(int)
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._seconds: dict[str, list[float]] = defaultdict(list)
        self._pending = 0

    def watch_cache(self, cache: Cache) -> None:
        self.cache_entries.set_function(lambda: len(cache.store))
        self.cache_bytes.set_function(lambda: cache.store.bytes)
        if isinstance(cache.tier, RedisTier):
            redis_up = Gauge(
                "gateway_redis_up", "1 while the shared Redis tier is reachable; 0 while the "
                "gateway serves from its in-process cache only.", registry=self.registry,
            )
            redis_up.set_function(lambda: cache.tier.up)

    def served(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered (or given up on): gateway_http_requests_total and
        gateway_http_request_seconds, counted in a batch."""
        self._requests[route, method, status] += 1
        self._seconds[route].append(seconds)
        self._count()

    def flush(self) -> None:
        """Add every pending count to its collector."""
        lookups, self._lookups = self._lookups, defaultdict(int)
        requests, self._requests = self._requests, defaultdict(int)
        seconds, self._seconds = self._seconds, defaultdict(list)
        self._pending = 0
        for (kind, result), n in lookups.items():
            self.cache_lookups.labels(kind, result.value).inc(n)
        for (route, method, status), n in requests.items():
            self.http_requests.labels(route, method, str(status)).inc(n)
        for route, observed in seconds.items():
            histogram = self.http_seconds.labels(route)
            for value in observed:
                histogram.observe(value)

    def _count(self) -> None:
        self._pending += 1
        if self._pending == PENDING_MAX:  # added on the loop's next turn, after the answers
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running here: now
                self.flush()

    # CacheObserver
    def lookup(self, kind: str, result: Result, n: int = 1) -> None:
        self._lookups[kind, result] += n
        self._count()

    def invalidated(self, kind: str) -> None:
        self.invalidations.labels(kind).inc()

    # UpstreamObserver
    def sent(self) -> None:
        self.upstream_inflight.inc()

    def answered(self, endpoint: str, status: str, seconds: float) -> None:
        self.upstream_inflight.dec()
        self.upstream_requests.labels(endpoint, status).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)

    def prefetched(self, outcome: str, n: int = 1) -> None:
        self.prefetches.labels(outcome).inc(n)

    def identity_answered(self, status: str) -> None:
        self.upstream_requests.labels("identity", status).inc()

    def exposition(self) -> web.Response:
        self.flush()
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


def route_label(request: web.Request) -> str:
    """The matched route's template (`/api/Lot/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
