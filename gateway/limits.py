"""Fair limits per caller: a token bucket of requests each, and whom upstream calls are
charged to.

A caller is an API key (by its name), a caller's own ABConnect token (by its user), or,
for anonymous /api/* requests and for the UI's routes (which carry no `Caller`), the client
address as `gateway.policy.client_address` sees it. Each has a bucket of `limits.burst`
requests, refilled at `limits.requests_per_s`; a request that finds its bucket empty is
refused with 429 and a `Retry-After` of the seconds until the next request would be let
through, and counted in `gateway_rate_limited_total{caller_kind}`. Health, readiness,
metrics, the OpenAPI document and static files are never limited.

The step (`RateStep`, run by gateway/admission.py) also sets `CHARGED_TO`
(gateway/context.py) for the rest of the request, so its upstream calls take that caller's
share of the upstream slots (gateway/upstream/fair.py).

This runs on every request, the warm ones included: one dict lookup and a little
arithmetic, no lock, no task. Memory is bounded: a bucket left alone long enough to be full
again is the same as no bucket, so it is dropped (at most once per refill period, and only
when a new caller arrives), and there are never more than `MAX_CALLERS` buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import Token
from itertools import islice

from aiohttp import web

from gateway.config import LimitsConfig
from gateway.context import CHARGED_TO
from gateway.errors import TooManyRequests
from gateway.metrics import Metrics
from gateway.policy import client_address
from gateway.state import CALLER

# Never limited: probes, scrapes, the API's own description and the UI's assets.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
EXEMPT_PREFIX = "/static/"

# More callers than this at once (each seen within one refill period): the longest-known
# buckets are dropped, which only ever lets their callers through sooner, never later.
MAX_CALLERS = 100_000


class Buckets:
    """A token bucket per caller: `burst` tokens to start with, `rate` more per second,
    never more than `burst`; each request takes one."""

    def __init__(
        self, rate: float, burst: int, *, max_callers: int = MAX_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._refill_s = burst / rate  # an idle bucket is full again after this long
        self._max_callers = max_callers
        self._clock = clock
        # caller -> [tokens left, when they were counted]; in order of first appearance.
        self._buckets: dict[str, list[float]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, caller: str) -> float:
        """Take one token for `caller`: 0.0 when there was one, else the seconds until
        there will be (and nothing is taken)."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if now >= self._next_sweep or len(self._buckets) >= self._max_callers:
                self._sweep(now)
            self._buckets[caller] = [self._burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self._rate

    def _sweep(self, now: float) -> None:
        """Drop every bucket that is full again; then, if still too many, the oldest."""
        rate, burst = self._rate, self._burst
        full = [caller for caller, (tokens, then) in self._buckets.items()
                if tokens + (now - then) * rate >= burst]
        for caller in full:
            del self._buckets[caller]
        excess = len(self._buckets) - self._max_callers + 1
        if excess > 0:
            for caller in list(islice(self._buckets, excess)):
                del self._buckets[caller]
        self._next_sweep = now + self._refill_s


class RateStep:
    """`step(request)`: take a token of the caller's bucket (after the caller step: it
    reads `Caller`), or raise 429. Returns the CHARGED_TO token to reset once the request
    is over (None for an exempt path). `step.take(request)` takes without setting
    CHARGED_TO, for an answer that calls nothing upstream (gateway/hot.py)."""

    def __init__(self, limits: LimitsConfig, metrics: Metrics) -> None:
        self._metrics = metrics
        self._buckets = Buckets(limits.requests_per_s, limits.burst)
        self._allowance = (f"at most {limits.burst} requests at once and "
                           f"{limits.requests_per_s:g} per second after that")

    def __call__(self, request: web.Request) -> Token[str | None] | None:
        charged = self.take(request)
        return None if charged is None else CHARGED_TO.set(charged)

    def take(self, request: web.Request) -> str | None:
        """Whom the request is charged to (None for an exempt path), its token taken."""
        path = request.path
        if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIX):
            return None
        caller = request.get(CALLER)
        if caller is None or caller.kind == "anonymous":
            kind, name = "address", client_address(request)
        else:
            kind, name = caller.kind, caller.name
        charged = f"{kind}:{name}"
        wait_s = self._buckets.take(charged)
        if wait_s:
            self._metrics.rate_limited.labels(kind).inc()
            raise TooManyRequests(f"too many requests from this caller: {self._allowance}",
                                  retry_after=wait_s)
        return charged
