"""The upstream client: one token for many callers, one re-auth on 401, retries, and a share
of the slots per caller."""

from __future__ import annotations

import asyncio
import time

from gateway.config import parse_api_keys
from gateway.context import CHARGED_TO
from gateway.state import READS, TOKENS

from gwtesting import eventually


async def test_one_token_call_however_many_requests_need_it(start_gateway):
    gw = await start_gateway(latency_ms=50)
    tokens = gw.app[TOKENS]
    tokens.invalidate(await tokens.token())
    gw.sandbox.reset_stats()
    lot_ids = list(gw.sandbox.data.lots)[:40]
    responses = await asyncio.gather(*(gw.client.get(f"/api/Lot/{i}") for i in lot_ids))
    assert [r.status for r in responses] == [200] * 40
    assert gw.calls("POST /connect/token") == 1
    assert gw.calls("GET /api/Lot/{id}") == 40


async def test_tokens_revoked_mid_fan_out_cost_one_reauth(start_gateway):
    gw = await start_gateway(latency_ms=40, upstream={"max_concurrency": 10})
    catalog_id = gw.sandbox.data.largest_catalog_id()
    await gw.get_json(f"/api/Catalog/{catalog_id}")
    gw.sandbox.reset_stats()
    lots = "GET /api/Lot/{id}"

    async def revoke_mid_fan_out() -> int:
        await eventually(lambda: gw.calls(lots) >= 20,
                         "two waves of the 100-lot fan-out under way", timeout_s=10)
        gw.sandbox.revoke_tokens()
        return gw.calls(lots)

    revoker = asyncio.create_task(revoke_mid_fan_out())
    try:
        page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=100")
        revoked_after = await asyncio.wait_for(revoker, timeout=10)
    finally:
        revoker.cancel()
    assert revoked_after < 100  # the revocation did come mid-fan-out
    assert len(page["items"]) == 100 and page["errors"] == []
    assert gw.calls("POST /connect/token") == 1
    # Some were refused and retried, each once (a second 401 would be an error above).
    assert 100 < gw.calls(lots) <= 200


async def test_expiring_token_is_renewed_before_use(start_gateway):
    lifetime_s = 3.0
    gw = await start_gateway(sandbox={"latency_ms": 0})
    gw.sandbox.configure(token_ttl_s=lifetime_s)
    tokens = gw.app[TOKENS]
    tokens.invalidate(await tokens.token())
    lot_ids = list(gw.sandbox.data.lots)
    assert (await gw.client.get(f"/api/Lot/{lot_ids[0]}")).status == 200
    issued_by = time.monotonic()
    token = await tokens.token()  # the one just obtained
    # Into the last tenth of its life (the gateway renews within it), while the upstream
    # still takes it: the time passing is the behaviour under test.
    await asyncio.sleep(max(0.0, issued_by + lifetime_s * 0.92 - time.monotonic()))
    assert gw.sandbox.token_user(token) is not None, "too late: the token has expired"
    gw.sandbox.reset_stats()
    assert (await gw.client.get(f"/api/Lot/{lot_ids[1]}")).status == 200
    # Renewed up front: not after a 401 (the old token was still good), nor left to lapse.
    assert gw.calls("POST /connect/token") == 1
    assert gw.calls("GET /api/Lot/{id}") == 1
    assert await tokens.token() != token


async def test_transient_errors_are_retried(start_gateway):
    gw = await start_gateway(upstream={"retries": 5})
    gw.sandbox.configure(error_rate=0.3)
    lot_ids = list(gw.sandbox.data.lots)[:30]
    responses = await asyncio.gather(*(gw.client.get(f"/api/Lot/{i}") for i in lot_ids))
    ok = sum(r.status == 200 for r in responses)
    assert ok >= 29  # each fails only if 6 tries in a row fail: p = 0.3**6 < 0.001
    assert gw.calls("GET /api/Lot/{id}") > 30


KEYS = parse_api_keys("a:a-key-of-twenty-chars:write")


async def test_waiting_for_ones_own_share_counts_against_the_queue_timeout(start_gateway):
    # One slot of two per caller: A's second lot must wait for A's first, longer than the
    # queue timeout, though a global slot stays free the whole time.
    gw = await start_gateway(
        latency_ms=1000, api_keys=KEYS, limits={"upstream_share": 0.5},
        upstream={"max_concurrency": 2, "queue_timeout_s": 0.3, "retries": 0},
    )
    x, y = list(gw.sandbox.data.lots)[:2]
    headers = {"X-API-Key": "a-key-of-twenty-chars"}
    first, second = await asyncio.gather(
        gw.client.get(f"/api/Lot/{x}", headers=headers),
        gw.client.get(f"/api/Lot/{y}", headers=headers),
    )
    statuses = sorted([first.status, second.status])
    assert statuses == [200, 503]
    busy = first if first.status == 503 else second
    assert busy.headers["Retry-After"] == "1"
    assert "share" in (await busy.json())["detail"]
    assert gw.sandbox.max_inflight == 1 and gw.calls("GET /api/Lot/{id}") == 1
    # The caller's queue is gone with its last call: nothing kept per caller once idle.
    assert len(gw.app[READS]._upstream.shares) == 0


async def test_the_gateways_own_calls_take_global_slots_only(start_gateway):
    # Calls charged to no caller (the gateway's own work) are not held to a caller's share.
    gw = await start_gateway(latency_ms=200, limits={"upstream_share": 0.25},
                             upstream={"max_concurrency": 4})
    client = gw.app[READS]._upstream
    assert CHARGED_TO.get() is None
    lot_ids = list(gw.sandbox.data.lots)[:8]
    await asyncio.gather(*(client.get(f"/api/Lot/{i}", endpoint="/api/Lot/{id}")
                           for i in lot_ids))
    assert gw.sandbox.max_inflight == 4
    # The same calls charged to one caller: one slot of four at a time.
    gw.sandbox.reset_stats()
    charged = CHARGED_TO.set("key:a")
    try:
        await asyncio.gather(*(client.get(f"/api/Lot/{i}", endpoint="/api/Lot/{id}")
                               for i in lot_ids[:3]))
    finally:
        CHARGED_TO.reset(charged)
    assert gw.sandbox.max_inflight == 1
