"""The write path: override saves and drop-in lot writes, each followed by its invalidation.

The promise kept here: a write returns only after every cached answer it makes stale is
invalidated (on every replica, when the cache is shared), so no read that starts after it
can see the old data. A write that failed is invalidated too: it may have been applied
upstream with its answer lost, so the next read must ask the upstream what it holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import keys
from gateway.cache import Cache, etag_of, etags_in
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
from gateway.upstream.client import UpstreamClient

log = logging.getLogger("gateway.overrides")


@dataclass(frozen=True)
class SavedLot:
    """A lot as the upstream answered the write, and what the write changed."""

    body: bytes
    changes: list[Change]

    @property
    def etag(self) -> str:
        return etag_of(self.body)


class Writes:
    def __init__(
        self, cache: Cache, upstream: UpstreamClient,
        on_override: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._cache = cache
        self._upstream = upstream
        self._on_override = on_override  # called with each save's outcome, for metrics

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
        """The drop-in PUT /api/Lot/{id}: passed through, then the same invalidation.

        The lot's catalogs before the write are read fresh from the upstream, under the
        lot's lock: a PUT may move the lot, and the catalog it leaves must be outdated as
        well as the one it joins, whether or not this process had the lot cached.
        """
        request = json_object(body, "a JSON UpdateLotRequest object")
        async with self._cache.exclusive(f"lot:{lot_id}"):
            before = _json_or_empty(await self._fresh_lot(lot_id))
            return await self._write(lot_id, body, request, before)

    async def _fresh_lot(self, lot_id: int) -> bytes:
        try:
            return await self._upstream.get(f"/api/Lot/{lot_id}", endpoint="/api/Lot/{id}")
        except NotFound:
            raise NotFound(f"Lot {lot_id} does not exist") from None

    async def _write(self, lot_id: int, body: bytes, *lots: dict[str, Any]) -> bytes:
        """PUT the lot; whatever happens, drop what the gateway holds of it afterwards."""
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
        await self._cache.invalidate(keys.one("Lot", lot_id))
        await self._cache.invalidate_kind(keys.listing_kind("Lot"))
        # Tolerant: a drop-in PUT body is passed on unvalidated, so `catalogs` may be junk.
        catalog_ids = {c.get("catalogId") for lot in lots
                       for c in _list(lot.get("catalogs")) if isinstance(c, dict)
                       and isinstance(c.get("catalogId"), int)}
        if any(lot.get("catalogs") != lots[0].get("catalogs") for lot in lots[1:]):
            for catalog_id in catalog_ids:
                await self._cache.invalidate(keys.one("Catalog", catalog_id))
            await self._cache.invalidate_kind(keys.listing_kind("Catalog"))


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
