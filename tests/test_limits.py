"""Fair limits per caller: a token bucket of requests each (429), a share of the upstream
slots each, and upstream calls charged to whoever started them."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from gateway.config import parse_api_keys
from gateway.limits import Buckets
from gateway.state import READS

from gwtesting import eventually, timed

KEY_A = "a-key-of-twenty-chars"
KEY_B = "b-key-of-twenty-chars"
KEYS = parse_api_keys(f"a:{KEY_A}:write,b:{KEY_B}")
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


def shares(gw):
    """The upstream client's per-caller shares (None when a caller may take every slot)."""
    return gw.app[READS]._upstream.shares


async def metric(gw, line_start: str) -> float:
    text = await (await gw.client.get("/metrics")).text()
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


# --- requests per second -----------------------------------------------------------------


async def test_a_caller_over_its_rate_gets_429_while_another_key_is_served(start_gateway):
    gw = await start_gateway(api_keys=KEYS, limits={"requests_per_s": 20, "burst": 20})
    lot = next(iter(gw.sandbox.data.lots))
    path = f"/api/Lot/{lot}"
    await gw.get_json(path, headers=B)  # cached: what follows measures the gateway alone
    gw.sandbox.reset_stats()

    async def get(headers):
        resp = await gw.client.get(path, headers=headers)
        return resp.status, resp.headers.get("Retry-After"), await resp.read()

    start = time.perf_counter()
    answers = await asyncio.gather(*(get(A) for _ in range(100)),
                                   *(get(B) for _ in range(15)))
    took = time.perf_counter() - start
    of_a, of_b = answers[:100], answers[100:]

    assert [status for status, _, _ in of_b] == [200] * 15, "B was limited by A's flood"
    served = sum(status == 200 for status, _, _ in of_a)
    refused = [(retry, body) for status, retry, body in of_a if status == 429]
    assert served + len(refused) == 100
    # The burst, plus what refilled while the requests came in; the rest refused.
    assert 20 <= served <= 20 + math.ceil(20 * took) + 1, (served, took)
    assert refused
    for retry, body in refused:
        assert retry is not None and int(retry) >= 1
        assert b'"status": 429' in body or b'"status":429' in body
    assert await metric(gw, 'gateway_rate_limited_total{caller_kind="key"}') == len(refused)
    assert gw.calls("GET /api/Lot/{id}") == 0  # every answer came from the cache


async def test_retry_after_is_the_wait_for_one_token_rounded_up(start_gateway):
    gw = await start_gateway(api_keys=KEYS, limits={"requests_per_s": 0.25, "burst": 1})
    path = f"/api/Lot/{next(iter(gw.sandbox.data.lots))}"
    assert (await gw.client.get(path, headers=A)).status == 200
    refused = await gw.client.get(path, headers=A)
    assert refused.status == 429
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    # One token every 4 s, just taken: 3.99... s to wait, said as 4.
    assert refused.headers["Retry-After"] == "4"


async def test_anonymous_callers_and_the_ui_are_limited_by_address_probes_never(
    start_gateway,
):
    gw = await start_gateway(limits={"requests_per_s": 0.1, "burst": 3})  # open: no keys
    lot = next(iter(gw.sandbox.data.lots))
    statuses = [(await gw.client.get(f"/api/Lot/{lot}")).status for _ in range(3)]
    assert statuses == [200] * 3
    # The same address, on the UI's sign-in page: the same bucket, now empty.
    assert (await gw.client.get("/sign-in")).status == 429
    assert (await gw.client.get(f"/api/Lot/{lot}")).status == 429
    assert await metric(gw, 'gateway_rate_limited_total{caller_kind="address"}') == 2
    # Probes, scrapes, the API's description and the UI's assets are never refused.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] * 5:
        assert (await gw.client.get(path)).status == 200, path
    static = await gw.client.get("/static/htmx-2.0.11.min.js")
    assert static.status == 200


def test_idle_buckets_are_dropped_and_their_number_is_bounded():
    now = [0.0]
    buckets = Buckets(rate=10.0, burst=20, max_callers=1000, clock=lambda: now[0])
    for n in range(500):
        assert buckets.take(f"address:10.0.{n // 256}.{n % 256}") == 0.0
    now[0] = 1.5
    for _ in range(20):
        assert buckets.take("key:busy") == 0.0
    assert buckets.take("key:busy") == pytest.approx(0.1)  # empty: refused, one token back in 0.1 s
    assert len(buckets) == 501
    # 20 tokens refill in 2 s: every bucket but busy's is full again, the same as none.
    now[0] = 2.5
    buckets.take("key:new")
    assert len(buckets) == 2
    assert buckets.take("key:busy") == 0.0  # busy's bucket was kept: 10 tokens back
    # However many callers arrive within one refill period, at most max_callers are kept.
    for n in range(5000):
        buckets.take(f"address:192.0.2.{n}")
    assert len(buckets) <= 1000


# --- the upstream share ------------------------------------------------------------------

FLOOD = 200
SLOTS = 8  # upstream.max_concurrency
LATENCY_MS = 150


