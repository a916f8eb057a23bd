"""Fresh data on demand: the lots panel's Refresh (`refresh=1`) and a hard reload of the page
(`Cache-Control: no-cache` / `Pragma: no-cache`) read the event's catalog and the page's
lots from the upstream, coalesced, never older than a save, and fall back to the last good
copy, marked, when the upstream fails. The footer says how old the page's data is.

The lots are changed at the sandbox directly (not through the gateway), so nothing is
invalidated: only a forced refresh can show the change. The one-line mutation of the
gateway each test was seen to catch is named in its docstring.
"""

from __future__ import annotations

import asyncio
import re

from gateway import keys
from gateway.cache import Cache, RedisTier, Result
from gateway.context import CHARGED_TO
from gateway.state import CACHE, READS

from gwtesting import eventually

LOT = "GET /api/Lot/{id}"
CATALOG = "GET /api/Catalog/{id}"
HX = {"HX-Request": "true"}


def event_with_lots(gw) -> tuple[int, list[int]]:
    """(catalog id, its lot ids) of an event of 25 to 40 lots: page 1 holds the first 25."""
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 40)[0]
    return catalog_id, gw.sandbox.data.lot_ids_of_catalog(catalog_id)


def qty_shown(html: str, lot_id: int) -> str:
    """The quantity the lots table shows for `lot_id`."""
    tag = re.search(rf'<input[^>]*id="lot-{lot_id}-qty-input"[^>]*>', html)
    assert tag, f"lot {lot_id} is not in the table"
    return re.search(r'\bvalue="([^"]*)"', tag.group(0)).group(1)


def age_line(html: str) -> str:
    match = re.search(r'<span id="lots-age".*?</span>', html, re.S)
    assert match, "the lots footer has no #lots-age"
    return match.group(0)


def change_at_upstream(gw, lot_id: int, qty: int) -> None:
    gw.sandbox.data.lots[lot_id]["initialData"]["qty"] = qty


async def fragment(gw, catalog_id: int, *, refresh: bool = False) -> str:
    url = f"/ui/panels/lots?event={catalog_id}" + ("&refresh=1" if refresh else "")
    resp = await gw.client.get(url, headers=HX)
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def test_a_refresh_reads_a_change_made_upstream_that_a_normal_read_does_not(
    start_gateway,
):
    """Mutation seen to fail it: in Reads.event_page, call `self._lot_outcome(i)` without
    `fresh=fresh` (the refresh then serves the page's lots from the cache)."""
    gw = await start_gateway()
    catalog_id, lot_ids = event_with_lots(gw)
    first = await fragment(gw, catalog_id)
    assert qty_shown(first, lot_ids[0]) == "1"
    change_at_upstream(gw, lot_ids[0], 777)
    gw.sandbox.reset_stats()

    cached = await fragment(gw, catalog_id)
    assert qty_shown(cached, lot_ids[0]) == "1", "a normal read is served from the cache"
    assert gw.calls(LOT) == 0 and gw.calls(CATALOG) == 0

    refreshed = await fragment(gw, catalog_id, refresh=True)
    assert qty_shown(refreshed, lot_ids[0]) == "777"
    assert gw.calls(CATALOG) == 1 and gw.calls(LOT) == 25
    assert "Data from just now" in age_line(refreshed)
    # The refreshed lot replaced the cached one: the next normal read shows it too.
    assert qty_shown(await fragment(gw, catalog_id), lot_ids[0]) == "777"
    assert gw.calls(LOT) == 25


async def test_a_refresh_reads_the_catalog_fresh_too(start_gateway):
    """Mutation seen to fail it: in Reads.event_page, call `self.catalog(catalog_id)`
    without `fresh=fresh` (a renamed event keeps its old title after a refresh)."""
    gw = await start_gateway()
    catalog_id, _ = event_with_lots(gw)
    await fragment(gw, catalog_id)
    gw.sandbox.data.catalogs[catalog_id]["title"] = "Renamed upstream"
    assert "Renamed upstream" not in await fragment(gw, catalog_id)
    assert "Renamed upstream" in await fragment(gw, catalog_id, refresh=True)


