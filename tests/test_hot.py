"""The hot path (gateway/hot.py) answers warm GETs before routing, and only those, exactly
as the full path would: same status, body and headers, the same metrics, access line and
rate limit, one token of the caller's bucket per request, never an answer older than a save.

Each comparison runs the same requests against two gateways in front of the same sandbox:
one with the hot path in front (as `serve` runs it), one without."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.test_utils import make_mocked_request

from gateway import admin
from gateway.api import ROUTES
from gateway.app import create_app
from gateway.config import Config, parse_api_keys
from gateway.wire import Cached, Fixed, Wire

from gwtesting import free_port

KEY = "ops-0123456789abcdef"
KEYS = parse_api_keys(f"ops:{KEY}")
# What may differ between two answers to the same request: when, and the request's id.
UNCOMPARED = {"Date", "X-Request-ID"}


def a_page(gw: Any) -> tuple[int, list[int]]:
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(30)[0]
    return catalog_id, gw.sandbox.data.lot_ids_of_catalog(catalog_id)


async def answer(gw: Any, path: str, headers: dict[str, str] | None = None,
                 method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    resp = await gw.client.request(method, path, headers=headers or {},
                                   auto_decompress=False)
    body = await resp.read()
    shown = {k: v for k, v in resp.headers.items() if k not in UNCOMPARED}
    if "Cache-Status" in shown:  # seconds left, to the second: the two gateways were warmed
        # moments apart (and over 60 s apart from any other reading in these tests).
        shown["Cache-Status"] = re.sub(r"ttl=(\d+)", lambda m: f"ttl~{int(m[1]) // 60}",
                                       shown["Cache-Status"])
    assert resp.headers.get("X-Request-ID"), path  # both paths give every answer its id
    return resp.status, shown, body


async def both(start_gateway: Any, **sections: Any) -> tuple[Any, Any]:
    hot = await start_gateway(**sections)
    full = await start_gateway(beside=hot, with_hot_path=False, **sections)
    assert hot.hot is not None and full.hot is None
    return hot, full


async def test_warm_answers_are_the_full_paths_byte_for_byte(start_gateway):
    hot, full = await both(start_gateway, api_keys=KEYS)
    catalog_id, lot_ids = a_page(hot)
    key = {"X-API-Key": KEY}
    lot, page = f"/api/Lot/{lot_ids[0]}", f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"
    batch = f"/api/v1/lots?ids={lot_ids[0]},{lot_ids[1]}"
    for gw in (hot, full):  # warm: the lot, the page and batch (kept once built from hits)
        for path in (lot, page, page, batch, batch):
            assert (await gw.client.get(path, headers=key)).status == 200
    etag = (await hot.client.get(lot, headers=key)).headers["ETag"]
    requests = [
        (lot, key),
        (lot, {**key, "Accept-Encoding": "br"}),  # below 1 KB: never compressed
        (lot, {**key, "If-None-Match": etag}),  # 304
        (lot, {**key, "If-None-Match": '"other"'}),
        (page, key),
        (page, {**key, "Accept-Encoding": "br"}),
        (page, {**key, "Accept-Encoding": "gzip, br;q=0.5"}),
        (page, {**key, "Accept-Encoding": "identity"}),
        (f"/api/Catalog/{catalog_id}", key),
        (batch, key),
    ]
    before = hot.hot.answered
    for _ in range(2):  # made by the route, then kept: each told apart by what was asked
        for path, headers in requests:
            expected = await answer(full, path, headers)
            assert await answer(hot, path, headers) == expected, (path, headers)
            assert expected[1]["X-Cache"] == "HIT"
    assert hot.hot.answered - before == 2 * len(requests)  # each answered by the hot path
    assert hot.hot.kept == len(requests)  # one kept answer per distinct request


async def test_what_it_cannot_answer_goes_the_full_way_with_the_same_outcome(start_gateway):
    hot, full = await both(start_gateway, api_keys=KEYS,
                           auth={"upstream_tokens": "read", "issuer": "http://127.0.0.1:9"})
    catalog_id, lot_ids = a_page(hot)
    key = {"X-API-Key": KEY}
    lot = f"/api/Lot/{lot_ids[0]}"
    for gw in (hot, full):
        assert (await gw.client.get(lot, headers=key)).status == 200
    requests = [
        ("GET", lot, {"X-API-Key": "wrong-0123456789abcdef"}),  # 401, refused here
        ("GET", lot, {}),  # 401: no key
        ("GET", lot, {"Authorization": "Bearer a.b.c"}),  # a token to verify: full path
        ("GET", "/api/Lot/abc", key),  # 400: the handler's own refusal
        ("GET", "/api/Lot/00012", key),
        ("GET", "/api/Lot/get-overrides", key),  # another route's path
        ("HEAD", lot, key),
        ("GET", lot + "/", key),
        ("GET", f"/api/Lot%2F{lot_ids[0]}", key),  # one segment to the router: relayed
        ("GET", f"/api/v1/catalogs/{catalog_id}/lots?page_size=0", key),  # 400
        ("GET", f"/api/v1/catalogs/{catalog_id}/lots?page=2&page_size=25", key),  # cold
        ("GET", f"/api/Lot/{lot_ids[1]}", key),  # cold: a miss, fetched by the full path
    ]
    for method, path, headers in requests:
        expected = await answer(full, path, headers, method)
        assert await answer(hot, path, headers, method) == expected, (method, path)
    assert hot.hot.answered == 2  # the two refusals were its own answers; the rest went on


async def test_metrics_and_access_lines_count_hot_answers_as_the_full_path_does(
    start_gateway,
):
    hot, full = await both(start_gateway)
    _, lot_ids = a_page(hot)
    path = f"/api/Lot/{lot_ids[0]}"
    for gw in (hot, full):
        for _ in range(5):
            assert (await gw.client.get(path)).status == 200

    def counted(text: str) -> list[str]:
        wanted = ('gateway_http_requests_total{method="GET",route="/api/Lot/{id}"',
                  'gateway_http_request_seconds_count{route="/api/Lot/{id}"',
                  'gateway_cache_lookups_total{kind="Lot"')
        return sorted(line for line in text.splitlines() if line.startswith(wanted))

    hot_text = await (await hot.client.get("/metrics")).text()
    assert counted(hot_text) == counted(await (await full.client.get("/metrics")).text())
    assert 'result="hit"} 4.0' in hot_text and 'status="200"} 5.0' in hot_text
    assert hot.hot.answered == 4


async def test_a_request_takes_one_token_whichever_way_it_goes(start_gateway):
    # Burst 3, next token in 100 s: a cold read (admitted here, fetched by the full path)
    # and two warm ones take the three; the fourth is refused, by the hot path, as the
    # full path refuses it.
    limits = {"requests_per_s": 0.01, "burst": 3}
    hot, full = await both(start_gateway, limits=limits)
    _, lot_ids = a_page(hot)
    path = f"/api/Lot/{lot_ids[0]}"
    for gw in (hot, full):
        seen = [(await gw.client.get(path)).headers.get("X-Cache") for _ in range(3)]
        assert seen == ["MISS", "HIT", "HIT"], seen
    expected = await answer(full, path)
    assert expected[0] == 429 and "Retry-After" in expected[1]
    assert await answer(hot, path) == expected
    metrics = await (await hot.client.get("/metrics")).text()
    assert 'gateway_rate_limited_total{caller_kind="address"} 1.0' in metrics


async def test_a_save_is_never_followed_by_an_older_hot_answer(start_gateway):
    gw = await start_gateway()
    catalog_id, lot_ids = a_page(gw)
    lot, page = f"/api/Lot/{lot_ids[0]}", f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"
    for path in (lot, page, page):
        assert (await gw.client.get(path)).status == 200
    before = gw.hot.answered
    for qty in (7, 8):  # the upstream spells it "overridenData"
        resp = await gw.client.post(f"/api/v1/lots/{lot_ids[0]}/override", json={"qty": qty})
        assert resp.status == 200, await resp.text()
        for path in (lot, page, page, lot):
            body = await gw.get_json(path)
            first = body if path == lot else body["items"][0]
            assert first["overridenData"][0]["qty"] == qty, path
    assert gw.hot.answered > before  # the reads after each save's first were its own


async def raw_exchange(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send `request` as bytes, read one answer: its status line, headers (each name once)
    and body (by its Content-Length), as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].split(b"\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(": ")
            assert name not in headers, f"{name} twice"
            headers[name] = value
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        return status, headers, body
    finally:
        writer.close()


async def test_an_answer_written_as_bytes_says_what_aiohttp_would(start_gateway):
    """A warm hit is written from bytes kept with its form (gateway/wire.py); HTTP/1.0 and
    `Connection: close` get aiohttp's own response. Either way the status line, every
    header and the body are the full path's, read off the socket."""
    hot, full = await both(start_gateway)
    catalog_id, lot_ids = a_page(hot)
    lot, page = f"/api/Lot/{lot_ids[0]}", f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"
    for gw in (hot, full):
        for path in (lot, page, page):
            assert (await gw.client.get(path)).status == 200
    etag = (await hot.client.get(lot)).headers["ETag"]
    cases = [
        ("1.1", lot, ""),
        ("1.1", lot, f"If-None-Match: {etag}\r\n"),
        ("1.1", page, "Accept-Encoding: gzip\r\n"),
        ("1.1", page, "Connection: close\r\n"),
        ("1.0", lot, ""),
        ("1.0", page, "Connection: keep-alive\r\n"),
    ]
    before = hot.hot.answered
    for version, path, extra in cases:
        request = (f"GET {path} HTTP/{version}\r\nHost: localhost\r\n{extra}\r\n").encode()
        got = [await raw_exchange(gw.client.port, request) for gw in (hot, full)]
        for _, headers, _ in got:
            assert headers.pop("X-Request-ID") and headers.pop("Date").endswith(" GMT")
            headers["Cache-Status"] = re.sub(r"ttl=(\d+)", lambda m: f"ttl~{int(m[1]) // 60}",
                                             headers["Cache-Status"])
        assert got[0] == got[1], (version, path, extra)
        assert got[0][0] == (b"HTTP/%s 304 Not Modified" % version.encode() if "None" in extra
                             else b"HTTP/%s 200 OK" % version.encode())
    assert hot.hot.answered - before == len(cases)


