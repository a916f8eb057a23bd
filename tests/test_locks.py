"""Locks that hold: the per-entity write lock across replicas, and the Redis it lives in.

- A save slower than the lock's lease keeps the lock to its end (the lease is renewed).
- Waiting for a lock is bounded by `limits.lock_wait_s` (503 with Retry-After).
- An expiry read back from Redis is never trusted beyond one lease (a poisoned key).
- No message on the channel can stop a replica's listener.
- A password in `cache.redis_url`, and `rediss://`, work; a wrong password stops start-up
  with a message that does not show it.
- An invalidation a replica could not share (it lost Redis) is logged, counted and sent
  once Redis is back.

Gateways run on real sockets in front of a sandbox, on a real redis-server; two gateways
on one Redis and one sandbox stand for two replicas. A sleep that remains is the
behaviour under test (a lock held longer than its lease), and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import gateway.app
from gateway.cache import Cache, RedisRefused, RedisTier, Result
from gateway.cache.listener import Listener
from gateway.cache.locks import KeyedLocks, LockBusy, waited
from gateway.cache.redis_layout import MalformedMessage, parse
from gateway.revocations import RedisRevocations
from gateway.state import CACHE

from gwtesting import ROOT, RedisServer, env, eventually, free_port, timed

LEASE_S = 0.6  # the lease the `short_lease` fixture gives gateways (the default is ~32 s)
SAVE_BOUND_S = 12.0  # a save that takes longer than this is stuck: fail, do not hang


def shared(server: RedisServer) -> dict[str, str]:
    return {"backend": "redis", "redis_url": server.url}


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways started from now on lease their Redis locks for LEASE_S, not for their
    upstream timeout times its tries: a save can then outlast its lease many times over
    with an upstream only a little slow."""
    real = gateway.app.RedisTier
    monkeypatch.setattr(gateway.app, "RedisTier",
                        lambda url, **kw: real(url, **{**kw, "lease_s": LEASE_S}))


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's Redis: to look at locks, and to hold or poison them."""
    client = aioredis.Redis.from_url(redis.url)
    yield client
    with contextlib.suppress(Exception):
        await client.aclose()


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A redis-server that asks for a password; its `url` carries it."""
    server = RedisServer(requirepass=f"pw-{secrets.token_hex(8)}").start()
    yield server
    server.stop()


async def save(gw: Any, lot: int, changes: dict[str, Any]) -> tuple[int, Any, Any, float]:
    """POST an override through `gw`: status, headers, JSON body, seconds taken."""
    async def post() -> tuple[int, Any, Any]:
        resp = await gw.client.post(f"/api/v1/lots/{lot}/override", json=changes)
        return resp.status, resp.headers, await resp.json(content_type=None)

    (status, headers, body), took = await timed(asyncio.wait_for(post(), SAVE_BOUND_S))
    return status, headers, body, took


def override_of(lot: dict[str, Any]) -> dict[str, Any]:
    return (lot.get("overridenData") or [{}])[0]


async def tiers_up(*gateways: Any) -> None:
    await eventually(lambda: all(g.app[CACHE].tier.up for g in gateways),
                     "every gateway's Redis tier is up")


# --- lease renewal ---------------------------------------------------------------------


async def test_a_save_slower_than_its_lease_holds_the_lock_to_its_end(
    start_gateway, redis, raw, short_lease
):
    """Replica a saves while every upstream call takes 1.5 s (its fresh read and its PUT:
    5 leases in all); replica b saves another field of the same lot meanwhile. b must
    read the lot only after a's PUT: both changes survive.

    Mutation seen to fail it: Leases.renewed() renewing nothing (b takes the lock when
    a's lease runs out, reads the lot before a's PUT, and its PUT drops a's change)."""
    a = await start_gateway(cache=shared(redis))
    b = await start_gateway(beside=a, cache=shared(redis))
    await tiers_up(a, b)
    lot = 10081
    a.sandbox.configure(latency_ms=1500)
    first = asyncio.create_task(save(a, lot, {"qty": 7}))
    await eventually(lambda: raw.exists(f"gw:lock:lot:{lot}"), "a holds the lot's lock")
    assert 0 < await raw.pttl(f"gw:lock:lot:{lot}") <= LEASE_S * 1000  # a short lease
    second = asyncio.create_task(save(b, lot, {"notes": "from b"}))
    (s1, _, saved_a, took_a), (s2, _, saved_b, _) = await asyncio.gather(first, second)
    assert (s1, s2) == (200, 200), (saved_a, saved_b)
    assert took_a > 4 * LEASE_S, took_a  # a held the lock through several leases
    assert override_of(saved_a)["qty"] == 7
    # b's save started from a's: it read the lot after a's PUT had landed.
    assert override_of(saved_b)["qty"] == 7 and override_of(saved_b)["notes"] == "from b"
    a.sandbox.configure(latency_ms=0)
    final = override_of(json.loads(await a.upstream_get(f"/api/Lot/{lot}")))
    assert final["qty"] == 7 and final["notes"] == "from b"
    assert a.app[CACHE].tier.locks_lost == 0
    assert not await raw.exists(f"gw:lock:lot:{lot}")  # released at the end


async def test_renewal_stops_when_its_holder_leaves_and_a_lost_lock_is_logged(
    redis, raw, caplog
):
    """In one process: a lock held three times its lease stays held; leaving it (also by
    cancellation) stops the renewing and gives it back; a waiter cancelled mid-wait
    leaves nothing; a renewal that finds the lock taken logs an error, and the holder's
    own work goes on.

    Mutations seen to fail it: no renewal (the lock expires while held); the renewal
    not stopped on leaving (it finds the lock gone and counts it lost)."""
    cache = Cache(ttl_s=60, max_bytes=10**6,
                  tier=RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=0.3, prefix="t:"))
    await cache.start()
    try:
        await eventually(lambda: cache.tier.up, "the tier is up")
        async with cache.exclusive("lot:1"):
            token = await raw.get("t:lock:lot:1")
            for _ in range(3):
                await asyncio.sleep(0.3)  # the behaviour under test: held past its lease
                assert await raw.get("t:lock:lot:1") == token
        assert not await raw.exists("t:lock:lot:1")
        await asyncio.sleep(0.3)  # a renewal period: nothing renews a lock let go
        assert cache.tier.locks_lost == 0

        async def hold(name: str) -> None:
            async with cache.exclusive(name):
                await asyncio.Event().wait()

        holder = asyncio.create_task(hold("lot:2"))
        await eventually(lambda: raw.exists("t:lock:lot:2"), "the task holds lot:2")
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
        assert not await raw.exists("t:lock:lot:2")
        await eventually(lambda: not cache.tier._leases._tasks, "no renewal is left running")

        await raw.set("t:lock:lot:3", "another-replica", px=5000)
        waiter = asyncio.create_task(hold("lot:3"))
        await eventually(lambda: cache.tier._leases._waiters, "the task waits for lot:3")
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert await raw.get("t:lock:lot:3") == b"another-replica"  # untouched
        assert not cache.tier._leases._waiters and len(cache.tier._local_locks) == 0

        with caplog.at_level(logging.ERROR, logger="gateway.cache.lease"):
            async with cache.exclusive("lot:4"):
                await raw.set("t:lock:lot:4", "a-thief", px=5000)
                await eventually(lambda: cache.tier.locks_lost == 1, "the loss is noticed")
                done = True  # the holder's work goes on
        assert done
        assert any("lost" in r.getMessage() and "lot:4" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)
        assert await raw.get("t:lock:lot:4") == b"a-thief"  # its release took nothing
    finally:
        await cache.close()


