"""Request ids: taken from the client when well formed, else made; on every answer, at the
upstream, in the request's access-log line and in its audit line; never in what is cached.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.access import _access_json, _access_record, _Served
from gateway.logs import JsonFormatter

GENERATED = re.compile(r"[0-9a-f]{16}")


class JsonLines(logging.Handler):
    """Every log record of the process, formatted as the gateway formats them in
    production (gateway/logs.py), parsed back."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def json_log() -> Iterator[JsonLines]:
    root, handler = logging.getLogger(), JsonLines()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def a_lot(gw) -> int:
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    return gw.sandbox.data.lot_ids_of_catalog(catalog_id)[0]


async def test_a_requests_id_is_on_its_answer_upstream_in_its_log_lines_and_audit_line(
    start_gateway, json_log
):
    gw = await start_gateway()
    lot_id = a_lot(gw)
    rid = "client-Req_42.a"
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 7},
                                headers={"X-Request-ID": rid})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Request-ID"] == rid
    # Both upstream calls of the save (the fresh read, the write) carried it.
    assert ("GET /api/Lot/{id}", rid) in gw.sandbox.request_ids
    assert ("PUT /api/Lot/{id}", rid) in gw.sandbox.request_ids
    # Every log line of the request carries it: the save's own line and the access line.
    mine = [line for line in json_log.lines if line.get("request_id") == rid]
    assert {line["logger"] for line in mine} >= {"gateway.overrides", "gateway.access"}
    [access] = [line for line in mine if line["logger"] == "gateway.access"]
    assert access["level"] == "INFO" and access["message"] == (
        "POST /api/v1/lots/{id}/override 200")
    assert {k: access[k] for k in ("caller", "method", "route", "status", "cache")} == {
        "caller": "anonymous", "method": "POST", "route": "/api/v1/lots/{id}/override",
        "status": 200, "cache": None}
    assert isinstance(access["ms"], float) and access["ms"] > 0
    [audited] = gw.audit_lines()
    assert audited["request_id"] == rid and audited["targets"] == [lot_id]


async def test_the_access_line_names_the_route_template_caller_and_cache_result(
    start_gateway, json_log
):
    from gateway.config import parse_api_keys

    key = "ops-0123456789abcdef"
    gw = await start_gateway(api_keys=parse_api_keys(f"ops:{key}"))
    path = f"/api/Lot/{a_lot(gw)}"
    for rid in ("cold", "warm"):
        resp = await gw.client.get(path, headers={"X-API-Key": key, "X-Request-ID": rid})
        assert resp.status == 200
    await gw.client.get("/healthz", headers={"X-Request-ID": "health"})
    by_id = {line["request_id"]: line for line in json_log.lines
             if line["logger"] == "gateway.access"}
    assert by_id["cold"]["route"] == "/api/Lot/{id}" and by_id["cold"]["cache"] == "MISS"
    assert by_id["warm"]["cache"] == "HIT" and by_id["warm"]["caller"] == "ops"
    assert by_id["health"]["caller"] == "-" and by_id["health"]["route"] == "/healthz"


@pytest.mark.parametrize("given", [
    "x" * 65, "has space", "semi;colon", "per%cent", "quote\"d", "", "a/b", "<script>",
])
async def test_a_malformed_id_is_replaced_by_a_generated_one(start_gateway, given):
    gw = await start_gateway()
    resp = await gw.client.get(f"/api/Lot/{a_lot(gw)}", headers={"X-Request-ID": given})
    assert resp.status == 200
    made = resp.headers["X-Request-ID"]
    assert made != given and GENERATED.fullmatch(made)
    assert gw.sandbox.request_ids[-1] == ("GET /api/Lot/{id}", made)


async def test_the_longest_well_formed_id_is_kept(start_gateway):
    gw = await start_gateway()
    given = "A-z_0.9" * 9 + "x"  # 64 characters
    resp = await gw.client.get("/healthz", headers={"X-Request-ID": given})
    assert resp.headers["X-Request-ID"] == given


async def test_without_an_id_each_request_gets_its_own(start_gateway):
    gw = await start_gateway()
    made = {(await gw.client.get("/healthz")).headers["X-Request-ID"] for _ in range(20)}
    assert len(made) == 20 and all(GENERATED.fullmatch(m) for m in made)


async def test_every_kind_of_answer_carries_the_id(start_gateway):
    gw = await start_gateway()
    lot = f"/api/Lot/{a_lot(gw)}"
    etag = (await gw.client.get(lot)).headers["ETag"]
    cases = [
        ("GET", lot, {"If-None-Match": etag}, 304),
        ("GET", "/api/v1/nothing-here", {}, 404),
        ("GET", "/api/Lot/abc", {}, 400),
        ("PATCH", "/api/Catalog/1", {}, 405),
        ("GET", "/healthz", {}, 200),
        ("GET", "/sign-in", {}, None),  # UI pages and redirects
        ("GET", "/", {}, None),
        ("GET", "/static/nothing.css", {}, 404),
        ("GET", "/nowhere", {}, 404),
    ]
    for n, (method, path, headers, status) in enumerate(cases):
        rid = f"case-{n}"
        resp = await gw.client.request(method, path, headers={**headers, "X-Request-ID": rid},
                                       allow_redirects=False)
        assert status is None or resp.status == status, (path, resp.status)
        assert resp.headers.get("X-Request-ID") == rid, (path, dict(resp.headers))


async def test_the_id_stays_out_of_cached_bodies_and_etags(start_gateway):
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    path = f"/api/v1/catalogs/{catalog_id}/lots"
    first = await gw.client.get(path, headers={"X-Request-ID": "first"})
    second = await gw.client.get(path, headers={"X-Request-ID": "second"})
    assert second.headers["X-Cache"] == "HIT"
    assert await first.read() == await second.read()
    assert first.headers["ETag"] == second.headers["ETag"]
    assert {r for _, r in gw.sandbox.request_ids} == {"first"}  # the cold one only
    assert b"first" not in await second.read()


@pytest.mark.parametrize(("caller", "method", "cache"), [
    ("-", "GET", "HIT"),
    ('ev"il\\\n\u2028 caller', "PURGE", None),  # a token's user may hold anything
    ("ops", "POST", "MISS"),
])
def test_the_access_line_made_directly_is_the_one_logging_would_make(caller, method, cache):
    """The access line is written straight from its fields (once per request, so cheaply);
    it must be the very text the JSON formatter makes of the same record."""
    formatter = JsonFormatter()
    # The second line of the same caller, route and outcome is made from kept parts.
    for created, request_id, ms in ((1764288000.1234, "9f1c2b7a0d4e8c31", 0.52),
                                    (1764288061.9996, "client-7", 12.0)):
        line = _Served(created, request_id, caller, method, "/api/Lot/{id}", 200, ms, cache)
        record = _access_record(line)
        record.process = 4711
        direct = _access_json(line, formatter.timestamp, 4711)
        assert direct == formatter.format(record) + "\n"
        assert direct.count("\n") == 1 and direct.isascii()
        assert json.loads(direct)["caller"] == caller
