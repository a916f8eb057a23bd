"""The mirror's list routes take the query parameters the upstream's document declares (and
those ABConnect itself sends), as the upstream reads them: names in any case, each scalar
once, PageSize bounded. Anything else is a 400 naming the parameter, and the upstream
never hears of it. Over real sockets, against a sandbox upstream that records every query
string it receives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
from ABConnect.api.catalog import BaseCatalogEndpoint
from aiohttp import web

from gateway import contract
from gateway.state import CACHE
from sandbox.server import SANDBOX, create_sandbox_app

from test_sandbox import run_sdk

PROBLEM = "application/problem+json"
LIST_ROUTES = ("/api/Seller", "/api/Catalog", "/api/Lot")


@dataclass
class Heard:
    """Every /api/ request the upstream received: (path, query pairs as sent)."""

    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    def queries(self, path: str) -> list[list[tuple[str, str]]]:
        return [query for seen, query in self.requests if seen == path]

    def clear(self) -> None:
        self.requests.clear()


@dataclass
class Recorded:
    gw: Any  # conftest.Gateway
    heard: Heard

    @property
    def upstream_calls(self) -> int:
        return sum(1 for path, _ in self.heard.requests if path.startswith("/api/"))


@dataclass
class _Upstream:
    """What `start_gateway(beside=...)` needs of another gateway: its upstream."""

    upstream_url: str
    sandbox: Any


@pytest.fixture
async def recorded(start_gateway) -> AsyncIterator[Any]:
    """recorded(**sections) -> a gateway (open mode) whose sandbox upstream records the
    query string of every /api/ request, exactly as it arrived."""
    runners: list[web.AppRunner] = []

    async def start(**sections: Any) -> Recorded:
        app = create_sandbox_app(latency_ms=0, jitter_ms=0)
        heard = Heard()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.startswith("/api/"):
                heard.requests.append(
                    (request.path, parse_qsl(request.query_string, keep_blank_values=True)))
            return await handler(request)

        app.middlewares.insert(0, record)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        app[SANDBOX].origin = url
        gw = await start_gateway(beside=_Upstream(url, app[SANDBOX]), **sections)
        heard.clear()
        return Recorded(gw, heard)

    yield start
    for runner in runners:
        await runner.cleanup()


async def refused(gw: Any, path: str) -> str:
    """`path` must be a 400 problem+json; its detail."""
    resp = await gw.client.get(path)
    assert resp.status == 400, (path, resp.status, await resp.text())
    assert resp.content_type == PROBLEM
    problem = await resp.json(content_type=None)
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    return problem["detail"]


@pytest.mark.parametrize("path,named", [
    ("/api/Lot?x=1", "'x'"),
    ("/api/Lot?PageSize=5&x=1", "'x'"),
    ("/api/Seller?x=", "'x'"),  # empty, still unknown
    ("/api/Catalog?IsCompleted=false&Sort=title", "'Sort'"),
    ("/api/Seller?CustomerCatalogId=7", "'CustomerCatalogId'"),  # only lots.list sends it
    ("/api/Lot?PageSize=5&PageSize=100000000", "PageSize"),
    ("/api/Lot?PageSize=5&pagesize=6", "PageSize"),
    ("/api/Lot?PageSize=5&PageSize=5", "PageSize"),
    ("/api/Lot?PageSize=&PageSize=5", "PageSize"),
    ("/api/Seller?Name=a&NAME=b", "Name"),
    ("/api/Catalog?IsCompleted=true&iscompleted=false", "IsCompleted"),
    ("/api/Lot?PageSize=501", "PageSize"),
    ("/api/Seller?pagesize=501", "PageSize"),
    ("/api/Catalog?PageSize=0", "PageSize"),
    ("/api/Lot?Id=abc", "Id"),
])
async def test_unknown_repeated_and_oversized_parameters_are_refused_before_the_upstream(
    recorded, path: str, named: str,
) -> None:
    up = await recorded()
    detail = await refused(up.gw, path)
    assert named in detail, detail
    assert up.upstream_calls == 0, up.heard.requests
    assert len(up.gw.app[CACHE].store) == 0


async def test_an_unknown_name_is_shown_bounded_and_escaped(recorded) -> None:
    up = await recorded()
    detail = await refused(up.gw, "/api/Lot?%0a2026-01-01%20INFO%20forged" + "y" * 3000 + "=1")
    assert "\n" not in detail and "y" * 100 not in detail, detail
    assert "'\\n2026-01-01 INFO forged" in detail and len(detail) < 400, detail
    assert up.upstream_calls == 0


async def test_page_size_is_bounded_by_the_configured_limit(recorded) -> None:
    up = await recorded(limits={"max_page_size": 50})
    assert "PageSize" in await refused(up.gw, "/api/Lot?PageSize=51")
    assert up.upstream_calls == 0
    page = await up.gw.get_json("/api/Lot?PageSize=50")
    assert len(page["items"]) == 50
    assert up.heard.queries("/api/Lot") == [[("PageSize", "50")]]


async def test_the_default_limit_is_500_and_the_published_document_says_so(recorded) -> None:
    up = await recorded()
    await up.gw.get_json("/api/Seller?PageSize=500")
    assert "PageSize" in await refused(up.gw, "/api/Seller?PageSize=501")
    document = await up.gw.get_json("/openapi.json")
    for path in LIST_ROUTES:
        operation = document["paths"][path]["get"]
        [size] = [p for p in operation["parameters"] if p["name"] == "PageSize"]
        assert size["schema"]["maximum"] == 500
        assert "any other is refused with 400" in operation["description"]


async def test_names_in_any_case_are_one_cache_entry_sent_in_the_documents_spelling(
    recorded,
) -> None:
    up = await recorded()
    first = await up.gw.client.get("/api/Lot?pagesize=5")
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    second = await up.gw.client.get("/api/Lot?PageSize=5")
    assert second.status == 200 and second.headers["X-Cache"] == "HIT"
    third = await up.gw.client.get("/api/Lot?PAGESIZE=5")
    assert third.headers["X-Cache"] == "HIT"
    assert await first.read() == await second.read() == await third.read()
    assert up.heard.queries("/api/Lot") == [[("PageSize", "5")]]  # one call, as documented
    assert up.gw.calls("GET /api/Lot") == 1

    await up.gw.get_json("/api/Seller?isactive=true&pagenumber=2&PAGESIZE=3")
    assert up.heard.queries("/api/Seller") == [
        [("IsActive", "true"), ("PageNumber", "2"), ("PageSize", "3")]]


async def test_an_array_parameter_may_repeat_in_any_case(recorded) -> None:
    up = await recorded()
    sellers = sorted(up.gw.sandbox.data.sellers)[:2]
    ours = await up.gw.get_json(f"/api/Catalog?SellerIds={sellers[0]}&sellerids={sellers[1]}"
                                "&PageSize=100")
    [query] = up.heard.queries("/api/Catalog")
    assert query == sorted([("SellerIds", str(sellers[0])), ("SellerIds", str(sellers[1])),
                            ("PageSize", "100")])
    assert ours["items"] and all(set(sellers) & {s["id"] for s in c["sellers"]}
                                 for c in ours["items"])
    direct = await up.gw.upstream_get(
        f"/api/Catalog?SellerIds={sellers[0]}&SellerIds={sellers[1]}&PageSize=100")
    assert ours == json.loads(direct)


async def test_an_empty_value_is_passed_on_as_before(recorded) -> None:
    up = await recorded()
    page = await up.gw.get_json("/api/Lot?PageSize=&lotnumber=")
    assert page["items"]
    assert up.heard.queries("/api/Lot") == [[("LotNumber", ""), ("PageSize", "")]]


async def test_paths_the_document_does_not_name_pass_through_untouched(recorded) -> None:
    up = await recorded()
    resp = await up.gw.client.get("/api/Platform?x=1&X=2&PageSize=100000000")
    assert resp.status == 404 and "X-Cache" not in resp.headers  # the sandbox's answer
    assert up.heard.queries("/api/Platform") == [
        [("x", "1"), ("X", "2"), ("PageSize", "100000000")]]


async def test_the_abconnect_sdk_list_calls_work_through_the_gateway(recorded) -> None:
    """ABConnect 0.2.1's own calls, every one of them (run_sdk), through a gateway that
    refuses what its contract does not name: `lots.list(customer_catalog_id=...)` sends
    `CustomerCatalogId`, which the upstream's document does not declare."""
    assert contract.SDK_QUERY[("GET", "/api/Lot")][0]["name"] == "CustomerCatalogId"
    up = await recorded(auth={"upstream_tokens": "write"})
    base = str(up.gw.client.make_url("/")).rstrip("/")
    previous = BaseCatalogEndpoint._handler  # the SDK's handler is class-level: restore it
    try:
        await asyncio.to_thread(run_sdk, base, up.gw.sandbox, up.gw.upstream_url)
    finally:
        BaseCatalogEndpoint._handler = previous
    catalog_ids = [dict(q).get("CustomerCatalogId") for q in up.heard.queries("/api/Lot")]
    assert up.gw.sandbox.data.catalogs[1001]["customerCatalogId"] in catalog_ids
