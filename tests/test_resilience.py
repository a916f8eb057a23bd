"""Upstream faults: stale serving, negative caching, the circuit breaker, overload."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.state import CONFIG, READS
from gateway.upstream.breaker import State

from gwtesting import timed

# Short windows so the tests see expiry, breaker transitions and recovery in seconds.
FAST_BREAKER = {"breaker_open_s": 0.5, "breaker_min_calls": 5, "retries": 1}


def breaker_of(gw):
    return gw.app[READS]._upstream.breaker


async def warm(gw, paths: list[str]) -> None:
    for path in paths:
        resp = await gw.client.get(path)
        assert resp.status == 200, path


async def test_outage_serves_warm_keys_stale_and_fails_cold_ones_fast(start_gateway):
    gw = await start_gateway(
        upstream=FAST_BREAKER,
        cache={"ttl_s": 0.5, "stale_while_revalidate_s": 0, "stale_if_error_s": 3600},
    )
    data = gw.sandbox.data
    catalog_id = data.catalog_ids_with_lots(25, 25)[0]
    lot_ids = data.lot_ids_of_catalog(catalog_id)
    seller_id = next(iter(data.sellers))
    warm_paths = [f"/api/Lot/{lot_ids[0]}", f"/api/Catalog/{catalog_id}",
                  f"/api/v1/catalogs/{catalog_id}/lots?page_size=25",
                  f"/api/v1/sellers/{seller_id}/events", f"/api/Seller/{seller_id}"]
    await warm(gw, warm_paths)
    gw.sandbox.configure(down=True)
    await asyncio.sleep(0.6)  # every warm entry is now past its TTL

    for path in warm_paths:
        resp = await gw.client.get(path)
        assert resp.status == 200, path
        assert resp.headers["X-Cache"] == "STALE", path
        assert int(resp.headers["Age"]) >= 0
    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25")
    assert len(page["items"]) == 25 and page["errors"] == []
    assert sorted(page["staleLotIds"]) == sorted(lot_ids[:25])

    # Cold keys fail; the breaker opens; then they fail at once (about 1 ms here).
    cold = iter(sorted(set(data.lots) - set(lot_ids)))
    for _ in range(5):
        assert (await gw.client.get(f"/api/Lot/{next(cold)}")).status in (502, 503)
    assert breaker_of(gw).state is State.OPEN
    calls_before = sum(gw.sandbox.calls.values())
    for _ in range(5):
        resp, took = await timed(gw.client.get(f"/api/Lot/{next(cold)}"))
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert took < 0.100, f"{took * 1000:.1f} ms"
    assert sum(gw.sandbox.calls.values()) == calls_before  # not even tried
    # Warm keys are still served while the breaker is open.
    assert (await gw.client.get(warm_paths[0])).headers["X-Cache"] == "STALE"

    # Upstream back: one probe closes the breaker, fresh data returns without a restart.
    gw.sandbox.configure(down=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        resp = await gw.client.get(warm_paths[0])
        if resp.headers["X-Cache"] != "STALE":
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200 and resp.headers["X-Cache"] == "MISS"
    assert breaker_of(gw).state is State.CLOSED
    assert (await gw.client.get(f"/api/Lot/{next(cold)}")).status == 200


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(start_gateway):
    gw = await start_gateway(latency_ms=1500, cache={"ttl_s": 0.3,
                                                    "stale_while_revalidate_s": 30})
    lot_id = next(iter(gw.sandbox.data.lots))
    await warm(gw, [f"/api/Lot/{lot_id}"])
    await asyncio.sleep(0.35)
    gw.sandbox.reset_stats()
    responses, took = await timed(asyncio.gather(
        *(gw.client.get(f"/api/Lot/{lot_id}") for _ in range(20))
    ))
    assert {r.headers["X-Cache"] for r in responses} == {"STALE"}
    assert took < 0.75  # not waiting for the 1.5 s upstream
    await asyncio.sleep(1.6)  # the one background refresh lands
    assert gw.calls("GET /api/Lot/{id}") == 1
    assert (await gw.client.get(f"/api/Lot/{lot_id}")).headers["X-Cache"] == "HIT"


async def test_upstream_404_is_remembered_briefly(start_gateway):
    gw = await start_gateway(cache={"negative_ttl_s": 0.3})
    for _ in range(3):
        assert (await gw.client.get("/api/Lot/987654")).status == 404
    assert gw.calls("GET /api/Lot/{id}") == 1
    await asyncio.sleep(0.35)
    assert (await gw.client.get("/api/Lot/987654")).status == 404
    assert gw.calls("GET /api/Lot/{id}") == 2


async def test_random_failures_do_not_trip_the_breaker_and_retries_hide_them(start_gateway):
    gw = await start_gateway(
        latency_ms=10, jitter_ms=5,
        upstream={"retries": 5, "max_concurrency": 16},
        # Nothing reused: every page below is cold, every lot fetched from upstream.
        cache={"ttl_s": 0, "stale_while_revalidate_s": 0, "stale_if_error_s": 0},
    )
    data = gw.sandbox.data
    full = [(c, p) for c in data.catalog_ids_with_lots(25)
            for p in range(1, len(data.lot_ids_of_catalog(c)) // 25 + 1)]
    pages = (full * 2)[:100]  # with ttl 0 a page asked again is as cold as the first time
    assert len(pages) == 100
    gw.sandbox.configure(error_rate=0.3)
    gw.sandbox.reset_stats()
    states = set()
    complete = 0

    async def one(catalog_id: int, page: int) -> None:
        nonlocal complete
        resp = await gw.client.get(f"/api/v1/catalogs/{catalog_id}/lots?page={page}")
        states.add(breaker_of(gw).state)
        if resp.status == 200:
            body = await resp.json()
            complete += not body["errors"] and len(body["items"]) == 25

    for start in range(0, 100, 10):  # ten pages at a time
        await asyncio.gather(*(one(c, p) for c, p in pages[start:start + 10]))
    assert states == {State.CLOSED}
    assert complete >= 95, complete
    assert gw.sandbox.max_inflight <= 16
    assert sum(gw.sandbox.calls.values()) > 100 * 26  # failures really happened, retried


async def test_overload_is_bounded_and_sheds_with_503(start_gateway):
    gw = await start_gateway(latency_ms=100, upstream={"max_concurrency": 8,
                                                       "queue_timeout_s": 0.5})
    lot_ids = list(gw.sandbox.data.lots)[:1000]
    url = str(gw.client.make_url("/api/Lot/"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def get(lot_id: int) -> tuple[int, str | None]:
            async with http.get(f"{url}{lot_id}") as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        results, took = await timed(asyncio.gather(*(get(i) for i in lot_ids)))
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 8 and statuses.count(503) > 500
    assert all(ra is not None for s, ra in results if s == 503)
    assert gw.sandbox.max_inflight <= 8
    cfg = gw.app[CONFIG].upstream
    # Nobody queued for ever: the whole burst (1,000 connections handled by this one
    # process, client and server) is over a few seconds after the queue timeout.
    assert took < cfg.queue_timeout_s + 5.0, took
