"""The cache: storage, TTL, coalescing and invalidation of opaque upstream bodies.

It knows nothing of HTTP or of lots: keys are `(kind, ident)` tuples and values are bytes.
Modules, one job each:
    cache.py         the cached read (lookup -> hit | stale | miss -> fetch -> store)
    store.py         byte-bounded LRU of entries; ETags
    flight.py        one call per key in flight within this process
    views.py         what callers built from hits, kept while it is exactly what hits give
    tier.py          what the cache needs from the tier behind it; LocalTier (one process)
    redis_tier.py    RedisTier: values and generations in Redis, for many replicas
    lease.py         Redis leases: one holder per name across replicas
    listener.py      the Redis tier's pub/sub listener and up/down state
    redis_layout.py  Redis key names and channel messages every replica must agree on
    locks.py         per-key locks within one process; a bounded wait for any lock
"""

from gateway.cache.cache import Cache, CacheObserver, Lookup, Result
from gateway.cache.locks import LockBusy, waited
from gateway.cache.redis_tier import RedisRefused, RedisTier, redacted
from gateway.cache.store import Entry, Key, LruStore, etag_of, etags_in
from gateway.cache.tier import LocalTier, Tier

__all__ = [
    "Cache",
    "CacheObserver",
    "Entry",
    "Key",
    "LocalTier",
    "LockBusy",
    "Lookup",
    "LruStore",
    "RedisRefused",
    "RedisTier",
    "Result",
    "Tier",
    "etag_of",
    "etags_in",
    "redacted",
    "waited",
]
