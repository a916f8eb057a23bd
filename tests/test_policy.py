"""Browser-facing rules (gateway/policy.py): Origin (403), JSON writes (415), loopback Host
names when open (421), and trusted proxies (X-Forwarded-For, X-Forwarded-Proto).

Everything goes over real sockets: the whole gateway in front of its sandbox, whose write
count says whether a refused request reached the upstream; and, for the client address
alone (which no answer of the gateway shows), a small app made here that runs the real
middleware and answers with what `client_address` and `is_https` make of the request.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway import api
from gateway.config import Config, parse_api_keys
from gateway.policy import client_address, is_https, policy_middleware

from gwtesting import ROOT

PROBLEM = "application/problem+json"
PUT = "PUT /api/Lot/{id}"
EVIL = "https://evil.example"
WRITER = parse_api_keys("ops:0123456789abcdef:write")
WRITER_KEY = {"X-API-Key": "0123456789abcdef"}


def a_lot(gw: Any) -> int:
    return next(iter(gw.sandbox.data.lots))


def port_of(gw: Any) -> int:
    return gw.client.server.port


def upstream_calls(gw: Any) -> int:
    return sum(gw.sandbox.calls.values())


async def override(gw: Any, lot_id: int, qty: int, **kw: Any) -> aiohttp.ClientResponse:
    return await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": qty}, **kw)


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith(PROBLEM), resp.headers
    return json.loads(text)


# --- Origin: cross-site writes ---------------------------------------------------------------


async def test_a_cross_origin_write_is_403_and_reaches_no_upstream(start_gateway) -> None:
    gw = await start_gateway()
    lot_id = a_lot(gw)
    body = await problem(await override(gw, lot_id, 0, headers={"Origin": EVIL}), 403)
    assert EVIL in body["detail"]
    await problem(await override(gw, lot_id, 0, headers={"Origin": "null"}), 403)
    # The drop-in writes too: the same rule for every method but GET, HEAD and OPTIONS.
    resp = await gw.client.put(f"/api/Lot/{lot_id}", json={}, headers={"Origin": EVIL})
    await problem(resp, 403)
    resp = await gw.client.delete(f"/api/Lot/{lot_id}", headers={"Origin": EVIL})
    await problem(resp, 403)
    assert upstream_calls(gw) == 0
    # Reads are not writes: a page of any origin may ask (the browser keeps the answer
    # from it unless CORS says otherwise, and the gateway never says so).
    resp = await gw.client.get(f"/api/v1/lots?ids={lot_id}", headers={"Origin": EVIL})
    assert resp.status == 200, await resp.text()


async def test_the_gateways_own_origin_and_allowed_origins_may_write(start_gateway) -> None:
    gw = await start_gateway(server={"allowed_origins": ["https://ops.example"]})
    lot_id, port = a_lot(gw), port_of(gw)
    writes = [
        {"Origin": "https://ops.example"},
        {"Origin": "HTTPS://OPS.EXAMPLE:443"},  # as listed, spelt otherwise
        {"Origin": f"http://127.0.0.1:{port}"},  # its own: scheme and Host of the request
        {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
        {},  # no Origin: not a browser's cross-origin request
    ]
    for qty, headers in enumerate(writes, start=1):
        resp = await override(gw, lot_id, qty, headers=headers)
        assert resp.status == 200, (headers, await resp.text())
    assert gw.calls(PUT) == len(writes)
    # Close to its own is still foreign: another port, another scheme, another host.
    for origin in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}",
                   f"http://localhost:{port}", "https://ops.example.evil.example"):
        await problem(await override(gw, lot_id, 99, headers={"Origin": origin}), 403)
    assert gw.calls(PUT) == len(writes)


async def test_a_refused_origin_is_quoted_short_and_escaped(start_gateway) -> None:
    gw = await start_gateway()
    long = "https://" + "a" * 5000 + ".example"
    body = await problem(await override(gw, a_lot(gw), 1, headers={"Origin": long}), 403)
    assert len(body["detail"]) < 300 and "cut short" in body["detail"]
    odd = "https://\u00e9vil.example\u2028"  # shown escaped, not as is
    body = await problem(await override(gw, a_lot(gw), 1, headers={"Origin": odd}), 403)
    assert "\\xe9vil.example\\u2028" in body["detail"] and odd not in body["detail"]
    assert gw.calls(PUT) == 0


# --- JSON writes ------------------------------------------------------------------------------


async def test_a_write_under_api_whose_body_is_not_json_is_415(start_gateway) -> None:
    gw = await start_gateway()
    lot_id = a_lot(gw)
    url = f"/api/v1/lots/{lot_id}/override"
    # What a page can send cross-site without a preflight: text/plain, a form.
    resp = await gw.client.post(url, data=b'{"qty": 0}', headers={"Content-Type": "text/plain"})
    body = await problem(resp, 415)
    assert "text/plain" in body["detail"]
    resp = await gw.client.post(url, data={"qty": "0"})  # application/x-www-form-urlencoded
    await problem(resp, 415)
    resp = await gw.client.put(f"/api/Lot/{lot_id}", data=b"{}",
                               headers={"Content-Type": "text/plain;charset=UTF-8"})
    await problem(resp, 415)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"qty": 0}'

    resp = await gw.client.post(url, data=chunks(), headers={"Content-Type": "text/plain"})
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await problem(resp, 415)
    assert upstream_calls(gw) == 0


async def test_json_with_parameters_or_a_json_suffix_is_json(start_gateway) -> None:
    gw = await start_gateway()
    url = f"/api/v1/lots/{a_lot(gw)}/override"
    for qty, kind in enumerate(["application/json; charset=utf-8", "Application/JSON",
                                "application/merge-patch+json", "text/json"], start=1):
        resp = await gw.client.post(url, data=json.dumps({"qty": qty}).encode(),
                                    headers={"Content-Type": kind})
        assert resp.status == 200, (kind, await resp.text())
    assert gw.calls(PUT) == 4
    # No body, no media type to check: the route's own rule answers (the body is required).
    resp = await gw.client.post(url, data=b"", headers={"Content-Type": "text/plain"})
    await problem(resp, 400)


async def test_ui_form_posts_are_not_held_to_the_json_rule(start_gateway) -> None:
    gw = await start_gateway()
    page = await gw.client.get("/")
    token = re.search(r'"X-CSRF-Token": "([^"]+)"', await page.text())
    assert token, "the page carries no CSRF token"
    lot_id = a_lot(gw)
    resp = await gw.client.post(f"/ui/lots/{lot_id}/override",
                                data={"qty": "7", "csrf_token": token.group(1)})
    assert resp.status == 200, await resp.text()
    assert gw.calls(PUT) == 1


# --- Host: DNS rebinding ------------------------------------------------------------------------


async def test_open_it_serves_only_loopback_host_names(start_gateway) -> None:
    gw = await start_gateway()
    lot_id, port = a_lot(gw), port_of(gw)
    for path in (f"/api/v1/lots?ids={lot_id}", "/", "/healthz"):
        for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}",
                     "127.0.0.1.evil.example", f"[::2]:{port}"):
            body = await problem(await gw.client.get(path, headers={"Host": host}), 421)
            assert "loopback" in body["detail"], body
    resp = await override(gw, lot_id, 1, headers={"Host": "evil.example"})
    await problem(resp, 421)
    assert upstream_calls(gw) == 0
    for host in (f"localhost:{port}", "localhost", f"LOCALHOST:{port}", "127.0.0.1",
                 f"127.0.0.1:{port}", f"127.8.9.10:{port}", f"[::1]:{port}"):
        resp = await gw.client.get(f"/api/v1/lots?ids={lot_id}", headers={"Host": host})
        assert resp.status == 200, (host, await resp.text())
        assert (await gw.client.get("/", headers={"Host": host})).status == 200, host


async def test_with_keys_any_host_is_served_and_origins_still_count(start_gateway) -> None:
    gw = await start_gateway(api_keys=WRITER)
    lot_id = a_lot(gw)
    resp = await gw.client.get(f"/api/v1/lots?ids={lot_id}",
                               headers={"Host": "gateway.example", **WRITER_KEY})
    assert resp.status == 200, await resp.text()
    resp = await override(gw, lot_id, 5, headers={"Host": "gateway.example", **WRITER_KEY})
    assert resp.status == 200, await resp.text()
    resp = await override(gw, lot_id, 6, headers={
        "Host": "gateway.example", "Origin": "http://gateway.example", **WRITER_KEY})
    assert resp.status == 200, await resp.text()
    resp = await override(gw, lot_id, 7, headers={"Origin": EVIL, **WRITER_KEY})
    await problem(resp, 403)
    assert gw.calls(PUT) == 2


# --- trusted proxies, through the gateway -------------------------------------------------------


def cookie_is_secure(resp: aiohttp.ClientResponse) -> bool:
    morsel = resp.cookies["gw_session"]
    return bool(morsel["secure"])


async def test_session_cookies_are_secure_behind_a_trusted_tls_proxy(start_gateway) -> None:
    https = {"X-Forwarded-Proto": "https"}
    behind = await start_gateway(server={"trusted_proxies": ["127.0.0.1/32"]})
    assert cookie_is_secure(await behind.client.get("/", headers=https))
    behind.client.session.cookie_jar.clear()
    assert not cookie_is_secure(await behind.client.get("/"))
    behind.client.session.cookie_jar.clear()
    assert not cookie_is_secure(await behind.client.get(
        "/", headers={"X-Forwarded-Proto": "http"}))
    # From a peer not listed, the header is anyone's claim: ignored.
    direct = await start_gateway(server={"trusted_proxies": ["10.0.0.0/8"]})
    assert not cookie_is_secure(await direct.client.get("/", headers=https))


async def test_behind_a_trusted_tls_proxy_its_own_origin_is_https(start_gateway) -> None:
    behind = await start_gateway(server={"trusted_proxies": ["127.0.0.1/32"]})
    lot_id, port = a_lot(behind), port_of(behind)
    https = {"X-Forwarded-Proto": "https"}
    resp = await override(behind, lot_id, 1,
                          headers={"Origin": f"https://127.0.0.1:{port}", **https})
    assert resp.status == 200, await resp.text()
    resp = await override(behind, lot_id, 2,
                          headers={"Origin": f"http://127.0.0.1:{port}", **https})
    await problem(resp, 403)
    direct = await start_gateway()
    resp = await override(direct, lot_id, 3,
                          headers={"Origin": f"https://127.0.0.1:{port_of(direct)}", **https})
    await problem(resp, 403)


# --- trusted proxies, as the middleware sees them --------------------------------------------


@pytest.fixture
async def whoami(aiohttp_client) -> Any:
    """whoami(trusted_proxies) -> a client of an app with the real policy middleware whose
    one route answers {"client": client_address(...), "https": is_https(...)}."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"client": client_address(request),
                                  "https": is_https(request)})

    async def start(trusted_proxies: list[str]) -> Any:
        config = Config().replace(server={"trusted_proxies": trusted_proxies})
        app = web.Application(middlewares=[api.problem_middleware, policy_middleware(config)])
        app.router.add_get("/whoami", answer)
        return await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})

    return start


