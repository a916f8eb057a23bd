"""The domain: sellers, events (catalogs), lots, event pages.

Every read goes through the cache; this module decides cache keys and how pages are
assembled from cached upstream bodies. It never speaks HTTP to clients (the edges do) and
never to the upstream except through UpstreamClient, inside a cache fetch.

Event pages are not cached as a whole: a page is assembled on every request from the
cached catalog and lot bodies (byte concatenation, well under a millisecond for 100 lots).
So a page can never be staler than the lots it contains, and invalidating a lot needs no
index of the pages that hold it; a page's ETag is derived from its parts' ETags.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.cache import Cache, Key, Lookup, Result, etag_of, etags_in
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
    UpstreamFailed,
    UpstreamUnavailable,
)
from gateway.overrides import Change, current_override, json_object, merge, update_request
from gateway.upstream.client import Params, UpstreamClient

log = logging.getLogger("gateway.overrides")

RESOURCES = ("Seller", "Catalog", "Lot")
SELLER_PAGE = 100  # page size used to read the whole seller list for searching


@dataclass(frozen=True, slots=True)
class LotOutcome:
    """One lot of a page: its cached body, or the error that kept it out."""

    lot_id: int
    lookup: Lookup | None = None
    error: GatewayError | None = None

    def error_json(self) -> dict[str, Any]:
        assert self.error is not None
        return {"lotId": self.lot_id, "status": self.error.status, "detail": self.error.detail}


@dataclass(frozen=True)
class Paging:
    page: int
    page_size: int
    total_items: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total_items / self.page_size)

    def envelope(self) -> dict[str, Any]:
        return {
            "pageNumber": self.page,
            "pageSize": self.page_size,
            "totalPages": self.total_pages,
            "totalItems": self.total_items,
            "hasPreviousPage": self.page > 1,
            "hasNextPage": self.page < self.total_pages,
        }

    def window(self, items: Sequence[Any]) -> Sequence[Any]:
        start = (self.page - 1) * self.page_size
        return items[start : start + self.page_size]


def cache_header(lookups: Sequence[Lookup]) -> str:
    """STALE if any part is stale; HIT only when every part came fresh from the cache."""
    if any(lk.result is Result.STALE for lk in lookups):
        return "STALE"
    return "HIT" if all(lk.result.header == "HIT" for lk in lookups) else "MISS"


@dataclass(frozen=True)
class LotBatch:
    """Lots in the order asked, each with its body or its error."""

    lots: list[LotOutcome]
    elapsed_s: float = 0.0

    @property
    def lookups(self) -> list[Lookup]:
        return [o.lookup for o in self.lots if o.lookup is not None]

    @property
    def from_cache(self) -> int:
        """Lots served from the cache (fresh or stale) rather than fetched for this page."""
        return sum(1 for lk in self.lookups
                   if lk.result in (Result.HIT, Result.SHARED, Result.STALE))

    @property
    def stale_ids(self) -> list[int]:
        """Lots served from an expired entry (the upstream is failing or being asked)."""
        return [o.lot_id for o in self.lots
                if o.lookup is not None and o.lookup.result is Result.STALE]

    def parts(self) -> tuple[bytes, bytes]:
        """(items JSON, errors and staleLotIds JSON members)."""
        items = b"[" + b",".join(lk.entry.body for lk in self.lookups) + b"]"
        errors = json.dumps([o.error_json() for o in self.lots if o.error is not None])
        return items, f"{errors},\"staleLotIds\":{json.dumps(self.stale_ids)}".encode()

    def body(self) -> bytes:
        items, errors = self.parts()
        return b'{"items":' + items + b',"errors":' + errors + b"}"

    @property
    def cache(self) -> str:
        return cache_header(self.lookups)

    @property
    def etag(self) -> str:
        return _combined_etag([lk.entry.etag for lk in self.lookups], self.parts()[1])


@dataclass(frozen=True)
class EventPage(LotBatch):
    """One page of an event's lots, in the catalog's lot order."""

    catalog: Lookup = field(kw_only=True)
    paging: Paging = field(kw_only=True)

    def body(self) -> bytes:
        items, errors = self.parts()
        envelope = json.dumps(self.paging.envelope())[1:-1].encode()
        return (
            b'{"catalog":' + self.catalog.entry.body + b',"items":' + items
            + b',"errors":' + errors + b"," + envelope + b"}"
        )

    @property
    def cache(self) -> str:
        return cache_header([self.catalog, *self.lookups])

    @property
    def etag(self) -> str:
        tags = [self.catalog.entry.etag, *(lk.entry.etag for lk in self.lookups)]
        return _combined_etag(tags, self.parts()[1] + repr(self.paging).encode())


@dataclass(frozen=True)
class View:
    """A gateway-native JSON answer built from cached parts."""

    payload: dict[str, Any]
    cache: str
    age_s: float | None = None  # of the oldest part, for the Age header of a STALE answer


@dataclass(frozen=True)
class SavedLot:
    """A lot as the upstream answered the write, and what the write changed."""

    body: bytes
    changes: list[Change]

    @property
    def etag(self) -> str:
        return etag_of(self.body)


class CatalogService:
    def __init__(
        self, cache: Cache, upstream: UpstreamClient,
        on_override: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._cache = cache
        self._upstream = upstream
        self._on_override = on_override

    # --- single resources (drop-in mirror) ---------------------------------------------

    async def resource(self, resource: str, ident: int) -> Lookup:
        """GET /api/{resource}/{ident} through the cache."""
        path, endpoint = f"/api/{resource}/{ident}", f"/api/{resource}/{{id}}"
        key: Key = (resource.lower(), ident)

        async def fetch() -> bytes:
            try:
                return await self._upstream.get(path, endpoint=endpoint)
            except NotFound:
                raise NotFound(f"{resource} {ident} does not exist") from None

        return await self._cache.get(key, fetch)

    async def lot(self, lot_id: int) -> Lookup:
        return await self.resource("Lot", lot_id)

    async def catalog(self, catalog_id: int) -> Lookup:
        return await self.resource("Catalog", catalog_id)

    async def seller(self, seller_id: int) -> Lookup:
        return await self.resource("Seller", seller_id)

    async def listing(self, resource: str, params: Params) -> Lookup:
        """GET /api/{resource}?params through the cache (key: the sorted query)."""
        query = tuple(sorted(params))
        key: Key = (f"{resource.lower()}-list", query)
        return await self._cache.get(
            key, lambda: self._upstream.get(f"/api/{resource}", query, endpoint=f"/api/{resource}")
        )

    # --- gateway-native views -------------------------------------------------------------

    async def lots(self, lot_ids: Sequence[int]) -> LotBatch:
        """Every lot at once (bounded only by the upstream cap), in the order asked."""
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(self._lot_outcome(i) for i in lot_ids))
        return LotBatch(lots=list(outcomes), elapsed_s=time.perf_counter() - start)

    async def event_page(self, catalog_id: int, page: int, page_size: int) -> EventPage:
        """Two round trips when cold: the catalog (for its lot ids), then the page's lots."""
        start = time.perf_counter()
        catalog = await self.catalog(catalog_id)
        lot_ids = catalog.entry.derive("lot_ids", _catalog_lot_ids)
        paging = Paging(page, page_size, len(lot_ids))
        outcomes = await asyncio.gather(*(self._lot_outcome(i) for i in paging.window(lot_ids)))
        return EventPage(
            lots=list(outcomes), elapsed_s=time.perf_counter() - start,
            catalog=catalog, paging=paging,
        )

    async def sellers(self, q: str, page: int, page_size: int) -> View:
        """Sellers whose name contains `q` (any case) or whose display id starts with it.

        The upstream cannot search by name, so the whole seller list is read (cached, in
        pages of SELLER_PAGE fetched at once) and filtered here.
        """
        first = await self.listing("Seller", _seller_page_params(1))
        lookups = [first]
        total_pages = int(first.entry.derive("json", _json).get("totalPages") or 1)
        lookups += await asyncio.gather(
            *(self.listing("Seller", _seller_page_params(n)) for n in range(2, total_pages + 1))
        )
        sellers = [s for lk in lookups for s in lk.entry.derive("json", _json).get("items", [])]
        needle = q.strip().lower()
        if needle:
            sellers = [
                s for s in sellers
                if needle in str(s.get("name") or "").lower()
                or str(s.get("customerDisplayId", "")).startswith(needle)
            ]
        paging = Paging(page, page_size, len(sellers))
        return View({"items": list(paging.window(sellers)), **paging.envelope()},
                    cache_header(lookups), max(lk.age_s for lk in lookups))

    async def seller_events(
        self, seller_id: int, include_past: bool, page: int, page_size: int
    ) -> View:
        """A seller's events: upcoming soonest first, then (if asked) past, latest first."""
        seller = await self.seller(seller_id)
        catalogs = seller.entry.derive("json", _json).get("catalogs") or []
        now = datetime.now(UTC)
        upcoming = sorted((c for c in catalogs if not _is_past(c, now)), key=_start)
        past = sorted((c for c in catalogs if _is_past(c, now)), key=_start, reverse=True)
        events = upcoming + past if include_past else upcoming
        paging = Paging(page, page_size, len(events))
        payload = {"seller": {k: v for k, v in seller.entry.derive("json", _json).items()
                              if k != "catalogs"},
                   "items": list(paging.window(events)), **paging.envelope()}
        return View(payload, seller.result.header, seller.age_s)

    # --- writes ---------------------------------------------------------------------------

    async def save_override(
        self, lot_id: int, changes: dict[str, Any], *, actor: str,
        if_match: str | None = None,
    ) -> SavedLot:
        """Overlay `changes` (validated, camelCase; None removes) on the lot's override.

        Under the lot's write lock: read the lot fresh from upstream (never from the
        cache: the cache may lag another replica's save), merge, PUT the whole lot, and
        invalidate before returning. No read that starts after this returns can see the
        old override: the cached entry is gone and any fetch that was in flight during the
        write is detached and cannot store its (possibly older) result.
        """
        outcome, changed = "upstream_error", []
        try:
            # One read-merge-write per lot at a time (across replicas when the cache is
            # shared); saves to different lots run in parallel.
            async with self._cache.exclusive(f"lot:{lot_id}"):
                current = await self._fresh_lot(lot_id)
                if if_match and if_match.strip() != "*" and etag_of(current) not in etags_in(
                    if_match
                ):
                    raise PreconditionFailed(
                        f"lot {lot_id} changed since that ETag was read; reload and retry"
                    )
                lot = _json(current)
                override, changed = merge(current_override(lot), changes)
                if not changed:
                    outcome = "unchanged"
                    return SavedLot(current, [])
                answer = await self._write(lot_id, update_request(lot, override), lot)
                outcome = "saved"
                return SavedLot(answer, changed)
        except GatewayError as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            self._on_override(outcome)
            log.info(json.dumps({
                "event": "lot_override", "lotId": lot_id, "actor": actor, "outcome": outcome,
                "changes": {c.field: [c.old, c.new] for c in changed},
            }))

    async def put_lot(self, lot_id: int, body: bytes) -> bytes:
        """The drop-in PUT /api/Lot/{id}: passed through, then the same invalidation."""
        request = json_object(body, "a JSON UpdateLotRequest object")
        async with self._cache.exclusive(f"lot:{lot_id}"):
            before = self._cache.peek(("lot", lot_id))
            prior = [before.derive("json", _json)] if before is not None else []
            return await self._write(lot_id, body, request, *prior)

    async def _fresh_lot(self, lot_id: int) -> bytes:
        try:
            return await self._upstream.get(f"/api/Lot/{lot_id}", endpoint="/api/Lot/{id}")
        except NotFound:
            raise NotFound(f"Lot {lot_id} does not exist") from None

    async def _write(self, lot_id: int, body: bytes, *lots: dict[str, Any]) -> bytes:
        """PUT the lot; whatever happens, drop what the gateway holds of it afterwards.

        Invalidating after a failure too: a write that failed may still have been applied
        (a lost answer), so the next read must ask the upstream what it really holds.
        """
        answer = None
        try:
            answer = await self._upstream.put_json(
                f"/api/Lot/{lot_id}", body, endpoint="/api/Lot/{id}"
            )
            return answer
        except UpstreamUnavailable as exc:
            raise UpstreamFailed(f"the write did not reach the upstream: {exc.detail}") from None
        except NotFound:
            raise NotFound(f"Lot {lot_id} does not exist") from None
        finally:
            seen = [*lots, _json_or_empty(answer)] if answer is not None else list(lots)
            await self._invalidate_lot(lot_id, seen)

    async def _invalidate_lot(self, lot_id: int, lots: Sequence[dict[str, Any]]) -> None:
        """The lot, every cached list that may hold it, and the catalogs it was or is in
        (their lot lists change if a drop-in PUT moved it). Event pages hold nothing of
        their own: they are rebuilt from these entries."""
        await self._cache.invalidate(("lot", lot_id))
        await self._cache.invalidate_kind("lot-list")
        # Tolerant: a drop-in PUT body is passed on unvalidated, so `catalogs` may be junk.
        catalog_ids = {c.get("catalogId") for lot in lots
                       for c in _list(lot.get("catalogs")) if isinstance(c, dict)
                       and isinstance(c.get("catalogId"), int)}
        if any(lot.get("catalogs") != lots[0].get("catalogs") for lot in lots[1:]):
            for catalog_id in catalog_ids:
                await self._cache.invalidate(("catalog", catalog_id))
            await self._cache.invalidate_kind("catalog-list")

    async def revoke_session(self, session_id: str, ttl_s: float) -> None:
        """End an operator session on every replica (until its cookie would expire)."""
        await self._cache.revoke(f"session:{session_id}", ttl_s)

    async def session_revoked(self, session_id: str) -> bool:
        return await self._cache.revoked(f"session:{session_id}")

    async def verify_operator(self, username: str, password: str) -> bool:
        """Whether the upstream identity endpoint accepts this operator's credentials."""
        return await self._upstream.verify_operator(username, password)

    async def _lot_outcome(self, lot_id: int) -> LotOutcome:
        try:
            return LotOutcome(lot_id, lookup=await self.lot(lot_id))
        except GatewayError as exc:
            return LotOutcome(lot_id, error=exc)


def _outcome_of(exc: GatewayError) -> str:
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, PreconditionFailed):
        return "conflict"
    if isinstance(exc, BadRequest | Unprocessable | PayloadTooLarge):
        return "rejected"
    return "upstream_error"



def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json_or_empty(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamFailed("upstream answered something that is not JSON") from None


def _catalog_lot_ids(body: bytes) -> list[int]:
    try:
        return [int(lot["id"]) for lot in _json(body).get("lots") or []]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise UpstreamFailed("upstream catalog has no readable lot list") from None


def _seller_page_params(n: int) -> Params:
    return (("PageNumber", str(n)), ("PageSize", str(SELLER_PAGE)))


def _when(text: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _start(catalog: dict[str, Any]) -> datetime:
    return _when(catalog.get("startDate"))


def _is_past(catalog: dict[str, Any], now: datetime) -> bool:
    return bool(catalog.get("isCompleted")) or _when(catalog.get("endDate")) < now


def _combined_etag(tags: Sequence[str], extra: bytes) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for tag in tags:
        digest.update(tag.encode())
    digest.update(extra)
    return '"' + digest.hexdigest() + '"'