# --- bounded waits ---------------------------------------------------------------------


async def test_waiting_for_a_lot_locked_on_another_replica_ends_in_503_after_lock_wait_s(
    start_gateway, redis, raw
):
    """Mutation seen to fail it: locks.waited() not bounding the wait."""
    gw = await start_gateway(cache=shared(redis), limits={"lock_wait_s": 1.0})
    await tiers_up(gw)
    await raw.set("gw:lock:lot:10082", "another-replica", px=30_000)
    status, headers, body, took = await save(gw, 10082, {"qty": 1})
    assert status == 503, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) >= 1
    assert "10082" in body["detail"]
    assert 0.9 < took < 3.0, took
    assert gw.calls("GET /api/Lot/{id}") == gw.calls("PUT /api/Lot/{id}") == 0
    await raw.delete("gw:lock:lot:10082")
    assert (await save(gw, 10082, {"qty": 1}))[0] == 200


async def test_waiting_for_a_lot_locked_in_this_process_ends_in_503_after_lock_wait_s(
    start_gateway,
):
    """The in-memory backend: the same bound. Mutation seen to fail it: as above."""
    gw = await start_gateway(limits={"lock_wait_s": 1.0})
    async with gw.app[CACHE].exclusive("lot:10083"):
        status, headers, body, took = await save(gw, 10083, {"qty": 2})
    assert status == 503 and int(headers["Retry-After"]) >= 1, body
    assert 0.9 < took < 3.0, took
    assert gw.calls("PUT /api/Lot/{id}") == 0
    assert (await save(gw, 10083, {"qty": 2}))[0] == 200


