"""Cache-Status (RFC 9211) says what X-Cache says, on every cached route."""

from __future__ import annotations

import asyncio
import re

import pytest

from gwtesting import eventually

HIT = re.compile(r"^catalog-gateway; hit; ttl=(\d+)$")


def said(resp) -> tuple[str, str]:
    return resp.headers["X-Cache"], resp.headers["Cache-Status"]


@pytest.mark.parametrize("path", [
    "/api/Lot/10001", "/api/Lot?PageSize=5", "/api/v1/catalogs/1001/lots",
    "/api/v1/lots?ids=10001,10002", "/api/v1/sellers", "/api/v1/sellers/101/events",
])
async def test_cache_status_matches_x_cache_miss_then_hit(start_gateway, path: str) -> None:
    gw = await start_gateway(cache={"ttl_s": 600})
    miss = await gw.client.get(path)
    assert miss.status == 200
    assert said(miss) == ("MISS", "catalog-gateway; fwd=miss; stored")
    hit = await gw.client.get(path)
    x_cache, status = said(hit)
    assert x_cache == "HIT"
    ttl = HIT.match(status)
    assert ttl is not None, status
    assert 590 <= int(ttl[1]) <= 600  # seconds it stays fresh: the TTL less its age
    # A 304 says the same.
    again = await gw.client.get(path, headers={"If-None-Match": hit.headers["ETag"]})
    assert again.status == 304 and HIT.match(again.headers["Cache-Status"])


async def test_the_ttl_counts_down_with_the_entrys_age(start_gateway) -> None:
    gw = await start_gateway(cache={"ttl_s": 5})
    await gw.client.get("/api/Lot/10001")
    await asyncio.sleep(1.2)  # the age under test
    ttl = HIT.match((await gw.client.get("/api/Lot/10001")).headers["Cache-Status"])
    assert ttl is not None and int(ttl[1]) <= 3


async def test_a_stale_answer_says_fwd_stale(start_gateway) -> None:
    gw = await start_gateway(cache={"ttl_s": 0.3, "stale_while_revalidate_s": 0})
    assert (await gw.client.get("/api/Lot/10001")).status == 200
    gw.sandbox.configure(down=True)
    await asyncio.sleep(0.4)  # past the TTL: the entry is expired, the upstream is down

    async def stale() -> bool:
        resp = await gw.client.get("/api/Lot/10001")
        return resp.status == 200 and said(resp) == ("STALE", "catalog-gateway; fwd=stale")

    await eventually(stale, "an expired lot is served STALE while the upstream is down")