async def ask(client: Any, headers: list[tuple[str, str]]) -> dict[str, Any]:
    resp = await client.get("/whoami", headers=CIMultiDict(headers))
    assert resp.status == 200, await resp.text()
    return await resp.json()


XFF = "X-Forwarded-For"


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(whoami) -> None:
    behind = await whoami(["127.0.0.1/32", "10.0.0.0/8"])
    cases = [
        ([], "127.0.0.1"),
        ([(XFF, "198.51.100.9")], "198.51.100.9"),
        # The right-most address that is not a trusted proxy; the left is the client's say.
        ([(XFF, "203.0.113.66, 198.51.100.9, 10.1.2.3")], "198.51.100.9"),
        ([(XFF, "203.0.113.66"), (XFF, "198.51.100.9,10.1.2.3")], "198.51.100.9"),
        ([(XFF, "198.51.100.9:5123")], "198.51.100.9"),
        ([(XFF, "[2001:db8::7]:443")], "2001:db8::7"),
        ([(XFF, "2001:DB8::7")], "2001:db8::7"),
        ([(XFF, "10.0.0.1, 10.0.0.2")], "10.0.0.1"),  # proxies all the way: the farthest
        # Malformed: the walk stops at the last address a trusted proxy vouched for.
        ([(XFF, "not-an-address")], "127.0.0.1"),
        ([(XFF, "198.51.100.9, junk, 10.1.2.3")], "10.1.2.3"),
        ([(XFF, "")], "127.0.0.1"),
    ]
    for headers, client in cases:
        assert (await ask(behind, headers))["client"] == client, headers
    direct = await whoami(["10.0.0.0/8"])
    for headers, _ in cases:
        assert (await ask(direct, headers))["client"] == "127.0.0.1", headers
    nobody = await whoami([])
    assert (await ask(nobody, [(XFF, "198.51.100.9")]))["client"] == "127.0.0.1"


async def test_x_forwarded_proto_is_believed_only_from_a_trusted_proxy(whoami) -> None:
    behind = await whoami(["127.0.0.1/32"])
    proto = "X-Forwarded-Proto"
    assert (await ask(behind, [(proto, "https")]))["https"] is True
    assert (await ask(behind, [(proto, "HTTPS")]))["https"] is True
    assert (await ask(behind, [(proto, "http, https")]))["https"] is True  # the last says
    assert (await ask(behind, [(proto, "https, http")]))["https"] is False
    assert (await ask(behind, [(proto, "http")]))["https"] is False
    assert (await ask(behind, []))["https"] is False
    direct = await whoami(["10.0.0.0/8"])
    assert (await ask(direct, [(proto, "https")]))["https"] is False


def test_nothing_else_reads_the_forwarding_headers() -> None:
    """X-Forwarded-For and -Proto mean something only from a trusted proxy, a rule that
    lives in one place: no other module of the gateway or the UI reads them."""
    readers = sorted(
        str(path.relative_to(ROOT))
        for package in ("gateway", "ui")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"x-forwarded", path.read_text(), re.IGNORECASE)
        and path.relative_to(ROOT).as_posix() not in ("gateway/policy.py", "gateway/config.py")
    )
    assert readers == []
