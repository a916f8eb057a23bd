"""Revocations (signed-out sessions): until their deadline, on every replica, through Redis
outages, never raising. Two RedisRevocations on one real Redis stand for two replicas."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.revocations import LocalRevocations, RedisRevocations

from gwtesting import free_port, timed


@pytest.fixture
async def replicas(redis):
    made = []

    def make(prefix: str = "t:", url: str | None = None) -> RedisRevocations:
        made.append(RedisRevocations(url or redis.url, prefix=prefix))
        return made[-1]

    yield make
    for revocations in made:
        await revocations.close()


async def test_a_name_is_revoked_until_its_deadline_then_no_longer() -> None:
    revocations = LocalRevocations()
    await revocations.revoke("session:a", 0.2)
    assert await revocations.revoked("session:a")
    assert not await revocations.revoked("session:b")
    await asyncio.sleep(0.3)
    assert not await revocations.revoked("session:a")


async def test_revoking_on_one_replica_revokes_on_the_other(replicas) -> None:
    a, b = replicas(), replicas()
    assert not await b.revoked("session:s1")
    await a.revoke("session:s1", 0.3)
    assert await b.revoked("session:s1")
    await asyncio.sleep(0.4)
    assert not await b.revoked("session:s1") and not await a.revoked("session:s1")


async def test_in_redis_a_revocation_is_one_key_with_its_ttl(redis, replicas) -> None:
    """The layout replicas of other versions read: SET <prefix>revoked:<name> PX."""
    await replicas().revoke("session:s2", 30)
    raw = aioredis.Redis.from_url(redis.url)
    try:
        assert await raw.get("t:revoked:session:s2") == b"1"
        assert 29_000 < await raw.pttl("t:revoked:session:s2") <= 30_000
    finally:
        await raw.aclose()


async def test_environments_with_their_own_prefix_share_nothing(replicas) -> None:
    staging, prod = replicas("staging:"), replicas("prod:")
    await staging.revoke("session:s3", 30)
    assert not await prod.revoked("session:s3")


async def test_revocations_hold_through_a_redis_outage_and_nothing_raises(
    redis, replicas
) -> None:
    a, b = replicas(), replicas()
    await a.revoke("session:before", 30)
    redis.stop()
    assert await a.revoked("session:before")  # this replica's own: kept in-process
    assert not await b.revoked("session:before")  # another's: unknowable while away
    await b.revoke("session:during", 30)  # no exception
    assert await b.revoked("session:during")
    _, took = await timed(b.revoked("session:unknown"))
    assert took < 0.1, took  # Redis is not asked again at once: no stall per request
    redis.start()
    await asyncio.sleep(1.1)  # past the retry interval
    await b.revoke("session:after", 30)
    # Shared again, by `a` too, though it has not asked Redis since before the restart
    # (its idle connection was closed by the old server).
    assert await a.revoked("session:after")


async def test_an_unreachable_redis_never_raises(replicas) -> None:
    nowhere = replicas(url=f"redis://127.0.0.1:{free_port()}/0")
    await nowhere.revoke("session:s4", 30)
    assert await nowhere.revoked("session:s4")
    assert not await nowhere.revoked("session:s5")