async def test_an_answer_in_bytes_writes_once_and_tells_a_logger_what_it_wrote():
    """A Wire writes its whole answer in one call of the request's payload writer; and
    aiohttp's own access logger (should a server run with it) reads the answer's size and
    headers: those of the bytes written."""
    written: list[bytes] = []

    class Writer:
        async def write_eof(self, data: bytes = b"") -> None:
            written.append(data)

    body = b'{"id":1}'
    fixed = Fixed(200, {"ETag": '"t"', "X-Cache": "HIT", "Content-Type": "application/json"},
                  body)
    request = make_mocked_request("GET", "/api/Lot/1", version=HttpVersion11, writer=Writer())
    wire = Cached(fixed, 3.0, 600.0).wire(request, "rid-1")
    assert isinstance(wire, Wire) and wire.status == 200
    await wire.prepare(request)
    await wire.write_eof()
    assert len(written) == 1 and written[0].startswith(fixed.head)
    assert written[0].endswith(b"\r\n\r\n" + body) and wire.body_length == len(written[0])
    assert wire.headers["Content-Length"] == "8" and wire.headers["X-Request-ID"] == "rid-1"
    assert wire.headers["Cache-Status"] == "catalog-gateway; hit; ttl=597"


async def test_a_kept_answer_ends_with_its_freshness(start_gateway):
    """A kept answer is handed out only while the route would give that same answer: once
    its entry expires the route is asked again (a miss here: refresh ahead is off)."""
    gw = await start_gateway(cache={"ttl_s": 0.3, "refresh_ahead": 1.0},
                             prefetch={"enabled": False})
    _, lot_ids = a_page(gw)
    path = f"/api/Lot/{lot_ids[0]}"
    seen = [(await gw.client.get(path)).headers["X-Cache"] for _ in range(3)]
    assert seen == ["MISS", "HIT", "HIT"] and gw.hot.kept == 1
    await asyncio.sleep(0.4)
    assert (await gw.client.get(path)).headers["X-Cache"] != "HIT"


