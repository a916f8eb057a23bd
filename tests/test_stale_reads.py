"""No answer older than a write that has returned: every path a write must outdate, read back.

Each test reads through the gateway (so the answer is cached), writes, and reads again on
the path the write must outdate. The one-line mutation of the gateway each test was seen
to catch is named in its docstring.
"""

from __future__ import annotations

import asyncio

PUT = "PUT /api/Lot/{id}"


def qty_of(lot: dict) -> int | None:
    return (lot.get("overridenData") or [{}])[0].get("qty")


def event_with_lot(gw, n: int = 0) -> tuple[int, int]:
    """(catalog id, lot id) of the n-th lot of an event of 25 to 40 lots."""
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 40)[0]
    return catalog_id, gw.sandbox.data.lot_ids_of_catalog(catalog_id)[n]


async def save(gw, lot_id: int, fields: dict) -> dict:
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json=fields)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def put_lot(gw, lot_id: int, **changes) -> dict:
    """The drop-in write: the lot as it is upstream, with `changes` (camelCase)."""
    lot = gw.sandbox.data.lot_dto(lot_id)
    body = {"customerItemId": lot["customerItemId"],
            "imageLinks": [i["link"] for i in lot["imageLinks"]],
            "overridenData": lot["overridenData"], "catalogs": lot["catalogs"], **changes}
    resp = await gw.client.put(f"/api/Lot/{lot_id}", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_save_outdates_every_cached_lot_list(start_gateway):
    """Mutation seen to fail it: start writes.stale() without the written resource's list
    kind (`Stale(set(), set())`), so lot lists are not invalidated."""
    gw = await start_gateway()
    _, lot_id = event_with_lot(gw)
    item = gw.sandbox.data.lots[lot_id]["customerItemId"]
    path = f"/api/Lot?CustomerItemId={item}&PageSize=5"
    before = await gw.get_json(path)
    assert [x["id"] for x in before["items"]] == [lot_id]
    assert (await gw.client.get(path)).headers["X-Cache"] == "HIT"
    await save(gw, lot_id, {"qty": 4321})
    resp = await gw.client.get(path)
    assert resp.headers["X-Cache"] == "MISS"
    assert qty_of((await resp.json())["items"][0]) == 4321


async def test_a_drop_in_put_that_moves_a_lot_updates_both_catalogs_and_event_pages(
    start_gateway,
):
    """The lot itself is not cached: only its old and new catalogs are.

    Mutation seen to fail it: in Writes.update, take the lot's old state from the cache
    (`cache.peek`) instead of reading it fresh: an uncached lot then moves without its old
    catalog being outdated.
    """
    gw = await start_gateway()
    data = gw.sandbox.data
    old_catalog, lot_id = event_with_lot(gw, 3)
    new_catalog = next(c for c in data.catalog_ids_with_lots(5, 40) if c != old_catalog)
    await gw.get_json(f"/api/Catalog/{old_catalog}")
    new_page = await gw.get_json(f"/api/v1/catalogs/{new_catalog}/lots?page_size=100")
    assert lot_id not in [x["id"] for x in new_page["items"]]
    before = new_page["totalItems"]

    await put_lot(gw, lot_id, catalogs=[{"catalogId": new_catalog, "lotNumber": "Z-1"}])

    old = await gw.get_json(f"/api/Catalog/{old_catalog}")
    assert lot_id not in [x["id"] for x in old["lots"]]
    old_page = await gw.get_json(f"/api/v1/catalogs/{old_catalog}/lots?page_size=100")
    assert lot_id not in [x["id"] for x in old_page["items"]]
    new_page = await gw.get_json(f"/api/v1/catalogs/{new_catalog}/lots?page_size=100")
    assert lot_id in [x["id"] for x in new_page["items"]]
    assert new_page["totalItems"] == before + 1


async def test_the_event_page_etag_follows_a_save_of_one_of_its_lots(start_gateway):
    """Mutation seen to fail it: build the page ETag from the catalog's ETag alone
    (api.assemble: `combined_etag([batch.parts[0].entry.etag], extra)`)."""
    gw = await start_gateway()
    catalog_id, lot_id = event_with_lot(gw, 10)
    path = f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"
    etag = (await gw.client.get(path)).headers["ETag"]
    assert (await gw.client.get(path, headers={"If-None-Match": etag})).status == 304
    await save(gw, lot_id, {"wgt": 77.5})
    resp = await gw.client.get(path, headers={"If-None-Match": etag})
    assert resp.status == 200
    assert resp.headers["ETag"] != etag
    lot = next(x for x in (await resp.json())["items"] if x["id"] == lot_id)
    assert lot["overridenData"][0]["wgt"] == 77.5


async def test_an_answer_invalidated_by_a_save_is_never_served_stale(start_gateway):
    """With the upstream down after a save, the lot is a 503, never the old value marked
    STALE (stale-if-error may only stand in for answers no write has outdated).

    Mutation seen to fail it: make Cache.drop expire the entry instead of removing it
    (`entry.expires_at = 0`-style soft purge), so stale-if-error can still find it.
    """
    gw = await start_gateway(upstream={"retries": 0})
    catalog_id, lot_id = event_with_lot(gw, 2)
    other = gw.sandbox.data.lot_ids_of_catalog(catalog_id)[4]
    await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25")  # all cached
    await save(gw, lot_id, {"qty": 9})
    gw.sandbox.configure(down=True)

    resp = await gw.client.get(f"/api/Lot/{lot_id}")
    assert resp.status == 503, await resp.text()
    assert "X-Cache" not in resp.headers
    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25")
    assert lot_id not in [x["id"] for x in page["items"]]
    assert [e["lotId"] for e in page["errors"]] == [lot_id]
    assert page["errors"][0]["status"] == 503
    # The lots no write touched are still served (fresh from the cache).
    assert other in [x["id"] for x in page["items"]]


async def test_a_save_reads_the_lot_fresh_not_from_the_cache(start_gateway):
    """A change made upstream after the lot was cached survives a save of another field.

    Mutation seen to fail it: in writes.save_override, take `current` from the cache
    (`(await self._cache.get(keys.one("Lot", lot_id), fetch)).entry.body`)."""
    gw = await start_gateway()
    _, lot_id = event_with_lot(gw, 6)
    cached = await gw.get_json(f"/api/Lot/{lot_id}")
    assert qty_of(cached) != 555
    # Someone else writes the lot at the upstream, not through this gateway.
    gw.sandbox.data.update_lot(lot_id, overriden_data=[{"qty": 555}])

    saved = await save(gw, lot_id, {"notes": "checked"})

    assert saved["overridenData"][0] == {"qty": 555, "notes": "checked"}
    assert gw.sandbox.data.lots[lot_id]["overridenData"][0] == {"qty": 555, "notes": "checked"}
    assert await gw.get_json(f"/api/Lot/{lot_id}") == saved


async def test_a_save_that_changes_nothing_does_not_write(start_gateway):
    """Mutation seen to fail it: drop the `if not changed` early return in
    writes.save_override (the lot is then written back as it is)."""
    gw = await start_gateway()
    _, lot_id = event_with_lot(gw, 8)
    await save(gw, lot_id, {"qty": 3, "doNotTip": True})
    gw.sandbox.reset_stats()

    again = await save(gw, lot_id, {"qty": 3, "do_not_tip": True})

    assert gw.calls(PUT) == 0
    assert again["overridenData"][0] == {"qty": 3, "doNotTip": True}
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_overrides_total{outcome="unchanged"} 1.0' in metrics
    assert 'gateway_overrides_total{outcome="saved"} 1.0' in metrics


async def test_concurrent_drop_in_puts_on_one_lot_are_serialised_and_the_last_one_reads_back(
    start_gateway,
):
    """Mutation seen to fail it: make Writes._lock return `nullcontext()` for every write
    (the writes then overlap at the upstream)."""
    gw = await start_gateway(latency_ms=40, jitter_ms=30)
    _, lot_id = event_with_lot(gw, 12)
    await gw.get_json(f"/api/Lot/{lot_id}")  # cached: every write must outdate it
    gw.sandbox.reset_stats()

    answers = await asyncio.gather(*(put_lot(gw, lot_id, overridenData=[{"Qty": n}])
                                     for n in range(1, 9)))

    assert gw.calls(PUT) == 8
    assert gw.sandbox.max_inflight == 1, "two writes of one lot reached the upstream at once"
    final = gw.sandbox.data.lots[lot_id]["overridenData"][0]["qty"]
    assert final in {qty_of(a) for a in answers}
    assert qty_of(await gw.get_json(f"/api/Lot/{lot_id}")) == final