async def test_waited_gives_up_on_time_and_leaves_no_lock_behind():
    locks = KeyedLocks()

    async def enter() -> None:
        async with waited(locks.hold("k"), 0.2, "lot 1"):
            raise AssertionError("entered a lock someone holds")

    async with locks.hold("k"):
        with pytest.raises(LockBusy) as busy:
            await asyncio.wait_for(enter(), 5)
        assert busy.value.status == 503 and busy.value.retry_after >= 1
        assert "lot 1" in busy.value.detail
    assert len(locks) == 0
    async with waited(locks.hold("k"), 0.2, "lot 1"):
        pass

    async def times_out_inside() -> None:
        async with waited(locks.hold("k"), 5, "lot 1"):
            raise TimeoutError("an operation inside timed out")

    with pytest.raises(TimeoutError, match="inside"):  # not taken for a busy lock
        await times_out_inside()


# --- capped expiries -------------------------------------------------------------------


async def test_a_poisoned_lock_or_fetch_lease_holds_a_replica_up_for_one_lease_at_most(
    start_gateway, redis, raw, short_lease, caplog
):
    """A lock key left with a 10 h expiry, a fetch lease with none: each is cut to one
    lease by the first replica that waits on it.

    Mutation seen to fail it: Leases._wait() not cutting the expiry (the save waits out
    lock_wait_s and gets 503; the read never ends)."""
    gw = await start_gateway(cache=shared(redis), limits={"lock_wait_s": 10.0})
    await tiers_up(gw)
    await raw.set("gw:lock:lot:10084", "poison", px=10 * 3600 * 1000)
    await raw.set("gw:lease:lot|10085", "poison")  # no expiry at all
    with caplog.at_level(logging.WARNING, logger="gateway.cache.lease"):
        status, _, body, took = await save(gw, 10084, {"qty": 3})
        assert status == 200, body
        assert took < LEASE_S + 2.0, took

        async def read() -> int:
            resp = await gw.client.get("/api/Lot/10085")
            return resp.status

        status, took = await timed(asyncio.wait_for(read(), SAVE_BOUND_S))
        assert status == 200 and took < LEASE_S + 2.0, took
    assert await raw.exists("gw:val:lot|10085")  # the read did go through that lease
    cut = [r for r in caplog.records if "cut to" in r.getMessage()]
    assert len(cut) >= 2 and all(len(r.getMessage()) < 300 for r in cut)


# --- the listener ----------------------------------------------------------------------

JUNK = [
    b"inv x notjson",  # the review's example
    b"\xff\xfe\x00\x1b[31m",  # not UTF-8, control characters
    b"inv x lot|" + b"[" * 5_000,  # nested deeper than Python recurses (yet short)
    b'inv x lot|{"an":"object"}',  # a key of the wrong type
    b"inv x lot|[1,{}]",  # an unhashable ident
    b"inv",  # verbs without their parts
    b"invkind x",
    b"done",
    b"",
    b"inv x lot|" + b"1" * 2_000_000,  # huge
    b"inv x lot|\n2026-01-01 forged line",  # a line break in the key
]


