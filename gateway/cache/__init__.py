"""The cache: storage, TTL, coalescing and invalidation of opaque upstream bodies.

It knows nothing of HTTP or of lots: keys are `(kind, ident)` tuples and values are bytes.
"""

from gateway.cache.cache import Cache, Lookup, Result
from gateway.cache.store import Entry, Key, LruStore, etag_of, etags_in

__all__ = ["Cache", "Entry", "Key", "Lookup", "LruStore", "Result", "etag_of", "etags_in"]
