"""The cached read: lookup -> hit | stale | miss -> fetch -> store -> deliver.

Each phase is one branch of get() and one `result` label of gateway_cache_lookups_total:
- hit:       a fresh entry is in the store; served without awaiting anything.
- stale:     the entry has expired but is still usable: within stale_while_revalidate_s
             it is served at once and refreshed by one background fetch; within
             stale_if_error_s it is served only when a fetch fails with an error that
             `serve_stale_on` accepts (the upstream is down, not "no such lot").
- coalesced: no usable entry, but a fetch for the key is running; await it.
- miss:      no usable entry and no fetch; start one (the only path that calls upstream).

Errors raised by a fetch reach every caller of that fetch and are stored only when
`negative_ttl` says so (an upstream 404, briefly), never served stale.
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
    STALE = "stale"
    MISS = "miss"
    COALESCED = "coalesced"

    @property
    def header(self) -> str:
        """The X-Cache value: a coalesced caller waited for upstream, like a miss."""
        return {"hit": "HIT", "stale": "STALE"}.get(self.value, "MISS")


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry
    result: Result
    age_s: float = 0.0  # seconds since the entry was fetched, at lookup time


class CacheObserver:
    """Hooks for metrics; the cache itself stays free of any metrics library."""

    def lookup(self, kind: str, result: Result) -> None: ...

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.store = LruStore(max_bytes)
        self._swr_s = stale_while_revalidate_s
        self._sie_s = stale_if_error_s
        self._serve_stale_on = serve_stale_on
        self._negative_ttl = negative_ttl
        self._flights: SingleFlight[Key, Entry] = SingleFlight()
        self._observer = observer or CacheObserver()
        self._clock = clock

    async def get(self, key: Key, fetch: Callable[[], Awaitable[bytes]]) -> Lookup:
        """The entry for `key`, calling `fetch()` for its body only when needed."""
        kind, now = key[0], self._clock()
        entry = self.store.get(key)
        if entry is not None and entry.fresh(now):
            self._observer.lookup(kind, Result.HIT)
            if entry.error is not None:
                raise entry.error.with_traceback(None)
            return Lookup(entry, Result.HIT, now - entry.stored_at)

        usable = entry if entry is not None and entry.error is None else None
        if usable is not None and now < usable.expires_at + self._swr_s:
            self._flights.start(key, self._fetcher(fetch), self._keeper(key))
            self._observer.lookup(kind, Result.STALE)
            return Lookup(usable, Result.STALE, now - usable.stored_at)

        shared = self._flights.running(key)
        try:
            fetched, shared = await self._flights.do(key, self._fetcher(fetch), self._keeper(key))
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
                return Lookup(usable, Result.STALE, self._clock() - usable.stored_at)
            self._observer.lookup(kind, Result.COALESCED if shared else Result.MISS)
            raise
        result = Result.COALESCED if shared else Result.MISS
        self._observer.lookup(kind, result)
        if fetched.error is not None:
            raise fetched.error.with_traceback(None)
        return Lookup(fetched, result, 0.0)

    def _fetcher(self, fetch: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[Entry]]:
        async def fetch_entry() -> Entry:
            try:
                body = await fetch()
            except Exception as exc:
                remember = self._negative_ttl(exc)
                if not remember:
                    raise
                now = self._clock()
                return Entry(b"", stored_at=now, expires_at=now + remember, error=exc)
            now = self._clock()
            return Entry(body=body, stored_at=now, expires_at=now + self.ttl_s)

        return fetch_entry

    def _keeper(self, key: Key) -> Callable[[Entry], None]:
        return lambda entry: self.store.put(key, entry)

    def peek(self, key: Key) -> Entry | None:
        """The fresh entry for `key` if there is one; no fetch, no metrics."""
        entry = self.store.get(key)
        if entry is None or entry.error is not None or not entry.fresh(self._clock()):
            return None
        return entry

    def invalidate(self, key: Key) -> None:
        """Drop `key` now. A fetch already running for it will not store its result.

        After this returns, every `get(key)` starts from upstream: it cannot be handed the
        dropped entry (fresh or stale), nor join a fetch that began before the
        invalidation.
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
