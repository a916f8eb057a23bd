"""The write path: every write of the Catalog API, each followed by its invalidation.

The promise kept here: a write returns only after every cached answer it makes stale is
invalidated (on every replica, when the cache is shared), so no read that starts after it
can see the old data. A write that failed is invalidated too: it may have been applied
upstream with its answer lost, so the next read must ask the upstream what it holds.

What a write makes stale (S seller, C catalog, L lot; the *-list kinds are every cached
list page of that resource; event pages and seller views are rebuilt from these):

    POST   Seller        seller lists
    PUT    Seller/{id}   S, seller lists, the catalogs that embed it, catalog lists
    DELETE Seller/{id}   the same
    POST   Catalog       catalog lists, its sellers (they embed their catalogs), seller lists
    PUT    Catalog/{id}  C, catalog lists, its old and new sellers, seller lists
    DELETE Catalog/{id}  the same, plus its lots (they list their catalogs) and lot lists
    POST   Lot           lot lists, the catalogs it joins (their `lots`), catalog lists
    PUT    Lot/{id}      L, lot lists, and the catalogs it leaves or joins
    DELETE Lot/{id}      L, lot lists, its catalogs, catalog lists
    POST   Bulk/insert   everything (its answer names no ids)
    anything else        everything (the gateway cannot see what an unknown write touches)

Where the old state matters (which catalogs a lot was in, which sellers a catalog had), it
is read fresh from the upstream inside the write, under the entity's lock: the cache may
not hold it, or may lag another client's write. Writes to one entity are serialised, as
override saves are; writes to different entities run in parallel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from gateway import keys
from gateway.cache import Cache, Key, etag_of, etags_in, waited
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
    UpstreamFailed,
)
from gateway.overrides import Change, current_override, json_object, merge, update_request
from gateway.upstream.client import Answer, Params, UpstreamClient, expect_ok

log = logging.getLogger("gateway.overrides")


@dataclass(frozen=True)
class SavedLot:
    """A lot as the upstream answered the write, and what the write changed."""

    body: bytes
    changes: list[Change]

    @property
    def etag(self) -> str:
        return etag_of(self.body)


@dataclass
class Stale:
    """What one write outdates: single keys and whole kinds."""

    keys: set[Key]
    kinds: set[str]

    def resource(self, resource: str, idents: Iterable[int]) -> None:
        self.keys.update(keys.one(resource, i) for i in idents)


class Writes:
    def __init__(
        self, cache: Cache, upstream: UpstreamClient,
        on_override: Callable[[str], None] = lambda outcome: None,
        *, lock_wait_s: float = 15.0,
    ) -> None:
        self._cache = cache
        self._upstream = upstream
        self._on_override = on_override  # called with each save's outcome, for metrics
        self._lock_wait_s = lock_wait_s  # limits.lock_wait_s

    # --- override saves ----------------------------------------------------------------

    async def save_override(
        self, lot_id: int, changes: dict[str, Any], *, actor: str,
        if_match: str | None = None, token: str | None = None,
    ) -> SavedLot:
        """Overlay `changes` (validated, camelCase; None removes) on the lot's override.

        Under the lot's write lock: read the lot fresh from upstream (never from the
        cache: the cache may lag another replica's save), merge, PUT the whole lot (with
        the caller's own token when given), and invalidate before returning. No read that
        starts after this returns can see the old override: the cached entry is gone and
        any fetch that was in flight during the write is detached and cannot store its
        (possibly older) result.
        """
        outcome, changed = "upstream_error", []
        try:
            async with self._lock("Lot", lot_id):
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
                answer = await self._send(
                    "PUT", "Lot", lot_id, update_request(lot, override), token, before=lot
                )
                body = expect_ok(answer, "/api/Lot/{id}")
                outcome = "saved"
                return SavedLot(body, changed)
        except GatewayError as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            self._on_override(outcome)
            log.info(json.dumps({
                "event": "lot_override", "lotId": lot_id, "actor": actor, "outcome": outcome,
                "changes": {c.field: [c.old, c.new] for c in changed},
            }))

    # --- the drop-in writes ------------------------------------------------------------

    async def create(self, resource: str, body: bytes, token: str | None = None) -> Answer:
        """POST /api/{resource}."""
        json_object(body, f"a JSON Add{resource}Request object")
        return await self._send("POST", resource, None, body, token, before={})

    async def update(
        self, resource: str, ident: int, body: bytes, token: str | None = None
    ) -> Answer:
        """PUT /api/{resource}/{ident}."""
        json_object(body, f"a JSON Update{resource}Request object")
        async with self._lock(resource, ident):
            before = await self._fresh(resource, ident)
            return await self._send("PUT", resource, ident, body, token, before=before)

    async def delete(self, resource: str, ident: int, token: str | None = None) -> Answer:
        """DELETE /api/{resource}/{ident}."""
        async with self._lock(resource, ident):
            before = await self._fresh(resource, ident)
            return await self._send("DELETE", resource, ident, None, token, before=before)

    async def bulk_insert(self, body: bytes, token: str | None = None) -> Answer:
        """POST /api/Bulk/insert: creates or updates anything; outdates everything."""
        json_object(body, "a JSON BulkInsertRequest object")
        return await self._everything(
            self._upstream.send("POST", "/api/Bulk/insert", (), body,
                                endpoint="/api/Bulk/insert", token=token)
        )

    async def unknown(
        self, method: str, path: str, params: Params, body: bytes | None,
        token: str | None = None,
    ) -> Answer:
        """A write to a path the gateway does not know: passed through, and since nothing
        says what it touched, everything cached before it is outdated."""
        return await self._everything(
            self._upstream.send(method, path, params, body, endpoint="other", token=token)
        )

    # --- the shared steps ----------------------------------------------------------------

    def _lock(self, resource: str, ident: int | None) -> AbstractAsyncContextManager[None]:
        """The entity's write lock, across replicas, held to the end of the write however
        long the upstream takes. Waiting for it is bounded by `lock_wait_s`: then
        LockBusy (503, Retry-After), and nothing was sent upstream."""
        if ident is None:
            return nullcontext()
        return waited(self._cache.exclusive(f"{resource.lower()}:{ident}"),
                      self._lock_wait_s, f"{resource} {ident}")

    async def _fresh(self, resource: str, ident: int) -> dict[str, Any]:
        """The entity as the upstream holds it now ({} if it does not exist: the write
        itself will then answer the upstream's 404)."""
        try:
            body = await self._upstream.get(f"/api/{resource}/{ident}",
                                            endpoint=f"/api/{resource}/{{id}}")
        except NotFound:
            return {}
        return _json_or_empty(body)

    async def _fresh_lot(self, lot_id: int) -> bytes:
        try:
            return await self._upstream.get(f"/api/Lot/{lot_id}", endpoint="/api/Lot/{id}")
        except NotFound:
            raise NotFound(f"Lot {lot_id} does not exist") from None

    async def _send(
        self, method: str, resource: str, ident: int | None, body: bytes | None,
        token: str | None, *, before: dict[str, Any],
    ) -> Answer:
        """Send the write; whatever happens, invalidate what it makes stale before
        returning (after a failure too: it may have been applied)."""
        path = f"/api/{resource}" + (f"/{ident}" if ident is not None else "")
        endpoint = f"/api/{resource}" + ("/{id}" if ident is not None else "")
        request = _json_or_empty(body) if body else {}
        answer = None
        try:
            answer = await self._upstream.send(method, path, (), body, endpoint=endpoint,
                                               token=token)
            return answer
        finally:
            after = _json_or_empty(answer.body) if answer is not None else {}
            await self._invalidate(stale(method, resource, ident, before, request, after))

    async def _everything(self, sending: Any) -> Answer:
        try:
            return await sending
        finally:
            for kind in keys.EVERY_KIND:
                await self._cache.invalidate_kind(kind)

    async def _invalidate(self, what: Stale) -> None:
        for key in sorted(what.keys, key=repr):
            await self._cache.invalidate(key)
        for kind in sorted(what.kinds):
            await self._cache.invalidate_kind(kind)


def stale(
    method: str, resource: str, ident: int | None, before: dict[str, Any],
    request: dict[str, Any], after: dict[str, Any],
) -> Stale:
    """What a write of `resource` outdates, from the entity before it, the request and the
    answer (any of which may be empty or, for a drop-in body, junk: read tolerantly)."""
    out = Stale(set(), {keys.listing_kind(resource)})
    if ident is not None:
        out.resource(resource, [ident])
    seen = (before, request, after)
    if resource == "Seller" and method != "POST":
        out.resource("Catalog", _ids(seen, "catalogs", "id"))
        out.kinds.add(keys.listing_kind("Catalog"))
    elif resource == "Catalog":
        out.resource("Seller", _ids(seen, "sellers", "id") | _plain_ids(request, "sellerIds"))
        out.kinds.add(keys.listing_kind("Seller"))
        if method == "DELETE":
            out.resource("Lot", _ids([before], "lots", "id"))
            out.kinds.add(keys.listing_kind("Lot"))
    elif resource == "Lot":
        catalogs = [_list(x.get("catalogs")) for x in seen if x]
        # A lot's catalog lists it (id and lot number): they change only if its catalogs do.
        if method != "PUT" or any(c != catalogs[0] for c in catalogs[1:]):
            out.resource("Catalog", _ids(seen, "catalogs", "catalogId"))
            out.kinds.add(keys.listing_kind("Catalog"))
    return out


def _ids(entities: Iterable[dict[str, Any]], member: str, field: str) -> set[int]:
    return {item[field] for entity in entities for item in _list(entity.get(member))
            if isinstance(item, dict) and isinstance(item.get(field), int)}


def _plain_ids(entity: dict[str, Any], member: str) -> set[int]:
    return {i for i in _list(entity.get(member)) if isinstance(i, int)}


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


def _json_or_empty(body: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(body or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamFailed("upstream answered something that is not JSON") from None
