"""The Redis tier in one process: two caches on one real Redis stand for two replicas."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.cache import Cache, RedisTier, Result

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
    cache.tier._listener.on_invalidate = lambda kind, key: None


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


async def test_a_malformed_message_is_logged_and_skipped_and_the_listener_goes_on(
    redis, replicas, caplog
):
    import redis.asyncio as aioredis

    a, b = await replicas(), await replicas()
    up = Upstream(delay=0.0)
    await b.get(("lot", 13), up.fetch)
    raw = aioredis.Redis.from_url(redis.url)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.cache.listener"):
            for junk in (b"\xff\xfe", b"inv", b"inv other lot|not-json",
                         b'inv other lot|{"an":"object"}', b"inv other lot|" + b"x" * 5000,
                         b"newverb from a newer replica"):
                await raw.publish("t:events", junk)
            await a.invalidate(("lot", 13))  # a good message, after the bad ones
            for _ in range(100):
                if b.peek(("lot", 13)) is None:
                    break
                await asyncio.sleep(0.02)
    finally:
        await raw.aclose()
    assert b.peek(("lot", 13)) is None, "the invalidation after the junk did not arrive"
    assert b.tier.up
    skipped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(skipped) == 2 * 5  # each junk message, on each replica; the new verb ignored
    assert all(r.levelno == logging.WARNING for r in skipped)
    assert all(len(r.getMessage()) < 400 for r in skipped)  # the text is shortened
    assert any("b'\\xff\\xfe'" in r.getMessage() for r in skipped)  # and repr()'d


async def test_a_dead_lock_holder_holds_others_up_only_until_its_lease_runs_out(redis):
    """exclusive() locks are leases like fetches: `t:lock:<name>` held by a replica that
    died is taken over once it expires."""
    import redis.asyncio as aioredis

    cache = Cache(ttl_s=60, max_bytes=10**6,
                  tier=RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=5, prefix="t:"))
    raw = aioredis.Redis.from_url(redis.url)
    try:
        await cache.start()
        for _ in range(250):
            if cache.tier.up:
                break
            await asyncio.sleep(0.02)
        await raw.set("t:lock:lot:14", "a-dead-replica", px=400)

        async def enter() -> None:
            async with cache.exclusive("lot:14"):
                pass

        _, took = await timed(enter())
        assert 0.3 < took < 1.5, took
    finally:
        await raw.aclose()
        await cache.close()


async def test_waiters_fall_back_to_upstream_when_redis_goes_down(redis, replicas):
    a, b = await replicas(), await replicas()
    never = asyncio.Event()

    async def hang() -> bytes:
        await never.wait()
        return b"never"

    stuck = asyncio.create_task(a.get(("lot", 15), hang))
    await asyncio.sleep(0.05)  # a holds the key's lease (for 5 s)
    waiting = asyncio.create_task(timed(b.get(("lot", 15), Upstream(delay=0.0).fetch)))
    await asyncio.sleep(0.1)
    redis.stop()
    lookup, took = await waiting
    assert lookup.entry.body == b"v1"
    assert took < 3.5, took  # woken by the outage, not by the lease running out
    stuck.cancel()


async def test_an_upstream_error_is_not_taken_for_redis_trouble(replicas):
    a = await replicas()
    calls = 0

    async def refused() -> bytes:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("upstream refused")  # an OSError, like Redis's

    with pytest.raises(ConnectionRefusedError):
        await a.get(("lot", 16), refused)
    assert calls == 1 and a.tier.up


async def test_the_redis_layout_is_what_every_version_expects(redis, replicas):
    """Replicas of mixed versions share one Redis during a deploy: keys and values stay."""
    import redis.asyncio as aioredis

    a = await replicas()
    await a.get(("lot-list", ("x", 2)), Upstream(delay=0.0).fetch)
    raw = aioredis.Redis.from_url(redis.url)
    try:
        value = await raw.hgetall('t:val:lot-list|["x",2]')
        assert value[b"g"] == b"0:0" and value[b"b"] == b"v1" and float(value[b"t"]) > 0
        await a.invalidate(("lot-list", ("x", 2)))
        await a.invalidate_kind("lot-list")
        assert await raw.get('t:gen:lot-list|["x",2]') == b"1"
        assert await raw.get("t:kgen:lot-list") == b"1"
        assert not await raw.exists('t:val:lot-list|["x",2]')
    finally:
        await raw.aclose()
