"""The Redis tier in one process: two caches on one real Redis stand for two replicas."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import Cache, Result
from gateway.cache.shared import RedisTier

from gwtesting import timed


@pytest.fixture
async def replicas(redis):
    caches = []

    async def make() -> Cache:
        tier = RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=5, degraded_ttl_s=0.5,
                         prefix="t:")
        cache = Cache(ttl_s=60, max_bytes=10**6, tier=tier)
        await cache.start()
        caches.append(cache)
        for _ in range(250):
            if tier.up:
                break
            await asyncio.sleep(0.02)
        assert tier.up, "the Redis tier did not come up"
        return cache

    yield make
    for cache in caches:
        await cache.close()


def deaf(cache: Cache) -> None:
    """Hold back the pub/sub invalidations for this replica, as if they were late."""
    cache.tier._on_invalidate = lambda kind, key: None


class Upstream:
    def __init__(self, body: bytes = b"v1", delay: float = 0.05) -> None:
        self.body, self.delay, self.calls = body, delay, 0
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> bytes:
        self.calls += 1
        body = self.body
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        return body


async def test_concurrent_misses_on_two_replicas_make_one_upstream_call(replicas):
    a, b = await replicas(), await replicas()
    up = Upstream(delay=0.2)
    lookups = await asyncio.gather(*(c.get(("lot", 1), up.fetch) for c in [a, b] * 50))
    assert up.calls == 1
    assert {lk.entry.body for lk in lookups} == {b"v1"}


async def test_what_one_replica_fetched_the_other_serves_from_redis(replicas):
    a, b = await replicas(), await replicas()
    up = Upstream()
    assert (await a.get(("lot", 2), up.fetch)).result is Result.MISS
    shared = await b.get(("lot", 2), up.fetch)
    assert shared.result is Result.SHARED and shared.result.header == "HIT"
    assert (await b.get(("lot", 2), up.fetch)).result is Result.HIT
    assert up.calls == 1


async def test_invalidation_on_one_replica_outdates_the_others_copy_at_once(replicas):
    a, b = await replicas(), await replicas()
    up = Upstream()
    await a.get(("lot", 3), up.fetch)
    await b.get(("lot", 3), up.fetch)  # now in b's L1 too
    deaf(b)
    up.body = b"v2"
    await a.invalidate(("lot", 3))
    # No waiting for the pub/sub message: b checks the generation on every read.
    assert (await b.get(("lot", 3), up.fetch)).entry.body == b"v2"
    assert (await a.get(("lot", 3), up.fetch)).entry.body == b"v2"


async def test_read_that_began_before_an_invalidation_cannot_be_served_after_it(replicas):
    """The known race: b's read starts before a's save and lands after it returned."""
    a, b = await replicas(), await replicas()
    c = await replicas()
    gate = asyncio.Event()

    async def old_read() -> bytes:  # read the old lot, answer late
        await gate.wait()
        return b"old"

    async def new_read() -> bytes:
        return b"saved"

    deaf(b)
    early = asyncio.create_task(b.get(("lot", 4), old_read))
    await asyncio.sleep(0.05)  # b holds the key's lease, its upstream call in flight
    await a.invalidate(("lot", 4))  # the save returns here
    gate.set()
    assert (await early).entry.body == b"old"  # it asked before the save: allowed
    for cache in (b, a, c):  # after the save: nobody, b included, serves the old lot
        assert (await cache.get(("lot", 4), new_read)).entry.body == b"saved"


async def test_exclusive_is_held_across_replicas(replicas):
    a, b = await replicas(), await replicas()
    inside, overlaps = 0, 0

    async def work(cache: Cache) -> None:
        nonlocal inside, overlaps
        async with cache.exclusive("lot:9"):
            inside += 1
            overlaps += inside > 1
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(work(c) for c in [a, b] * 10))
    assert overlaps == 0


async def test_redis_outage_degrades_then_recovers_by_itself(redis, replicas):
    a, b = await replicas(), await replicas()
    up = Upstream(delay=0.0)
    await a.get(("lot", 5), up.fetch)
    redis.stop()
    # Both keep answering: L1 while young, else upstream.
    assert (await a.get(("lot", 5), up.fetch)).entry.body == b"v1"
    assert (await b.get(("lot", 6), up.fetch)).entry.body == b"v1"
    assert not a.tier.up and not b.tier.up
    async with a.exclusive("lot:5"):  # in-process lock while degraded
        pass
    redis.start()
    for _ in range(100):
        if a.tier.up and b.tier.up:
            break
        await asyncio.sleep(0.05)
    assert a.tier.up and b.tier.up
    calls = up.calls
    await a.get(("lot", 7), up.fetch)
    assert (await b.get(("lot", 7), up.fetch)).result is Result.SHARED
    assert up.calls == calls + 1


async def test_waiters_take_over_when_the_lease_holder_dies(redis):
    """A replica that took the key's lease and never finished (crashed, hung) holds the
    others up only until its lease runs out; then one of them fetches."""
    caches = []
    for _ in range(2):
        tier = RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=0.4, prefix="lease:")
        caches.append(Cache(ttl_s=60, max_bytes=10**6, tier=tier))
        await caches[-1].start()
    a, b = caches
    try:
        for _ in range(100):
            if a.tier.up and b.tier.up:
                break
            await asyncio.sleep(0.02)
        never = asyncio.Event()

        async def hang() -> bytes:
            await never.wait()
            return b"never"

        stuck = asyncio.create_task(a.get(("lot", 8), hang))
        await asyncio.sleep(0.05)  # a holds the lease
        up = Upstream(delay=0.0)
        lookup, took = await timed(b.get(("lot", 8), up.fetch))
        assert lookup.entry.body == b"v1" and up.calls == 1
        assert 0.3 < took < 1.5, took  # waited for the lease, not for ever
        stuck.cancel()
    finally:
        for cache in caches:
            await cache.close()


async def test_slow_redis_degrades_instead_of_stalling(redis, replicas):
    a = await replicas()
    up = Upstream(delay=0.0)
    await a.get(("lot", 9), up.fetch)
    # Block the Redis server for 2 s, as a slow or overloaded Redis would.
    _, writer = await asyncio.open_connection("127.0.0.1", redis.port)
    writer.write(b"DEBUG SLEEP 2\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    lookup, took = await timed(a.get(("lot", 10), up.fetch))
    assert lookup.entry.body == b"v1"
    assert took < 1.5, took  # one op timeout (0.5 s), then straight to upstream
    assert not a.tier.up
    lookup, took = await timed(a.get(("lot", 11), up.fetch))
    assert took < 0.3  # degraded: Redis is not asked again until it answers pings
    writer.close()
    for _ in range(100):
        if a.tier.up:
            break
        await asyncio.sleep(0.05)
    assert a.tier.up


async def test_environments_with_their_own_prefix_share_nothing(redis):
    caches = [Cache(ttl_s=60, max_bytes=10**6,
                    tier=RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=5, prefix=p))
              for p in ("staging:", "prod:")]
    try:
        for cache in caches:
            await cache.start()
        for _ in range(250):
            if all(c.tier.up for c in caches):
                break
            await asyncio.sleep(0.02)
        staging, prod = caches
        up = Upstream(delay=0.0)
        await staging.get(("lot", 12), up.fetch)
        assert (await prod.get(("lot", 12), up.fetch)).result is Result.MISS
        assert up.calls == 2
    finally:
        for cache in caches:
            await cache.close()