async def test_a_hard_reload_of_the_page_refreshes_its_lots(start_gateway):
    """Mutation seen to fail it: in ui.views.wants_fresh, drop the `"no-cache" in
    directives` test (a Ctrl-Shift-R page then still answers from the cache); or its
    Pragma test (`== "no-cache"` → `== "nocache"`)."""
    gw = await start_gateway()
    catalog_id, lot_ids = event_with_lots(gw)
    page = f"/?event={catalog_id}"
    assert qty_shown(await (await gw.client.get(page)).text(), lot_ids[1]) == "1"
    change_at_upstream(gw, lot_ids[1], 555)

    normal = await gw.client.get(page, headers={"Cache-Control": "max-age=0"})  # F5
    assert qty_shown(await normal.text(), lot_ids[1]) == "1"
    hard = await gw.client.get(page, headers={"Cache-Control": "no-cache"})
    assert qty_shown(await hard.text(), lot_ids[1]) == "555"

    change_at_upstream(gw, lot_ids[1], 556)  # older browsers send Pragma alone
    pragma = await gw.client.get(page, headers={"Pragma": "no-cache"})
    assert qty_shown(await pragma.text(), lot_ids[1]) == "556"


async def test_two_refreshes_at_once_make_one_upstream_call_per_lot(start_gateway):
    """Mutation seen to fail it: in SingleFlight.do, start a new call for every renew
    (`if renew and running is not None:` forgetting the running forced call too)."""
    gw = await start_gateway(latency_ms=200)
    catalog_id, lot_ids = event_with_lots(gw)
    await fragment(gw, catalog_id)
    change_at_upstream(gw, lot_ids[2], 333)
    gw.sandbox.reset_stats()
    pages = await asyncio.gather(*(fragment(gw, catalog_id, refresh=True) for _ in range(2)))
    assert [qty_shown(html, lot_ids[2]) for html in pages] == ["333", "333"]
    assert gw.calls(CATALOG) == 1 and gw.calls(LOT) == 25


async def test_a_refresh_is_charged_to_the_caller_who_asked(start_gateway):
    """The forced fetches run in the request's context, so they take its caller's share of
    upstream slots like any fetch.

    Mutation seen to fail it: in SingleFlight.start, create the call's task in an empty
    context (`create_task(..., context=contextvars.Context())`)."""
    gw = await start_gateway()
    catalog_id, _ = event_with_lots(gw)
    await fragment(gw, catalog_id)
    upstream = gw.app[READS]._upstream
    real_get, charged = upstream.get, []

    async def get(path, *args, **kw):
        charged.append(CHARGED_TO.get())
        return await real_get(path, *args, **kw)

    upstream.get = get
    await fragment(gw, catalog_id, refresh=True)
    assert len(charged) == 26 and set(charged) == {"address:127.0.0.1"}


async def test_a_refresh_during_an_outage_serves_the_last_good_copy_marked(start_gateway):
    """Mutation seen to fail it: in Cache.get's error branch, drop `fallback=True` (the
    page then looks fresh while the upstream is down)."""
    gw = await start_gateway()
    catalog_id, lot_ids = event_with_lots(gw)
    first = await fragment(gw, catalog_id)
    assert 'class="age"' in age_line(first) and "last good copy" not in first
    gw.sandbox.configure(down=True)
    resp = await gw.client.get(f"/ui/panels/lots?event={catalog_id}&refresh=1", headers=HX)
    assert resp.status == 200, "a refresh in an outage is not an error page"
    html = await resp.text()
    assert qty_shown(html, lot_ids[0]) == "1"
    assert len(re.findall(r'<tr id="lot-\d+" data-lot-id', html)) == 25
    line = age_line(html)
    assert "is-stale" in line
    assert "served from the last good copy: the upstream is failing" in line


