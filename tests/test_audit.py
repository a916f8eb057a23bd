"""The audit trail: every write through the JSON API, carried out or refused, leaves one
JSON line in audit.path with its request id, its caller and how it authenticated, the
route, the action, the targets, the outcome and the status answered; reads leave none."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_api_keys

OPS = "ops-key-0123456789abcdef"  # writes
CI = "ci-key-0123456789abcdef"  # reads only
PUT = "PUT /api/Lot/{id}"


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(api_keys=parse_api_keys(f"ops:{OPS}:write,ci:{CI}"))


def a_lot(gw, n: int = 0) -> int:
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    return gw.sandbox.data.lot_ids_of_catalog(catalog_id)[n]


async def write(gw, method: str, path: str, key: str = OPS, status: int = 200,
                headers: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    """Send one write; its audit line (the one with its request id), checked against it."""
    before = len(gw.audit_lines())
    resp = await gw.client.request(method, path, headers={"X-API-Key": key, **(headers or {})},
                                   **kw)
    assert resp.status == status, await resp.text()
    lines = gw.audit_lines()[before:]
    assert len(lines) == 1, lines
    [line] = lines
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert line["method"] == method and line["status"] == status
    assert line["caller"] == ("ops" if key == OPS else "ci") and line["auth"] == "key"
    assert line["time"].endswith("+00:00")
    return line


async def test_override_saves_and_refusals_are_audited(gw):
    lot_id = a_lot(gw)
    gw.sandbox.data.lots[lot_id]["overridenData"] = []
    path = f"/api/v1/lots/{lot_id}/override"

    saved = await write(gw, "POST", path, json={"qty": 3})
    assert {k: saved[k] for k in ("route", "action", "targets", "outcome", "changes")} == {
        "route": "/api/v1/lots/{id}/override", "action": "override", "targets": [lot_id],
        "outcome": "saved", "changes": {"qty": 3}}
    assert (await write(gw, "POST", path, json={"qty": 3}))["outcome"] == "unchanged"
    assert gw.calls(PUT) == 1

    # Refused: a read key (403), a bad field (422), a body too large (413), no such lot
    # (404), an ETag that no longer matches (412). None of them wrote anything upstream.
    refused = [
        (await write(gw, "POST", path, key=CI, status=403, json={"qty": 9}), "forbidden"),
        (await write(gw, "POST", path, status=422, json={"qty": "many"}), "rejected"),
        (await write(gw, "POST", path, status=413, data=b"{" + b" " * 70_000 + b"}",
                     headers={"Content-Type": "application/json"}), "rejected"),
        (await write(gw, "POST", "/api/v1/lots/999999/override", status=404,
                     json={"qty": 1}), "not_found"),
        (await write(gw, "POST", path, status=412, json={"qty": 4},
                     headers={"If-Match": '"stale"'}), "conflict"),
    ]
    for line, outcome in refused:
        assert line["action"] == "override" and line["outcome"] == outcome, line
    assert gw.calls(PUT) == 1


async def test_drop_in_writes_are_audited_with_their_targets_and_outcomes(gw):
    data = gw.sandbox.data
    lot_id = a_lot(gw, 1)
    lot = data.lot_dto(lot_id)

    created = await write(gw, "POST", "/api/Seller", json={
        "name": "Audit Row Auctions", "customerDisplayId": 876543, "isActive": True})
    new_seller = next(s for s, v in data.sellers.items() if v["name"] == "Audit Row Auctions")
    assert created["action"] == "create" and created["route"] == "/api/Seller"
    assert created["targets"] == [new_seller] and created["outcome"] == "ok"

    updated = await write(gw, "PUT", f"/api/Lot/{lot_id}", json={
        "customerItemId": lot["customerItemId"],
        "imageLinks": [i["link"] for i in lot["imageLinks"]],
        "overridenData": [{"Qty": 41}], "catalogs": lot["catalogs"]})
    assert (updated["action"], updated["route"], updated["targets"], updated["outcome"]) == (
        "update", "/api/Lot/{id}", [lot_id], "ok")

    deleted = await write(gw, "DELETE", f"/api/Lot/{lot_id}", status=204)
    assert (deleted["action"], deleted["targets"], deleted["outcome"]) == (
        "delete", [lot_id], "ok")
    # The upstream's own refusal is relayed, and recorded as it answered.
    again = await write(gw, "DELETE", f"/api/Lot/{lot_id}", status=404)
    assert again["outcome"] == "status_404"

    seller = data.sellers[new_seller]
    bulk = await write(gw, "POST", "/api/Bulk/insert", json={"catalogs": [{
        "customerCatalogId": "AUDIT-CAT", "agent": "Annex", "title": "Audited Arrivals",
        "startDate": "2099-02-01T15:00:00Z", "endDate": "2099-02-03T15:00:00Z",
        "sellers": [{"name": seller["name"], "customerDisplayId": seller["customerDisplayId"],
                     "isActive": True}],
        "lots": []}]})
    assert (bulk["action"], bulk["route"], bulk["targets"], bulk["outcome"]) == (
        "bulk_insert", "/api/Bulk/insert", ["AUDIT-CAT"], "ok")

    other = await write(gw, "POST", "/api/Platform/reindex", status=404, json={"all": True})
    assert (other["action"], other["route"], other["path"], other["outcome"]) == (
        "pass_through", "/api/{path}", "/api/Platform/reindex", "status_404")


async def test_refused_drop_in_writes_are_audited_and_reach_nothing(gw):
    lot_id = a_lot(gw, 2)
    gw.sandbox.reset_stats()
    lines = [
        await write(gw, "PUT", f"/api/Lot/{lot_id}", key=CI, status=403, json={}),
        await write(gw, "DELETE", f"/api/Catalog/{1}", key=CI, status=403),
        await write(gw, "POST", "/api/Bulk/insert", key=CI, status=403, json={"catalogs": []}),
        await write(gw, "POST", "/api/Platform/reindex", key=CI, status=403, json={}),
        await write(gw, "POST", "/api/Lot", status=400, data=b"[1, 2]",
                    headers={"Content-Type": "application/json"}),
        await write(gw, "PUT", f"/api/Lot/{lot_id}", status=413, data=b"x" * (1024 * 1024 + 1),
                    headers={"Content-Type": "application/json"}),
    ]
    assert [line["outcome"] for line in lines] == ["forbidden"] * 4 + ["rejected"] * 2
    assert lines[0]["targets"] == [lot_id] and lines[1]["targets"] == [1]
    writes = {k: v for k, v in gw.sandbox.calls.items() if not k.startswith("GET ")}
    assert writes == {}, writes


async def test_reads_leave_no_audit_line(gw):
    lot_id = a_lot(gw)
    headers = {"X-API-Key": CI}
    for path in (f"/api/Lot/{lot_id}", "/api/Lot?PageSize=5", f"/api/v1/lots?ids={lot_id}",
                 "/api/Platform/status", "/healthz"):
        await gw.client.get(path, headers=headers)
    resp = await gw.client.post("/api/Lot/get-overrides", json={"customerItemIds": ["x"]},
                                headers=headers)  # a read sent as POST
    assert resp.status == 200, await resp.text()
    assert gw.audit_lines() == []


async def test_without_keys_the_caller_is_recorded_as_anonymous(start_gateway):
    gw = await start_gateway()
    lot_id = a_lot(gw)
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 2},
                                headers={"X-Request-ID": "anon-1"})
    assert resp.status == 200
    [line] = gw.audit_lines()
    assert (line["caller"], line["auth"], line["request_id"]) == ("anonymous", "anonymous",
                                                                  "anon-1")
