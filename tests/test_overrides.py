"""Override saves: read-merge-write semantics, serialisation per lot, exact invalidation
(zero stale reads), bad input, and upstream failure during the write."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from ABConnect.api.models.catalog import LotDto

from gateway.config import parse_api_keys
from gateway.overrides import FIELDS

from gwtesting import eventually, timed

PUT = "PUT /api/Lot/{id}"


def override_of(gw, lot_id: int) -> dict:
    """What the upstream really holds now."""
    entries = gw.sandbox.data.lots[lot_id]["overridenData"]
    return entries[0] if entries else {}


async def save(gw, lot_id: int, fields: dict, status: int = 200, **kw) -> dict:
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json=fields, **kw)
    assert resp.status == status, await resp.text()
    return await resp.json(content_type=None)


def a_lot(gw, n: int = 0) -> tuple[int, int]:
    """(catalog id, lot id) of the n-th lot of a 25-lot event."""
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    return catalog_id, gw.sandbox.data.lot_ids_of_catalog(catalog_id)[n]


async def test_saves_merge_into_the_existing_override_and_null_removes(start_gateway):
    gw = await start_gateway()
    _, lot_id = a_lot(gw)
    initial = gw.sandbox.data.lots[lot_id]["initialData"].copy()
    gw.sandbox.data.lots[lot_id]["overridenData"] = []

    await save(gw, lot_id, {"qty": 3})
    answer = await save(gw, lot_id, {"description": "x", "force_crate": True})
    LotDto.model_validate(answer)
    assert answer["overridenData"] == [{"qty": 3, "description": "x", "forceCrate": True}]
    assert override_of(gw, lot_id) == {"qty": 3, "description": "x", "forceCrate": True}

    await save(gw, lot_id, {"qty": None})
    lot = await gw.get_json(f"/api/Lot/{lot_id}")
    assert lot["overridenData"] == [{"description": "x", "forceCrate": True}]
    assert lot["initialData"] == initial  # never touched
    assert gw.calls(PUT) == 3


async def test_write_keeps_the_rest_of_the_lot(start_gateway):
    gw = await start_gateway()
    _, lot_id = a_lot(gw, 1)
    before = await gw.get_json(f"/api/Lot/{lot_id}")
    after = await save(gw, lot_id, {"wgt": 12.5, "cpack": "PBOX"})
    for key in ("customerItemId", "imageLinks", "catalogs", "initialData"):
        assert after[key] == before[key], key
    assert after["overridenData"][0]["wgt"] == 12.5


async def test_concurrent_saves_to_one_lot_all_survive(start_gateway):
    gw = await start_gateway(latency_ms=30)
    _, lot_id = a_lot(gw, 2)
    gw.sandbox.data.lots[lot_id]["overridenData"] = []
    values = {"qty": 7, "l": 1.5, "w": 2.5, "h": 3.5, "wgt": 4.5, "value": 99.0,
              "cpack": "CRATE", "description": "d", "notes": "n", "itemID": 42,
              "forceCrate": True, "notedConditions": "c", "doNotTip": False, "commodityId": 5}
    assert set(values) == set(FIELDS)
    # 20 saves at once: one per field (all 14 LotDataDto fields), then 6 repeats.
    fields = [*values, *list(values)[:6]]
    await asyncio.gather(*(save(gw, lot_id, {f: values[f]}) for f in fields))
    assert override_of(gw, lot_id) == values
    assert (await gw.get_json(f"/api/Lot/{lot_id}"))["overridenData"] == [values]


async def test_saves_to_different_lots_run_in_parallel(start_gateway):
    gw = await start_gateway(latency_ms=100)
    catalog_id, _ = a_lot(gw)
    lot_ids = gw.sandbox.data.lot_ids_of_catalog(catalog_id)[:10]
    _, one = await timed(save(gw, lot_ids[0], {"qty": 2}))
    _, ten = await timed(asyncio.gather(*(save(gw, i, {"qty": 3}) for i in lot_ids)))
    assert ten < 2.5 * one, f"10 lots took {ten:.2f}s, one took {one:.2f}s"


async def test_no_stale_read_after_a_save_returns(start_gateway):
    """Readers hammer the lot and its event page while 50 saves happen one after another.

    After each save returns, the very next read on either route must show the new value,
    and no read that *started* after a save returned may show an older one.
    """
    # Jitter makes answers overtake each other, as they do in production; a short TTL keeps
    # the readers' fetches going all the time, so some are always in flight across a write.
    # The readers are one caller hammering on purpose: no request-rate limit here.
    gw = await start_gateway(latency_ms=100, jitter_ms=70, cache={"ttl_s": 0.05},
                             limits={"requests_per_s": 1e6, "burst": 1_000_000})
    catalog_id, lot_id = a_lot(gw, 5)
    page_path = f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"
    saved = 0  # qty of the last save that has returned
    stop = asyncio.Event()
    stale: list[tuple[str, int, int]] = []
    reads = 0

    def qty_on(route: str, body: dict) -> int:
        lot = body if route == "lot" else next(x for x in body["items"] if x["id"] == lot_id)
        return (lot["overridenData"] or [{}])[0].get("qty", 0)

    async def read(route: str) -> int:
        path = f"/api/Lot/{lot_id}" if route == "lot" else page_path
        resp = await gw.client.get(path)
        assert resp.status == 200
        return qty_on(route, await resp.json())

    async def reader(route: str) -> None:
        nonlocal reads
        while not stop.is_set():
            floor = saved
            got = await read(route)
            reads += 1
            if got < floor:
                stale.append((route, floor, got))

    await save(gw, lot_id, {"qty": 0})
    readers = [asyncio.create_task(reader(r)) for r in ("lot", "page", "lot", "page")]
    for qty in range(1, 51):
        await save(gw, lot_id, {"qty": qty})
        saved = qty
        assert await read("lot") == qty
        assert await read("page") == qty
        # Let the readers get going again, so their fetches overlap the next save.
        await eventually(lambda at=reads: reads >= at + 4, "the readers read again after a save")
    stop.set()
    await asyncio.gather(*readers)
    assert stale == []
    assert reads > 100  # the readers really ran alongside the saves


@pytest.mark.parametrize(("body", "status", "mention"), [
    (b"not json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (b"{}", 422, "field"),
    (b'{"colour": "red"}', 422, "colour"),
    (b'{"qty": "abc"}', 422, "qty"),
    (b'{"qty": 1.5}', 422, "qty"),
    (b'{"forceCrate": "yes"}', 422, "forceCrate"),
    (b'{"do_not_tip": 1}', 422, "do_not_tip"),
    (b'{"qty": -1}', 422, "qty"),
    (b'{"l": -0.5}', 422, "l"),
    (b'{"w": -2}', 422, "w"),
    (b'{"h": -2}', 422, "h"),
    (b'{"wgt": -2}', 422, "wgt"),
    (b'{"value": -2}', 422, "value"),
    (b'{"value": NaN}', 422, "value"),
    (json.dumps({"description": "x" * 4001}).encode(), 422, "description"),
    (json.dumps({"notes": "x" * 70000}).encode(), 413, "bytes"),
])
async def test_bad_input_is_refused_and_nothing_is_written(start_gateway, body, status, mention):
    gw = await start_gateway()
    _, lot_id = a_lot(gw)
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", data=body,
                                headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert mention in (await resp.json(content_type=None))["detail"]
    assert gw.calls(PUT) == 0


async def test_unknown_lot_is_404_and_bad_id_is_400(start_gateway):
    gw = await start_gateway()
    await save(gw, 999999, {"qty": 1}, status=404)
    await save(gw, "abc", {"qty": 1}, status=400)
    assert gw.calls(PUT) == 0


@pytest.mark.parametrize("when", ["before", "after"])
async def test_failed_write_is_502_and_the_next_read_shows_the_upstream(start_gateway, when):
    gw = await start_gateway(upstream={"retries": 1})
    _, lot_id = a_lot(gw, 3)
    await save(gw, lot_id, {"qty": 1})
    await gw.get_json(f"/api/Lot/{lot_id}")  # cached
    gw.sandbox.configure(fail_writes=when)
    problem = await save(gw, lot_id, {"qty": 2}, status=502)
    assert problem["status"] == 502
    lot = await gw.get_json(f"/api/Lot/{lot_id}")
    assert lot["overridenData"][0]["qty"] == override_of(gw, lot_id)["qty"]
    assert override_of(gw, lot_id)["qty"] == (1 if when == "before" else 2)
    gw.sandbox.configure(fail_writes=None)
    await save(gw, lot_id, {"qty": 2})  # the operator simply saves again
    assert (await gw.get_json(f"/api/Lot/{lot_id}"))["overridenData"][0]["qty"] == 2


async def test_write_timing_out_is_504(start_gateway):
    gw = await start_gateway(upstream={"timeout_s": 0.3, "retries": 0})
    _, lot_id = a_lot(gw)
    gw.sandbox.configure(hang=True)
    problem = await save(gw, lot_id, {"qty": 2}, status=504)
    assert problem["title"] == "Gateway Timeout"


async def test_if_match_guards_against_lost_updates(start_gateway):
    gw = await start_gateway()
    _, lot_id = a_lot(gw, 4)
    resp = await gw.client.get(f"/api/Lot/{lot_id}")
    etag = resp.headers["ETag"]
    answer = await save(gw, lot_id, {"qty": 4}, headers={"If-Match": etag})
    assert answer["overridenData"][0]["qty"] == 4
    await save(gw, lot_id, {"qty": 5}, status=412, headers={"If-Match": etag})
    assert override_of(gw, lot_id)["qty"] == 4
    fresh = (await gw.client.get(f"/api/Lot/{lot_id}")).headers["ETag"]
    await save(gw, lot_id, {"qty": 5}, headers={"If-Match": fresh})


async def test_each_save_logs_one_line_with_operator_and_changes(start_gateway, caplog):
    gw = await start_gateway(api_keys=parse_api_keys("ops-desk:s3cret-key-0123456:write"))
    _, lot_id = a_lot(gw, 6)
    old_qty = (override_of(gw, lot_id) or gw.sandbox.data.lots[lot_id]["initialData"]).get("qty")
    caplog.set_level(logging.INFO, logger="gateway.overrides")
    await save(gw, lot_id, {"qty": 9, "notes": "fragile"},
               headers={"Authorization": "Bearer s3cret-key-0123456"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.overrides"]
    assert len(lines) == 1
    line = lines[0]
    assert line["lotId"] == lot_id and line["actor"] == "ops-desk" and line["outcome"] == "saved"
    assert line["changes"]["qty"][1] == 9 and line["changes"]["notes"][1] == "fragile"
    if "qty" in override_of(gw, lot_id):
        assert line["changes"]["qty"][0] in (None, old_qty)
    assert "s3cret-key-0123456" not in caplog.text
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_overrides_total{outcome="saved"} 1.0' in metrics


async def test_drop_in_put_passes_through_and_invalidates(start_gateway):
    gw = await start_gateway()
    catalog_id, lot_id = a_lot(gw, 7)
    before = await gw.get_json(f"/api/Lot/{lot_id}")
    await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots")
    request = {
        "customerItemId": before["customerItemId"],
        "imageLinks": [i["link"] for i in before["imageLinks"]],
        "overridenData": [{"Qty": 11, "ForceCrate": True}],
        "catalogs": before["catalogs"],
    }
    resp = await gw.client.put(f"/api/Lot/{lot_id}", json=request)
    assert resp.status == 200, await resp.text()
    lot = await gw.get_json(f"/api/Lot/{lot_id}")
    assert lot["overridenData"] == [{"qty": 11, "forceCrate": True}]
    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots")
    assert next(x for x in page["items"] if x["id"] == lot_id)["overridenData"][0]["qty"] == 11
    bad = await gw.client.put(f"/api/Lot/{lot_id}", data=b"nope",
                              headers={"Content-Type": "application/json"})
    assert bad.status == 400