async def test_the_age_line_says_how_old_the_oldest_part_is(start_gateway):
    """Mutation seen to fail it: in LotsView.from_page, take the age of the catalog only
    (`page.catalog.age_s`) instead of the page's oldest part."""
    gw = await start_gateway()
    catalog_id, lot_ids = event_with_lots(gw)
    await fragment(gw, catalog_id)
    # One lot fetched 4 minutes ago (its entry still fresh: the TTL is 10 minutes).
    entry = gw.app[CACHE].store.get(keys.one("Lot", lot_ids[3]))
    entry.stored_at -= 4 * 60 + 5
    entry.expires_at -= 4 * 60 + 5
    line = age_line(await fragment(gw, catalog_id))
    assert "Data from 4 min ago" in line
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', line)
    assert "is-stale" not in line
    assert "Data from just now" in age_line(await fragment(gw, catalog_id, refresh=True))


async def test_a_save_during_a_refresh_is_never_overwritten_by_the_refresh(start_gateway):
    """The refresh's read of the lot reaches the upstream before the save and lands after
    it: its (older) answer must not be stored.

    Mutation seen to fail it: in SingleFlight._run, keep a forced call's value even once
    forgotten (`if not call.forgotten or call.renewed:`): the refresh then stores the
    pre-save lot over the save."""
    gw = await start_gateway()
    catalog_id, lot_ids = event_with_lots(gw)
    lot_id = lot_ids[4]
    await fragment(gw, catalog_id)
    upstream = gw.app[READS]._upstream
    real_get = upstream.get
    read, land = asyncio.Event(), asyncio.Event()

    async def get(path, *args, **kw):
        body = await real_get(path, *args, **kw)
        if path == f"/api/Lot/{lot_id}" and not read.is_set():
            read.set()  # the refresh has the pre-save lot in hand ...
            await land.wait()  # ... and stores it only after the save
        return body

    upstream.get = get
    refresh = asyncio.create_task(fragment(gw, catalog_id, refresh=True))
    await asyncio.wait_for(read.wait(), 5)
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 4242})
    assert resp.status == 200, await resp.text()
    land.set()
    # The refresh itself asked before the save: it may show the old value.
    assert qty_shown(await asyncio.wait_for(refresh, 5), lot_id) == "1"
    assert qty_shown(await fragment(gw, catalog_id), lot_id) == "4242"
    lot = await gw.get_json(f"/api/Lot/{lot_id}")
    assert lot["overridenData"][0]["qty"] == 4242


async def test_with_redis_a_refresh_on_one_replica_is_what_the_others_read(redis):
    """The forced fetch bypasses what Redis holds and stores its body there, as any fetch
    does, so a replica without its own copy reads the refreshed value, not the old one.

    Mutation seen to fail it: in RedisTier.fetch, look in Redis first for a forced fetch too
    (`lambda: self._read(text, generation)` whatever `fresh`)."""
    caches = []
    for _ in range(2):
        tier = RedisTier(redis.url, ttl_s=60, keep_s=60, lease_s=5, prefix="r:")
        caches.append(Cache(ttl_s=60, max_bytes=10**6, tier=tier))
        await caches[-1].start()
    a, b = caches
    try:
        await eventually(lambda: a.tier.up and b.tier.up, "the Redis tier is up")
        calls, body = [], b"v1"

        async def fetch() -> bytes:
            calls.append(body)
            return body

        assert (await a.get(("lot", 1), fetch)).entry.body == b"v1"
        body = b"v2"  # changed upstream, behind the cache's back
        refreshed = await a.get(("lot", 1), fetch, fresh=True)
        assert refreshed.entry.body == b"v2" and calls == [b"v1", b"v2"]
        other = await b.get(("lot", 1), fetch)
        assert other.result is Result.SHARED and other.entry.body == b"v2"
        assert len(calls) == 2
    finally:
        for cache in caches:
            await asyncio.wait_for(cache.close(), 5)
