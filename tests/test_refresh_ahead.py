"""Refresh ahead: a key read steadily is refreshed in the background before it expires, so it
never turns into a miss; the refresh never stores a value older than a save; with Redis one
replica refreshes for all."""

from __future__ import annotations

import asyncio
import time

from gwtesting import eventually

LOT = "GET /api/Lot/{id}"


def a_lot(gw) -> int:
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    return gw.sandbox.data.lot_ids_of_catalog(catalog_id)[0]


async def read_steadily(gw, path: str, seconds: float, every_s: float = 0.05):
    """(X-Cache, seconds) of a read of `path` every `every_s` for `seconds`."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        resp = await gw.client.get(path)
        assert resp.status == 200, await resp.text()
        await resp.read()
        answers.append((resp.headers["X-Cache"], time.perf_counter() - start))
        await asyncio.sleep(every_s)
    return answers


async def test_a_key_read_steadily_never_becomes_a_miss(start_gateway):
    # A miss costs a 200 ms round trip; refresh ahead at half the 1 s life.
    gw = await start_gateway(latency_ms=200, cache={
        "ttl_s": 1.0, "refresh_ahead": 0.5, "stale_while_revalidate_s": 0})
    path = f"/api/Lot/{a_lot(gw)}"

    answers = await read_steadily(gw, path, 3.0)

    assert answers[0][0] == "MISS"
    assert [c for c, _ in answers[1:]] == ["HIT"] * (len(answers) - 1)
    assert max(s for _, s in answers[1:]) < 0.1, answers  # never waited for the upstream
    # One call, then about one refresh per 0.7 s (0.5 s of life, 0.2 s to fetch).
    assert 3 <= gw.calls(LOT) <= 7, gw.calls(LOT)


async def test_without_refresh_ahead_the_same_reads_meet_a_miss(start_gateway):
    """The control: the reads above do expire into a miss when nothing refreshes ahead."""
    gw = await start_gateway(latency_ms=200, cache={
        "ttl_s": 1.0, "refresh_ahead": 1.0, "stale_while_revalidate_s": 0})
    answers = await read_steadily(gw, f"/api/Lot/{a_lot(gw)}", 1.6)
    assert "MISS" in [c for c, _ in answers[1:]]


async def test_a_save_during_a_refresh_drops_the_refreshed_value(start_gateway):
    """The refresh reads the lot before the save writes it and answers long after the save
    has returned: what it brings back is older than the save and must never be served."""
    gw = await start_gateway(latency_ms=400, cache={"ttl_s": 2.0, "refresh_ahead": 0.2})
    lot_id = a_lot(gw)
    path = f"/api/Lot/{lot_id}"
    assert (await gw.client.get(path)).headers["X-Cache"] == "MISS"
    await asyncio.sleep(0.45)  # past the refresh point (0.4 s of life)
    before = gw.calls(LOT)
    assert (await gw.client.get(path)).headers["X-Cache"] == "HIT"  # and starts the refresh
    await eventually(lambda: gw.calls(LOT) > before, "the refresh reached the upstream")
    # The sandbox reads the lot 200 ms after a call arrives and answers after the other
    # half of its latency: make the refresh's way back 1.7 s, the save's calls normal.
    await asyncio.sleep(0.1)
    gw.sandbox.slow_ms = 3000
    await asyncio.sleep(0.15)
    gw.sandbox.slow_ms = 0
    refresh_lands = time.monotonic() + 1.7

    saved = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 4242})
    assert saved.status == 200, await saved.text()
    assert time.monotonic() < refresh_lands, "the save outlasted the refresh: no overlap"
    assert (await gw.get_json(path))["overridenData"][0]["qty"] == 4242
    await asyncio.sleep(max(0.0, refresh_lands - time.monotonic()) + 0.3)
    assert (await gw.get_json(path))["overridenData"][0]["qty"] == 4242


async def test_with_redis_one_replica_refreshes_for_both(start_gateway, redis):
    shared = {"backend": "redis", "redis_url": redis.url, "ttl_s": 1.0,
              "refresh_ahead": 0.5, "stale_while_revalidate_s": 0}
    a = await start_gateway(latency_ms=200, cache=shared)
    b = await start_gateway(cache=shared, beside=a)
    path = f"/api/Lot/{a_lot(a)}"

    seen = await asyncio.gather(read_steadily(a, path, 3.0), read_steadily(b, path, 3.0))

    caches = [c for answers in seen for c, _ in answers]
    assert caches.count("MISS") <= 1 and "STALE" not in caches  # one replica's first read
    # Two replicas refreshing apart would make about twice as many calls.
    assert 3 <= a.calls(LOT) <= 7, a.calls(LOT)
