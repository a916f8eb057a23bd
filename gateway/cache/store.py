"""Byte-bounded LRU storage of cache entries.

Single-threaded by design: every method runs on the event loop thread and never awaits,
so no lock is needed and an entry is never seen half-written.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

Key = tuple[str, Hashable]
"""(kind, ident), e.g. ("lot", 1042). The kind labels metrics and bulk invalidation."""

T = TypeVar("T")

# Rough per-entry bookkeeping cost (dataclass, dict slot), counted against max_bytes so
# that many tiny entries cannot exceed the bound either. The key is counted on its own
# (key_size): a list page's key holds its whole query.
ENTRY_OVERHEAD = 256


def key_size(key: Hashable) -> int:
    """The bytes a key holds in memory: its objects' sizes, nested tuples walked (a list
    page's key is `(kind, ((name, value), ...))`). Computed once per stored entry."""
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(key_size(part) for part in key)
    return sys.getsizeof(key)


def etag_of(body: bytes) -> str:
    """A strong ETag for a body: the same bytes always get the same tag."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etags_in(header: str) -> set[str]:
    """The tags listed in an If-None-Match / If-Match header (weak ones compared as strong)."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


@dataclass(slots=True, eq=False)
class Entry:
    """One upstream answer. `body` is immutable and served as-is on every hit."""

    body: bytes
    stored_at: float
    expires_at: float
    etag: str = ""
    # A remembered upstream error (a 404, for negative_ttl) instead of a body. Never
    # served stale: it only answers while fresh.
    error: BaseException | None = None
    # The key's generation when this was fetched (see tier.py); served only while the
    # tier still reports it. None: fetched while the tier was degraded.
    generation: Hashable = 0
    # Found stored in the tier rather than fetched from upstream (Result.SHARED).
    from_tier: bool = False
    # A refresh-ahead of it was started (see cache.py): at most one per entry.
    refreshing: bool = False
    # How long its fetch took (the tier's answer, or the upstream call and its waits).
    fetch_s: float = 0.0
    # Values computed from `body` at most once (parsed ids, ...); see derive().
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.etag:
            self.etag = etag_of(self.body)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def derive(self, name: str, compute: Callable[[bytes], T]) -> T:
        """`compute(body)`, computed on first use and kept with the entry.

        Derived values die with the entry, so invalidating the body invalidates them too.
        """
        try:
            return self._derived[name]
        except KeyError:
            value = self._derived[name] = compute(self.body)
            return value


class LruStore:
    """Entries by key, least recently used evicted first once `max_bytes` is exceeded.

    Expired entries are kept (until evicted or replaced): whether one may be served is the
    caller's decision, not the store's.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Sum of the charges over _entries (entry.size + key_size(key), each computed once
        # when its entry is stored); updated with every change.
        self.bytes = 0
        # Changes whenever an entry is stored, dropped or evicted (never for a read): equal
        # versions mean the same entries under the same keys (cache/views.py relies on it).
        self.version = 0
        self._entries: OrderedDict[Key, tuple[Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Entry | None:
        slot = self._entries.get(key)
        if slot is None:
            return None
        self._entries.move_to_end(key)
        return slot[0]

    def put(self, key: Key, entry: Entry) -> None:
        self.pop(key)
        self.version += 1
        charge = entry.size + key_size(key)
        if charge > self.max_bytes:
            return  # larger than the whole cache: served to its waiters, never stored
        self._entries[key] = (entry, charge)
        self.bytes += charge
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def pop(self, key: Key) -> Entry | None:
        slot = self._entries.pop(key, None)
        if slot is None:
            return None
        entry, charge = slot
        self.bytes -= charge
        self.version += 1
        return entry

    def keys(self, kind: str | None = None) -> Iterator[Key]:
        return iter([k for k in self._entries if kind is None or k[0] == kind])
