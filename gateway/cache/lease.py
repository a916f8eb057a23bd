"""Leases in Redis: one holder per name across every replica, the others wait for it.

The one primitive behind both cross-replica fetch coalescing (a lease per key being
fetched) and exclusive() locks (a lease per lock name).

Contract:
- `acquire(lease, look)` returns an Acquired with exactly one of:
  - token: the lease is ours, for `ttl_s`. Give it back with `release(lease, token)`, in
    a `finally`. A fetch lease is not renewed: the fetch must finish within `ttl_s`, or
    another replica may take the lease and make the same call (harmless, only wasted).
    A lock is held inside `renewed(lease, token)`, which keeps extending it while the
    work runs, however long that takes.
  - found: `look()` found what the holder was producing, so there is no need to hold
    the lease (a fetch waiter reads the stored value).
  - neither: Redis went away, or was away to begin with. The caller falls back (fetches
    on its own, makes do with its in-process lock).
- While the lease is held by someone else, acquire() sleeps until its holder announces
  the release, or until the lease expires (a holder that died or hung holds the others
  up only for the rest of its lease), then tries again.
- An expiry read back from Redis is never trusted beyond `ttl_s`: a lease key with a
  longer expiry, or none, was not set by a replica (replicas share one lease length), so
  the first waiter to see it cuts its expiry to `ttl_s` and waits at most that long. A
  poisoned key holds the others up for one lease at most, never for hours.
- No release can be missed: the waiter is registered before it looks and tries once
  more, and the wait starts only after that. Every waiter is woken when Redis goes down
  (`wake_all()`), and then returns with neither.
- Cancelling acquire() (a caller that stopped waiting) leaves no lease behind: a SET
  that may have landed is given back in the background.
- `release()` deletes the lease only if our token still holds it (it may have expired
  and been taken by another), then announces the release, even if it was no longer ours:
  a spurious wake-up only makes a waiter look again. It never raises.
- `renewed(lease, token)`: while inside, the lease is extended to a full `ttl_s` every
  `ttl_s / 3`, only while our token still holds it (compare-and-PEXPIRE). Leaving it,
  normally or by cancellation, stops the renewing. A renewal that finds the token gone
  (the lease expired, e.g. Redis was unreachable for longer than a lease, and another
  may have taken it) logs an error, counts it in `lost` and stops renewing; the work
  inside goes on, and its own outcome stands.
- Redis trouble during acquire() or a renewal is reported to `on_error` (which degrades
  the tier) and is never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from gateway.cache.listener import REDIS_ERRORS, shown
from gateway.cache.redis_layout import Lease, released

log = logging.getLogger(__name__)

T = TypeVar("T")

# Delete the lease only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend the lease to ARGV[2] ms only if we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Cut an expiry longer than ARGV[1] ms, or none at all, to ARGV[1] ms; the expiry after.
# Atomic: a lease released and taken afresh since the caller's PTTL is left alone.
_CAP = """
local ttl = redis.call('PTTL', KEYS[1])
local cap = tonumber(ARGV[1])
if ttl == -1 or ttl > cap then
  redis.call('PEXPIRE', KEYS[1], cap)
  return cap
end
return ttl
"""


@dataclass(frozen=True, slots=True)
class Acquired(Generic[T]):
    token: str | None = None
    found: T | None = None


async def _nothing() -> None:
    return None


class _Renewal:
    """One lease being renewed; `stopped` once its holder let go (checked after every
    await: a cancellation may land too late to stop a renewal already sent)."""

    def __init__(self) -> None:
        self.stopped = False


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
        self._renew = redis.register_script(_RENEW)
        self._cap = redis.register_script(_CAP)
        # Renewals running and releases sent in the background: strong references, so
        # they run to the end; cancelled by close().
        self._tasks: set[asyncio.Task[None]] = set()
        self.lost = 0  # renewals that found the lease no longer ours
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

    @contextlib.asynccontextmanager
    async def renewed(self, lease: Lease, token: str) -> AsyncIterator[None]:
        """The lease stays ours while inside (see the module docstring)."""
        renewal = _Renewal()
        task = self._spawn(self._keep(lease, token, renewal))
        try:
            yield
        finally:
            renewal.stopped = True
            task.cancel()

    def close(self) -> None:
        """Stop every renewal and background release (the tier is closing)."""
        for task in self._tasks:
            task.cancel()

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
        try:
            return bool(await self._redis.set(lease.key, token, nx=True, px=self._ttl_ms))
        except (asyncio.CancelledError, *REDIS_ERRORS):
            # Cancelled, or the answer lost: the SET may have landed all the same. Give
            # it back (only if it is ours), or it would hold everyone up for a lease.
            self._spawn(self.release(lease, token))
            raise

    async def _wait(self, lease: Lease, waiter: asyncio.Future[None]) -> None:
        """Until the holder says "done", or its lease runs out (it may have died)."""
        ttl_ms = await self._redis.pttl(lease.key)  # -2: already gone; -1: no expiry
        if ttl_ms == -1 or ttl_ms > self._ttl_ms:
            ttl_ms = await self._cap(keys=[lease.key], args=[self._ttl_ms])
            log.warning("%s had an expiry longer than any lease a replica sets, or none; "
                        "cut to %d ms", shown(lease.key), self._ttl_ms)
        # Capped here too: nothing read from Redis makes a waiter sleep beyond a lease.
        wait_ms = min(max(ttl_ms, 10), self._ttl_ms)
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as it times out, and a caller's deadline (locks.waited) would be lost.
        await asyncio.wait({waiter}, timeout=wait_ms / 1000 + 0.05)

    async def _keep(self, lease: Lease, token: str, renewal: _Renewal) -> None:
        every_s = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(every_s)
            if renewal.stopped:
                return
            try:
                held = await self._renew(keys=[lease.key], args=[token, self._ttl_ms])
            except REDIS_ERRORS as exc:
                self._on_error(exc)  # tried again next time: the lease may outlast it
                continue
            if renewal.stopped:
                return
            if not held:
                self.lost += 1
                log.error("lost %s while its holder was still at work: it expired (Redis "
                          "unreachable for longer than a lease?) and another replica may "
                          "hold it now; the holder finishes its work regardless",
                          shown(lease.name))
                return

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
