"""Revocations (signed-out sessions): until their deadline, on every replica, through Redis
outages, never raising. Two RedisRevocations on one real Redis stand for two replicas.

The sleeps left here let a deadline pass: they are the behaviour under test. Anything
else (Redis being back, say) is waited for with `eventually`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.revocations import LocalRevocations, RedisRevocations

from gwtesting import eventually, free_port, timed


@pytest.fixture
async def replicas(redis):
    made = []

    def make(prefix: str = "t:", url: str | None = None, **options: float) -> RedisRevocations:
        made.append(RedisRevocations(url or redis.url, prefix=prefix, **options))
        return made[-1]

    yield make
    for revocations in made:
        await revocations.close()


async def test_a_name_is_revoked_until_its_deadline_then_no_longer() -> None:
    revocations = LocalRevocations()
    await revocations.revoke("session:a", 0.2)
    assert await revocations.revoked("session:a")
    assert not await revocations.revoked("session:b")
    await asyncio.sleep(0.3)  # the behaviour under test: the 0.2 s deadline passes
    assert not await revocations.revoked("session:a")


async def test_revoking_on_one_replica_revokes_on_the_other(replicas) -> None:
    a, b = replicas(), replicas()
    assert not await b.revoked("session:s1")
    await a.revoke("session:s1", 0.3)
    assert await b.revoked("session:s1")
    await asyncio.sleep(0.4)  # the behaviour under test: the 0.3 s deadline passes
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
    # (That an outage costs one stall per retry interval, not one per request, is timed
    # against a Redis that hangs: a stopped one refuses at once, so time tells nothing.)
    redis.start()
    raw = aioredis.Redis.from_url(redis.url)
    try:
        async def shared_by_b() -> bool:
            await b.revoke("session:after", 30)  # reaches Redis once b's retry interval is up
            return bool(await raw.exists("t:revoked:session:after"))

        await eventually(shared_by_b, "b's revocation lands in the restarted Redis",
                         timeout_s=5)
    finally:
        await raw.aclose()
    # Shared again, by `a` too, though it has not asked Redis since before the restart
    # (its idle connection was closed by the old server).
    assert await a.revoked("session:after")


@contextlib.asynccontextmanager
async def hung_redis(port: int) -> AsyncIterator[None]:
    """Something on `port` that accepts connections and never answers, like a Redis that
    is stuck: every request to it costs a whole op timeout."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def test_a_hung_redis_costs_one_stall_per_retry_interval_not_one_per_request(
    redis, replicas
) -> None:
    redis.stop()
    async with hung_redis(redis.port):
        revocations = replicas(op_timeout_s=0.5, retry_s=30)
        _, first = await timed(revocations.revoke("session:h1", 30))  # no exception
        assert first >= 0.4, first  # the hang is found out the slow way, once
        assert await revocations.revoked("session:h1")  # its own, kept in-process
        for n in range(20):
            _, took = await timed(revocations.revoked(f"session:h{n + 2}"))
            assert took < 0.1, (n, took)  # not asked again: far below one op timeout
        _, took = await timed(revocations.revoke("session:new", 30))  # no exception
        assert took < 0.1, took  # and no stall either
        assert await revocations.revoked("session:new")


async def test_an_unreachable_redis_never_raises(replicas) -> None:
    nowhere = replicas(url=f"redis://127.0.0.1:{free_port()}/0")
    await nowhere.revoke("session:s4", 30)
    assert await nowhere.revoked("session:s4")
    assert not await nowhere.revoked("session:s5")