async def flood_and_page(gw):
    """Key A asks for FLOOD distinct cold lots at once (two ids= batches of 100); once its
    calls hold the upstream, key B asks for a cold 25-lot event page. Returns the flood's
    time, the page's, and the most calls the sandbox had in flight while the page was not
    running (the flood's own)."""
    data = gw.sandbox.data
    catalog_id = data.catalog_ids_with_lots(25)[0]
    page_lots = set(data.lot_ids_of_catalog(catalog_id))
    flood_ids = [i for i in data.lots if i not in page_lots][:FLOOD]
    assert len(flood_ids) == FLOOD
    batches = [",".join(map(str, flood_ids[n:n + 100])) for n in range(0, FLOOD, 100)]
    state = {"page_running": False, "flood_peak": 0}

    async def sample() -> None:
        while True:
            if not state["page_running"]:
                state["flood_peak"] = max(state["flood_peak"], gw.sandbox.inflight)
            await asyncio.sleep(0.001)

    async def flood() -> float:
        start = time.perf_counter()
        for resp in await asyncio.gather(
            *(gw.client.get(f"/api/v1/lots?ids={batch}", headers=A) for batch in batches)
        ):
            body = await resp.json()
            assert resp.status == 200 and len(body["items"]) == 100 and not body["errors"]
        return time.perf_counter() - start

    sampler = asyncio.create_task(sample())
    flooding = asyncio.create_task(flood())
    try:
        await eventually(lambda: gw.sandbox.inflight > 0 and gw.calls("GET /api/Lot/{id}") > 8,
                         "the flood under way")
        state["page_running"] = True
        page, page_s = await timed(
            gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=25", headers=B))
        state["page_running"] = False
        assert len(page["items"]) == 25 and page["errors"] == []
        flood_s = await flooding
    finally:
        sampler.cancel()
        flooding.cancel()
    assert gw.calls("GET /api/Lot/{id}") == FLOOD + 25
    return flood_s, page_s, state["flood_peak"]


async def flood_gateway(start_gateway, share: float):
    """A slow upstream with SLOTS slots, each key holding at most `share` of them; room in
    the queue for the whole flood."""
    return await start_gateway(
        latency_ms=LATENCY_MS, api_keys=KEYS, limits={"upstream_share": share},
        upstream={"max_concurrency": SLOTS, "queue_timeout_s": 60.0},
    )


async def test_one_callers_flood_waits_in_its_own_queue_while_others_get_slots(
    start_gateway,
):
    gw = await flood_gateway(start_gateway, share=0.5)
    flood_s, page_s, flood_peak = await flood_and_page(gw)
    # The flood holds half the slots, never more; B's page takes from the other half.
    assert flood_peak == SLOTS // 2, f"the flood had {flood_peak} calls in flight at once"
    assert gw.sandbox.max_inflight <= SLOTS
    assert page_s < 0.5 * flood_s, f"page {page_s:.2f} s, flood {flood_s:.2f} s"
    assert len(shares(gw)) == 0  # no caller has a call waiting: no queue kept


async def test_counter_check_with_a_full_share_the_page_waits_behind_the_flood(
    start_gateway,
):
    # The same as above with upstream_share = 1: one caller may take every slot, so the
    # page's calls queue behind the whole flood. (What the test above guards against.)
    gw = await flood_gateway(start_gateway, share=1.0)
    flood_s, page_s, flood_peak = await flood_and_page(gw)
    assert flood_peak == SLOTS
    assert page_s > 0.7 * flood_s, f"page {page_s:.2f} s, flood {flood_s:.2f} s"


async def test_a_joined_fetch_is_charged_to_whoever_started_it(start_gateway):
    # One slot of two per caller; a slow upstream, so each call is seen in flight.
    gw = await start_gateway(
        latency_ms=600, api_keys=KEYS, limits={"upstream_share": 0.5},
        upstream={"max_concurrency": 2, "queue_timeout_s": 10.0},
        cache={"ttl_s": 1.0, "stale_while_revalidate_s": 60.0},
    )
    x, y, z = list(gw.sandbox.data.lots)[:3]
    started = asyncio.create_task(gw.client.get(f"/api/Lot/{x}", headers=A))
    await eventually(lambda: gw.sandbox.inflight == 1, "A's fetch of x in flight")
    joined = asyncio.create_task(gw.client.get(f"/api/Lot/{x}", headers=B))
    await asyncio.sleep(0.05)  # B's request reaches the cache and joins A's fetch
    assert shares(gw).holding() == {"key:a": 1}
    # B's own share is free: its next lot goes at once, in one round trip. A's is taken by
    # the fetch B joined: A's next lot waits for it.
    (b_next, b_s), (a_next, a_s) = await asyncio.gather(
        timed(gw.client.get(f"/api/Lot/{y}", headers=B)),
        timed(gw.client.get(f"/api/Lot/{z}", headers=A)),
    )
    first, second = await started, await joined
    assert [r.status for r in (first, second, b_next, a_next)] == [200] * 4
    assert second.headers["X-Cache"] == "MISS"  # joined, not served from the cache
    assert gw.calls("GET /api/Lot/{id}") == 3
    assert b_s < a_s - 0.2, f"B's next lot took {b_s:.2f} s, A's {a_s:.2f} s"

    # A stale entry's background refresh is charged to the reader that found it stale.
    await asyncio.sleep(1.1)  # the time passing is the point: x is stale now (ttl 1 s)
    stale = await gw.client.get(f"/api/Lot/{x}", headers=B)
    assert stale.status == 200 and stale.headers["X-Cache"] == "STALE"
    await eventually(lambda: gw.sandbox.inflight == 1, "the refresh of x in flight")
    assert shares(gw).holding() == {"key:b": 1}
