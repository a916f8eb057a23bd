"""Bad input and upstream trouble: always problem+json with the right status, never a 500,
never a hang."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.embedded import aimed_at

from gwtesting import free_port, timed

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

    ops, ci = "k-ops-0123456789", "k-ci-0123456789a"
    gw = await start_gateway(api_keys=parse_api_keys(f"ops:{ops},ci:{ci}"))
    lot = f"/api/Lot/{next(iter(gw.sandbox.data.lots))}"
    await assert_problem(await gw.client.get(lot), 401)
    resp = await gw.client.get(lot, headers={"Authorization": "Bearer wrong"})
    await assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await assert_problem(await gw.client.get(lot, headers={"X-API-Key": "k-op"}), 401)
    assert (await gw.client.get(lot, headers={"Authorization": f"Bearer {ops}"})).status == 200
    assert (await gw.client.get(lot, headers={"X-API-Key": ci})).status == 200
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


# --- hardened edges ----------------------------------------------------------------------------


async def test_health_shows_no_pid(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_not_ready_says_why_in_the_log_not_in_the_answer(aiohttp_client, caplog):
    nowhere = f"http://127.0.0.1:{free_port()}"  # no identity server listens there
    app = create_app(aimed_at(Config(), nowhere))
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    with caplog.at_level("WARNING", logger="gateway.api"):
        resp = await client.get("/readyz")
    body = await assert_problem(resp, 503)
    assert body["detail"] == "upstream token not obtainable"
    assert "unreachable" in caplog.text  # the exception's text went to the log only
    assert "127.0.0.1" not in await resp.text() and "connect" not in body["detail"].lower()


async def test_an_upstream_400_is_not_echoed(aiohttp_server, aiohttp_client):
    state = {"status": 400, "calls": 0}
    url = await upstream_answering(aiohttp_server, state)
    client = await aiohttp_client(create_app(aimed_at(Config(), url)),
                                  server_kwargs={"host": "127.0.0.1"})
    body = await assert_problem(await client.get("/api/Lot/7"), 400)
    assert "Upstream trouble" not in body["detail"] and state["calls"] == 1


async def exchange(gw, *parts: bytes, pause_s: float = 0.3,
                   timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send `parts` over one raw connection, pausing between them (each part its own TCP
    segment); the status and body of the one answer."""
    reader, writer = await asyncio.open_connection(gw.client.host, gw.client.port)
    try:
        for n, part in enumerate(parts):
            if n:
                await asyncio.sleep(pause_s)
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:  # answered and closed before the rest was sent
                break
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


def request_head(gw, path: str, method: str = "POST", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gw.client.port}",
             "Content-Type: application/json", "Connection: close",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_body_split_across_segments_is_read_whole(start_gateway):
    gw = await start_gateway()
    lot_id = next(iter(gw.sandbox.data.lots))
    body = json.dumps({"qty": 5, "description": "split " * 20}).encode()
    head = request_head(gw, f"/api/v1/lots/{lot_id}/override", Content_Length=str(len(body)))
    status, answer = await exchange(gw, head + body[:10], body[10:40], body[40:])
    assert status == 200, answer
    assert json.loads(answer)["overridenData"][0]["qty"] == 5


@pytest.mark.parametrize(("method", "path", "limit"), [
    ("POST", "/api/v1/lots/{id}/override", 64 * 1024),
    ("PUT", "/api/Lot/{id}", 1024 * 1024),  # a drop-in write
])
async def test_an_oversized_chunked_body_is_413(start_gateway, method, path, limit):
    gw = await start_gateway()
    lot_id = next(iter(gw.sandbox.data.lots))
    head = request_head(gw, path.format(id=lot_id), method, Transfer_Encoding="chunked")

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    size = 64 * 1024
    filler = [chunk(b" " * size) for _ in range(limit // size + 1)]  # past the limit
    status, answer = await exchange(gw, head + chunk(b"{"), *filler,
                                    chunk(b"}") + b"0\r\n\r\n", pause_s=0.02)
    assert status == 413, answer
    assert gw.calls("PUT /api/Lot/{id}") == 0


async def test_an_answer_raised_as_an_exception_carries_the_request_id(aiohttp_client):
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/elsewhere")

    app = create_app(aimed_at(Config(), f"http://127.0.0.1:{free_port()}"))
    app.router.add_get("/moved", moved)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    resp = await client.get("/moved", headers={"X-Request-ID": "moved-1"},
                            allow_redirects=False)
    assert resp.status == 303 and resp.headers["X-Request-ID"] == "moved-1"


async def test_a_client_stalling_its_body_is_cut_off(start_gateway):
    gw = await start_gateway(server={"read_timeout_s": 0.5})
    lot_id = next(iter(gw.sandbox.data.lots))
    head = request_head(gw, f"/api/v1/lots/{lot_id}/override", Content_Length="40")
    (status, answer), took = await timed(exchange(gw, head + b'{"qty": 1', timeout_s=10))
    assert status == 408, answer
    assert json.loads(answer)["title"] == "Request Timeout"
    assert 0.4 < took < 5.0
    assert gw.calls("PUT /api/Lot/{id}") == 0
