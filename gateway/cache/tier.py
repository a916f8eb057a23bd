"""The tier: what sits behind the in-process cache (L1), and the one-process tier.

The cache asks its tier four things, and depends on nothing else of it (`Tier`):
- generation(key): the key's current generation. An L1 entry carries the generation it
  was fetched under and is served only while that is still current, so an invalidation
  on any replica outdates every replica's copy at once, with no message to wait for.
  None means "cannot tell" (the tier is degraded): L1 then serves only entries younger
  than `degraded_ttl_s`.
- fetch(key, generation, fetch, fresh=False, max_age_s=None): the body, from the tier if
  it holds one stored under `generation`, else from `fetch()` (upstream), called once
  across everyone sharing the tier while they all ask for the same key. With `fresh` (a
  forced refresh) always from `fetch()`, its body then stored as any fetched body is. With
  `max_age_s` (a refresh-ahead) a stored body counts only if it is younger than that: the
  replica that refreshes first stores the new body, the others take it.
- invalidate(key) / invalidate_kind(kind): outdate the key (or every key of the kind) for
  every process sharing the tier. Returns once that is done: no process serves the old
  value afterwards, unless the tier is degraded (then only this process is sure; the
  tier logs it and tells the others once it recovers).
- fixed_generation: the generation every key always has, for a tier whose generations never
  move (one process, LocalTier: 0), else None. With one, the cache serves a fresh L1 entry
  without asking the tier anything (Cache.hit: no await).
- exclusive(name): a lock held by one task across everyone sharing the tier, for as long
  as the task stays inside (however long that is). Entering may wait for the holder;
  that wait may be cancelled (e.g. by a deadline: locks.waited) and then leaves nothing
  held.

start(on_invalidate) hands the tier the cache's eviction callback: `on_invalidate(kind,
key)` drops `key` from L1 (key None: every key of `kind`; kind "*": everything), called
when another process invalidated something. A tier never calls it for this process's own
invalidations (the cache drops those itself, synchronously).

`up` is False while the tier is degraded (its backing service unreachable); a tier
recovers by itself. No method raises because the tier is unreachable: it degrades.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import NamedTuple, Protocol

from gateway.cache.locks import KeyedLocks
from gateway.cache.store import Key

Generation = Hashable
"""Opaque; only compared for equality with another generation of the same key."""

Fetch = Callable[[], Awaitable[bytes]]
"""Calls the upstream for one body."""

OnInvalidate = Callable[[str, Key | None], None]
"""on_invalidate(kind, key): see the module docstring."""


class Fetched(NamedTuple):
    body: bytes
    age_s: float = 0.0  # how long ago it came from upstream
    # Found stored in the tier, put there by an earlier fetch (usually another replica's):
    # no upstream call was made for it now. The cache reports it as Result.SHARED.
    from_tier: bool = False


class Tier(Protocol):
    @property
    def up(self) -> bool:
        """False while degraded: generation() answers None, fetch() calls upstream."""
        ...

    @property
    def degraded_ttl_s(self) -> float:
        """How old an L1 entry may be and still be served while generation() is None."""
        ...

    @property
    def fixed_generation(self) -> Generation | None:
        """Every key's generation, if it never moves; None: ask generation()."""
        ...

    async def generation(self, key: Key) -> Generation | None: ...

    async def fetch(
        self, key: Key, generation: Generation | None, fetch: Fetch, *, fresh: bool = False,
        max_age_s: float | None = None,
    ) -> Fetched:
        """Upstream errors raised by `fetch()` reach the caller unchanged."""
        ...

    async def invalidate(self, key: Key) -> None: ...

    async def invalidate_kind(self, kind: str) -> None: ...

    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def start(self, on_invalidate: OnInvalidate) -> None: ...

    async def close(self) -> None: ...


class LocalTier:
    """One process: nothing to share, nobody to coordinate with. Generations never move
    (the cache drops invalidated entries itself), fetch() calls upstream, exclusive() is
    an in-process lock."""

    up = True
    degraded_ttl_s = float("inf")
    fixed_generation: Generation | None = 0

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    async def generation(self, key: Key) -> Generation | None:
        return 0

    async def fetch(
        self, key: Key, generation: Generation | None, fetch: Fetch, *, fresh: bool = False,
        max_age_s: float | None = None,
    ) -> Fetched:
        return Fetched(await fetch())

    async def invalidate(self, key: Key) -> None:
        return None

    async def invalidate_kind(self, kind: str) -> None:
        return None

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        async with self._locks.hold(name):
            yield

    async def start(self, on_invalidate: OnInvalidate) -> None:
        return None

    async def close(self) -> None:
        return None
