"""The cached read path: sellers, events (catalogs), lots, event pages.

Every read goes through the cache; this module decides cache keys and which cached upstream
bodies make up a page. It never speaks HTTP to clients (the edges turn what it returns into
bytes) and never to the upstream except through UpstreamClient, inside a cache fetch.

Event pages are not cached as a whole: a page is looked up part by part on every request
(the parts already in memory at once, without a task or an await each; only the missing
ones are fetched, all at once). So a page can never be staler than the lots it contains,
and invalidating a lot needs no index of the pages that hold it; a page's ETag is derived
from its parts' ETags, and the edge may reuse the bytes it assembled while the parts are
the very same entries (gateway/representations.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from gateway import keys
from gateway.cache import Cache, Entry, Lookup, Result
from gateway.cache.views import Views
from gateway.errors import GatewayError, NotFound, UpstreamFailed
from gateway.upstream.client import Answer, Params, UpstreamClient

_LOT, _CATALOG = keys.one("Lot", 0)[0], keys.one("Catalog", 0)[0]  # their keys' kinds
SELLER_PAGE = 100  # page size used to read the whole seller list for searching
MAX_PAGE_SIZE = 100  # lots (or sellers, events) on one page: all fetched at once when cold
MAX_IDS = 100  # lots in one batch read


class LotOutcome(NamedTuple):  # a tuple: made for every lot of every page, so made cheaply
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
    results = {lk.result for lk in lookups}
    if Result.STALE in results:
        return "STALE"
    return "HIT" if results <= _FROM_CACHE else "MISS"


_FROM_CACHE = {Result.HIT, Result.SHARED}


@dataclass(frozen=True)
class LotBatch:
    """Lots in the order asked, each with its body or its error.

    What is derived from the lookups is computed once and shared by every copy made with
    dataclasses.replace (a kept view handed out again: only `held_s` differs)."""

    lots: list[LotOutcome]
    elapsed_s: float = 0.0
    # Seconds since its lookups were made: a batch handed out again (a kept view,
    # cache/views.py) is that much older than its lookups say.
    held_s: float = 0.0
    _derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def derived(self, name: str, compute: Callable[[], Any]) -> Any:
        """compute(), once for this batch and its copies (see the class docstring)."""
        try:
            return self._derived[name]
        except KeyError:
            value = self._derived[name] = compute()
            return value

    @property
    def lookups(self) -> list[Lookup]:
        return self.derived("lookups", lambda: [o.lookup for o in self.lots
                                              if o.lookup is not None])

    @property
    def from_cache(self) -> int:
        """Lots served from the cache (fresh or stale) rather than fetched for this page."""
        return sum(1 for lk in self.lookups
                   if lk.result in (Result.HIT, Result.SHARED, Result.STALE))

    @property
    def stale_ids(self) -> list[int]:
        """Lots served from an expired entry (the upstream is failing or being asked)."""
        return self.derived("stale_ids", lambda: [
            o.lot_id for o in self.lots
            if o.lookup is not None and o.lookup.result is Result.STALE])

    @property
    def errors(self) -> list[LotOutcome]:
        return self.derived("errors", lambda: [o for o in self.lots if o.error is not None])

    @property
    def parts(self) -> list[Lookup]:
        """Every cached body the answer is made of (its ETag derives from theirs)."""
        return self.lookups

    @property
    def entries(self) -> tuple[tuple[str, Entry], ...]:
        """The parts' entries, each with its key's kind: what a kept view of this batch
        stands for (cache/views.py)."""
        return self.derived("entries", lambda: tuple((_LOT, lk.entry) for lk in self.lookups))

    @property
    def cache(self) -> str:
        return self.derived("cache", lambda: cache_header(self.parts))

    @property
    def age_s(self) -> float | None:
        """Of the oldest part, for the Age header of a STALE answer."""
        oldest = self.derived("oldest", lambda: max((lk.age_s for lk in self.parts),
                                                  default=None))
        return None if oldest is None else oldest + self.held_s

    @property
    def reusable(self) -> bool:
        """Made of fresh hits only: a view that may be kept (cache/views.py)."""
        return all(lk.result is Result.HIT for lk in self.parts) and not self.errors

    @property
    def fallback(self) -> bool:
        """Some part is the last good copy, served because its fetch failed."""
        return any(lk.fallback for lk in self.parts)


@dataclass(frozen=True)
class EventPage(LotBatch):
    """One page of an event's lots, in the catalog's lot order."""

    catalog: Lookup = field(kw_only=True)
    paging: Paging = field(kw_only=True)

    @property
    def parts(self) -> list[Lookup]:
        return self.derived("parts", lambda: [self.catalog, *self.lookups])

    @property
    def entries(self) -> tuple[tuple[str, Entry], ...]:
        return self.derived("entries", lambda: (
            (_CATALOG, self.catalog.entry), *((_LOT, lk.entry) for lk in self.lookups)))


@dataclass(frozen=True)
class View:
    """A gateway-native JSON answer built from cached parts."""

    payload: dict[str, Any]
    cache: str
    age_s: float | None = None  # of the oldest part, for the Age header of a STALE answer


class Prefetch(Protocol):
    """Background fetches of what is likely to be asked next (gateway/prefetch.py). Both
    return at once: the fetches, if any, happen later, behind every client's."""

    def catalogs(self, catalog_ids: Sequence[int]) -> None: ...

    def lots(self, lot_ids: Sequence[int]) -> None: ...


