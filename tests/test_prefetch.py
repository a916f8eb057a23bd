"""Prefetch: the events a seller list shows and an event's next page are fetched in the
background, behind every client's call (design rule 6), through the cache (rule 3)."""

from __future__ import annotations

import asyncio
import contextvars
import re

import pytest

from gateway import keys
from gateway.context import BACKGROUND
from gateway.metrics import PREFETCH_OUTCOMES
from gateway.prefetch import Outcome, Prefetcher
from gateway.state import CACHE, READS
from gateway.upstream.breaker import State
from gateway.upstream.client import Deferred, UpstreamClient

from gwtesting import eventually, timed

LATENCY_MS = 250
PREFETCH = {"enabled": True, "max_inflight": 4}
CATALOG, LOT = "GET /api/Catalog/{id}", "GET /api/Lot/{id}"


def prefetcher_of(gw) -> Prefetcher:
    prefetcher = gw.app[READS].prefetch
    assert isinstance(prefetcher, Prefetcher)
    return prefetcher


def upstream_of(gw) -> UpstreamClient:
    return gw.app[READS]._upstream


async def idle(gw) -> None:
    """Every prefetch wished for so far has ended."""
    await eventually(lambda: prefetcher_of(gw).pending == 0, "prefetch is idle")


async def prefetch_outcomes(gw) -> dict[str, float]:
    text = await (await gw.client.get("/metrics")).text()
    return {m[1]: float(m[2]) for m in
            re.finditer(r'^gateway_prefetch_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def upcoming_event(gw, min_lots: int) -> tuple[int, int]:
    """(seller, the soonest of its upcoming events) for a seller with past events and
    more than one upcoming, the soonest with at least `min_lots` lots: the first event
    its list shows."""
    data = gw.sandbox.data
    for seller in data.sellers:
        events = data.catalog_ids_for_seller(seller)
        upcoming = sorted((c for c in events if not data.catalogs[c]["isCompleted"]),
                          key=lambda c: data.catalogs[c]["startDate"])
        if (1 < len(upcoming) < len(events)
                and len(data.catalogs[upcoming[0]]["lots"]) >= min_lots):
            return seller, upcoming[0]
    raise AssertionError("no such seller")


@pytest.mark.parametrize("enabled", [True, False])
async def test_an_event_just_listed_opens_in_one_round_trip(start_gateway, enabled):
    gw = await start_gateway(latency_ms=LATENCY_MS, prefetch={**PREFETCH, "enabled": enabled})
    rtt = await gw.round_trip_s()
    seller, event = upcoming_event(gw, 10)
    listed = gw.sandbox.data.catalog_ids_for_seller(seller)
    resp = await gw.client.get(f"/api/v1/sellers/{seller}/events")
    assert resp.status == 200
    shown = [e["id"] for e in (await resp.json())["items"]]
    assert event in shown and len(shown) > 1 and set(shown) < set(listed)  # no past ones
    if enabled:
        await idle(gw)
        # Each shown event's catalog fetched once, in the background, on behalf of (and
        # traced to) the request that listed them; none of the others.
        assert gw.calls(CATALOG) == len(shown)
        request_id = resp.headers["X-Request-ID"]
        assert sorted(rid for route, rid in gw.sandbox.request_ids
                      if route == CATALOG) == [request_id] * len(shown)
        outcomes = await prefetch_outcomes(gw)
        assert set(outcomes) == set(PREFETCH_OUTCOMES) == {o.value for o in Outcome}
        assert outcomes["fetched"] == len(shown)

    resp, took = await timed(gw.client.get(f"/api/v1/catalogs/{event}/lots?page_size=10"))
    assert resp.status == 200 and len((await resp.json())["items"]) == 10
    if enabled:  # the catalog was waiting in the cache: only the lots are fetched
        assert took < 1.5 * rtt, (took, rtt)
        assert gw.calls(CATALOG) == len(shown)
    else:  # the catalog, then the lots
        assert took > 1.8 * rtt, (took, rtt)
        assert gw.calls(CATALOG) == 1


async def test_the_next_page_is_fetched_ahead_and_joined_while_in_flight(start_gateway):
    gw = await start_gateway(latency_ms=LATENCY_MS, prefetch=PREFETCH)
    first, second = gw.sandbox.data.catalog_ids_with_lots(30)[:2]

    # After page 1, page 2 is fetched in the background and then served with no upstream
    # call at all.
    assert (await gw.client.get(f"/api/v1/catalogs/{first}/lots?page_size=10")).status == 200
    await idle(gw)
    assert gw.calls(LOT) == 20  # page 1's ten lots, then page 2's
    gw.sandbox.reset_stats()
    resp = await gw.client.get(f"/api/v1/catalogs/{first}/lots?page=2&page_size=10")
    assert resp.status == 200 and resp.headers["X-Cache"] == "HIT"
    assert sum(gw.sandbox.calls.values()) == 0
    assert [lot["id"] for lot in (await resp.json())["items"]] == \
        gw.sandbox.data.lot_ids_of_catalog(first)[10:20]

    # Page 2 asked while its prefetch is still in flight joins it: one call per lot.
    await idle(gw)  # page 3, wished for by page 2
    gw.sandbox.reset_stats()
    assert (await gw.client.get(f"/api/v1/catalogs/{second}/lots?page_size=10")).status == 200
    await eventually(lambda: prefetcher_of(gw).inflight > 0, "page 2's prefetch has begun")
    resp = await gw.client.get(f"/api/v1/catalogs/{second}/lots?page=2&page_size=10")
    assert resp.status == 200
    await idle(gw)
    # Page 3's prefetch, wished for by page 2, adds its own ten lots; none twice.
    assert gw.calls(LOT) == 30
    assert gw.calls(CATALOG) == 1


async def test_a_client_never_waits_for_a_slot_held_by_prefetch(start_gateway):
    slots, inflight = 8, 4
    gw = await start_gateway(latency_ms=LATENCY_MS, upstream={"max_concurrency": slots},
                             prefetch={"enabled": True, "max_inflight": inflight})
    rtt = await gw.round_trip_s()
    data = gw.sandbox.data
    busy = data.largest_catalog_id()
    cold = [c for c in data.catalog_ids_with_lots(10) if c != busy][:2]
    prefetcher = prefetcher_of(gw)

    async def cold_page(event: int) -> float:
        """A page that needs every slot prefetch leaves: its catalog, then 4 lots."""
        resp, took = await timed(gw.client.get(f"/api/v1/catalogs/{event}/lots?page_size=4"))
        assert resp.status == 200 and resp.headers["X-Cache"] == "MISS"
        return took

    alone = await cold_page(cold[0])  # the yardstick: nothing else in flight
    # Page 1 of the largest event wishes for its next 20 lots: prefetch at its limit (4 in
    # flight, the rest queued) for five round trips.
    assert (await gw.client.get(f"/api/v1/catalogs/{busy}/lots?page_size=20")).status == 200
    await eventually(lambda: prefetcher.inflight == inflight, "prefetch at its limit")
    gw.sandbox.reset_stats()
    beside = await cold_page(cold[1])
    assert prefetcher.pending > inflight  # it really was at its limit throughout
    # As fast as with nothing beside it (generous, the machine being shared), and well
    # under the extra round trip a lot kept waiting for a prefetch's slot would cost.
    assert beside < max(1.3 * alone, alone + 0.5 * rtt), (beside, alone, rtt)
    assert gw.sandbox.max_inflight <= slots
    await prefetcher.close()  # no need to wait for the rest


async def test_prefetch_pauses_while_the_breaker_is_not_closed(start_gateway):
    gw = await start_gateway(
        latency_ms=20, prefetch=PREFETCH,
        upstream={"breaker_open_s": 1.0, "breaker_min_calls": 3, "retries": 0},
    )
    breaker = upstream_of(gw).breaker
    seller, event = upcoming_event(gw, 10)
    # Warm what the pages below are made of, with nothing wished for: the seller, the
    # event's catalog and its first page.
    first_page = ",".join(str(i) for i in gw.sandbox.data.lot_ids_of_catalog(event)[:5])
    for path in (f"/api/Seller/{seller}", f"/api/Catalog/{event}",
                 f"/api/v1/lots?ids={first_page}"):
        assert (await gw.client.get(path)).status == 200, path
    assert prefetcher_of(gw).pending == 0

    gw.sandbox.configure(down=True)
    cold = iter(sorted(set(gw.sandbox.data.lots)
                       - set(gw.sandbox.data.lot_ids_of_catalog(event))))
    while breaker.state is State.CLOSED:  # failures until they outnumber the warm-up's
        assert (await gw.client.get(f"/api/Lot/{next(cold)}")).status == 503
    gw.sandbox.configure(down=False)
    gw.sandbox.reset_stats()

    async def wish() -> None:
        """Serve (from the cache) two pages that each wish for something."""
        assert (await gw.client.get(f"/api/v1/sellers/{seller}/events")).status == 200
        assert (await gw.client.get(f"/api/v1/catalogs/{event}/lots?page_size=5")).status == 200

    await wish()  # open: nothing is sent, every wish is dropped at once
    assert prefetcher_of(gw).pending == 0
    paused = (await prefetch_outcomes(gw))["paused_breaker"]
    assert paused > 0
    await eventually(lambda: breaker.state is State.HALF_OPEN, "the breaker half-open")
    await wish()  # half-open: prefetch is never the probe
    assert prefetcher_of(gw).pending == 0
    assert (await prefetch_outcomes(gw))["paused_breaker"] > paused
    assert sum(gw.sandbox.calls.values()) == 0

    # A client's call is the probe; once it closed the breaker, prefetch resumes.
    assert (await gw.client.get(f"/api/Lot/{next(cold)}")).status == 200
    assert breaker.state is State.CLOSED
    await wish()
    await idle(gw)
    assert gw.calls(LOT) == 1 + 5  # the probe, then page 2's five lots
    assert gw.calls(CATALOG) >= 1  # the seller's other upcoming events
    assert (await prefetch_outcomes(gw))["fetched"] >= 6


async def test_background_calls_never_take_the_last_free_slot(start_gateway):
    gw = await start_gateway(latency_ms=300, upstream={"max_concurrency": 3})
    client = upstream_of(gw)
    lots = iter(gw.sandbox.data.lots)

    def call(background: bool) -> asyncio.Task[bytes]:
        context = contextvars.copy_context()
        context.run(BACKGROUND.set, background)
        path = f"/api/Lot/{next(lots)}"
        return asyncio.get_running_loop().create_task(
            client.get(path, endpoint="/api/Lot/{id}"), context=context)

    # One slot held by a client: two free, so background work has room for one.
    holding = [call(False)]
    await eventually(lambda: client.slots_free == 2, "a client holds a slot")
    assert client.room_for_background()
    claim = client.claim_background()
    assert claim is not None and not client.room_for_background()  # promised to the claim
    with claim:
        taken = call(True)
        await eventually(lambda: client.slots_free == 1, "the claimed call holds a slot")
    # One free: that last slot is the clients'. Background work is refused at once...
    assert not client.room_for_background()
    refused, took = await timed(asyncio.gather(call(True), return_exceptions=True))
    assert isinstance(refused[0], Deferred) and not refused[0].breaker
    assert took < 0.1, took
    # ...while a client takes it, and the next client waits for a slot in turn.
    holding += [call(False), call(False)]
    await eventually(lambda: client.slots_free == 0, "every slot held")
    room = asyncio.ensure_future(client.room_changed())
    await asyncio.gather(taken, *holding)  # the waiting client was served too
    assert room.done()  # the slots given back woke whoever waits for room
    assert client.slots_free == 3 and client.room_for_background()
    assert client.breaker.state is State.CLOSED  # a refusal is not an upstream failure
    assert gw.calls(LOT) == 4  # the refused call never reached the upstream


async def test_a_save_during_the_prefetch_of_its_lot_wins(start_gateway):
    gw = await start_gateway(latency_ms=200, jitter_ms=150, prefetch=PREFETCH)
    event = gw.sandbox.data.catalog_ids_with_lots(10)[0]
    lot_id = gw.sandbox.data.lot_ids_of_catalog(event)[5]  # the first lot of page 2
    assert (await gw.client.get(f"/api/v1/catalogs/{event}/lots?page_size=5")).status == 200
    await eventually(lambda: gw.sandbox.calls[LOT] > 5, "page 2's prefetch reached upstream")
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 4242})
    assert resp.status == 200, await resp.text()

    async def qty_on_page_2() -> int:
        page = await gw.get_json(f"/api/v1/catalogs/{event}/lots?page=2&page_size=5")
        lot = next(lot for lot in page["items"] if lot["id"] == lot_id)
        return lot["overridenData"][0]["qty"]

    assert await qty_on_page_2() == 4242  # served right after the save
    await idle(gw)
    assert await qty_on_page_2() == 4242  # and after every prefetch has landed
    entry = gw.app[CACHE].peek(keys.one("Lot", lot_id))
    assert entry is not None and b"4242" in entry.body
