"""Prometheus collectors and the request-timing middleware.

Collectors live in a registry owned by one application (not the process-global one), so
several apps in one process (tests, benchmarks) never clash. Metric names are a contract.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.cache import Cache, CacheObserver, RedisTier, Result
from gateway.upstream.client import UpstreamObserver

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

    def watch_cache(self, cache: Cache) -> None:
        self.cache_entries.set_function(lambda: len(cache.store))
        self.cache_bytes.set_function(lambda: cache.store.bytes)
        if isinstance(cache.tier, RedisTier):
            redis_up = Gauge(
                "gateway_redis_up", "1 while the shared Redis tier is reachable; 0 while the "
                "gateway serves from its in-process cache only.", registry=self.registry,
            )
            redis_up.set_function(lambda: cache.tier.up)

    # CacheObserver
    def lookup(self, kind: str, result: Result) -> None:
        self.cache_lookups.labels(kind, result.value).inc()

    def invalidated(self, kind: str) -> None:
        self.invalidations.labels(kind).inc()

    # UpstreamObserver
    def sent(self) -> None:
        self.upstream_inflight.inc()

    def answered(self, endpoint: str, status: str, seconds: float) -> None:
        self.upstream_inflight.dec()
        self.upstream_requests.labels(endpoint, status).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)

    def identity_answered(self, status: str) -> None:
        self.upstream_requests.labels("identity", status).inc()

    def exposition(self) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """The matched route's template (`/api/Lot/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def timing_middleware(metrics: Metrics) -> Callable:
    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_label(request)
            metrics.http_requests.labels(route, request.method, str(status)).inc()
            metrics.http_seconds.labels(route).observe(time.perf_counter() - start)

    return timing
