"""The cache keys of the catalog, in one place: reads fetch under them, writes drop them.

A key is `(kind, ident)`; a kind can be dropped whole (every cached list page of a
resource at once). Resource names are the upstream's path segments: Seller, Catalog, Lot.
"""

from __future__ import annotations

from gateway.cache import Key

Params = tuple[tuple[str, str], ...]


def one(resource: str, ident: int) -> Key:
    """GET /api/{resource}/{ident}."""
    return (resource.lower(), ident)


def listing_kind(resource: str) -> str:
    """Every cached GET /api/{resource}?... page."""
    return f"{resource.lower()}-list"


def listing(resource: str, params: Params) -> Key:
    """GET /api/{resource}?params, the query sorted so equal queries share a key (the
    names already in the document's spelling: see `api.check_query`)."""
    return (listing_kind(resource), tuple(sorted(params)))


RESOURCES = ("Seller", "Catalog", "Lot")
# Every kind of key there is: a write the gateway cannot see into (a bulk insert, an
# unknown path) outdates all of them.
EVERY_KIND = tuple(k for r in RESOURCES for k in (r.lower(), listing_kind(r)))
