"""Views: what a caller built from cache hits alone (an event page from its catalog and its
lots), kept and handed out again while it is exactly what the same hits would build.

A kept view is valid while (1) the store's version is the one it was built at: no entry was
stored, dropped or evicted since, so every key still holds the very entry the view was made
of (a save drops its keys: the version moves, the view is gone); and (2) the clock is before
the earliest moment one of its entries needs more than a hit (`Cache.steady_until`: expiry,
or a refresh-ahead falling due). Both are checked in constant time, whatever the view's
size. Reusing a view counts the hits it stands for, so the metrics see what lookups would
have counted.

Only for tiers whose generations never move (`Cache.stamp()` is None otherwise: with Redis a
replica's save must be seen key by key, so every lookup asks). A kept view keeps its entries
alive until it is dropped, so the views are bounded by count and by the bytes of the bodies
they hold (least recently used dropped first).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, NamedTuple, TypeVar

from gateway.cache.cache import Cache
from gateway.cache.store import Entry

T = TypeVar("T")


class _Kept(NamedTuple, Generic[T]):
    value: T
    version: int
    until: float
    built_at: float
    hits: tuple[tuple[str, int], ...]  # (kind, lookups it stands for)
    size: int  # bytes of the bodies it holds


class Views(Generic[T]):
    def __init__(self, cache: Cache, max_views: int = 1024, max_bytes: int = 32 << 20) -> None:
        self._cache = cache
        self._max_views = max_views
        self._max_bytes = max_bytes
        self._kept: OrderedDict[Hashable, _Kept[T]] = OrderedDict()
        self.bytes = 0  # sum of the kept views' sizes

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, name: Hashable) -> tuple[T, float] | None:
        """(the view kept as `name`, seconds since it was built) while it is valid (see
        the module docstring), its hits counted; else None."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        now = self._cache.now()
        if kept.version != self._cache.stamp() or now >= kept.until:
            self._drop(name)
            return None
        self._kept.move_to_end(name)
        for kind, n in kept.hits:
            self._cache.count_hits(kind, n)
        return kept.value, now - kept.built_at

    def keep(self, name: Hashable, value: T, parts: Iterable[tuple[str, Entry]]) -> None:
        """Keep `value`, built just now (no entry changed since its lookups) from hits on
        `parts`: (the key's kind, the entry)."""
        version = self._cache.stamp()
        if version is None:
            return
        parts = list(parts)
        size = sum(len(entry.body) for _, entry in parts)
        if size > self._max_bytes:
            return
        until = min((self._cache.steady_until(entry) for _, entry in parts), default=0.0)
        hits = tuple(Counter(kind for kind, _ in parts).items())
        self._drop(name)
        self._kept[name] = _Kept(value, version, until, self._cache.now(), hits, size)
        self.bytes += size
        while len(self._kept) > self._max_views or self.bytes > self._max_bytes:
            self._drop(next(iter(self._kept)))

    def _drop(self, name: Hashable) -> None:
        kept = self._kept.pop(name, None)
        if kept is not None:
            self.bytes -= kept.size