async def test_no_message_on_the_channel_stops_a_replicas_listener(
    start_gateway, redis, raw, caplog
):
    """Junk of every kind on the channel, then a real save on a: b drops its copy of the
    lot at once (its listener got the invalidation), having never lost Redis.

    Mutations seen to fail it: Listener._dispatch() catching only MalformedMessage (the
    deeply nested key's RecursionError reaches the loop: it resubscribes, logging an
    error); and, with that, the loop catching only Redis errors (the listener dies)."""
    a = await start_gateway(cache=shared(redis))
    b = await start_gateway(beside=a, cache=shared(redis))
    await tiers_up(a, b)
    lot = 10086
    assert (await b.client.get(f"/api/Lot/{lot}")).status == 200
    assert b.app[CACHE].peek(("lot", lot)) is not None

    def ours() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith("gateway.cache")]

    def malformed() -> list[logging.LogRecord]:
        return [r for r in ours() if "malformed" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        for junk in JUNK:
            await raw.publish("gw:events", junk)
        await raw.publish("gw:events", b"newverb from a newer replica")  # ignored
        await eventually(lambda: len(malformed()) >= 2 * len(JUNK), "both log every junk")
        assert (await save(a, lot, {"qty": 4}))[0] == 200
        await eventually(lambda: b.app[CACHE].peek(("lot", lot)) is None,
                         "b's listener drops the lot a saved", timeout_s=2)
    listener = b.app[CACHE].tier._listener
    assert listener.up and listener._task is not None and not listener._task.done()
    assert not [r for r in ours() if r.levelno >= logging.ERROR], caplog.text
    assert not [r for r in ours() if "unreachable" in r.getMessage()]
    assert len(malformed()) == 2 * len(JUNK)
    assert all(len(r.getMessage()) < 600 and "\n" not in r.getMessage() for r in malformed())
    resp = await b.client.get(f"/api/Lot/{lot}")
    assert override_of(await resp.json())["qty"] == 4


def test_parse_refuses_what_is_not_a_message_and_the_listener_skips_it(caplog):
    for junk in (12, None, {"data": b"x"}, b"x" * 100_000, b"inv x lot|" + b"[" * 5000):
        with pytest.raises(MalformedMessage):
            parse(junk)
    assert parse("inv x lot|1") is not None  # a decoded message is still one
    listener = Listener(aioredis.Redis(), "t:events", me="me", on_released=lambda n: None,
                        on_down=lambda: None)
    with caplog.at_level(logging.WARNING, logger="gateway.cache.listener"):
        for message in (12, {"type": "message"}, {"data": 3.5}, ["inv"]):
            listener._dispatch(message)  # logged, never raised
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 4


# --- Redis with a password, over TLS ---------------------------------------------------


async def test_gateways_on_a_redis_with_a_password_share_reads_and_saves(
    start_gateway, locked_redis
):
    a = await start_gateway(cache=shared(locked_redis))
    b = await start_gateway(beside=a, cache=shared(locked_redis))
    await tiers_up(a, b)
    lot = 10087
    first = await a.client.get(f"/api/Lot/{lot}")
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    second = await b.client.get(f"/api/Lot/{lot}")
    assert second.status == 200 and second.headers["X-Cache"] == "HIT"  # from Redis
    assert a.calls("GET /api/Lot/{id}") == 1
    assert (await save(a, lot, {"qty": 5}))[0] == 200
    await eventually(lambda: b.app[CACHE].peek(("lot", lot)) is None,
                     "b hears of a's save", timeout_s=2)
    resp = await b.client.get(f"/api/Lot/{lot}")
    assert override_of(await resp.json())["qty"] == 5
    # Sign-outs share the same Redis, through the same URL.
    one, other = (RedisRevocations(locked_redis.url, prefix="gw:") for _ in range(2))
    try:
        await one.revoke("session-1", 60)
        assert await other.revoked("session-1")
    finally:
        await one.close()
        await other.close()


async def test_a_wrong_redis_password_stops_start_up_and_is_never_shown(
    start_gateway, locked_redis, caplog
):
    wrong = f"wrong-{secrets.token_hex(8)}"
    with caplog.at_level(logging.DEBUG), pytest.raises(RedisRefused) as refused:
        await start_gateway(cache={"backend": "redis",
                                   "redis_url": locked_redis.url_with(wrong)})
    message = str(refused.value)
    assert "cache.redis_url" in message and ":***@" in message, message
    assert wrong not in message and wrong not in caplog.text
    assert locked_redis.requirepass not in message
    with pytest.raises(RedisRefused) as no_password:  # no password at all: refused too
        await start_gateway(cache={"backend": "redis",
                                   "redis_url": locked_redis.url.replace(
                                       f":{locked_redis.requirepass}@", "")})
    assert locked_redis.requirepass not in str(no_password.value)


def test_the_gateway_process_refuses_to_start_on_a_wrong_redis_password(locked_redis):
    wrong = f"wrong-{secrets.token_hex(8)}"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config.toml"),
         "--port", str(free_port())],
        env=env(GW_CACHE_BACKEND="redis", GW_CACHE_REDIS_URL=locked_redis.url_with(wrong),
                GW_SANDBOX_LATENCY_MS="0", GW_SANDBOX_JITTER_MS="0"),
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode != 0
    assert "refused" in result.stderr and "cache.redis_url" in result.stderr, result.stderr
    assert wrong not in result.stderr + result.stdout


async def test_rediss_with_a_password_shares_values_invalidations_and_revocations():
    server = RedisServer(requirepass=f"pw-{secrets.token_hex(8)}", tls=True).start()
    caches = [Cache(ttl_s=60, max_bytes=10**6,
                    tier=RedisTier(server.url, ttl_s=60, keep_s=60, lease_s=5, prefix="t:"))
              for _ in range(2)]
    revocations = RedisRevocations(server.url, prefix="t:")
    try:
        assert server.url.startswith("rediss://")
        for cache in caches:
            await cache.start()
        await eventually(lambda: all(c.tier.up for c in caches), "both tiers are up")
        a, b = caches

        async def fetch() -> bytes:
            return b"v1"

        assert (await a.get(("lot", 1), fetch)).result is Result.MISS
        assert (await b.get(("lot", 1), fetch)).result is Result.SHARED
        await a.invalidate(("lot", 1))
        await eventually(lambda: b.peek(("lot", 1)) is None, "b hears of it over TLS")
        await revocations.revoke("s", 60)
        assert await revocations.revoked("s")
    finally:
        for cache in caches:
            await cache.close()
        await revocations.close()
        server.stop()


