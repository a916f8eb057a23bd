"""Tests for the sandbox standing in for the ABConnect Catalog API."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from ABConnect.api.models.catalog import (
    CatalogExpandedDto,
    CatalogExpandedDtoPaginatedList,
    LotDataDto,
    LotDto,
    LotDtoPaginatedList,
    SellerExpandedDto,
    SellerExpandedDtoPaginatedList,
    UpdateLotRequest,
)

from sandbox.data import HTML_LOT_ID, HTML_SNIPPET, SandboxData
from sandbox.server import (
    DEMO_ACCOUNTS,
    SANDBOX,
    Sandbox,
    create_sandbox_app,
    start_sandbox,
)

from gwtesting import eventually

ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def app():
    return create_sandbox_app(latency_ms=0, jitter_ms=0)


@pytest.fixture
async def client(aiohttp_client, app):
    return await aiohttp_client(app)


@pytest.fixture
def sandbox(app) -> Sandbox:
    return app[SANDBOX]


async def login(client, username="gateway", password="sandbox") -> dict:
    resp = await client.post(
        "/connect/token",
        data={
            "grant_type": "password",
            "username": username,
            "password": password,
            "client_id": "catalog-gateway",
            "client_secret": "secret",
            "scope": "offline_access",
        },
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def auth(client) -> dict[str, str]:
    tokens = await login(client)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def get_json(client, path, headers, status=200, **params):
    resp = await client.get(path, headers=headers, params=params or None)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


# --------------------------------------------------------------------------- data


def test_data_shape():
    started = time.process_time()
    data = SandboxData(1, ANCHOR)
    # Generous: start-up must not hang on data generation (about 0.04 s of CPU here).
    assert time.process_time() - started < 5
    assert len(data.sellers) >= 10
    for seller_id in data.sellers:
        catalogs = [data.catalogs[c] for c in data.catalog_ids_for_seller(seller_id)]
        assert any(c["isCompleted"] for c in catalogs)
        assert any(not c["isCompleted"] for c in catalogs)
    counts = [len(c["lots"]) for c in data.catalogs.values()]
    assert min(counts) == 5 and max(counts) == 150
    assert len(data.catalog_ids_with_lots(100)) >= 1
    assert len(data.catalog_ids_with_lots(50)) >= 3
    assert len(data.catalog_ids_with_lots(25)) >= 5
    assert len(data.catalog_ids_with_lots(25, 25)) >= 1
    assert sum(counts) == len(data.lots) < 4000
    assert len(data.catalogs[data.largest_catalog_id()]["lots"]) == 150
    assert HTML_SNIPPET in data.lots[HTML_LOT_ID]["initialData"]["description"]
    assert sum(1 for lot in data.lots.values() if lot["overridenData"]) >= 3
    for catalog in data.catalogs.values():
        numbers = [int(entry["lotNumber"]) for entry in catalog["lots"]]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(catalog["sellers"]) == 1
        for entry in catalog["lots"]:
            lot = data.lots[entry["id"]]
            assert lot["catalogs"] == [
                {"catalogId": catalog["id"], "lotNumber": entry["lotNumber"]}
            ]
            assert 1 <= len(lot["imageLinks"]) <= 3


@pytest.mark.parametrize("seed", [1, 2, 3, 42])
def test_data_dates_and_sizes_hold_for_any_seed(seed):
    data = SandboxData(seed, ANCHOR)
    anchor = ANCHOR.strftime("%Y-%m-%dT%H:%M:%SZ")
    for catalog in data.catalogs.values():
        assert catalog["startDate"] < catalog["endDate"]
        if catalog["isCompleted"]:
            assert catalog["endDate"] < anchor
        else:
            assert catalog["startDate"] > anchor
    counts = [len(c["lots"]) for c in data.catalogs.values()]
    assert min(counts) >= 5 and max(counts) == 150
    assert len(data.lots) < 4000
    assert HTML_SNIPPET in data.lots[HTML_LOT_ID]["initialData"]["description"]


def test_data_deterministic_per_seed():
    def dump(data: SandboxData) -> str:
        return json.dumps([data.sellers, data.catalogs, data.lots], sort_keys=True)

    first = dump(SandboxData(1, ANCHOR))
    assert first == dump(SandboxData(1, ANCHOR))
    assert first != dump(SandboxData(2, ANCHOR))


def test_default_anchor_is_today():
    def midnight(moment: datetime) -> datetime:
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)

    # The day may roll over while the data is built: the anchor is one of the two days.
    before = datetime.now(UTC)
    data = SandboxData(1)
    after = datetime.now(UTC)
    assert data.anchor in {midnight(before), midnight(after)}
    assert data.past_catalog_ids() and data.future_catalog_ids()
    # Past events ended before the data was built, upcoming ones start after it.
    ended_by = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    starts_after = after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(data.catalogs[c]["endDate"] < ended_by for c in data.past_catalog_ids())
    assert all(data.catalogs[c]["startDate"] > starts_after for c in data.future_catalog_ids())


def test_lot_answer_is_cheap():
    """Building a lot's answer costs little next to writing it out as JSON, which every
    answer must (here about 9 µs against 8 µs)."""
    data = SandboxData(1, ANCHOR)
    built = data.lot_dto(HTML_LOT_ID, "http://127.0.0.1:8080")

    def cpu_s(work) -> float:  # the least of a few runs: the least disturbed
        runs = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(200):
                work()
            runs.append(time.process_time() - started)
        return min(runs)

    answer = cpu_s(lambda: json.dumps(data.lot_dto(HTML_LOT_ID, "http://127.0.0.1:8080"),
                                      separators=(",", ":")))
    serialise = cpu_s(lambda: json.dumps(built, separators=(",", ":")))
    assert answer < 3 * serialise, (answer, serialise)


# ------------------------------------------------------------------------ routes


async def test_every_route_validates(client, sandbox, auth):
    data = sandbox.data
    sellers = await get_json(client, "/api/Seller", auth)
    page = SellerExpandedDtoPaginatedList.model_validate(sellers)
    assert page.page_number == 1 and page.total_items == len(data.sellers)
    assert len(page.items) == 10 and page.has_next_page and not page.has_previous_page

    seller_id = next(iter(data.sellers))
    seller = SellerExpandedDto.model_validate(
        await get_json(client, f"/api/Seller/{seller_id}", auth)
    )
    assert [c.id for c in seller.catalogs] == data.catalog_ids_for_seller(seller_id)

    catalogs = CatalogExpandedDtoPaginatedList.model_validate(
        await get_json(client, "/api/Catalog", auth, PageSize="1000")
    )
    assert catalogs.total_items == len(data.catalogs) == len(catalogs.items)

    big = data.largest_catalog_id()
    catalog = CatalogExpandedDto.model_validate(await get_json(client, f"/api/Catalog/{big}", auth))
    assert len(catalog.lots) == 150 and catalog.sellers[0].id in data.sellers

    lots = LotDtoPaginatedList.model_validate(await get_json(client, "/api/Lot", auth))
    assert lots.total_items == len(data.lots) and len(lots.items) == 10

    lot = LotDto.model_validate(await get_json(client, f"/api/Lot/{HTML_LOT_ID}", auth))
    assert HTML_SNIPPET in lot.initial_data.description


async def test_paging_envelope(client, sandbox, auth):
    total = len(sandbox.data.lots)
    body = await get_json(client, "/api/Lot", auth, PageNumber="2", PageSize="7")
    assert body["pageNumber"] == 2 and body["hasPreviousPage"] and body["hasNextPage"]
    assert body["totalItems"] == total and body["totalPages"] == -(-total // 7)
    assert [lot["id"] for lot in body["items"]] == sorted(sandbox.data.lots)[7:14]
    last = await get_json(client, "/api/Lot", auth, PageNumber=str(body["totalPages"]),
                          PageSize="7")
    assert not last["hasNextPage"] and 1 <= len(last["items"]) <= 7
    beyond = await get_json(client, "/api/Lot", auth, PageNumber="9999")
    assert beyond["items"] == [] and not beyond["hasNextPage"]
    LotDtoPaginatedList.model_validate(beyond)
    clamped = await get_json(client, "/api/Lot", auth, PageSize="5000")
    assert len(clamped["items"]) == 1000
    # ASP.NET binds query names case-insensitively; unknown names are ignored
    lower = await get_json(client, "/api/Lot", auth, pagesize="3", Whatever="x")
    assert len(lower["items"]) == 3


async def test_filtered_lists(client, sandbox, auth):
    data = sandbox.data
    big = data.catalogs[data.largest_catalog_id()]
    lots = await get_json(client, "/api/Lot", auth,
                          CustomerCatalogId=big["customerCatalogId"], PageSize="1000")
    page = LotDtoPaginatedList.model_validate(lots)
    assert page.total_items == 150 and page.total_pages == 1
    assert [lot.catalogs[0].lot_number for lot in page.items] == [
        str(n) for n in range(1, 151)
    ]

    by_number = await get_json(client, "/api/Lot", auth,
                               CustomerCatalogId=big["customerCatalogId"], LotNumber="3")
    assert [lot["id"] for lot in by_number["items"]] == [HTML_LOT_ID]
    any_catalog = await get_json(client, "/api/Lot", auth, LotNumber="3", PageSize="1000")
    assert any_catalog["totalItems"] == len(data.catalogs)

    item_id = data.lots[HTML_LOT_ID]["customerItemId"]
    by_item = await get_json(client, "/api/Lot", auth, CustomerItemId=item_id)
    assert [lot["id"] for lot in by_item["items"]] == [HTML_LOT_ID]

    sellers = sorted(data.sellers)[:2]
    expected = sorted(data.catalog_ids_for_seller(sellers[0]) +
                      data.catalog_ids_for_seller(sellers[1]))
    comma = await get_json(client, "/api/Catalog", auth,
                           SellerIds=f"{sellers[0]},{sellers[1]}", PageSize="100")
    CatalogExpandedDtoPaginatedList.model_validate(comma)
    assert sorted(c["id"] for c in comma["items"]) == expected
    resp = await client.get(
        f"/api/Catalog?SellerIds={sellers[0]}&SellerIds={sellers[1]}&PageSize=100",
        headers=auth,
    )
    assert sorted(c["id"] for c in (await resp.json())["items"]) == expected

    by_customer = await get_json(client, "/api/Catalog", auth,
                                 CustomerCatalogId=big["customerCatalogId"])
    assert [c["id"] for c in by_customer["items"]] == [big["id"]]

    seller = data.sellers[sellers[1]]
    by_display = await get_json(client, "/api/Seller", auth,
                                CustomerDisplayId=str(seller["customerDisplayId"]))
    SellerExpandedDtoPaginatedList.model_validate(by_display)
    assert [s["id"] for s in by_display["items"]] == [seller["id"]]
    by_ids = await get_json(client, "/api/Seller", auth, SellerIds=f"{sellers[0]},{sellers[1]}")
    assert [s["id"] for s in by_ids["items"]] == sellers

    none = await get_json(client, "/api/Lot", auth, CustomerCatalogId="no-such")
    assert none["items"] == [] and none["totalPages"] == 0


async def test_bad_requests_and_not_found(client, auth):
    for path in ("/api/Lot?PageNumber=abc", "/api/Seller?PageSize=1.5", "/api/Lot/abc",
                 "/api/Catalog/x", "/api/Catalog?SellerIds=1,b", "/api/Lot?PageNumber=0"):
        body = await get_json(client, path, auth, status=400)
        assert body["status"] == 400
    for path in ("/api/Lot/1", "/api/Catalog/999999", "/api/Seller/5"):
        body = await get_json(client, path, auth, status=404)
        assert body == {**body, "type": "about:blank", "title": "Not Found", "status": 404}


async def test_image_links_use_request_origin(client, auth):
    lot = await get_json(client, f"/api/Lot/{HTML_LOT_ID}", auth)
    origin = str(client.make_url("/")).rstrip("/")
    links = [img["link"] for img in lot["imageLinks"]]
    assert links and all(link.startswith(f"{origin}/images/{HTML_LOT_ID}/") for link in links)
    resp = await client.get(links[0].removeprefix(origin))  # no auth needed
    assert resp.status == 200
    assert resp.content_type == "image/svg+xml"
    svg = await resp.text()
    assert svg.startswith("<svg") and "<rect" in svg and "Lot 3" in svg
    assert (await client.get("/images/1/1.svg")).status == 404
    assert (await client.get(f"/images/{HTML_LOT_ID}/x.svg")).status == 404


# -------------------------------------------------------------------------- auth


async def test_auth_required(client):
    body = await get_json(client, "/api/Lot/10001", {}, status=401)
    assert body["status"] == 401
    await get_json(client, "/api/Lot", {"Authorization": "Bearer nope"}, status=401)
    await get_json(client, "/api/Seller", {"Authorization": "Basic abc"}, status=401)


async def test_password_and_refresh_grants(client):
    for username, password in DEMO_ACCOUNTS.items():
        tokens = await login(client, username, password)
        assert set(tokens) == {"access_token", "expires_in", "refresh_token", "token_type"}
        assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    resp = await client.post("/connect/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": "x", "client_secret": "y",
    })
    assert resp.status == 200
    refreshed = await resp.json()
    assert refreshed["access_token"] != tokens["access_token"]
    await get_json(client, "/api/Lot/10001",
                   {"Authorization": f"Bearer {refreshed['access_token']}"})


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "username": "gateway", "password": "wrong"},
        {"grant_type": "password", "username": "mallory", "password": "sandbox"},
        {"grant_type": "password"},
        {"grant_type": "refresh_token", "refresh_token": "bogus"},
    ],
)
async def test_bad_grants(client, form):
    resp = await client.post("/connect/token", data=form)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_grant"


async def test_unsupported_grant(client):
    resp = await client.post("/connect/token", data={"grant_type": "client_credentials"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "unsupported_grant_type"


async def test_token_expiry(client, sandbox):
    sandbox.token_ttl_s = 0.05
    tokens = await login(client)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    await get_json(client, "/api/Lot/10001", headers)

    async def refused() -> bool:
        return (await client.get("/api/Lot/10001", headers=headers)).status == 401

    await eventually(refused, "a token past its 0.05 s lifetime is refused", timeout_s=2)
    resp = await client.get("/api/Lot/10001", headers=headers)
    assert resp.status == 401 and (await resp.json())["status"] == 401


async def test_revoke_tokens(client, sandbox):
    tokens = await login(client)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    await get_json(client, "/api/Lot/10001", headers)
    sandbox.revoke_tokens()
    await get_json(client, "/api/Lot/10001", headers, status=401)
    resp = await client.post("/connect/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
    })
    assert resp.status == 400


# ------------------------------------------------------------------------ writes


def update_body(**fields) -> dict:
    """The JSON the ABConnect client sends for an UpdateLotRequest."""
    return UpdateLotRequest(**fields).model_dump(by_alias=True, exclude_none=True, mode="json")


async def test_put_round_trip(client, sandbox, auth):
    lot_id = 10005
    before = await get_json(client, f"/api/Lot/{lot_id}", auth)
    kept_link = before["imageLinks"][0]
    body = update_body(
        customer_item_id="NEW-ITEM-1",
        image_links=[kept_link["link"], "https://cdn.example.com/photo.jpg"],
        overriden_data=[LotDataDto(qty=2, l=30.5, w=20, h=10.25, wgt=42.0, cpack="CRATE",
                                   description="Remeasured", force_crate=True, item_id=77,
                                   commodity_id=101, do_not_tip=True)],
        catalogs=before["catalogs"],
    )
    override = body["overridenData"][0]
    assert {"Qty", "L", "CPack", "ForceCrate", "ItemID", "DoNotTip"} <= set(override)
    resp = await client.put(f"/api/Lot/{lot_id}", json=body, headers=auth)
    assert resp.status == 200, await resp.text()
    updated = await resp.json()
    LotDto.model_validate(updated)
    assert updated["overridenData"] == [{
        "qty": 2, "l": 30.5, "w": 20.0, "h": 10.25, "wgt": 42.0, "cpack": "CRATE",
        "description": "Remeasured", "itemID": 77, "forceCrate": True, "doNotTip": True,
        "commodityId": 101,
    }]
    assert updated["customerItemId"] == "NEW-ITEM-1"
    assert updated["imageLinks"][0] == kept_link
    assert updated["imageLinks"][1]["link"] == "https://cdn.example.com/photo.jpg"
    assert updated["imageLinks"][1]["id"] not in {img["id"] for img in before["imageLinks"]}
    assert updated["initialData"] == before["initialData"]
    assert await get_json(client, f"/api/Lot/{lot_id}", auth) == updated


async def test_put_moves_lot_between_catalogs(client, sandbox, auth):
    data = sandbox.data
    lot_id = HTML_LOT_ID
    source = data.lots[lot_id]["catalogs"][0]["catalogId"]
    target = next(c for c in data.catalog_ids_with_lots(5) if c != source)
    body = update_body(catalogs=[{"catalogId": target, "lotNumber": "2A"}])
    resp = await client.put(f"/api/Lot/{lot_id}", json=body, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["catalogs"] == [{"catalogId": target, "lotNumber": "2A"}]
    old = await get_json(client, f"/api/Catalog/{source}", auth)
    new = await get_json(client, f"/api/Catalog/{target}", auth)
    CatalogExpandedDto.model_validate(new)
    assert lot_id not in [entry["id"] for entry in old["lots"]]
    assert {"id": lot_id, "lotNumber": "2A"} in new["lots"]
    numbers = [entry["lotNumber"] for entry in new["lots"]]
    assert numbers.index("2A") == numbers.index("2") + 1
    moved = await get_json(client, "/api/Lot", auth,
                           CustomerCatalogId=data.catalogs[target]["customerCatalogId"],
                           LotNumber="2A")
    assert [lot["id"] for lot in moved["items"]] == [lot_id]


@pytest.mark.parametrize(
    "body",
    [
        {"unknownField": 1},
        {"overridenData": [{"Qty": "many"}]},
        {"imageLinks": "not-a-list"},
        {"catalogs": [{"catalogId": 999999, "lotNumber": "1"}]},
        [1, 2],
    ],
)
async def test_put_invalid_body(client, sandbox, auth, body):
    before = json.dumps(sandbox.data.lots[10001], sort_keys=True)
    resp = await client.put("/api/Lot/10001", json=body, headers=auth)
    assert resp.status == 400
    assert (await resp.json())["detail"]
    assert json.dumps(sandbox.data.lots[10001], sort_keys=True) == before


async def test_put_not_json_and_unknown_lot(client, auth):
    resp = await client.put("/api/Lot/10001", data=b"{nope", headers=auth)
    assert resp.status == 400
    resp = await client.put("/api/Lot/1", json=update_body(), headers=auth)
    assert resp.status == 404


async def test_fail_writes(client, sandbox, auth):
    body = update_body(customer_item_id="BEFORE")
    sandbox.fail_writes = "before"
    resp = await client.put("/api/Lot/10001", json=body, headers=auth)
    assert resp.status == 502
    assert sandbox.data.lots[10001]["customerItemId"] != "BEFORE"

    sandbox.fail_writes = "after"
    resp = await client.put("/api/Lot/10001", json=update_body(customer_item_id="AFTER"),
                            headers=auth)
    assert resp.status == 502
    assert sandbox.data.lots[10001]["customerItemId"] == "AFTER"
    assert sandbox.calls["PUT /api/Lot/{id}"] == 2


# ------------------------------------------------------------- latency and faults


async def test_latency_honoured(client, sandbox, auth):
    sandbox.configure(latency_ms=100, jitter_ms=0)
    started = time.perf_counter()
    await get_json(client, "/api/Lot/10001", auth)
    assert time.perf_counter() - started >= 0.095
    sandbox.configure(latency_ms=0, slow_ms=60)
    started = time.perf_counter()
    await get_json(client, "/api/Seller/101", auth)
    assert time.perf_counter() - started >= 0.055


def test_jitter_never_negative():
    sandbox = Sandbox(1, latency_ms=5, jitter_ms=50)
    delays = [sandbox.delay_s() for _ in range(500)]
    assert min(delays) == 0.0 and max(delays) <= 0.055
    assert len(set(delays)) > 100


async def test_down_and_error_rate(client, sandbox, auth):
    sandbox.down = True
    body = await get_json(client, "/api/Lot/10001", auth, status=503)
    assert body["status"] == 503
    resp = await client.post("/connect/token", data={"grant_type": "password"})
    assert resp.status == 503
    sandbox.down = False

    sandbox.configure(error_rate=1.0, latency_ms=3000)
    started = time.perf_counter()
    await get_json(client, "/api/Lot/10001", auth, status=503)
    assert time.perf_counter() - started < 1.5  # the injected error skips the latency
    sandbox.configure(error_rate=0.5, latency_ms=0)
    sandbox.error_rate = 1.0
    await login(client)  # error_rate only hits /api/*
    sandbox.error_rate = 0.5
    statuses = []
    for _ in range(40):
        statuses.append((await client.get("/api/Lot/10001", headers=auth)).status)
    assert {200, 503} == set(statuses)


async def test_hang_until_released(client, sandbox, auth):
    sandbox.hang = True
    task = asyncio.create_task(client.get("/api/Lot/10001", headers=auth))
    try:
        await eventually(lambda: sandbox.inflight == 1, "the request reached the sandbox")
        # Held, not answered: still pending a while after it arrived.
        done, _ = await asyncio.wait({task}, timeout=0.2)
        assert not done and sandbox.inflight == 1
        sandbox.hang = False
        resp = await asyncio.wait_for(task, 2)
        assert resp.status == 200
        assert sandbox.inflight == 0
    finally:
        task.cancel()


async def test_hang_ends_when_client_leaves(client, sandbox, auth):
    sandbox.hang = True
    url = client.make_url("/api/Lot/10001")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(url, headers=auth, timeout=aiohttp.ClientTimeout(total=0.15))
    await eventually(lambda: sandbox.inflight == 0, "the held request ended with its client",
                     timeout_s=2)


async def test_counters_and_max_inflight(client, sandbox, auth):
    sandbox.reset_stats()
    sandbox.latency_ms = 50
    responses = await asyncio.gather(
        *(client.get(f"/api/Lot/{10001 + i}", headers=auth) for i in range(20))
    )
    assert [r.status for r in responses] == [200] * 20
    assert sandbox.max_inflight == 20 and sandbox.inflight == 0
    assert sandbox.calls == {"GET /api/Lot/{id}": 20}
    await client.get("/images/10001/1.svg")
    await client.get("/_sandbox/stats")
    await client.get("/api/Lot", headers=auth)
    await client.get("/api/Lot/10001")  # 401 still counts
    await login(client)
    assert sandbox.calls == {
        "GET /api/Lot/{id}": 21, "GET /api/Lot": 1, "POST /connect/token": 1,
    }
    sandbox.reset_stats()
    assert sandbox.calls == {} and sandbox.max_inflight == 0


def test_configure_validates():
    sandbox = Sandbox(1, latency_ms=0)
    sandbox.configure(latency_ms=5, jitter_ms=1, error_rate=0.25, down=True, slow_ms=2,
                      hang=False, fail_writes="after", token_ttl_s=10)
    assert sandbox.knobs() == {
        "latency_ms": 5.0, "jitter_ms": 1.0, "error_rate": 0.25, "down": True,
        "slow_ms": 2.0, "hang": False, "fail_writes": "after", "token_ttl_s": 10.0,
    }
    for bad in ({"nope": 1}, {"error_rate": 1.5}, {"latency_ms": -1}, {"down": "yes"},
                {"fail_writes": "sometimes"}, {"token_ttl_s": 0}, {"jitter_ms": "5"}):
        with pytest.raises(ValueError):
            sandbox.configure(**bad)
    assert sandbox.knobs()["error_rate"] == 0.25
    with pytest.raises(ValueError):
        create_sandbox_app(latency_ms=0, bogus=True)
    assert create_sandbox_app(latency_ms=0, down=True)[SANDBOX].down is True


async def test_control_endpoints(client, sandbox, auth):
    await get_json(client, "/api/Lot/10001", auth)
    stats = await get_json(client, "/_sandbox/stats", {})
    assert stats == {"calls": {"POST /connect/token": 1, "GET /api/Lot/{id}": 1},
                     "inflight": 0, "maxInflight": 1}
    resp = await client.post("/_sandbox/stats/reset")
    assert resp.status == 200
    assert (await get_json(client, "/_sandbox/stats", {}))["calls"] == {}

    resp = await client.post("/_sandbox/config", json={"down": True, "latency_ms": 1})
    assert resp.status == 200
    knobs = await resp.json()
    assert knobs["down"] is True and knobs["latency_ms"] == 1.0
    await get_json(client, "/api/Lot/10001", auth, status=503)
    for bad in ({"error_rate": 3}, {"nope": 1}, [1], "x"):
        resp = await client.post("/_sandbox/config", json=bad)
        assert resp.status == 400
    resp = await client.post("/_sandbox/config", data=b"{")
    assert resp.status == 400
    resp = await client.post("/_sandbox/config", json={"down": False, "fail_writes": None})
    assert resp.status == 200
    assert (await get_json(client, "/_sandbox/config", {}))["down"] is False

    resp = await client.post("/_sandbox/revoke-tokens")
    assert resp.status == 200
    await get_json(client, "/api/Lot/10001", auth, status=401)


async def test_start_sandbox_on_real_socket():
    runner, base_url, sandbox = await start_sandbox(latency_ms=0, jitter_ms=0, seed=3)
    try:
        assert base_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base_url}/connect/token", data={
                "grant_type": "password", "username": "alice", "password": "alice-demo",
            }) as resp:
                token = (await resp.json())["access_token"]
            async with session.get(f"{base_url}/api/Lot/{HTML_LOT_ID}",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                lot = LotDto.model_validate(await resp.json())
        assert lot.image_links[0].link.startswith(f"{base_url}/images/")
        assert sandbox.data.seed == 3 and sandbox.calls["GET /api/Lot/{id}"] == 1
    finally:
        await runner.cleanup()
