"""The cached read: lookup -> hit | miss -> fetch -> store -> deliver.

Each phase is one branch below and one `result` label of gateway_cache_lookups_total:
- hit:       a fresh entry is in the store; served without awaiting anything.
- coalesced: no fresh entry, but a fetch for the key is running; await it.
- miss:      no fresh entry and no fetch; start one (the only path that calls upstream).

Errors raised by a fetch reach every caller of that fetch and are never stored.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.cache.flight import SingleFlight
from gateway.cache.store import Entry, Key, LruStore


class Result(enum.StrEnum):
    HIT = "hit"
    MISS = "miss"
    COALESCED = "coalesced"

    @property
    def header(self) -> str:
        """The X-Cache header value: a coalesced caller waited for upstream, like a miss."""
        return "HIT" if self is Result.HIT else "MISS"


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry
    result: Result


class CacheObserver:
    """Hooks for metrics; the cache itself stays free of any metrics library."""

    def lookup(self, kind: str, result: Result) -> None: ...

    def invalidated(self, kind: str) -> None: ...


class Cache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.store = LruStore(max_bytes)
        self._flights: SingleFlight[Key, Entry] = SingleFlight()
        self._observer = observer or CacheObserver()
        self._clock = clock

    async def get(self, key: Key, fetch: Callable[[], Awaitable[bytes]]) -> Lookup:
        """The entry for `key`, calling `fetch()` for its body only on a miss."""
        entry = self.store.get(key)
        if entry is not None and entry.fresh(self._clock()):
            self._observer.lookup(key[0], Result.HIT)
            return Lookup(entry, Result.HIT)

        self._observer.lookup(
            key[0], Result.COALESCED if self._flights.running(key) else Result.MISS
        )

        async def fetch_entry() -> Entry:
            body = await fetch()
            now = self._clock()
            return Entry(body=body, stored_at=now, expires_at=now + self.ttl_s)

        entry, shared = await self._flights.do(
            key, fetch_entry, lambda e: self.store.put(key, e)
        )
        return Lookup(entry, Result.COALESCED if shared else Result.MISS)

    def peek(self, key: Key) -> Entry | None:
        """The fresh entry for `key` if there is one; no fetch, no metrics."""
        entry = self.store.get(key)
        return entry if entry is not None and entry.fresh(self._clock()) else None

    def invalidate(self, key: Key) -> None:
        """Drop `key` now. A fetch already running for it will not store its result.

        After this returns, every `get(key)` starts from upstream: it cannot be handed the
        dropped entry, nor join a fetch that began before the invalidation.
        """
        self.store.pop(key)
        self._flights.forget(key)
        self._observer.invalidated(key[0])

    def invalidate_kind(self, kind: str) -> None:
        """Invalidate every key of one kind (e.g. all cached list pages)."""
        for key in list(self.store.keys(kind)):
            self.invalidate(key)
        for key in self._flights.keys():
            if key[0] == kind:
                self.invalidate(key)

    def close(self) -> None:
        self._flights.cancel_all()
