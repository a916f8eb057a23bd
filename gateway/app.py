"""create_app(config): wiring only. Every middleware in order, every edge's routes, and one
start-up context that opens (and closes) every resource the domain needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from async_lru import alru_cache

import ui
from gateway import api, embedded
from gateway.access import AccessLog
from gateway.admission import Admission
from gateway.audit import AuditLog
from gateway.cache import Cache, LocalTier, RedisTier
from gateway.config import Config, token_issuer
from gateway.errors import GatewayError, NotFound
from gateway.metrics import Metrics
from gateway.prefetch import Prefetcher
from gateway.reads import Reads
from gateway.representations import Pages
from gateway.revocations import LocalRevocations, RedisRevocations
from gateway.sessions import Cookies, OperatorSessions, signing_secret
from gateway.state import (
    ACCESS_LOG,
    ADMISSION,
    AUDIT,
    CACHE,
    CONFIG,
    METRICS,
    PAGES,
    READINESS,
    READS,
    SESSIONS,
    SIGNING_KEYS,
    TOKENS,
    WRITES,
)
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.identity import TokenProvider
from gateway.upstream.signing_keys import SigningKeys
from gateway.writes import Writes

log = logging.getLogger(__name__)

# Assembled pages may hold up to 1/PAGES_SHARE of cache.max_bytes besides the cache.
PAGES_SHARE = 8


def create_app(config: Config) -> web.Application:
    metrics = Metrics()
    access, admission = AccessLog(metrics), Admission(config, metrics)
    app = web.Application(middlewares=[
        access.middleware(),  # X-Request-ID in and out; metrics; the access line
        api.problem_middleware,  # any error that reaches it leaves as problem+json
        # Host (421) and Origin (403) rules; /api/*: API key, own JWT or none; a token
        # bucket per caller (429).
        admission.middleware(),
    ])
    app[CONFIG] = config
    app[METRICS] = metrics
    app[ACCESS_LOG] = access
    app[ADMISSION] = admission
    app[AUDIT] = AuditLog(config.audit.path)
    app[PAGES] = Pages(max_bytes=config.cache.max_bytes // PAGES_SHARE)
    api.add_routes(app)
    ui.add_routes(app)  # its own middlewares (HTML errors, sessions) wrap its routes only
    app.cleanup_ctx.append(_services)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with contextlib.AsyncExitStack() as stack:
        if config.upstream.mode == "sandbox":
            config = await stack.enter_async_context(embedded.in_process(config))
        await stack.enter_async_context(_domain(app, config))
        yield


@contextlib.asynccontextmanager
async def _domain(app: web.Application, config: Config) -> AsyncIterator[None]:
    """Upstream session, token, client, cache and revocations; then the domain services."""
    up, cc, metrics = config.upstream, config.cache, app[METRICS]
    session = aiohttp.ClientSession(
        # Room above the API cap for identity calls (the operators' sign-in checks and the
        # gateway's own sign-in), which do not take an API slot.
        connector=aiohttp.TCPConnector(
            limit=up.max_concurrency + config.limits.sign_in_concurrency + 1, ttl_dns_cache=300
        ),
        raise_for_status=False,
    )
    tokens = TokenProvider(session, up.identity_url, config.credentials, scope=up.scope,
                           timeout_s=up.timeout_s, on_call=metrics.identity_answered)
    breaker = CircuitBreaker(
        window_s=up.breaker_window_s, min_calls=up.breaker_min_calls,
        failure_ratio=up.breaker_failure_ratio, open_s=up.breaker_open_s,
    )
    metrics.breaker_state.set_function(lambda: breaker.state)
    client = UpstreamClient(
        session, up.base_url, tokens, observer=metrics, max_concurrency=up.max_concurrency,
        timeout_s=up.timeout_s, retries=up.retries, queue_timeout_s=up.queue_timeout_s,
        breaker=breaker, upstream_share=config.limits.upstream_share,
    )
    if cc.backend == "redis":
        tier = RedisTier(
            cc.redis_url, ttl_s=cc.ttl_s,
            keep_s=max(cc.stale_while_revalidate_s, cc.stale_if_error_s),
            # A lease must outlast the slowest upstream call it covers (all retries).
            lease_s=up.timeout_s * (up.retries + 1) + 2.0,
            prefix=cc.redis_prefix,
        )
        revocations = RedisRevocations(cc.redis_url, prefix=cc.redis_prefix)
    else:
        tier, revocations = LocalTier(), LocalRevocations()
    cache = Cache(
        ttl_s=cc.ttl_s, max_bytes=cc.max_bytes, observer=metrics,
        stale_while_revalidate_s=cc.stale_while_revalidate_s,
        stale_if_error_s=cc.stale_if_error_s,
        # Stale answers stand in for upstream failures (5xx kinds), never for a 4xx.
        serve_stale_on=lambda exc: isinstance(exc, GatewayError) and exc.status >= 500,
        negative_ttl=lambda exc: cc.negative_ttl_s if isinstance(exc, NotFound) else None,
        tier=tier, refresh_ahead=cc.refresh_ahead,
    )
    try:
        await cache.start()  # raises when Redis refuses the credentials
    except BaseException:
        await revocations.close()
        await session.close()
        raise
    metrics.watch_cache(cache)
    app[CACHE] = cache
    app[TOKENS] = tokens
    app[READS] = reads = Reads(cache, client)
    prefetcher = None
    if config.prefetch.enabled:  # reads tells it what comes next; it fetches behind clients
        prefetcher = Prefetcher(reads, cache, client, max_inflight=config.prefetch.max_inflight,
                                on_outcome=metrics.prefetched)
        reads.prefetch = prefetcher
        prefetcher.start()
    app[WRITES] = Writes(
        cache, client, on_override=lambda outcome: metrics.overrides.labels(outcome).inc(),
        lock_wait_s=config.limits.lock_wait_s,
    )
    app[SESSIONS] = OperatorSessions(
        Cookies(signing_secret(config.session_secret)), revocations, tokens, app[CONFIG]
    )
    app[READINESS] = alru_cache(maxsize=1, ttl=2.0)(tokens.token)
    if config.auth.upstream_tokens != "off":  # callers' own JWTs: the keys to verify them
        app[SIGNING_KEYS] = SigningKeys(
            session, token_issuer(config), timeout_s=up.timeout_s,
            on_fetch=lambda *labels: metrics.upstream_requests.labels(*labels).inc(),
        )
        app[SIGNING_KEYS].start()  # fetched now, so the first token need not wait for them

    # Sign in now, so the first operator request does not pay for it. Failure is not
    # fatal: /readyz reports it and requests retry it.
    warm = asyncio.create_task(tokens.token())
    warm.add_done_callback(_log_warm_failure)
    try:
        yield
    finally:
        warm.cancel()
        if prefetcher is not None:  # before the cache: nothing prefetched lands after it
            await prefetcher.close()
        if SIGNING_KEYS in app:
            app[SIGNING_KEYS].close()
        await cache.close()
        await revocations.close()
        await session.close()


def _log_warm_failure(task: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.warning("could not sign in to the upstream yet: %s", task.exception())