class NoPrefetch:
    """Prefetch off: only what clients ask for is fetched."""

    def catalogs(self, catalog_ids: Sequence[int]) -> None:
        return None

    def lots(self, lot_ids: Sequence[int]) -> None:
        return None


class Reads:
    """Every read of the catalog, through the cache: at most one upstream call per key at a
    time, and never an answer older than a write that has returned (see gateway/writes.py,
    which invalidates the keys read here)."""

    def __init__(
        self, cache: Cache, upstream: UpstreamClient, prefetch: Prefetch | None = None
    ) -> None:
        self._cache = cache
        self._upstream = upstream
        self.prefetch: Prefetch = prefetch or NoPrefetch()
        # Pages and batches made of hits alone, handed out again while still exact.
        self._views: Views[LotBatch] = Views(cache, max_bytes=cache.store.max_bytes // 8)

    # --- single resources (drop-in mirror) ---------------------------------------------

    async def resource(self, resource: str, ident: int, *, fresh: bool = False) -> Lookup:
        """GET /api/{resource}/{ident} through the cache; `fresh`: a forced refresh from
        upstream (Cache.get's contract: coalesced, never older than a save, the last good
        copy served if the upstream fails)."""
        if not fresh and (lookup := self.resource_now(resource, ident)) is not None:
            return lookup
        key, fetch = keys.one(resource, ident), self._fetch_one(resource, ident)
        return await self._cache.get(key, fetch, fresh=fresh)

    def resource_now(self, resource: str, ident: int) -> Lookup | None:
        """GET /api/{resource}/{ident} when the cache answers it at once (a fresh hit, with
        Cache.hit's rules), else None: nothing awaited, nothing fetched but a refresh ahead."""
        return self._cache.hit(keys.one(resource, ident), self._fetch_one(resource, ident))

    def _fetch_one(self, resource: str, ident: int) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            try:
                return await self._upstream.get(f"/api/{resource}/{ident}",
                                                endpoint=f"/api/{resource}/{{id}}")
            except NotFound:
                raise NotFound(f"{resource} {ident} does not exist") from None

        return fetch

    async def lot(self, lot_id: int, *, fresh: bool = False) -> Lookup:
        return await self.resource("Lot", lot_id, fresh=fresh)

    async def lot_count(self, catalog_id: int) -> int:
        """How many lots an event has (its catalog, through the cache: this also warms it
        for the event's first page)."""
        catalog = await self.catalog(catalog_id)
        return len(catalog.entry.derive("lot_ids", _catalog_lot_ids))

    async def catalog(self, catalog_id: int, *, fresh: bool = False) -> Lookup:
        return await self.resource("Catalog", catalog_id, fresh=fresh)

    async def seller(self, seller_id: int) -> Lookup:
        return await self.resource("Seller", seller_id)

    async def listing(self, resource: str, params: Params) -> Lookup:
        """GET /api/{resource}?params through the cache (key: the sorted query).

        `params` as the edge checked them: the names the upstream's document spells, each
        scalar once, so one query has one key however its client spelled it."""
        key = keys.listing(resource, tuple(params))
        return await self._cache.get(
            key, lambda: self._upstream.get(f"/api/{resource}", key[1],
                                            endpoint=f"/api/{resource}")
        )

    async def uncached(
        self, method: str, path: str, params: Params, body: bytes | None, *, endpoint: str
    ) -> Answer:
        """A read the gateway does not cache (a read sent as POST, a path it does not
        know): passed through with the gateway's own token, the answer as it came."""
        return await self._upstream.send(method, path, params, body, endpoint=endpoint)

    # --- gateway-native views -------------------------------------------------------------

    async def lots(self, lot_ids: Sequence[int]) -> LotBatch:
        """Every lot at once (bounded only by the upstream cap), in the order asked."""
        start = time.perf_counter()
        name = ("lots", tuple(lot_ids))
        if (kept := self._again(name, start)) is not None:
            return kept
        stamp = self._cache.stamp()
        outcomes = await self._lot_outcomes(lot_ids)
        batch = LotBatch(lots=outcomes, elapsed_s=time.perf_counter() - start)
        self._keep(name, batch, stamp)
        return batch

    async def event_page(
        self, catalog_id: int, page: int, page_size: int, *, fresh: bool = False
    ) -> EventPage:
        """Two round trips when cold: the catalog (for its lot ids), then the page's lots.
        `fresh`: the catalog and the page's lots refreshed from upstream (two round trips)."""
        start = time.perf_counter()
        name = ("page", catalog_id, page, page_size)
        if not fresh and (kept := self._again(name, start)) is not None:
            return kept  # type: ignore[return-value]  # kept under a page's name
        stamp = self._cache.stamp()
        catalog = await self.catalog(catalog_id, fresh=fresh)
        lot_ids = catalog.entry.derive("lot_ids", _catalog_lot_ids)
        paging = Paging(page, page_size, len(lot_ids))
        if page < paging.total_pages:  # the next page is the likeliest next request
            # Wished for before this page's lots are read, so it lands a round trip sooner;
            # those reads still come first (prefetch only takes slots they leave free).
            self.prefetch.lots(Paging(page + 1, page_size, len(lot_ids)).window(lot_ids))
        outcomes = await self._lot_outcomes(paging.window(lot_ids), fresh=fresh)
        event_page = EventPage(
            lots=outcomes, elapsed_s=time.perf_counter() - start,
            catalog=catalog, paging=paging,
        )
        self._keep(name, event_page, stamp)
        return event_page

    def lots_now(self, lot_ids: Sequence[int]) -> tuple[LotBatch, float] | None:
        """The batch when it is kept and still exact, with the seconds it has been kept
        (its parts are that much older than their lookups say), else None: nothing
        awaited, nothing copied."""
        return self._views.get(("lots", tuple(lot_ids)))

    def event_page_now(self, catalog_id: int, page: int, page_size: int
                       ) -> tuple[EventPage, float] | None:
        """The event page as lots_now gives a batch."""
        return self._views.get(("page", catalog_id, page, page_size))  # type: ignore[return-value]

    def _again(self, name: tuple[Any, ...], start: float) -> LotBatch | None:
        """The batch kept as `name`, aged by the time it was kept, if still exact."""
        found = self._views.get(name)
        if found is None:
            return None
        batch, held_s = found
        return dataclasses.replace(batch, held_s=held_s,
                                   elapsed_s=time.perf_counter() - start)

    def _keep(self, name: tuple[Any, ...], batch: LotBatch, stamp: int | None) -> None:
        """Keep a batch made of hits alone, with no entry changed while it was made."""
        if stamp is None or stamp != self._cache.stamp() or not batch.reusable:
            return
        self._views.keep(name, batch, batch.entries)

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
        self.prefetch.catalogs([c["id"] for c in paging.window(events)
                                if isinstance(c.get("id"), int)])
        payload = {"seller": {k: v for k, v in seller.entry.derive("json", _json).items()
                              if k != "catalogs"},
                   "items": list(paging.window(events)), **paging.envelope()}
        return View(payload, seller.result.header, seller.age_s)

    async def _lot_outcomes(
        self, lot_ids: Sequence[int], *, fresh: bool = False
    ) -> list[LotOutcome]:
        """The lots in memory at once (no task, no await), then every other one at once."""
        outcomes: list[LotOutcome | None] = [None] * len(lot_ids)
        if not fresh:
            for n, lot_id in enumerate(lot_ids):
                key = keys.one("Lot", lot_id)
                lookup = self._cache.hit(key, self._fetch_one("Lot", lot_id))
                if lookup is not None:
                    outcomes[n] = LotOutcome(lot_id, lookup=lookup)
        missing = [n for n, outcome in enumerate(outcomes) if outcome is None]
        if missing:
            fetched = await asyncio.gather(
                *(self._lot_outcome(lot_ids[n], fresh=fresh) for n in missing))
            for n, outcome in zip(missing, fetched, strict=True):
                outcomes[n] = outcome
        return outcomes  # type: ignore[return-value]  # every None was filled

    async def _lot_outcome(self, lot_id: int, *, fresh: bool = False) -> LotOutcome:
        try:
            return LotOutcome(lot_id, lookup=await self.lot(lot_id, fresh=fresh))
        except GatewayError as exc:
            return LotOutcome(lot_id, error=exc)


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
