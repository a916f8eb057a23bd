"""The upstream client: one token for many callers, one re-auth on 401, retries."""

from __future__ import annotations

import asyncio
import time

from gateway.state import TOKENS

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
