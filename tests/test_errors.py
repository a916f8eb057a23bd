"""Bad input and upstream trouble: always problem+json with the right status, never a 500,
never a hang."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.embedded import aimed_at

from gwtesting import timed

PROBLEM = "application/problem+json"


async def assert_problem(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["title"] and body["detail"]
    assert set(body) == {"type", "title", "status", "detail"}
    return body


@pytest.mark.parametrize("path", [
    "/api/Lot/abc", "/api/Lot/-1", "/api/Lot/0", "/api/Lot/1.5", "/api/Lot/99999999999",
    "/api/Catalog/x", "/api/Seller/%20",
    "/api/Lot?PageSize=x", "/api/Catalog?PageNumber=0",
    "/api/v1/catalogs/abc/lots", "/api/v1/catalogs/-3/lots",
    "/api/v1/catalogs/1/lots?page_size=0", "/api/v1/catalogs/1/lots?page_size=101",
    "/api/v1/catalogs/1/lots?page=0", "/api/v1/catalogs/1/lots?page=two",
    "/api/v1/lots", "/api/v1/lots?ids=", "/api/v1/lots?ids=1,x", "/api/v1/lots?ids=-1",
    "/api/v1/lots?ids=" + ",".join(str(i) for i in range(1, 102)),
    "/api/v1/sellers?page_size=1000", "/api/v1/sellers?q=" + "x" * 201,
    "/api/v1/sellers/1/events?include_past=maybe", "/api/v1/sellers/abc/events",
])
async def test_bad_parameters_are_400(start_gateway, path):
    gw = await start_gateway()
    await assert_problem(await gw.client.get(path), 400)
    assert sum(gw.sandbox.calls.values()) == 0  # rejected before any upstream call


@pytest.mark.parametrize("path", [
    "/api/Lot/999999", "/api/Catalog/999999", "/api/Seller/999999",
    "/api/v1/catalogs/999999/lots", "/api/v1/sellers/999999/events", "/api/v1/nothing-here",
])
async def test_unknown_ids_are_404(start_gateway, path):
    gw = await start_gateway()
    await assert_problem(await gw.client.get(path), 404)


async def test_wrong_method_is_a_problem_not_a_page(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.patch("/api/Catalog/1", json={})
    await assert_problem(resp, 405)
    assert resp.headers["Allow"] == "DELETE,GET,PUT"
    assert gw.sandbox.calls == {}, "a wrong method on a known path reached the upstream"


async def test_unknown_api_paths_pass_through_with_the_upstreams_answer(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.get("/api/nothing-here")
    assert resp.status == 404  # the sandbox's own answer, relayed, not cached
    assert "X-Cache" not in resp.headers


async def test_api_keys_guard_api_routes_only(start_gateway):
    from gateway.config import parse_api_keys

    gw = await start_gateway(api_keys=parse_api_keys("ops:k-ops,ci:k-ci"))
    lot = f"/api/Lot/{next(iter(gw.sandbox.data.lots))}"
    await assert_problem(await gw.client.get(lot), 401)
    resp = await gw.client.get(lot, headers={"Authorization": "Bearer wrong"})
    await assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await assert_problem(await gw.client.get(lot, headers={"X-API-Key": "k-op"}), 401)
    assert (await gw.client.get(lot, headers={"Authorization": "Bearer k-ops"})).status == 200
    assert (await gw.client.get(lot, headers={"X-API-Key": "k-ci"})).status == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert (await gw.client.get(open_path)).status == 200


async def test_cold_key_with_upstream_down_fails_fast_with_503(start_gateway):
    gw = await start_gateway(upstream={"retries": 2})
    gw.sandbox.configure(down=True)
    resp, took = await timed(gw.client.get(f"/api/Lot/{next(iter(gw.sandbox.data.lots))}"))
    await assert_problem(resp, 503)
    assert gw.calls("GET /api/Lot/{id}") == 3  # first try + 2 retries
    assert took < 2.0


async def upstream_answering(aiohttp_server, state: dict[str, Any]) -> str:
    """A stand-in upstream whose /api answers have status `state["status"]` (counted in
    `state["calls"]`); its identity endpoint grants any token. Its base URL."""

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer",
                                  "expires_in": 3600})

    async def api(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["status"] == 200:
            return web.json_response({"id": int(request.match_info["id"])})
        return web.json_response({"status": state["status"], "title": "Upstream trouble"},
                                 status=state["status"])

    app = web.Application()
    app.router.add_post("/connect/token", token)
    app.router.add_get("/api/Lot/{id}", api)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(("status", "tries"), [(500, 1), (502, 2)])  # 502 is retried
async def test_upstream_errors_map_to_502(aiohttp_server, aiohttp_client, status, tries):
    state = {"status": status, "calls": 0}
    url = await upstream_answering(aiohttp_server, state)
    app = create_app(aimed_at(Config().replace(upstream={"retries": 1}), url))
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    await assert_problem(await client.get("/api/Lot/7"), 502)
    assert state["calls"] == tries
    state["status"] = 200
    assert await (await client.get("/api/Lot/7")).json() == {"id": 7}  # failure not cached


async def test_upstream_503s_are_503_and_not_cached(start_gateway):
    gw = await start_gateway(upstream={"retries": 1})
    gw.sandbox.configure(fail_writes=None, error_rate=1.0)
    lot_id = next(iter(gw.sandbox.data.lots))
    await assert_problem(await gw.client.get(f"/api/Lot/{lot_id}"), 503)
    assert gw.calls("GET /api/Lot/{id}") == 2  # first try + 1 retry
    gw.sandbox.configure(error_rate=0.0)
    assert (await gw.client.get(f"/api/Lot/{lot_id}")).status == 200  # failure not cached


async def test_hanging_upstream_is_a_504_within_timeout_and_retries(start_gateway):
    gw = await start_gateway(upstream={"timeout_s": 0.4, "retries": 1})
    gw.sandbox.configure(hang=True)
    resp, took = await timed(gw.client.get(f"/api/Catalog/{next(iter(gw.sandbox.data.catalogs))}"))
    await assert_problem(resp, 504)
    assert took <= 0.4 * 2 + 1.0


async def test_event_page_with_lots_failing_still_returns_the_rest(start_gateway):
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25)[0]
    await gw.get_json(f"/api/Catalog/{catalog_id}")  # catalog cached; now lots fail
    first_ids = gw.sandbox.data.lot_ids_of_catalog(catalog_id)[:3]
    await gw.get_json("/api/v1/lots?ids=" + ",".join(map(str, first_ids)))
    gw.sandbox.configure(down=True)
    page = await gw.get_json(f"/api/v1/catalogs/{catalog_id}/lots?page_size=10")
    assert [lot["id"] for lot in page["items"]] == first_ids
    assert len(page["errors"]) == 7 and {e["status"] for e in page["errors"]} == {503}
