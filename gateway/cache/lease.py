"""Leases in Redis: one holder per name across every replica, the others wait for it.

The one primitive behind both cross-replica fetch coalescing (a lease per key being
fetched) and exclusive() locks (a lease per lock name).

Contract:
- `acquire(lease, look)` returns an Acquired with exactly one of:
  - token: the lease is ours, for `ttl_s`. Give it back with `release(lease, token)`, in
    a `finally`. Leases are never renewed: the work must finish within `ttl_s`, or
    another replica may take the lease and do the same work.
  - found: `look()` found what the holder was producing, so there is no need to hold
    the lease (a fetch waiter reads the stored value).
  - neither: Redis went away, or was away to begin with. The caller falls back (fetches
    on its own, makes do with its in-process lock).
- While the lease is held by someone else, acquire() sleeps until its holder announces
  the release, or until the lease expires (a holder that died or hung holds the others
  up only for the rest of its lease), then tries again.
- No release can be missed: the waiter is registered before it looks and tries once
  more, and the wait starts only after that. Every waiter is woken when Redis goes down
  (`wake_all()`), and then returns with neither.
- `release()` deletes the lease only if our token still holds it (it may have expired
  and been taken by another), then announces the release, even if it was no longer ours:
  a spurious wake-up only makes a waiter look again. It never raises.
- Redis trouble during acquire() is reported to `on_error` (which degrades the tier) and
  is never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from gateway.cache.listener import REDIS_ERRORS
from gateway.cache.redis_layout import Lease, released

T = TypeVar("T")

# Delete the lease only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Acquired(Generic[T]):
    token: str | None = None
    found: T | None = None


async def _nothing() -> None:
    return None


class Leases:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        channel: str,
        ttl_s: float,
        is_up: Callable[[], bool],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._is_up = is_up
        self._on_error = on_error
        self._release = redis.register_script(_RELEASE)
        # Lease name -> futures of the tasks waiting for its release. A future is added by
        # its waiter before it looks again, removed by that waiter when it stops waiting;
        # resolved by wake() (a "done" message) or wake_all() (Redis went down).
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def acquire(
        self, lease: Lease, look: Callable[[], Awaitable[T | None]] = _nothing
    ) -> Acquired[T]:
        token = secrets.token_hex(8)
        try:
            while self._is_up():
                if (found := await look()) is not None:
                    return Acquired(found=found)
                if await self._take(lease, token):
                    return Acquired(token=token)
                waiter = self._register(lease.name)
                try:
                    # Registered: a release from now on resolves `waiter`, so one that
                    # happened before these two checks is seen by them.
                    if (found := await look()) is not None:
                        return Acquired(found=found)
                    if await self._take(lease, token):
                        return Acquired(token=token)
                    await self._wait(lease, waiter)
                finally:
                    self._unregister(lease.name, waiter)
        except REDIS_ERRORS as exc:
            self._on_error(exc)
        return Acquired()

    async def release(self, lease: Lease, token: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._release(keys=[lease.key], args=[token])
            await self._redis.publish(self._channel, released(lease.name))

    def wake(self, name: str) -> None:
        """The lease `name` was released ("done <name>"): its waiters try again."""
        for future in self._waiters.pop(name, []):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        """Redis went down: every waiter stops waiting (and falls back)."""
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def _take(self, lease: Lease, token: str) -> bool:
        return bool(await self._redis.set(lease.key, token, nx=True, px=self._ttl_ms))

    async def _wait(self, lease: Lease, waiter: asyncio.Future[None]) -> None:
        """Until the holder says "done", or its lease runs out (it may have died)."""
        ttl_ms = await self._redis.pttl(lease.key)  # negative: already gone
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, max(ttl_ms, 10) / 1000 + 0.05)

    def _register(self, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(future)
        return future

    def _unregister(self, name: str, future: asyncio.Future[None]) -> None:
        futures = self._waiters.get(name)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiters[name]
