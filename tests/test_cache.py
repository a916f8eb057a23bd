"""The cache core against a controllable fake upstream (no network): coalescing,
generation-safe invalidation, errors not stored, TTL and the byte bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from gateway.cache import Cache, CacheObserver, Entry, LruStore, Result
from gateway.cache.locks import KeyedLocks
from gateway.cache.store import ENTRY_OVERHEAD, key_size
from gateway.cache.views import Views
from gateway.context import BACKGROUND

T = TypeVar("T")


class FakeUpstream:
    """fetch() blocks until release(); counts calls; can be told to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.body = b"v1"
        self.error: Exception | None = None

    async def fetch(self) -> bytes:
        self.calls += 1
        body = self.body  # what the upstream held when the call started
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return body

    def release(self) -> None:
        self.gate.set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Let every ready task run up to its next real wait: a few turns of the loop, no time
    passing (nothing here completes on a timer; the fake upstream waits for release())."""
    for _ in range(5):
        await asyncio.sleep(0)


DEADLINE_S = 5.0  # nothing here waits on anything real: a wait this long is a deadlock


async def done(awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, failing (not hanging) if it does not come within DEADLINE_S."""
    try:
        return await asyncio.wait_for(awaitable, DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"still waiting after {DEADLINE_S:g} s: a deadlock") from None


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[[Coroutine[Any, Any, T]], asyncio.Task[T]]]:
    """create_task for the test; every task still running at its end is cancelled, so a
    failed assert leaves nothing behind."""
    tasks: list[asyncio.Task] = []

    def start(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def make_cache(**kw) -> Cache:
    return Cache(ttl_s=kw.pop("ttl_s", 60), max_bytes=kw.pop("max_bytes", 10**6), **kw)


async def test_concurrent_misses_share_one_fetch_and_all_get_it(spawn) -> None:
    cache, up = make_cache(), FakeUpstream()
    waiters = [spawn(cache.get(("lot", 1), up.fetch)) for _ in range(100)]
    await settle()
    assert up.calls == 1
    up.release()
    lookups = await done(asyncio.gather(*waiters))
    assert {lk.entry.body for lk in lookups} == {b"v1"}
    results = sorted(lk.result for lk in lookups)
    assert results.count(Result.MISS) == 1 and results.count(Result.COALESCED) == 99
    hit = await done(cache.get(("lot", 1), up.fetch))
    assert hit.result is Result.HIT and up.calls == 1


async def test_fetch_in_flight_when_invalidated_does_not_write_back(spawn) -> None:
    cache, up = make_cache(), FakeUpstream()
    before = spawn(cache.get(("lot", 1), up.fetch))
    await settle()
    up.body = b"v2"  # the upstream changes (a save) while the old read is in flight
    await cache.invalidate(("lot", 1))
    after = spawn(cache.get(("lot", 1), up.fetch))
    await settle()
    assert up.calls == 2, "a get after invalidate must not join the older fetch"
    up.release()
    # It asked before the save: it may see old data.
    assert (await done(before)).entry.body == b"v1"
    assert (await done(after)).entry.body == b"v2"
    stored = await done(cache.get(("lot", 1), up.fetch))
    assert stored.result is Result.HIT and stored.entry.body == b"v2"


async def test_invalidated_fetch_finishing_last_does_not_overwrite_newer_value(spawn) -> None:
    cache = make_cache()
    old_gate, new_gate = asyncio.Event(), asyncio.Event()

    async def old_fetch() -> bytes:
        await old_gate.wait()
        return b"old"

    async def new_fetch() -> bytes:
        await new_gate.wait()
        return b"new"

    old = spawn(cache.get(("lot", 7), old_fetch))
    await settle()
    await cache.invalidate(("lot", 7))
    new = spawn(cache.get(("lot", 7), new_fetch))
    await settle()
    new_gate.set()
    await done(new)
    old_gate.set()  # the pre-invalidation fetch lands after the fresh one
    await done(old)
    assert cache.peek(("lot", 7)).body == b"new"


async def test_errors_reach_every_waiter_and_are_not_stored(spawn) -> None:
    cache, up = make_cache(), FakeUpstream()
    up.error = RuntimeError("upstream down")
    waiters = [spawn(cache.get(("lot", 1), up.fetch)) for _ in range(5)]
    await settle()
    up.release()
    outcomes = await done(asyncio.gather(*waiters, return_exceptions=True))
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert cache.peek(("lot", 1)) is None
    up.error = None
    assert (await done(cache.get(("lot", 1), up.fetch))).result is Result.MISS
    assert up.calls == 2


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(spawn) -> None:
    cache, up = make_cache(), FakeUpstream()
    first = spawn(cache.get(("lot", 1), up.fetch))
    await settle()
    first.cancel()  # the only caller goes away (client disconnected)
    with pytest.raises(asyncio.CancelledError):
        await done(first)
    second = spawn(cache.get(("lot", 1), up.fetch))
    await settle()
    up.release()
    assert (await done(second)).result is Result.COALESCED
    assert up.calls == 1
    assert cache.peek(("lot", 1)).body == b"v1"


async def test_entries_expire_after_ttl() -> None:
    clock, up = Clock(), FakeUpstream()
    up.release()
    cache = make_cache(ttl_s=10, clock=clock)
    await cache.get(("lot", 1), up.fetch)
    clock.now += 9.9
    assert (await cache.get(("lot", 1), up.fetch)).result is Result.HIT
    clock.now += 0.2
    assert (await done(cache.get(("lot", 1), up.fetch))).result is Result.MISS
    assert up.calls == 2


async def test_store_is_bounded_by_bytes_evicting_least_recently_used() -> None:
    cache = make_cache(max_bytes=3 * (1000 + ENTRY_OVERHEAD + key_size(("lot", 0))))

    def body_of(n: int):
        async def fetch() -> bytes:
            return bytes([n]) * 1000

        return fetch

    for n in range(3):
        await cache.get(("lot", n), body_of(n))
    await cache.get(("lot", 0), body_of(0))  # touch 0: 1 is now least recently used
    await cache.get(("lot", 3), body_of(3))
    assert cache.store.bytes <= cache.store.max_bytes
    assert len(cache.store) == 3
    assert cache.peek(("lot", 1)) is None
    assert all(cache.peek(("lot", n)) is not None for n in (0, 2, 3))


def test_a_keys_bytes_count_against_the_bound_and_evict() -> None:
    """A list page's key holds its whole query: the store counts it, once, when storing."""
    query = (("LotNumber", "x" * 4000),)

    def entry() -> Entry:
        return Entry(b"b" * 100, stored_at=0.0, expires_at=1.0)

    store = LruStore(max_bytes=10_000)
    store.put(("lot", 1), entry())
    before = store.bytes
    store.put(("lot-list", query), entry())
    assert store.bytes - before >= 4000 + 100 + ENTRY_OVERHEAD
    # Bodies and overheads alone (356 bytes each) would let 20 such pages fit; with their
    # keys, two do: the third evicts the least recently used.
    store.pop(("lot", 1))
    pages = [("lot-list", (("LotNumber", str(n) + "x" * 4000),)) for n in range(3)]
    for key in pages:
        store.put(key, entry())
    assert store.bytes <= store.max_bytes
    assert [store.get(k) is not None for k in pages] == [False, True, True]
    for key in list(store.keys()):
        store.pop(key)
    assert store.bytes == 0 and len(store) == 0  # what was counted in is counted out
    store.put(("lot", 1), entry())
    store.put(("lot-list", (("LotNumber", "x" * 20_000),)), entry())
    # A key larger than the whole cache: never stored, and nothing evicted for it.
    assert list(store.keys()) == [("lot", 1)]


async def test_invalidate_kind_drops_every_key_of_that_kind_only() -> None:
    cache, up = make_cache(), FakeUpstream()
    up.release()
    await cache.get(("lot-list", ("a",)), up.fetch)
    await cache.get(("lot-list", ("b",)), up.fetch)
    await cache.get(("lot", 1), up.fetch)
    await cache.invalidate_kind("lot-list")
    assert cache.peek(("lot-list", ("a",))) is None and cache.peek(("lot-list", ("b",))) is None
    assert cache.peek(("lot", 1)) is not None


async def test_etag_and_derived_values_follow_the_body() -> None:
    cache, up = make_cache(), FakeUpstream()
    up.release()
    first = (await cache.get(("lot", 1), up.fetch)).entry
    calls = []
    assert first.derive("n", lambda b: calls.append(b) or len(b)) == 2
    assert first.derive("n", lambda b: calls.append(b) or len(b)) == 2
    assert len(calls) == 1
    await cache.invalidate(("lot", 1))
    up.body = b"v22"
    second = (await cache.get(("lot", 1), up.fetch)).entry
    assert second.etag != first.etag and second.derive("n", len) == 3


async def test_keyed_locks_serialise_one_key_leave_others_free_and_clean_up(spawn) -> None:
    locks, inside, overlaps, order = KeyedLocks(), {}, 0, []

    async def work(key: str, n: int) -> None:
        nonlocal overlaps
        async with locks.hold(key):
            inside[key] = inside.get(key, 0) + 1
            overlaps += inside[key] > 1
            order.append((key, n))
            await asyncio.sleep(0.01)
            inside[key] -= 1

    tasks = [spawn(work(key, n)) for n in range(3) for key in ("a", "b")]
    await settle()
    assert order == [("a", 0), ("b", 0)]  # different keys do not wait for each other
    assert len(locks) == 2
    await done(asyncio.gather(*tasks))
    assert overlaps == 0
    assert [n for key, n in order if key == "a"] == [0, 1, 2]  # in arrival order
    assert len(locks) == 0  # nothing kept for keys nobody holds


# --- forced refresh (get(..., fresh=True)) --------------------------------------------------


class Gated:
    """A fetch per call: each waits for its own gate and returns the body it was made with."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Event] = []

    def fetch(self, body: bytes) -> Callable[[], Awaitable[bytes]]:
        async def call() -> bytes:
            gate = asyncio.Event()
            self.calls.append(gate)
            await gate.wait()
            return body

        return call


async def test_a_forced_refresh_replaces_a_fresh_entry_and_concurrent_ones_share_a_call(
    spawn,
) -> None:
    """Mutation seen to fail it: in Cache.get, serve a fresh entry even when `fresh`
    (`if entry is not None and self._fresh(...)`)."""
    cache, up = make_cache(), FakeUpstream()
    up.release()
    await done(cache.get(("lot", 1), up.fetch))
    up.body, up.gate = b"v2", asyncio.Event()
    refreshes = [spawn(cache.get(("lot", 1), up.fetch, fresh=True)) for _ in range(3)]
    plain = spawn(cache.get(("lot", 1), up.fetch))  # a fresh entry: still a hit meanwhile
    await settle()
    assert up.calls == 2, "three refreshes at once make one upstream call"
    assert (await done(plain)).entry.body == b"v1"
    up.release()
    lookups = await done(asyncio.gather(*refreshes))
    assert [lk.entry.body for lk in lookups] == [b"v2"] * 3
    assert sorted(lk.result for lk in lookups).count(Result.COALESCED) == 2
    hit = await done(cache.get(("lot", 1), up.fetch))
    assert hit.result is Result.HIT and hit.entry.body == b"v2" and up.calls == 2


async def test_a_forced_refresh_does_not_join_nor_lose_to_an_older_plain_fetch(spawn) -> None:
    """A plain fetch running when the refresh is asked may have read the upstream before
    the change the operator wants to see: the refresh makes its own call, and the plain
    fetch, finishing last, does not write over it.

    Mutation seen to fail it: in SingleFlight.do, join any running call
    (`if False and renew ...`)."""
    cache, gated = make_cache(), Gated()
    plain = spawn(cache.get(("lot", 2), gated.fetch(b"old")))
    await settle()
    refresh = spawn(cache.get(("lot", 2), gated.fetch(b"new"), fresh=True))
    joiner = spawn(cache.get(("lot", 2), gated.fetch(b"other")))  # joins the refresh
    await settle()
    assert len(gated.calls) == 2
    old_gate, new_gate = gated.calls
    new_gate.set()
    assert (await done(refresh)).entry.body == b"new"
    assert (await done(joiner)).entry.body == b"new"
    old_gate.set()
    assert (await done(plain)).entry.body == b"old"  # it asked first: it may see old data
    assert cache.peek(("lot", 2)).body == b"new"


async def test_a_save_during_a_forced_refresh_keeps_its_result_out(spawn) -> None:
    """Mutation seen to fail it: in SingleFlight._run, keep a forced call's value even once
    forgotten (`if not call.forgotten or call.renewed:`)."""
    cache, up = make_cache(), FakeUpstream()
    up.release()
    await done(cache.get(("lot", 3), up.fetch))
    up.gate = asyncio.Event()
    refresh = spawn(cache.get(("lot", 3), up.fetch, fresh=True))
    await settle()
    up.body = b"saved"
    await cache.invalidate(("lot", 3))
    up.release()
    assert (await done(refresh)).entry.body == b"v1"  # read before the save
    assert cache.peek(("lot", 3)) is None
    after = await done(cache.get(("lot", 3), up.fetch))
    assert after.result is Result.MISS and after.entry.body == b"saved"


async def test_a_failed_forced_refresh_serves_the_last_good_entry_marked(spawn) -> None:
    """Mutation seen to fail it: in Cache.get's error branch, drop `fallback=True`."""
    cache, up = make_cache(serve_stale_on=lambda exc: True, stale_if_error_s=3600), \
        FakeUpstream()
    up.release()
    first = await done(cache.get(("lot", 4), up.fetch))
    assert not first.fallback
    up.error = ConnectionError("upstream down")
    stale = await done(cache.get(("lot", 4), up.fetch, fresh=True))
    assert stale.result is Result.STALE and stale.fallback and stale.entry.body == b"v1"
    await cache.invalidate(("lot", 4))  # a save: the old entry is known to be out of date
    with pytest.raises(ConnectionError):
        await done(cache.get(("lot", 4), up.fetch, fresh=True))


async def test_a_client_that_joined_background_work_which_failed_fetches_for_itself():
    """A prefetch may fail only because it was not sent (no upstream slot to spare): a
    client who joined it must not get that failure, but one fetch of its own."""
    cache = Cache(ttl_s=60, max_bytes=10**6)
    key = ("lot", 1)
    release = asyncio.Event()

    async def not_sent() -> bytes:
        await release.wait()
        raise RuntimeError("no room for background work")

    async def prefetch() -> None:
        BACKGROUND.set(True)  # this task's own context, as the prefetcher's
        with pytest.raises(RuntimeError):
            await cache.get(key, not_sent)

    calls: list[str] = []

    async def client_fetch() -> bytes:
        calls.append("client")
        return b"lot 1"

    background = asyncio.create_task(prefetch())
    await asyncio.sleep(0)  # the prefetch's fetch is running
    client = asyncio.create_task(cache.get(key, client_fetch))
    await asyncio.sleep(0)  # the client has joined it
    release.set()
    lookup = await client
    await background
    assert lookup.entry.body == b"lot 1" and calls == ["client"]


async def test_a_client_that_joined_another_clients_failed_fetch_gets_its_failure():
    cache = Cache(ttl_s=60, max_bytes=10**6)
    release = asyncio.Event()
    calls: list[str] = []

    async def failing() -> bytes:
        calls.append("first")
        await release.wait()
        raise RuntimeError("upstream said no")

    async def second() -> bytes:
        calls.append("second")
        return b"never"

    first = asyncio.create_task(cache.get(("lot", 1), failing))
    await asyncio.sleep(0)
    joined = asyncio.create_task(cache.get(("lot", 1), second))
    await asyncio.sleep(0)
    release.set()
    for task in (first, joined):
        with pytest.raises(RuntimeError):
            await task
    assert calls == ["first"]  # one call for both, as ever


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Counted(CacheObserver):
    def __init__(self) -> None:
        self.hits = 0

    def lookup(self, kind: str, result: Result, n: int = 1) -> None:
        self.hits += n if result is Result.HIT else 0


async def test_a_kept_view_lasts_while_its_entries_are_exactly_what_a_hit_would_give():
    clock, seen = _Clock(), _Counted()
    cache = Cache(ttl_s=10, max_bytes=10**6, refresh_ahead=0.5, clock=clock, observer=seen)
    views: Views[str] = Views(cache, max_bytes=100)

    async def body() -> bytes:
        return b"x" * 10

    entries = [(await cache.get(("lot", n), body)).entry for n in (1, 2)]
    views.keep("page", "built", [("lot", e) for e in entries])
    assert views.get("page") == ("built", 0.0) and seen.hits == 2  # its two hits counted
    clock.now += 4
    assert views.get("page") == ("built", 4.0)  # held 4 s: the page is that much older

    await cache.invalidate(("lot", 2))  # a save: the store changed
    assert views.get("page") is None and len(views) == 0

    entries = [(await cache.get(("lot", n), body)).entry for n in (1, 2)]
    views.keep("page", "again", [("lot", e) for e in entries])  # lot 1 kept, lot 2 new
    clock.now += 0.9
    assert views.get("page") is not None
    clock.now += 0.2  # lot 1, fetched 5.1 s ago, is due for its refresh ahead (at 5 s)
    assert views.get("page") is None


async def test_views_are_bounded_by_the_bytes_they_hold():
    cache = Cache(ttl_s=10, max_bytes=10**6, clock=_Clock())
    views: Views[int] = Views(cache, max_bytes=25)

    async def body() -> bytes:
        return b"x" * 10

    for n in range(3):
        entry = (await cache.get(("lot", n), body)).entry
        views.keep(n, n, [("lot", entry)])
    assert len(views) == 2 and views.bytes == 20  # the oldest went
    assert views.get(0) is None and views.get(2) == (2, 0.0)
