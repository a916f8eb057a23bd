"""The upstream client: one token for many callers, one re-auth on 401, retries."""

from __future__ import annotations

import asyncio

from gateway.state import TOKENS


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

    async def revoke_soon() -> None:
        await asyncio.sleep(0.1)  # a few waves of the 100-lot fan-out are done by then
        gw.sandbox.revoke_tokens()

    page, _ = await asyncio.gather(
        gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=100"), revoke_soon()
    )
    assert len(page["items"]) == 100 and page["errors"] == []
    assert gw.calls("POST /connect/token") == 1
    assert gw.calls("GET /api/Lot/{id}") > 100  # some were refused and retried once


async def test_expiring_token_is_renewed_before_use(start_gateway):
    gw = await start_gateway(sandbox={"latency_ms": 0})
    gw.sandbox.configure(token_ttl_s=1.0)
    tokens = gw.app[TOKENS]
    tokens.invalidate(await tokens.token())
    lot_ids = list(gw.sandbox.data.lots)
    assert (await gw.client.get(f"/api/Lot/{lot_ids[0]}")).status == 200
    await asyncio.sleep(1.1)
    gw.sandbox.reset_stats()
    assert (await gw.client.get(f"/api/Lot/{lot_ids[1]}")).status == 200
    assert gw.calls("POST /connect/token") == 1  # renewed up front, not after a 401
    assert gw.calls("GET /api/Lot/{id}") == 1


async def test_transient_errors_are_retried(start_gateway):
    gw = await start_gateway(upstream={"retries": 5})
    gw.sandbox.configure(error_rate=0.3)
    lot_ids = list(gw.sandbox.data.lots)[:30]
    responses = await asyncio.gather(*(gw.client.get(f"/api/Lot/{i}") for i in lot_ids))
    ok = sum(r.status == 200 for r in responses)
    assert ok >= 29  # each fails only if 6 tries in a row fail: p = 0.3**6 < 0.001
    assert gw.calls("GET /api/Lot/{id}") > 30
