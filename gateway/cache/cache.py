"""The cached read: lookup -> hit | stale | miss -> fetch -> store -> deliver.

Each phase is one branch of get() and one `result` label of gateway_cache_lookups_total:
- hit:       a fresh entry is in the store; served without awaiting anything.
- stale:     the entry has expired but is still usable: within stale_while_revalidate_s
             it is served at once and refreshed by one background fetch; within
             stale_if_error_s it is served only when a fetch fails with an error that
             `serve_stale_on` accepts (the upstream is down, not "no such lot").
- coalesced: no usable entry, but a fetch for the key is running; await it.
- shared:    no usable entry and no fetch here, but the tier held the body (another
             replica had fetched it): taken from there, no upstream call.
- miss:      no usable entry and no fetch; start one (the only path that calls upstream).

Behind the in-process store sits a tier (tier.py): LocalTier for one process, RedisTier
for many. The cache depends only on the `Tier` protocol. An entry is served only while
its generation is the key's current one, so a save on any replica outdates every copy at
once.

Refresh ahead (`refresh_ahead`, a fraction of ttl_s): a fresh entry read once that much of
its life has passed is served as a hit and refreshed by one background fetch, so a key read
steadily is replaced before it expires and never becomes a miss. The point comes earlier
for an entry whose own fetch was slow, so that its refresh can land before it expires: at
most ttl_s - REFRESH_LEAD x (that fetch's time), never before half its life. One refresh per entry
(`Entry.refreshing`): if it fails, the entry simply runs out as any other would. The
refresh is a fetch like any other (keyed by generation: a save meanwhile drops its result;
with Redis, `max_age_s` lets one replica refresh for all) run as background work
(gateway/context.py BACKGROUND: the upstream client gives it a slot only when one is free
to spare, and none while its breaker is not closed).

`hit(key, fetch)` is the hit branch alone, answered without awaiting anything, for tiers
whose generations never move (one process): a warm event page so looks up its 26 parts
without a task or an await each. None means "ask get()".

Errors raised by a fetch reach every caller of that fetch and are stored only when
`negative_ttl` says so (an upstream 404, briefly), never served stale.

A forced refresh (`get(key, fetch, fresh=True)`, an operator asking for fresh data) skips
the hit and stale-while-revalidate branches and always fetches:
- its result replaces the entry (here and, with Redis, in the tier, where the other
  replicas read it once their own copy expires), as any fetch's would;
- concurrent forced refreshes of one key share one call, which plain reads join too; a
  plain fetch already running is detached (it may have begun before the data being
  replaced was stored), so it can no longer write over the refreshed entry;
- generations apply as to any fetch: an invalidation (a save) during the refresh detaches
  it, so it never stores a value older than the save;
- if it fails with an error `serve_stale_on` accepts, the entry it was to replace is
  served instead (`Lookup.fallback`), within stale_if_error_s of its expiry, unless the key
  was invalidated meanwhile.
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from gateway.cache.flight import SingleFlight
from gateway.cache.store import Entry, Key, LruStore
from gateway.cache.tier import Generation, LocalTier, Tier
from gateway.context import BACKGROUND

REFRESH_LEAD = 1.25  # a refresh starts this many of its entry's fetch times before expiry


class Result(enum.StrEnum):
    """How a lookup was answered; the value is the `result` label of
    gateway_cache_lookups_total, a documented contract (dashboards, alerts).

    SHARED means "taken from the tier": the body was stored there by an earlier fetch,
    usually another replica's, so no upstream call was made for it. It keeps the value
    "shared" for the metric; in code the same fact is `Fetched.from_tier` and
    `Entry.from_tier`.
    """

    HIT = "hit"
    STALE = "stale"
    MISS = "miss"
    COALESCED = "coalesced"
    SHARED = "shared"

    @property
    def header(self) -> str:
        """The X-Cache value: a coalesced caller waited for upstream, like a miss."""
        return _HEADERS[self]


_HEADERS = {Result.HIT: "HIT", Result.SHARED: "HIT", Result.STALE: "STALE",
            Result.MISS: "MISS", Result.COALESCED: "MISS"}


class Lookup(NamedTuple):  # a tuple: made for every part of every page, so made cheaply
    entry: Entry
    result: Result
    age_s: float = 0.0  # seconds since the entry was fetched, at lookup time
    # Served from the last good entry because the fetch for it failed (stale-if-error),
    # not merely expired (stale-while-revalidate).
    fallback: bool = False


class CacheObserver:
    """Hooks for metrics; the cache itself stays free of any metrics library."""

    def lookup(self, kind: str, result: Result, n: int = 1) -> None: ...

    def invalidated(self, kind: str) -> None: ...


def _never(exc: BaseException) -> bool:
    return False


def _no_negative(exc: BaseException) -> float | None:
    return None


class Cache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        observer: CacheObserver | None = None,
        stale_while_revalidate_s: float = 0.0,
        stale_if_error_s: float = 0.0,
        serve_stale_on: Callable[[BaseException], bool] = _never,
        negative_ttl: Callable[[BaseException], float | None] = _no_negative,
        tier: Tier | None = None,
        refresh_ahead: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        # An entry this old (seconds since fetched) is refreshed when read; inf: never.
        self._refresh_after_s = ttl_s * refresh_ahead if refresh_ahead < 1.0 else math.inf
        self.store = LruStore(max_bytes)
        self._swr_s = stale_while_revalidate_s
        self._sie_s = stale_if_error_s
        self._serve_stale_on = serve_stale_on
        self._negative_ttl = negative_ttl
        self.tier: Tier = tier if tier is not None else LocalTier()
        # Keyed by (key, generation): a caller never joins a fetch begun under an older
        # generation of its key.
        self._flights: SingleFlight[tuple[Key, Generation | None], Entry] = SingleFlight()
        self._observer = observer or CacheObserver()
        self._clock = clock

    async def get(
        self, key: Key, fetch: Callable[[], Awaitable[bytes]], *, fresh: bool = False
    ) -> Lookup:
        """The entry for `key`, calling `fetch()` for its body only when needed; with
        `fresh`, always (a forced refresh: see the module docstring)."""
        kind = key[0]
        generation = await self.tier.generation(key)
        now = self._clock()
        entry = self.store.get(key)
        if entry is not None and generation is not None and entry.generation != generation:
            self.store.pop(key)  # invalidated by a replica, or kept while Redis was away
            entry = None
        if not fresh and entry is not None and self._fresh(entry, now, generation):
            self._observer.lookup(kind, Result.HIT)
            if entry.error is not None:
                raise entry.error.with_traceback(None)
            self._maybe_refresh(key, entry, generation, fetch, now)
            return Lookup(entry, Result.HIT, now - entry.stored_at)

        flight = (key, generation)
        fetch_entry = self._fetcher(key, generation, fetch, fresh)
        usable = entry if entry is not None and entry.error is None else None
        if not fresh and usable is not None and now < usable.expires_at + self._swr_s:
            self._flights.start(flight, fetch_entry, self._keeper(key))
            self._observer.lookup(kind, Result.STALE)
            return Lookup(usable, Result.STALE, now - usable.stored_at)

        background = BACKGROUND.get()
        joined = self._flights.running(flight)
        # A client that joins background work (a prefetch) and sees it fail tries once on its
        # own: a background call may fail only because it was not sent (no slot to spare).
        retry = joined and not background and self._flights.background(flight)
        try:
            try:
                fetched, joined = await self._flights.do(
                    flight, fetch_entry, self._keeper(key), renew=fresh, background=background)
            except Exception:
                if not retry:
                    raise
                fetched, joined = await self._flights.do(
                    flight, fetch_entry, self._keeper(key), renew=fresh)
        except Exception as exc:
            # The last good answer stands in for a failing upstream -- unless the key was
            # invalidated meanwhile (then that answer is known to be out of date).
            if (
                usable is not None
                and self._serve_stale_on(exc)
                and self._clock() < usable.expires_at + self._sie_s
                and self.store.get(key) is usable
            ):
                self._observer.lookup(kind, Result.STALE)
                return Lookup(usable, Result.STALE, self._clock() - usable.stored_at,
                              fallback=True)
            self._observer.lookup(kind, Result.COALESCED if joined else Result.MISS)
            raise
        result = (Result.COALESCED if joined
                  else Result.SHARED if fetched.from_tier else Result.MISS)
        self._observer.lookup(kind, result)
        if fetched.error is not None:
            raise fetched.error.with_traceback(None)
        return Lookup(fetched, result, self._clock() - fetched.stored_at)

    def hit(self, key: Key, fetch: Callable[[], Awaitable[bytes]]) -> Lookup | None:
        """get(key, fetch) when that is a hit and the tier need not be asked (see the module
        docstring); else None, and nothing is counted."""
        generation = self.tier.fixed_generation
        if generation is None:
            return None
        entry = self.store.get(key)
        now = self._clock()
        if (entry is None or entry.error is not None or not entry.fresh(now)
                or entry.generation != generation):
            return None
        self._observer.lookup(key[0], Result.HIT)
        self._maybe_refresh(key, entry, generation, fetch, now)
        return Lookup(entry, Result.HIT, now - entry.stored_at)

    # --- for views built from hits (cache/views.py) ----------------------------------------

    def now(self) -> float:
        return self._clock()

    def stamp(self) -> int | None:
        """Equal between two moments when no entry was stored, dropped or evicted between
        them; None when hits must be checked with the tier one by one (Redis)."""
        return None if self.tier.fixed_generation is None else self.store.version

    def steady_until(self, entry: Entry) -> float:
        """Until when a hit on `entry` is only a hit: it has not expired, and no
        refresh-ahead is due (or one already started)."""
        if entry.refreshing:
            return entry.expires_at
        return min(entry.expires_at, entry.stored_at + self._refresh_after(entry))

    def _refresh_after(self, entry: Entry) -> float:
        """How old `entry` may get before a read refreshes it (see the module docstring)."""
        if self._refresh_after_s == math.inf:
            return math.inf
        lead = max(self.ttl_s / 2, self.ttl_s - REFRESH_LEAD * entry.fetch_s)
        return min(self._refresh_after_s, lead)

    def count_hits(self, kind: str, n: int) -> None:
        """Hits served by reusing what earlier hits built, counted as the hits they are."""
        self._observer.lookup(kind, Result.HIT, n)

    def _maybe_refresh(
        self, key: Key, entry: Entry, generation: Generation | None,
        fetch: Callable[[], Awaitable[bytes]], now: float,
    ) -> None:
        """Start the entry's refresh-ahead if it is old enough and has none yet."""
        if entry.refreshing or now - entry.stored_at < self._refresh_after(entry):
            return
        entry.refreshing = True
        refresh = self._fetcher(key, generation, fetch, max_age_s=self._refresh_after(entry))

        async def in_background() -> Entry:
            BACKGROUND.set(True)  # in the flight's own task (a copy of this context)
            return await refresh()

        self._flights.start((key, generation), in_background, self._keeper(key),
                            background=True)

    def _fresh(self, entry: Entry, now: float, generation: Generation | None) -> bool:
        if generation is None:  # the tier cannot vouch for it: only young entries
            return entry.fresh(now) and now - entry.stored_at < self.tier.degraded_ttl_s
        return entry.fresh(now)

    def _fetcher(
        self, key: Key, generation: Generation | None, fetch: Callable[[], Awaitable[bytes]],
        fresh: bool = False, max_age_s: float | None = None,
    ) -> Callable[[], Awaitable[Entry]]:
        async def fetch_entry() -> Entry:
            began = self._clock()
            try:
                fetched = await self.tier.fetch(key, generation, fetch, fresh=fresh,
                                                max_age_s=max_age_s)
            except Exception as exc:
                remember = self._negative_ttl(exc)
                if not remember:
                    raise
                now = self._clock()
                return Entry(b"", stored_at=now, expires_at=now + remember, error=exc,
                             generation=generation)
            now = self._clock()
            stored_at = now - fetched.age_s
            return Entry(fetched.body, stored_at=stored_at, expires_at=stored_at + self.ttl_s,
                         generation=generation, from_tier=fetched.from_tier,
                         fetch_s=now - began)

        return fetch_entry

    def _keeper(self, key: Key) -> Callable[[Entry], None]:
        return lambda entry: self.store.put(key, entry)

    def peek(self, key: Key) -> Entry | None:
        """The fresh entry for `key` if there is one; no fetch, no metrics."""
        entry = self.store.get(key)
        if entry is None or entry.error is not None or not entry.fresh(self._clock()):
            return None
        return entry

    async def invalidate(self, key: Key) -> None:
        """Drop `key` here and on every replica. A fetch already running for it will not
        store its result.

        After this returns, every `get(key)` on any replica starts from upstream: it cannot
        be handed the dropped entry (fresh or stale), nor join a fetch that began before.
        """
        self.drop(key)
        await self.tier.invalidate(key)
        self.drop(key)  # and whatever a local reader fetched while the tier was told

    async def invalidate_kind(self, kind: str) -> None:
        """Invalidate every key of one kind (e.g. all cached list pages), everywhere."""
        self.drop_kind(kind)
        await self.tier.invalidate_kind(kind)
        self.drop_kind(kind)

    def drop(self, key: Key) -> None:
        """This process only: forget the entry and detach any fetch of it."""
        self.store.pop(key)
        for flight in self._flights.keys():
            if flight[0] == key:
                self._flights.forget(flight)
        self._observer.invalidated(key[0])

    def drop_kind(self, kind: str) -> None:
        for key in list(self.store.keys(kind)):
            self.drop(key)
        for flight in self._flights.keys():
            if flight[0][0] == kind:
                self.drop(flight[0])

    def on_tier_invalidation(self, kind: str, key: Key | None) -> None:
        """From the tier: another replica invalidated `key` (or a whole kind; "*": all)."""
        if key is not None:
            self.drop(key)
        elif kind == "*":
            for k in list(self.store.keys()):
                self.store.pop(k)
        else:
            self.drop_kind(kind)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Held by one task at a time across every replica sharing this cache's tier."""
        async with self.tier.exclusive(name):
            yield

    async def start(self) -> None:
        await self.tier.start(self.on_tier_invalidation)

    async def close(self) -> None:
        self._flights.cancel_all()
        await self.tier.close()
