"""create_app(config): wiring only. Every resource is opened and closed in one cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from async_lru import alru_cache

from gateway.api import CATALOG, METRICS, READINESS, add_routes, problem_middleware
from gateway.auth import api_key_middleware
from gateway.cache import Cache
from gateway.cache.shared import RedisTier
from gateway.catalog import CatalogService
from gateway.config import Config
from gateway.errors import GatewayError, NotFound
from gateway.metrics import Metrics, timing_middleware
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.identity import IdentityCredentials, TokenProvider
from gateway.upstream.sandbox import DEMO_ACCOUNTS, SANDBOX, start_sandbox
from ui import setup_ui

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
CACHE = web.AppKey("cache", Cache)
TOKENS = web.AppKey("tokens", TokenProvider)
SANDBOX_URL = web.AppKey("sandbox_url", str)

SANDBOX_SERVICE_ACCOUNT = "gateway"


def create_app(config: Config) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        middlewares=[
            timing_middleware(metrics),
            problem_middleware,
            api_key_middleware(config.api_keys),
        ],
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    add_routes(app)
    setup_ui(app)
    app.cleanup_ctx.append(_upstream)
    return app


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    up = config.upstream
    base_url, identity_url = up.base_url, up.identity_url
    creds = IdentityCredentials(
        config.credentials.username, config.credentials.password,
        config.credentials.client_id, config.credentials.client_secret,
    )
    sandbox_runner = None
    if up.mode == "sandbox":
        sb = config.sandbox
        sandbox_runner, base_url, app[SANDBOX] = await start_sandbox(
            latency_ms=sb.latency_ms, jitter_ms=sb.jitter_ms, seed=sb.seed
        )
        identity_url = base_url + "/connect/token"
        app[SANDBOX_URL] = base_url
        if not config.credentials.complete:
            creds = IdentityCredentials(
                SANDBOX_SERVICE_ACCOUNT, DEMO_ACCOUNTS[SANDBOX_SERVICE_ACCOUNT]
            )
        log.info("sandbox upstream on %s (latency %g±%g ms)", base_url, sb.latency_ms,
                 sb.jitter_ms)

    metrics = app[METRICS]
    session = aiohttp.ClientSession(
        # Room above the API cap for identity calls, which do not take an API slot.
        connector=aiohttp.TCPConnector(limit=up.max_concurrency + 4, ttl_dns_cache=300),
        raise_for_status=False,
    )
    tokens = TokenProvider(
        session, identity_url, creds, timeout_s=up.timeout_s,
        on_call=lambda status: metrics.upstream_requests.labels("identity", status).inc(),
    )
    breaker = CircuitBreaker(
        window_s=up.breaker_window_s, min_calls=up.breaker_min_calls,
        failure_ratio=up.breaker_failure_ratio, open_s=up.breaker_open_s,
    )
    metrics.breaker_state.set_function(lambda: breaker.state)
    client = UpstreamClient(
        session, base_url, tokens, metrics=metrics, max_concurrency=up.max_concurrency,
        timeout_s=up.timeout_s, retries=up.retries, queue_timeout_s=up.queue_timeout_s,
        breaker=breaker,
    )
    cc = config.cache
    tier = None
    if cc.backend == "redis":
        tier = RedisTier(
            cc.redis_url, ttl_s=cc.ttl_s,
            keep_s=max(cc.stale_while_revalidate_s, cc.stale_if_error_s),
            # A lease must outlast the slowest upstream call it covers (all retries).
            lease_s=up.timeout_s * (up.retries + 1) + 2.0,
            prefix=cc.redis_prefix,
        )
    cache = Cache(
        ttl_s=cc.ttl_s, max_bytes=cc.max_bytes, observer=metrics,
        stale_while_revalidate_s=cc.stale_while_revalidate_s,
        stale_if_error_s=cc.stale_if_error_s,
        # Stale answers stand in for upstream failures (5xx kinds), never for a 4xx.
        serve_stale_on=lambda exc: isinstance(exc, GatewayError) and exc.status >= 500,
        negative_ttl=lambda exc: cc.negative_ttl_s if isinstance(exc, NotFound) else None,
        tier=tier,
    )
    await cache.start()
    metrics.watch_cache(cache)
    app[CACHE] = cache
    app[TOKENS] = tokens
    app[CATALOG] = CatalogService(
        cache, client, on_override=lambda outcome: metrics.overrides.labels(outcome).inc()
    )
    app[READINESS] = alru_cache(maxsize=1, ttl=2.0)(tokens.token)

    # Sign in now, so the first operator request does not pay for it. Failure is not
    # fatal: /readyz reports it and requests retry it.
    warm = asyncio.create_task(tokens.token())
    warm.add_done_callback(_log_warm_failure)
    try:
        yield
    finally:
        warm.cancel()
        await cache.close()
        await session.close()
        if sandbox_runner is not None:
            await sandbox_runner.cleanup()


def _log_warm_failure(task: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.warning("could not sign in to the upstream yet: %s", task.exception())