# --- an invalidation Redis did not get (L2) --------------------------------------------


async def test_an_invalidation_a_replica_could_not_share_is_logged_counted_and_sent_later(
    redis, raw, caplog
):
    """Replica a loses Redis (its user's rights are taken away) while b keeps it; a saves
    and invalidates a key b holds. The save is not failed (the upstream took it): the
    invalidation is logged as an error, counted, and sent once Redis lets a in again, at
    which point b drops its copy.

    Mutations seen to fail it: invalidate() returning silently while degraded (no error,
    no count); RedisTier._share_unshared() sending nothing (b keeps its copy)."""
    await raw.execute_command("ACL", "SETUSER", "replica-a", "on", ">pw-a", "~*", "&*",
                              "+@all")
    a_url = redis.url.replace("redis://", "redis://replica-a:pw-a@")
    a, b = (Cache(ttl_s=60, max_bytes=10**6,
                  tier=RedisTier(url, ttl_s=60, keep_s=60, lease_s=5, prefix="t:"))
            for url in (a_url, redis.url))
    key = ("lot", 20)
    calls = 0

    async def fetch() -> bytes:
        nonlocal calls
        calls += 1
        return f"v{calls}".encode()

    try:
        for cache in (a, b):
            await cache.start()
        await eventually(lambda: a.tier.up and b.tier.up, "both tiers are up")
        await b.get(key, fetch)
        await raw.execute_command("ACL", "SETUSER", "replica-a", "-@all")
        with caplog.at_level(logging.ERROR, logger="gateway.cache.redis_tier"):
            await a.invalidate(key)
        assert a.tier.unshared_invalidations == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "lot|20" in errors[0].getMessage()
        assert "pw-a" not in caplog.text
        assert b.peek(key) is not None  # b cannot know yet: the window this closes
        await raw.execute_command("ACL", "SETUSER", "replica-a", "+@all")
        await eventually(lambda: b.peek(key) is None, "b hears of it once a is back",
                         timeout_s=5)
        lookup = await b.get(key, fetch)
        assert lookup.result is Result.MISS and lookup.entry.body == b"v2"
    finally:
        for cache in (a, b):
            await cache.close()


async def test_the_wait_for_a_poisoned_lock_never_exceeds_a_lease_in_one_process(redis, raw):
    """The same cut without a gateway: a lock with a 10 h expiry is taken within about one
    lease, and left with a lease's expiry at most while waited on."""
    cache = Cache(ttl_s=60, max_bytes=10**6,
                  tier=RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=0.5, prefix="t:"))
    await cache.start()
    try:
        await eventually(lambda: cache.tier.up, "the tier is up")
        await raw.set("t:lock:lot:9", "poison", px=10 * 3600 * 1000)
        start = time.monotonic()

        async def enter() -> None:
            async with cache.exclusive("lot:9"):
                pass

        await asyncio.wait_for(enter(), 5)
        assert time.monotonic() - start < 1.5
    finally:
        await cache.close()


async def test_a_tier_degraded_by_one_failed_operation_comes_back_by_itself(redis):
    """An operation's error degrades the tier while the listener's own connection stays
    fine: the listener notices Redis answers and brings the tier back (and shares what
    it could not), with no reconnection to trigger it.

    Mutation seen to fail it: the listener's loop without its `if not self.up` check (the
    tier stays degraded for good)."""
    cache = Cache(ttl_s=60, max_bytes=10**6,
                  tier=RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=5, prefix="t:"))
    await cache.start()
    try:
        await eventually(lambda: cache.tier.up, "the tier is up")
        cache.tier._down(TimeoutError("one slow operation"))
        assert not cache.tier.up
        await cache.invalidate(("lot", 30))  # not shared now...
        assert cache.tier.unshared_invalidations == 1
        await eventually(lambda: cache.tier.up, "the tier is back", timeout_s=5)
        raw = aioredis.Redis.from_url(redis.url)
        try:  # ...but once it is back
            await eventually(lambda: raw.get("t:gen:lot|30"), "the invalidation is shared")
        finally:
            await raw.aclose()
    finally:
        await cache.close()
