"""Compressed answers (gzip, br) and assembled pages kept for reuse: the bytes a client
decodes are the plain answer's, each form has its own strong ETag, a body is compressed once
per version, and a kept page never outlives a save of one of its lots."""

from __future__ import annotations

import gzip
import json

import brotli
import pytest

from gateway import representations
from gateway.representations import MIN_BYTES, negotiate
from gateway.state import PAGES


def a_page(gw) -> str:
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    return f"/api/v1/catalogs/{catalog_id}/lots?page_size=25"


async def fetch(gw, path: str, coding: str | None = None, **headers: str):
    """(status, headers, raw bytes as sent) for `path`, asking for `coding` (None: for the
    body as it is; the client would otherwise ask for gzip and br itself)."""
    headers["Accept-Encoding"] = coding or "identity"
    resp = await gw.client.get(path, headers=headers, auto_decompress=False)
    return resp.status, resp.headers, await resp.read()


DECODE = {"br": brotli.decompress, "gzip": gzip.decompress}


@pytest.mark.parametrize("coding", ["br", "gzip"])
async def test_a_compressed_page_decodes_to_the_plain_page(start_gateway, coding):
    gw = await start_gateway()
    path = a_page(gw)
    _, plain_headers, plain = await fetch(gw, path)
    status, headers, sent = await fetch(gw, path, coding)

    assert status == 200 and headers["Content-Encoding"] == coding
    assert DECODE[coding](sent) == plain
    assert len(sent) * 4 <= len(plain), (len(sent), len(plain))  # JSON compresses well
    assert headers["Vary"] == plain_headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in plain_headers
    suffix = {"br": "-br", "gzip": "-gz"}[coding]
    assert headers["ETag"] == plain_headers["ETag"][:-1] + suffix + '"'
    assert headers["X-Cache"] == "HIT" and headers["Cache-Status"].startswith(
        "catalog-gateway; hit")


async def test_each_form_answers_304_only_to_its_own_etag(start_gateway):
    gw = await start_gateway()
    path = a_page(gw)
    _, plain_headers, _ = await fetch(gw, path)
    _, br_headers, _ = await fetch(gw, path, "br")

    status, headers, body = await fetch(gw, path, "br", **{"If-None-Match": br_headers["ETag"]})
    assert status == 304 and body == b"" and headers["ETag"] == br_headers["ETag"]
    assert headers["Vary"] == "Accept-Encoding"
    # The plain form's tag does not stand for the compressed bytes, nor the other way.
    status, _, _ = await fetch(gw, path, "br", **{"If-None-Match": plain_headers["ETag"]})
    assert status == 200
    status, _, _ = await fetch(gw, path, None, **{"If-None-Match": br_headers["ETag"]})
    assert status == 200
    status, _, _ = await fetch(gw, path, None, **{"If-None-Match": plain_headers["ETag"]})
    assert status == 304


async def test_small_bodies_and_unwanted_codings_are_sent_as_they_are(start_gateway):
    gw = await start_gateway()
    lot_id = gw.sandbox.data.lot_ids_of_catalog(gw.sandbox.data.catalog_ids_with_lots(25)[0])[0]
    status, headers, body = await fetch(gw, f"/api/Lot/{lot_id}", "br, gzip")
    assert status == 200 and len(body) < MIN_BYTES
    assert "Content-Encoding" not in headers and headers["Vary"] == "Accept-Encoding"

    path = a_page(gw)
    for refused in ("identity", "br;q=0, gzip;q=0", "deflate", "compress"):
        status, headers, body = await fetch(gw, path, refused)
        assert status == 200 and "Content-Encoding" not in headers, refused
        assert body.startswith(b'{"catalog":')


async def test_a_body_is_compressed_once_per_version(start_gateway, monkeypatch):
    gw = await start_gateway()
    calls: list[int] = []
    compress = representations._CODERS["br"]
    monkeypatch.setitem(representations._CODERS, "br",
                        lambda body: calls.append(len(body)) or compress(body))
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    path = a_page(gw)
    catalog_path = f"/api/Catalog/{catalog_id}"
    for _ in range(5):
        assert (await fetch(gw, path, "br"))[0] == 200
        assert (await fetch(gw, catalog_path, "br"))[0] == 200
    assert len(calls) == 2  # the page once, the catalog once

    lot_id = gw.sandbox.data.lot_ids_of_catalog(catalog_id)[3]
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"qty": 7})
    assert resp.status == 200
    _, _, sent = await fetch(gw, path, "br")
    assert len(calls) == 3  # a new version of the page: compressed again, once
    lot = next(i for i in json.loads(brotli.decompress(sent))["items"]
               if i["id"] == lot_id)
    assert lot["overridenData"][0]["qty"] == 7


async def test_a_kept_page_is_reused_until_a_part_changes(start_gateway):
    gw = await start_gateway()
    catalog_id = gw.sandbox.data.catalog_ids_with_lots(25, 25)[0]
    path = a_page(gw)
    _, first_headers, first = await fetch(gw, path)
    _, again_headers, again = await fetch(gw, path)
    assert again == first and again_headers["ETag"] == first_headers["ETag"]
    assert len(gw.app[PAGES]) == 1  # one page kept, reused

    lot_id = gw.sandbox.data.lot_ids_of_catalog(catalog_id)[24]  # the page's last lot
    resp = await gw.client.post(f"/api/v1/lots/{lot_id}/override", json={"description": "new"})
    assert resp.status == 200
    _, headers, body = await fetch(gw, path)
    assert body != first and headers["ETag"] != first_headers["ETag"]
    assert b'"description":"new"' in body


def test_negotiation_follows_the_clients_weights():
    big = MIN_BYTES
    assert negotiate("br, gzip", big) == "br"
    assert negotiate("gzip, br", big) == "br"  # a tie: the smaller one
    assert negotiate("gzip;q=1, br;q=0.5", big) == "gzip"
    assert negotiate("br;q=0, gzip", big) == "gzip"
    assert negotiate("*", big) == "br"
    assert negotiate("*;q=0, gzip", big) == "gzip"
    assert negotiate("GZIP", big) == "gzip"
    assert negotiate("br;q=abc", big) is None  # a malformed weight: not acceptable
    assert negotiate("identity", big) is None
    assert negotiate("", big) is None
    assert negotiate("br", big - 1) is None  # too small to be worth it