async def test_what_is_kept_is_bounded(start_gateway):
    gw = await start_gateway()
    _, lot_ids = a_page(gw)
    path = f"/api/Lot/{lot_ids[0]}"
    long_ask = {"Accept-Encoding": "x-unknown, " * 100 + "gzip"}  # 1.1 KB of what was asked
    for _ in range(3):
        assert (await gw.client.get(path)).status == 200
    before = gw.hot.answered
    for _ in range(3):
        assert (await gw.client.get(path, headers=long_ask)).headers["X-Cache"] == "HIT"
    assert gw.hot.answered - before == 3
    assert gw.hot.kept == 1  # the long one was answered each time, never kept


def test_every_warm_route_is_the_one_the_router_picks_for_its_paths():
    """The hot path finds its routes by their templates, without the router: for a path of
    each, the router must pick that same route (no other registered before it matches)."""
    app = create_app(Config())
    warm = [r for r in ROUTES if r.warm is not None]
    assert {"/api/Lot/{id}", "/api/v1/catalogs/{id}/lots", "/api/v1/lots"} <= {
        r.path for r in warm}

    async def resolve(path: str) -> web.AbstractRoute:
        return (await app.router.resolve(make_mocked_request("GET", path))).route

    for route in warm:
        path = route.path.replace("{id}", "12345")
        found = asyncio.run(resolve(path))
        assert found.resource is not None and found.resource.canonical == route.path, path


async def test_serve_puts_the_hot_path_in_front(tmp_path):
    """As `catalog-gateway serve` starts it (gateway/admin.py), on a port of its own."""
    port = free_port()
    config = Config().replace(
        server={"host": "127.0.0.1", "port": port}, audit={"path": str(tmp_path / "audit")},
        sandbox={"latency_ms": 0, "jitter_ms": 0}, prefetch={"enabled": False})
    runner, hot_path = await admin.started(create_app(config), config)
    try:
        async with aiohttp.ClientSession() as http:
            seen = []
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{port}/api/Lot/10001") as resp:
                    assert resp.status == 200, await resp.text()
                    seen.append(resp.headers["X-Cache"])
        assert seen == ["MISS", "HIT", "HIT"]
        assert hot_path.answered == 2
    finally:
        await runner.cleanup()
