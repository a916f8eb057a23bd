"""Revocations: names revoked until a deadline (signed-out UI sessions), on every replica.

Contract (both implementations):
- `revoke(name, ttl_s)`: `revoked(name)` answers True from now until ttl_s from now, in
  this process at once; on every replica sharing the Redis, once the SET has landed.
  Revoking again extends or shortens the deadline.
- Neither method ever raises on Redis trouble. This process's own revocations are kept in
  it too, so they hold while Redis is away; revocations made by other replicas are not
  seen while Redis is away (and are seen again once it is back, if still in force).
- While Redis is away it is asked again at most once every `retry_s`, so an outage costs
  at most one slow call (op_timeout_s) per retry_s, not one per request.

In Redis a revocation is `SET <prefix>revoked:<name> 1 PX <ttl ms>` (the key layout is
shared with replicas of other versions: do not change it).

The client is built from `cache.redis_url` exactly as the cache tier's is (handed to
redis-py's `Redis.from_url` as it is): a password or user and password in the URL, and
`rediss://` for TLS, work alike for both. Nothing here logs the URL; Redis errors are
logged by their type only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class Revocations(Protocol):
    async def revoke(self, name: str, ttl_s: float) -> None: ...

    async def revoked(self, name: str) -> bool: ...

    async def close(self) -> None: ...


class LocalRevocations:
    """This process only."""

    def __init__(self) -> None:
        # name -> time.monotonic() deadline. Expired names are swept on every revoke(),
        # so the table holds at most the names revoked within the longest ttl.
        self._until: dict[str, float] = {}

    async def revoke(self, name: str, ttl_s: float) -> None:
        now = time.monotonic()
        self._until = {n: t for n, t in self._until.items() if t > now}
        self._until[name] = now + ttl_s

    async def revoked(self, name: str) -> bool:
        return self._until.get(name, 0.0) > time.monotonic()

    async def close(self) -> None:
        return None


class RedisRevocations:
    """Shared by every replica on the same Redis and prefix; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw:",
        op_timeout_s: float = 0.5,
        retry_s: float = 1.0,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
            # Nothing keeps this client's idle connections fresh, so the first command
            # after a Redis restart meets one the server closed: try once more on a new
            # one rather than lose a sign-out. (A refused connection fails fast twice; a
            # timeout is not retried.)
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
        )
        self._prefix = prefix
        self._retry_s = retry_s
        # Kept here too, and asked first: they must hold through Redis outages.
        self._local = LocalRevocations()
        # time.monotonic() before which Redis is not asked: 0 while it answers, set by the
        # first failure of an outage, cleared by the first success after it.
        self._away_until = 0.0
        self._away = False

    async def revoke(self, name: str, ttl_s: float) -> None:
        await self._local.revoke(name, ttl_s)
        if self._skip():
            return
        try:
            await self._redis.set(self._key(name), b"1", px=max(1, int(ttl_s * 1000)))
        except _REDIS_ERRORS as exc:
            self._failed(exc)
        else:
            self._answered()

    async def revoked(self, name: str) -> bool:
        if await self._local.revoked(name):
            return True
        if self._skip():
            return False
        try:
            found = bool(await self._redis.exists(self._key(name)))
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self._answered()
        return found

    async def close(self) -> None:
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._redis.aclose()

    def _key(self, name: str) -> str:
        return f"{self._prefix}revoked:{name}"

    def _skip(self) -> bool:
        return time.monotonic() < self._away_until

    def _failed(self, exc: BaseException) -> None:
        if not self._away:
            self._away = True
            log.warning("Redis unreachable (%s): revocations kept in this process only, "
                        "retrying", type(exc).__name__)
        self._away_until = time.monotonic() + self._retry_s

    def _answered(self) -> None:
        if self._away:
            self._away = False
            log.warning("Redis reachable again: revocations shared again")
        self._away_until = 0.0
