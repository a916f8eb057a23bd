"""Cached, coalesced reads through the gateway, against the sandbox over loopback."""

from __future__ import annotations

import gc
import json
import statistics

import pytest
from ABConnect.api.models.catalog import (
    CatalogExpandedDto,
    CatalogExpandedDtoPaginatedList,
    LotDto,
    LotDtoPaginatedList,
    SellerExpandedDto,
    SellerExpandedDtoPaginatedList,
)

from gateway.state import METRICS, TOKENS

from gwtesting import gather_timed, timed

LATENCY_MS = 250  # slow enough that round trips dominate, fast enough for the suite


async def test_event_page_cold_is_two_round_trips_then_warm_is_milliseconds(start_gateway):
    gw = await start_gateway(latency_ms=LATENCY_MS)
    # The machine is shared: time bounds are judged on the best of up to three events
    # (each against a round trip measured just before); call counts on every one.
    cold_ratios, second_ratios = [], []
    for catalog_id in gw.sandbox.data.catalog_ids_with_lots(50, 99)[:3]:
        rtt = await gw.round_trip_s()
        gw.sandbox.reset_stats()
        page1, cold = await timed(
            gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"))
        assert len(page1["items"]) == 25 and page1["errors"] == []
        assert gw.calls("GET /api/Catalog/{id}") == 1 and gw.calls("GET /api/Lot/{id}") == 25
        page2, second = await timed(gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page=2"))
        assert page2["pageNumber"] == 2 and len(page2["items"]) == 25
        assert gw.calls("GET /api/Catalog/{id}") == 1  # the catalog came from the cache
        cold_ratios.append(cold / (2 * rtt))
        second_ratios.append(second / rtt)
        if cold_ratios[-1] <= 1.15 and second_ratios[-1] <= 1.2:
            break
    assert min(cold_ratios) <= 1.15, f"cold page / 2 round trips: {cold_ratios}"
    assert min(second_ratios) <= 1.2, f"page 2 / 1 round trip: {second_ratios}"

    warm = []
    for _ in range(7):
        resp, took = await timed(gw.client.get(f"/api/v1/catalogs/{catalog_id}/lots"))
        assert resp.status == 200 and resp.headers["X-Cache"] == "HIT"
        assert await resp.json() == page1
        warm.append(took)
    # Assembled from the cache with no I/O: a small fraction of one upstream round trip
    # (about 1 ms measured against 250 ms; the bound is 10 ms).
    assert statistics.median(warm) < rtt / 25, f"warm page took {warm}, round trip {rtt}"
    assert gw.calls("GET /api/Lot/{id}") == 50  # warm pages made no upstream call


@pytest.mark.parametrize("route", ["/api/Lot/{id}", "/api/Catalog/{id}", "/api/Seller/{id}"])
async def test_100_concurrent_cold_requests_make_one_upstream_call(start_gateway, route):
    gw = await start_gateway(latency_ms=400)
    data = gw.sandbox.data
    idents = {"/api/Lot/{id}": list(data.lots), "/api/Catalog/{id}": list(data.catalogs),
              "/api/Seller/{id}": list(data.sellers)}[route]
    # Open the test client's 100 connections first: the figure is the gateway's, not the
    # cost of 100 TCP handshakes inside this one test process.
    await gather_timed(*(gw.client.get("/healthz") for _ in range(100)))
    ratios = []
    # The machine is shared: the time bound is judged on the best of up to three cold
    # keys (each measured against a round trip taken just before); the one-call property
    # is checked every time.
    for ident in idents[:3]:
        path = route.replace("{id}", str(ident))
        rtt = await gw.round_trip_s()
        gw.sandbox.reset_stats()
        # A full collection over this test process (~100 ms; the served gateway freezes its
        # start-up objects instead) must not land inside the timed burst.
        gc.collect()
        responses, took = await gather_timed(*(gw.client.get(path) for _ in range(100)))
        bodies = {await r.read() for r in responses}
        assert [r.status for r in responses] == [200] * 100 and len(bodies) == 1
        assert gw.calls("GET " + route) == 1
        assert sorted(r.headers["X-Cache"] for r in responses) == ["MISS"] * 100
        ratios.append(took / rtt)
        if took <= 1.25 * rtt:
            break
    assert min(ratios) <= 1.25, f"100 waiters took {ratios} x one round trip"


async def test_fan_out_never_exceeds_the_upstream_concurrency_cap(start_gateway):
    gw = await start_gateway(latency_ms=30, upstream={"max_concurrency": 8})
    catalog_id = gw.sandbox.data.largest_catalog_id()
    lot_ids = gw.sandbox.data.lot_ids_of_catalog(catalog_id)
    assert len(lot_ids) >= 100

    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=100")
    assert [lot["id"] for lot in page["items"]] == lot_ids[:100]
    assert gw.sandbox.max_inflight == 8  # saturated, never above


async def test_drop_in_routes_return_upstream_json_unchanged_and_valid(start_gateway):
    gw = await start_gateway()
    data = gw.sandbox.data
    catalog_id = data.catalog_ids_with_lots(25)[0]
    lot_id = data.lot_ids_of_catalog(catalog_id)[3]
    seller_id = next(iter(data.sellers))
    catalog_number = data.catalogs[catalog_id]["customerCatalogId"]
    cases = [
        (f"/api/Lot/{lot_id}", LotDto),
        (f"/api/Catalog/{catalog_id}", CatalogExpandedDto),
        (f"/api/Seller/{seller_id}", SellerExpandedDto),
        ("/api/Seller?PageNumber=1&PageSize=5", SellerExpandedDtoPaginatedList),
        (f"/api/Catalog?PageNumber=2&PageSize=3&SellerIds={seller_id}",
         CatalogExpandedDtoPaginatedList),
        (f"/api/Lot?PageNumber=1&PageSize=10&CustomerCatalogId={catalog_number}",
         LotDtoPaginatedList),
    ]
    for path, model in cases:
        first = await gw.client.get(path)
        second = await gw.client.get(path)
        assert first.status == second.status == 200, path
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
        body = await second.read()
        assert json.loads(body) == json.loads(await gw.upstream_get(path)), path
        model.model_validate_json(body)


async def test_etag_and_if_none_match(start_gateway):
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25)[0]
    for path in (f"/api/v1/catalogs/{catalog_id}/lots", f"/api/Catalog/{catalog_id}"):
        first = await gw.client.get(path)
        etag = first.headers["ETag"]
        again = await gw.client.get(path, headers={"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag
        assert await again.read() == b""
        other = await gw.client.get(path, headers={"If-None-Match": '"something-else"'})
        assert other.status == 200


async def test_event_page_keeps_catalog_order_and_reports_failed_lots(start_gateway):
    gw = await start_gateway()
    data = gw.sandbox.data
    catalog_id = data.catalog_ids_with_lots(25)[0]
    lot_ids = data.lot_ids_of_catalog(catalog_id)[:25]
    gone = lot_ids[4]
    del data.lots[gone]  # the catalog still lists it; the upstream answers 404 for it

    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25")
    assert [lot["id"] for lot in page["items"]] == [i for i in lot_ids if i != gone]
    assert page["errors"] == [
        {"lotId": gone, "status": 404, "detail": f"Lot {gone} does not exist"}
    ]
    total = len(data.lot_ids_of_catalog(catalog_id))
    assert page["catalog"]["id"] == catalog_id
    assert (page["pageNumber"], page["pageSize"], page["totalItems"]) == (1, 25, total)
    assert page["totalPages"] == -(-total // 25)
    assert page["hasPreviousPage"] is False and page["hasNextPage"] is (total > 25)


async def test_lots_by_ids_in_the_order_asked(start_gateway):
    gw = await start_gateway()
    ids = list(gw.sandbox.data.lots)[10:13][::-1]
    got = await gw.get_json("/api/v1/lots?ids=" + ",".join(map(str, [*ids, 999999999])))
    assert [lot["id"] for lot in got["items"]] == ids
    assert [e["lotId"] for e in got["errors"]] == [999999999]
    assert got["errors"][0]["status"] == 404


async def test_seller_search_and_events(start_gateway):
    gw = await start_gateway()
    data = gw.sandbox.data
    everyone = await gw.get_json("/api/v1/sellers?page_size=100")
    assert everyone["totalItems"] == len(data.sellers) >= 8
    seller = everyone["items"][2]
    word = seller["name"].split()[0].upper()
    found = await gw.get_json(f"/api/v1/sellers?q={word}")
    assert seller["id"] in [s["id"] for s in found["items"]]
    assert all(word.lower() in s["name"].lower() for s in found["items"])
    by_id = await gw.get_json(f"/api/v1/sellers?q={seller['customerDisplayId']}")
    assert [s["id"] for s in by_id["items"]] == [seller["id"]]
    paged = await gw.get_json("/api/v1/sellers?page=2&page_size=3")
    assert [s["id"] for s in paged["items"]] == [s["id"] for s in everyone["items"][3:6]]

    upcoming = await gw.get_json(f"/api/v1/sellers/{seller['id']}/events")
    every = await gw.get_json(f"/api/v1/sellers/{seller['id']}/events?include_past=true")
    assert upcoming["seller"]["id"] == seller["id"]
    assert 0 < upcoming["totalItems"] < every["totalItems"]
    assert all(not e["isCompleted"] for e in upcoming["items"])
    starts = [e["startDate"] for e in upcoming["items"]]
    assert starts == sorted(starts)
    assert every["items"][: upcoming["totalItems"]] == upcoming["items"]


async def test_metrics_use_route_templates(start_gateway):
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25)[0]
    await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots")
    await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots")
    text = await (await gw.client.get("/metrics")).text()
    for name in ("gateway_cache_lookups_total", "gateway_cache_entries", "gateway_cache_bytes",
                 "gateway_invalidations_total", "gateway_upstream_requests_total",
                 "gateway_upstream_request_seconds", "gateway_upstream_inflight",
                 "gateway_http_requests_total", "gateway_http_request_seconds"):
        assert name in text, name
    assert 'route="/api/v1/catalogs/{id}/lots"' in text
    assert f"/catalogs/{catalog_id}/" not in text
    assert 'gateway_cache_lookups_total{kind="lot",result="hit"} 25.0' in text
    assert 'gateway_upstream_requests_total{endpoint="/api/Lot/{id}",status="200"} 25.0' in text
    assert (await gw.client.get("/healthz")).status == 200
    assert (await gw.client.get("/readyz")).status == 200


async def test_every_request_answered_before_a_scrape_is_in_it(start_gateway):
    """Requests are counted in batches; a scrape still sees each one answered before it,
    kept pages' hits included, and a long run is added without waiting for a scrape."""
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25)[0]
    path = f"/api/v1/catalogs/{catalog_id}/lots"
    for _ in range(300):  # more than a batch (256 counts of any kind) go in on their own
        assert (await gw.client.get(path)).status == 200
    collected = gw.app[METRICS].registry.get_sample_value(
        "gateway_http_requests_total",
        {"route": "/api/v1/catalogs/{id}/lots", "method": "GET", "status": "200"})
    assert collected is not None and collected >= 100  # before any scrape
    text = await (await gw.client.get("/metrics")).text()
    assert ('gateway_http_requests_total{method="GET",route="/api/v1/catalogs/{id}/lots",'
            'status="200"} 300.0') in text
    assert 'gateway_cache_lookups_total{kind="lot",result="hit"} 7475.0' in text  # 299 x 25


async def test_readyz_reports_an_unreachable_upstream(start_gateway):
    gw = await start_gateway()
    tokens = gw.app[TOKENS]
    tokens.invalidate(await tokens.token())  # as if the token had lapsed
    gw.sandbox.configure(down=True)
    resp = await gw.client.get("/readyz")
    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert (await gw.client.get("/healthz")).status == 200  # the process itself is fine
