"""Key scopes on /api/* (gateway/auth.py): a read key reads and never writes, whichever write
path it tries; credentials that are not even text are a 401, never a 500; keys too short or
shared refuse start-up.

The gateway runs in live mode against a sandbox of its own (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_api_keys
from gateway.state import METRICS

from gwtesting import ROOT, env

PROBLEM = "application/problem+json"
READ_KEY, WRITE_KEY = "ci-read-key-0123456789", "ops-write-key-0123456789"
KEYS = parse_api_keys(f"ci:{READ_KEY},ops:{WRITE_KEY}:write")


def upstream_requests(gw: Any) -> float:
    """Every request the gateway has sent upstream, by its own count (any path)."""
    return sum(sample.value for metric in gw.app[METRICS].registry.collect()
               if metric.name == "gateway_upstream_requests"
               for sample in metric.samples if sample.name.endswith("_total"))


def upstream_writes(gw: Any) -> int:
    """Writes the sandbox received (get-overrides is a read sent as POST)."""
    return sum(n for route, n in gw.sandbox.calls.items()
               if not route.startswith("GET ") and route != "POST /connect/token"
               and route != "POST /api/Lot/get-overrides")


def writes(gw: Any) -> list[tuple[str, str, Any]]:
    """One request of every kind of write the gateway relays, each a valid one."""
    data = gw.sandbox.data
    catalog_id = data.catalog_ids_with_lots(5, 25)[0]
    lot_id = data.lot_ids_of_catalog(catalog_id)[0]
    seller_id = next(iter(data.sellers))
    return [
        ("POST", f"/api/v1/lots/{lot_id}/override", {"qty": 3}),
        ("PUT", f"/api/Lot/{lot_id}", {"catalogs": [], "imageLinks": []}),
        ("DELETE", f"/api/Lot/{lot_id}", None),
        ("POST", "/api/Lot", {"customerItemId": "X-1", "catalogs": []}),
        ("POST", "/api/Seller", {"name": "New", "customerDisplayId": 999, "isActive": True}),
        ("PUT", f"/api/Catalog/{catalog_id}", {"title": "Renamed"}),
        ("DELETE", f"/api/Seller/{seller_id}", None),
        ("POST", "/api/Bulk/insert", {"catalogs": []}),
        ("POST", "/api/Platform", {"name": "x"}),  # a path the document does not name
        ("DELETE", "/api/Platform/7", None),
    ]


async def test_a_read_key_reads_but_every_write_is_403_and_reaches_no_upstream(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    read = {"X-API-Key": READ_KEY}
    lot_id = next(iter(gw.sandbox.data.lots))
    item = gw.sandbox.data.lots[lot_id]["customerItemId"]
    for path in (f"/api/Lot/{lot_id}", "/api/v1/catalogs/1001/lots", "/api/Seller?PageSize=5"):
        assert (await gw.client.get(path, headers=read)).status == 200, path
    resp = await gw.client.post("/api/Lot/get-overrides", json={"customerItemIds": [item]},
                                headers=read)
    assert resp.status == 200, await resp.text()  # a read sent as POST
    sent = upstream_requests(gw)
    for method, path, body in writes(gw):
        for headers in (read, {"Authorization": f"Bearer {READ_KEY}"}):
            resp = await gw.client.request(method, path, json=body, headers=headers)
            assert resp.status == 403, (method, path, await resp.text())
            assert resp.headers["Content-Type"].startswith(PROBLEM)
            problem = await resp.json(content_type=None)
            assert "'ci' is read-only" in problem["detail"], (method, path)
    assert upstream_requests(gw) == sent and upstream_writes(gw) == 0
    # The same writes with a write key do reach the upstream.
    for method, path, body in writes(gw)[:2]:
        resp = await gw.client.request(method, path, json=body, headers={"X-API-Key": WRITE_KEY})
        assert resp.status == 200, (method, path, await resp.text())
    assert upstream_writes(gw) == 2


async def raw_request(gw: Any, head: bytes) -> tuple[int, bytes]:
    """Send `head` (request line and headers, as bytes) on a socket of its own; the
    status and the body of the answer."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("header", [b"X-API-Key: \xff", b"X-API-Key: k\xc3\x28ey",
                                    b"Authorization: Bearer \xff\xfe",
                                    b"Authorization: \xff"])
async def test_credentials_that_are_not_text_are_401_not_500(start_gateway, header: bytes):
    gw = await start_gateway(api_keys=KEYS)
    lot_id, sent = next(iter(gw.sandbox.data.lots)), upstream_requests(gw)
    status, body = await raw_request(
        gw, f"GET /api/Lot/{lot_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + header + b"\r\n")
    assert status == 401, body
    assert b"Unauthorized" in body
    assert upstream_requests(gw) == sent


async def test_ui_tokens_and_cookies_that_are_not_text_are_refused_not_500(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    status, _ = await raw_request(
        gw, b"POST /sign-in HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF-Token: \xff\r\n"
            b"Cookie: gw_session=a\xff.b\r\nContent-Length: 0\r\n")
    assert status == 403
    status, _ = await raw_request(
        gw, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: gw_session=a\xff.b\r\n")
    assert status == 303  # no session: to the sign-in page


def serve(keys: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config.toml")],
        env=env(GW_API_KEYS=keys), capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_short_or_shared_keys_refuse_start_up_naming_the_key() -> None:
    short = serve(f"ops:{WRITE_KEY}:write,ci:tooshort-123")
    assert short.returncode == 2
    assert "'ci'" in short.stderr and "16" in short.stderr
    assert "tooshort-123" not in short.stderr and "Traceback" not in short.stderr
    shared = serve(f"ops:{WRITE_KEY}:write,ci:{WRITE_KEY}")
    assert shared.returncode == 2
    assert "'ops'" in shared.stderr and "'ci'" in shared.stderr
    assert WRITE_KEY not in shared.stderr


def test_keys_read_unless_they_say_write() -> None:
    config = load_config(None, env={"GW_API_KEYS": f"ci:{READ_KEY}, ops:{WRITE_KEY}:write, "
                                                   f"{READ_KEY}-bare"})
    assert {n: k.scope for n, k in config.api_keys.items()} == {
        "ci": "read", "ops": "write", "key3": "read"}
    with pytest.raises(ConfigError, match="'ci'"):
        load_config(None, env={"GW_API_KEYS": "ci:short"})
