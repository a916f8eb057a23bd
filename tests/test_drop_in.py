"""Every write of the Catalog API through the gateway, with every read it affects warmed in
the cache first: the very next read of each shows the write. In one process, and across two
replicas sharing Redis (written through one, read through the other)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from ABConnect.api.catalog import BaseCatalogEndpoint

from gateway.state import CACHE, TOKENS
from sandbox.identity import SigningKey

from gwtesting import eventually
from test_sandbox import run_sdk


@dataclass
class Pair:
    writer: Any  # Gateway the writes go through
    reader: Any  # Gateway the reads go through (the same one, or another replica)

    @property
    def data(self):
        return self.writer.sandbox.data

    async def warm(self, *paths: str) -> None:
        """Read each path twice: the second read must come from the cache."""
        for path in paths:
            await self.reader.get_json(path)
            resp = await self.reader.client.get(path)
            assert resp.status == 200 and resp.headers["X-Cache"] == "HIT", path

    async def read(self, path: str, status: int = 200) -> Any:
        return await self.reader.get_json(path, status=status)

    async def write(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        resp = await self.writer.client.request(method, path, json=body)
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None) if resp.status != 204 else None


@pytest.fixture(params=["one process", "two replicas on Redis"])
async def pair(request, start_gateway) -> Pair:
    if request.param == "one process":
        gw = await start_gateway()
        return Pair(gw, gw)
    redis = request.getfixturevalue("redis")
    shared = {"backend": "redis", "redis_url": redis.url}
    a = await start_gateway(cache=shared)
    b = await start_gateway(cache=shared, beside=a)
    await eventually(lambda: a.app[CACHE].tier.up and b.app[CACHE].tier.up,
                     "both replicas on Redis")
    return Pair(a, b)


def ids(items: list[dict]) -> list[int]:
    return [x["id"] for x in items]


def a_seller_with_events(data) -> tuple[int, int]:
    """(seller id, id of one of its upcoming events with 5 to 60 lots: one page of 100)."""
    for catalog_id in data.future_catalog_ids():
        catalog = data.catalog_expanded(catalog_id)
        if 5 <= len(catalog["lots"]) <= 60 and catalog["sellers"]:
            return catalog["sellers"][0]["id"], catalog_id
    raise AssertionError("no upcoming event with lots in the sandbox data")


async def test_creating_a_seller_shows_in_seller_lists_and_search(pair):
    await pair.warm("/api/Seller?PageSize=100", "/api/v1/sellers?q=Lantern")
    seller = await pair.write("POST", "/api/Seller",
                              {"name": "Lantern Row Auctions", "customerDisplayId": 987654,
                               "isActive": True})
    assert seller["id"] in ids((await pair.read("/api/Seller?PageSize=100"))["items"])
    assert ids((await pair.read("/api/v1/sellers?q=Lantern"))["items"]) == [seller["id"]]


async def test_updating_a_seller_shows_everywhere_it_is_embedded(pair):
    seller_id, catalog_id = a_seller_with_events(pair.data)
    paths = [f"/api/Seller/{seller_id}", "/api/Seller?PageSize=100",
             f"/api/Catalog/{catalog_id}", "/api/Catalog?PageSize=100",
             f"/api/v1/sellers/{seller_id}/events", "/api/v1/sellers?q=Renamed",
             f"/api/v1/catalogs/{catalog_id}/lots"]
    await pair.warm(*paths)
    old = await pair.read(f"/api/Seller/{seller_id}")
    await pair.write("PUT", f"/api/Seller/{seller_id}",
                     {"name": "Renamed Estates", "customerDisplayId": old["customerDisplayId"],
                      "isActive": True})

    assert (await pair.read(f"/api/Seller/{seller_id}"))["name"] == "Renamed Estates"
    listed = (await pair.read("/api/Seller?PageSize=100"))["items"]
    assert next(s for s in listed if s["id"] == seller_id)["name"] == "Renamed Estates"
    catalog = await pair.read(f"/api/Catalog/{catalog_id}")
    assert next(s for s in catalog["sellers"] if s["id"] == seller_id)["name"] == "Renamed Estates"
    catalogs = (await pair.read("/api/Catalog?PageSize=100"))["items"]
    embedded = next(c for c in catalogs if c["id"] == catalog_id)["sellers"]
    assert next(s for s in embedded if s["id"] == seller_id)["name"] == "Renamed Estates"
    events = await pair.read(f"/api/v1/sellers/{seller_id}/events")
    assert events["seller"]["name"] == "Renamed Estates"
    assert ids((await pair.read("/api/v1/sellers?q=Renamed"))["items"]) == [seller_id]
    page = await pair.read(f"/api/v1/catalogs/{catalog_id}/lots")
    assert next(s for s in page["catalog"]["sellers"] if s["id"] == seller_id)["name"] == (
        "Renamed Estates")


async def test_deleting_a_seller_removes_it_everywhere(pair):
    seller_id, catalog_id = a_seller_with_events(pair.data)
    await pair.warm(f"/api/Seller/{seller_id}", "/api/Seller?PageSize=100",
                    f"/api/Catalog/{catalog_id}", f"/api/v1/sellers/{seller_id}/events",
                    f"/api/v1/catalogs/{catalog_id}/lots")
    await pair.write("DELETE", f"/api/Seller/{seller_id}", status=204)

    await pair.read(f"/api/Seller/{seller_id}", status=404)
    await pair.read(f"/api/v1/sellers/{seller_id}/events", status=404)
    assert seller_id not in ids((await pair.read("/api/Seller?PageSize=100"))["items"])
    assert seller_id not in ids((await pair.read(f"/api/Catalog/{catalog_id}"))["sellers"])
    page = await pair.read(f"/api/v1/catalogs/{catalog_id}/lots")
    assert seller_id not in ids(page["catalog"]["sellers"])


async def test_creating_a_catalog_shows_in_its_sellers_events_and_lists(pair):
    seller_id, _ = a_seller_with_events(pair.data)
    await pair.warm(f"/api/Seller/{seller_id}", f"/api/v1/sellers/{seller_id}/events",
                    "/api/Catalog?PageSize=100&Title=Harbour")
    catalog = await pair.write("POST", "/api/Catalog", {
        "customerCatalogId": "HB-2099", "agent": "Annex", "title": "Harbour Finds",
        "startDate": "2099-01-10T15:00:00Z", "endDate": "2099-01-12T15:00:00Z",
        "sellerIds": [seller_id]})

    seller = await pair.read(f"/api/Seller/{seller_id}")
    assert catalog["id"] in ids(seller["catalogs"])
    events = await pair.read(f"/api/v1/sellers/{seller_id}/events?page_size=100")
    assert catalog["id"] in ids(events["items"])
    listed = await pair.read("/api/Catalog?PageSize=100&Title=Harbour")
    assert ids(listed["items"]) == [catalog["id"]]


async def test_updating_a_catalog_moves_it_between_sellers(pair):
    old_seller, catalog_id = a_seller_with_events(pair.data)
    new_seller = next(s for s in pair.data.sellers if s != old_seller)
    await pair.warm(f"/api/Catalog/{catalog_id}", "/api/Catalog?PageSize=100",
                    f"/api/Seller/{old_seller}", f"/api/Seller/{new_seller}",
                    f"/api/v1/sellers/{old_seller}/events?page_size=100",
                    f"/api/v1/sellers/{new_seller}/events?page_size=100",
                    f"/api/v1/catalogs/{catalog_id}/lots")
    current = await pair.read(f"/api/Catalog/{catalog_id}")
    await pair.write("PUT", f"/api/Catalog/{catalog_id}", {
        "customerCatalogId": current["customerCatalogId"], "agent": current["agent"],
        "title": "Moved And Renamed", "startDate": current["startDate"],
        "endDate": current["endDate"], "sellerIds": [new_seller]})

    catalog = await pair.read(f"/api/Catalog/{catalog_id}")
    assert catalog["title"] == "Moved And Renamed" and ids(catalog["sellers"]) == [new_seller]
    listed = (await pair.read("/api/Catalog?PageSize=100"))["items"]
    assert next(c for c in listed if c["id"] == catalog_id)["title"] == "Moved And Renamed"
    assert catalog_id not in ids((await pair.read(f"/api/Seller/{old_seller}"))["catalogs"])
    assert catalog_id in ids((await pair.read(f"/api/Seller/{new_seller}"))["catalogs"])
    old_events = await pair.read(f"/api/v1/sellers/{old_seller}/events?page_size=100")
    assert catalog_id not in ids(old_events["items"])
    new_events = await pair.read(f"/api/v1/sellers/{new_seller}/events?page_size=100")
    assert catalog_id in ids(new_events["items"])
    page = await pair.read(f"/api/v1/catalogs/{catalog_id}/lots")
    assert page["catalog"]["title"] == "Moved And Renamed"


async def test_deleting_a_catalog_removes_it_from_sellers_lots_and_lists(pair):
    seller_id, catalog_id = a_seller_with_events(pair.data)
    lot_id = pair.data.lot_ids_of_catalog(catalog_id)[0]
    await pair.warm(f"/api/Catalog/{catalog_id}", "/api/Catalog?PageSize=100",
                    f"/api/Seller/{seller_id}", f"/api/v1/sellers/{seller_id}/events",
                    f"/api/Lot/{lot_id}", f"/api/v1/catalogs/{catalog_id}/lots")
    await pair.write("DELETE", f"/api/Catalog/{catalog_id}", status=204)

    await pair.read(f"/api/Catalog/{catalog_id}", status=404)
    await pair.read(f"/api/v1/catalogs/{catalog_id}/lots", status=404)
    assert catalog_id not in ids((await pair.read("/api/Catalog?PageSize=100"))["items"])
    assert catalog_id not in ids((await pair.read(f"/api/Seller/{seller_id}"))["catalogs"])
    events = await pair.read(f"/api/v1/sellers/{seller_id}/events?page_size=100")
    assert catalog_id not in ids(events["items"])
    lot = await pair.read(f"/api/Lot/{lot_id}")
    assert catalog_id not in [c["catalogId"] for c in lot["catalogs"]]


async def test_creating_a_lot_shows_on_its_event_page_and_in_lot_lists(pair):
    _, catalog_id = a_seller_with_events(pair.data)
    page_path = f"/api/v1/catalogs/{catalog_id}/lots?page_size=100"
    await pair.warm(page_path, f"/api/Catalog/{catalog_id}", "/api/Lot?CustomerItemId=NEW-1")
    before = (await pair.read(page_path))["totalItems"]
    lot = await pair.write("POST", "/api/Lot", {
        "customerItemId": "NEW-1", "imageLinks": [],
        "initialData": {"qty": 1, "description": "Brass ship's bell"},
        "overridenData": [], "catalogs": [{"catalogId": catalog_id, "lotNumber": "999"}]})

    page = await pair.read(page_path)
    assert page["totalItems"] == before + 1 and lot["id"] in ids(page["items"])
    assert lot["id"] in ids((await pair.read(f"/api/Catalog/{catalog_id}"))["lots"])
    assert ids((await pair.read("/api/Lot?CustomerItemId=NEW-1"))["items"]) == [lot["id"]]


async def test_deleting_a_lot_removes_it_from_its_event_page_and_lists(pair):
    _, catalog_id = a_seller_with_events(pair.data)
    lot_id = pair.data.lot_ids_of_catalog(catalog_id)[0]
    item = pair.data.lots[lot_id]["customerItemId"]
    page_path = f"/api/v1/catalogs/{catalog_id}/lots?page_size=100"
    await pair.warm(f"/api/Lot/{lot_id}", page_path, f"/api/Catalog/{catalog_id}",
                    f"/api/Lot?CustomerItemId={item}")
    await pair.write("DELETE", f"/api/Lot/{lot_id}", status=204)

    await pair.read(f"/api/Lot/{lot_id}", status=404)
    assert lot_id not in ids((await pair.read(page_path))["items"])
    assert lot_id not in ids((await pair.read(f"/api/Catalog/{catalog_id}"))["lots"])
    assert (await pair.read(f"/api/Lot?CustomerItemId={item}"))["items"] == []


async def test_a_bulk_insert_shows_everywhere(pair):
    seller_id, _ = a_seller_with_events(pair.data)
    seller = pair.data.sellers[seller_id]
    await pair.warm("/api/Catalog?PageSize=100&Title=Bulk", f"/api/Seller/{seller_id}",
                    "/api/Lot?CustomerItemId=BULK-1", "/api/Seller?PageSize=100")
    await pair.write("POST", "/api/Bulk/insert", {"catalogs": [{
        "customerCatalogId": "BULK-CAT", "agent": "Annex", "title": "Bulk Arrivals",
        "startDate": "2099-02-01T15:00:00Z", "endDate": "2099-02-03T15:00:00Z",
        "sellers": [{"name": seller["name"], "customerDisplayId": seller["customerDisplayId"],
                     "isActive": True}],
        "lots": [{"customerItemId": "BULK-1", "lotNumber": "1", "imageLinks": [],
                  "initialData": {"qty": 2, "description": "Pair of oars"},
                  "overridenData": []}],
    }]})

    listed = (await pair.read("/api/Catalog?PageSize=100&Title=Bulk"))["items"]
    assert [c["title"] for c in listed] == ["Bulk Arrivals"]
    new_catalog = listed[0]["id"]
    assert new_catalog in ids((await pair.read(f"/api/Seller/{seller_id}"))["catalogs"])
    lots = (await pair.read("/api/Lot?CustomerItemId=BULK-1"))["items"]
    assert [c["catalogId"] for c in lots[0]["catalogs"]] == [new_catalog]


async def test_get_overrides_passes_through(pair):
    _, catalog_id = a_seller_with_events(pair.data)
    lot_id = pair.data.lot_ids_of_catalog(catalog_id)[0]
    item = pair.data.lots[lot_id]["customerItemId"]
    resp = await pair.writer.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 6})
    assert resp.status == 200
    resp = await pair.reader.client.post("/api/Lot/get-overrides",
                                         json={"customerItemIds": [item]})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert [o.get("customerItemId") for o in answer] == [item]


async def test_an_unknown_write_outdates_everything_and_unknown_reads_pass_through(pair):
    _, catalog_id = a_seller_with_events(pair.data)
    lot_id = pair.data.lot_ids_of_catalog(catalog_id)[0]
    await pair.warm(f"/api/Lot/{lot_id}", f"/api/Catalog/{catalog_id}")
    resp = await pair.writer.client.post("/api/Platform", json={"name": "x"})
    assert resp.status == 404  # the sandbox has no such route: its answer, passed through
    for path in (f"/api/Lot/{lot_id}", f"/api/Catalog/{catalog_id}"):
        resp = await pair.reader.client.get(path)
        assert resp.status == 200 and resp.headers["X-Cache"] == "MISS", path
    resp = await pair.reader.client.get("/api/Platform?x=1")
    assert resp.status == 404 and "X-Cache" not in resp.headers


async def test_the_abconnect_sdk_works_through_the_gateway_with_its_own_token(start_gateway):
    """ABConnect 0.2.1's CatalogAPI, unmodified but for its base URL, signed in as an
    operator at the identity endpoint: every read and write through the gateway. Reads go
    upstream as the gateway's service account; writes carry the operator's own token."""
    gw = await start_gateway(auth={"upstream_tokens": "write"})
    base = str(gw.client.make_url("/")).rstrip("/")
    previous = BaseCatalogEndpoint._handler  # the SDK's handler is class-level: restore it
    try:
        await asyncio.to_thread(run_sdk, base, gw.sandbox, gw.upstream_url)
    finally:
        BaseCatalogEndpoint._handler = previous

    callers = gw.sandbox.callers
    writes = {label for label, _ in callers
              if not label.startswith("GET") and label != "POST /api/Lot/get-overrides"}
    assert len(writes) == 10, writes  # every write of the document went upstream
    for (label, account), n in callers.items():
        if label in writes:
            assert account == "alice", (label, account, n)  # relayed with her token
        else:
            assert account == "gateway", (label, account, n)  # reads: the service account
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_upstream_requests_total{endpoint="jwks",status="200"} 1.0' in metrics


async def test_a_forged_expired_or_foreign_token_is_refused_before_the_upstream(start_gateway):
    gw = await start_gateway(auth={"upstream_tokens": "write"})
    key = gw.sandbox.identity.current
    good = gw.sandbox.issue_tokens("alice")["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    now = int(time.time())

    def signed(by: Any, **changes: Any) -> str:
        return jwt.encode({**claims, **changes}, by.private_key, algorithm="RS256",
                          headers={"kid": key.kid})

    header, payload, signature = good.split(".")
    tokens = {
        "tampered": ".".join([header, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"),
                              signature]),
        "expired": signed(key, iat=now - 600, nbf=now - 600, exp=now - 300),
        "another issuer": signed(key, iss="https://login.example.com"),
        "another key, same kid": signed(SigningKey.generate()),
    }
    gw.sandbox.reset_stats()
    for what, token in tokens.items():
        resp = await gw.client.get("/api/Seller?PageSize=1",
                                   headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, (what, await resp.text())
        assert resp.content_type == "application/problem+json"
    assert not any(label.endswith(("/api/Seller", "/connect/token"))
                   for label in gw.sandbox.calls), gw.sandbox.calls
    resp = await gw.client.get("/api/Seller?PageSize=1",
                               headers={"Authorization": f"Bearer {good}"})
    assert resp.status == 200  # the same request with the real token goes through


async def test_after_the_identity_server_rotates_its_key_new_tokens_are_accepted(
    start_gateway,
):
    gw = await start_gateway(auth={"upstream_tokens": "write"})
    old = gw.sandbox.issue_tokens("alice")["access_token"]
    path = "/api/Seller?PageSize=1"
    resp = await gw.client.get(path, headers={"Authorization": f"Bearer {old}"})
    assert resp.status == 200
    async with aiohttp.ClientSession() as http, http.post(
        gw.upstream_url + "/_sandbox/rotate-signing-key", json={"retire_old": True}
    ) as rotated:
        assert rotated.status == 200
    new = gw.sandbox.issue_tokens("alice")["access_token"]
    resp = await gw.client.get(path, headers={"Authorization": f"Bearer {new}"})
    assert resp.status == 200, await resp.text()  # no restart: the new key was fetched


async def test_a_drop_in_lot_update_shows_on_every_page_that_holds_it(pair):
    _, catalog_id = a_seller_with_events(pair.data)
    lot_id = pair.data.lot_ids_of_catalog(catalog_id)[1]
    page_path = f"/api/v1/catalogs/{catalog_id}/lots?page_size=100"
    item = pair.data.lots[lot_id]["customerItemId"]
    await pair.warm(f"/api/Lot/{lot_id}", page_path, f"/api/Lot?CustomerItemId={item}",
                    f"/api/v1/lots?ids={lot_id}")
    lot = pair.data.lot_dto(lot_id)
    await pair.write("PUT", f"/api/Lot/{lot_id}", {
        "customerItemId": lot["customerItemId"],
        "imageLinks": [i["link"] for i in lot["imageLinks"]],
        "overridenData": [{"Qty": 41}], "catalogs": lot["catalogs"]})

    def qty(found: dict) -> int:
        return found["overridenData"][0]["qty"]

    assert qty(await pair.read(f"/api/Lot/{lot_id}")) == 41
    page = await pair.read(page_path)
    assert qty(next(x for x in page["items"] if x["id"] == lot_id)) == 41
    assert qty((await pair.read(f"/api/Lot?CustomerItemId={item}"))["items"][0]) == 41
    assert qty((await pair.read(f"/api/v1/lots?ids={lot_id}"))["items"][0]) == 41


async def test_an_override_saved_with_a_callers_token_is_relayed_and_logged_as_them(
    start_gateway, caplog
):
    gw = await start_gateway(auth={"upstream_tokens": "write"})
    lot_id = next(iter(gw.sandbox.data.lots))
    token = gw.sandbox.issue_tokens("bob")["access_token"]
    gw.sandbox.reset_stats()
    with caplog.at_level("INFO", logger="gateway.overrides"):
        resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 8},
                                    headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    assert gw.sandbox.callers[("PUT /api/Lot/{id}", "bob")] == 1
    assert '"actor": "bob"' in caplog.text and token not in caplog.text


async def test_the_gateway_signs_in_as_the_sdk_does(start_gateway):
    gw = await start_gateway()
    claims = jwt.decode(await gw.app[TOKENS].token(), options={"verify_signature": False})
    assert claims["preferred_username"] == "gateway" and claims["scope"] == "offline_access"
    assert "client_id" not in claims  # unset client fields are left out, not sent empty
