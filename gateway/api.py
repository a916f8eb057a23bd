"""The JSON edge: the drop-in mirror of the upstream API, /api/v1, health and metrics.

Every route is declared once in ROUTES (gateway/routes.py): add_routes registers them and
the OpenAPI document at /openapi.json is generated from the same list. The mirror's routes
are the upstream's own operations (gateway/contract.py), with their query parameters
checked by the types the upstream document gives. Handlers parse their parameters, call one
domain method, and render its answer here, as bytes. Every error leaves as
application/problem+json (see problem_middleware).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from functools import cache

from aiohttp import web

from gateway import contract, params, schemas
from gateway.auth import require_write
from gateway.cache import Lookup, etag_of, etags_in
from gateway.errors import GatewayError, PayloadTooLarge, Unauthorized
from gateway.openapi import document, version
from gateway.overrides import MAX_BODY_BYTES, parse_changes
from gateway.reads import MAX_IDS, MAX_PAGE_SIZE, EventPage, LotBatch, View
from gateway.routes import Handler, Route, other_methods
from gateway.state import CALLER, CLIENT_NAME, METRICS, READINESS, READS, WRITES
from gateway.upstream.client import Answer

log = logging.getLogger(__name__)

MAX_PUT_BYTES = 1024 * 1024  # body of a drop-in write
JSON = "application/json; charset=utf-8"
_UPSTREAM_ERRORS = (502, 503, 504)
PROBLEM = "application/problem+json"

# The parameters of the /api/v1 routes: each parses itself and documents itself.
ID = params.PathId("id", "The resource id.")
PAGE = params.Int("page", "Page number, from 1.", fallback=1)
PAGE_SIZE = params.Int("page_size", "Items per page.", hi=MAX_PAGE_SIZE, fallback=25)
LOT_IDS = params.IdList("ids", "Lot ids, comma-separated, answered in this order.",
                        max_items=MAX_IDS)
SELLER_QUERY = params.Text("q", "Part of the seller's name (any case), or the start of its "
                           "display id; empty lists every seller.", max_length=200)
INCLUDE_PAST = params.Bool("include_past", "Past events too, after the upcoming ones.")


# --- rendering -------------------------------------------------------------------------------


def cached_response(
    request: web.Request, body: bytes, etag: str, cache: str, age_s: float | None = None
) -> web.Response:
    """200 with the body, or 304 when the client already holds this ETag."""
    headers = {"ETag": etag, "X-Cache": cache, "Cache-Control": "no-cache"}
    if age_s is not None and cache == "STALE":
        headers["Age"] = str(int(age_s))
    if etag in etags_in(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": JSON})


def lookup_response(request: web.Request, lookup: Lookup) -> web.Response:
    entry = lookup.entry
    return cached_response(request, entry.body, entry.etag, lookup.result.header, lookup.age_s)


def view_response(request: web.Request, view: View) -> web.Response:
    body = json.dumps(view.payload, separators=(",", ":")).encode()
    return cached_response(request, body, etag_of(body), view.cache, view.age_s)


def batch_response(request: web.Request, batch: LotBatch) -> web.Response:
    """Lots (and for an event page, its catalog and paging) as one JSON body whose ETag
    derives from its parts' ETags: it changes whenever any part does."""
    items = b"[" + b",".join(lk.entry.body for lk in batch.lookups) + b"]"
    errors = json.dumps([o.error_json() for o in batch.errors]).encode()
    stale = json.dumps(batch.stale_ids).encode()
    tail = b',"errors":' + errors + b',"staleLotIds":' + stale
    if isinstance(batch, EventPage):
        envelope = json.dumps(batch.paging.envelope(), separators=(",", ":"))[1:-1].encode()
        body = (b'{"catalog":' + batch.catalog.entry.body + b',"items":' + items + tail
                + b"," + envelope + b"}")
        extra = tail + repr(batch.paging).encode()
    else:
        body, extra = b'{"items":' + items + tail + b"}", tail
    etag = combined_etag([lk.entry.etag for lk in batch.parts], extra)
    return cached_response(request, body, etag, batch.cache, batch.age_s)


def combined_etag(tags: Sequence[str], extra: bytes) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for tag in tags:
        digest.update(tag.encode())
    digest.update(extra)
    return '"' + digest.hexdigest() + '"'


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status, body=json.dumps(body).encode(),
        headers={"Content-Type": PROBLEM, **(headers or {})},
    )


# --- drop-in mirror ----------------------------------------------------------------------------


def check_query(request: web.Request, operation: contract.Operation) -> None:
    """Each parameter the upstream declares must have its declared type (names matched in
    any case, as the upstream's ASP.NET does). Everything is passed on unchanged: a
    client may send filters the document does not name (the SDK sends CustomerCatalogId)."""
    by_name = {p.name.lower(): p for p in operation.query}
    for name, value in request.query.items():
        param = by_name.get(name.lower())
        if param is not None and value != "":
            param.parse(value)


def mirror_get_one(operation: contract.Operation) -> Handler:
    async def get_one(request: web.Request) -> web.Response:
        ident = ID.read(request.match_info)
        lookup = await request.app[READS].resource(operation.resource, ident)
        return lookup_response(request, lookup)

    return get_one


def mirror_get_list(operation: contract.Operation) -> Handler:
    async def get_list(request: web.Request) -> web.Response:
        check_query(request, operation)
        lookup = await request.app[READS].listing(operation.resource, list(request.query.items()))
        return lookup_response(request, lookup)

    return get_list


def relayed(answer: Answer) -> web.Response:
    """The upstream's answer to a passed-through request, as it came."""
    headers = {"Content-Type": answer.content_type} if answer.content_type else {}
    return web.Response(status=answer.status, body=answer.body or None, headers=headers)


def mirror_create(op: contract.Operation) -> Handler:
    async def create(request: web.Request) -> web.Response:
        token = writer_token(request)
        body = await read_body(request, MAX_PUT_BYTES)
        return relayed(await request.app[WRITES].create(op.resource, body, token))

    return create


def mirror_update(op: contract.Operation) -> Handler:
    async def update(request: web.Request) -> web.Response:
        ident, token = ID.read(request.match_info), writer_token(request)
        body = await read_body(request, MAX_PUT_BYTES)
        return relayed(await request.app[WRITES].update(op.resource, ident, body, token))

    return update


def mirror_delete(op: contract.Operation) -> Handler:
    async def delete(request: web.Request) -> web.Response:
        ident, token = ID.read(request.match_info), writer_token(request)
        return relayed(await request.app[WRITES].delete(op.resource, ident, token))

    return delete


async def mirror_bulk_insert(request: web.Request) -> web.Response:
    token = writer_token(request)
    body = await read_body(request, MAX_PUT_BYTES)
    return relayed(await request.app[WRITES].bulk_insert(body, token))


async def mirror_get_overrides(request: web.Request) -> web.Response:
    """A read sent as POST: passed through, never cached (a lot write would outdate it)."""
    body = await read_body(request, MAX_PUT_BYTES)
    answer = await request.app[READS].uncached(
        "POST", "/api/Lot/get-overrides", (), body, endpoint="/api/Lot/get-overrides"
    )
    return relayed(answer)


async def pass_through(request: web.Request) -> web.Response:
    """Any other /api/ path (the API grows): passed on unchanged and never cached. A read
    goes with the gateway's token; anything else is a write the gateway cannot see into,
    so everything cached before it is outdated."""
    allowed = await other_methods(request)
    if allowed:  # a path of the document, with a method it does not have
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    path, params = request.path, list(request.query.items())
    body = await read_body(request, MAX_PUT_BYTES) if request.can_read_body else None
    if request.method in ("GET", "HEAD"):
        answer = await request.app[READS].uncached(request.method, path, params, body,
                                                   endpoint="other")
    else:
        answer = await request.app[WRITES].unknown(request.method, path, params, body,
                                                   writer_token(request))
    return relayed(answer)


def writer_token(request: web.Request) -> str | None:
    """A write is allowed to this caller (else 403); the caller's own upstream token to
    relay it with, or None to write as the gateway's service account."""
    require_write(request)
    caller = request.get(CALLER)
    return caller.token if caller is not None else None


def mirror_routes() -> list[Route]:
    """Every operation of the upstream's document, each with its handler."""
    routes = []
    for op in contract.OPERATIONS:
        one = "{id}" in op.path
        if op.method == "GET":
            handler = mirror_get_one(op) if one else mirror_get_list(op)
        elif op.path == "/api/Lot/get-overrides":
            handler = mirror_get_overrides
        elif op.path == "/api/Bulk/insert":
            handler = mirror_bulk_insert
        elif op.method == "POST":
            handler = mirror_create(op)
        elif op.method == "PUT":
            handler = mirror_update(op)
        else:
            handler = mirror_delete(op)
        writes = (403, 413) if op.method != "GET" else ()
        routes.append(Route(
            op.method, op.path, handler, op.summary or f"{op.method} {op.path}",
            params=(ID,) if one else (),
            errors=(400, 401, 404, *writes, *_UPSTREAM_ERRORS),
            cached=op.method == "GET", operation=op, tag="mirror",
        ))
    return routes


# --- gateway-native /api/v1 ----------------------------------------------------------------------


async def v1_event_lots(request: web.Request) -> web.Response:
    catalog_id = ID.read(request.match_info)
    page = await request.app[READS].event_page(
        catalog_id, PAGE.read(request.query), PAGE_SIZE.read(request.query)
    )
    return batch_response(request, page)


async def v1_lots(request: web.Request) -> web.Response:
    return batch_response(request, await request.app[READS].lots(LOT_IDS.read(request.query)))


async def v1_sellers(request: web.Request) -> web.Response:
    q = request.query
    view = await request.app[READS].sellers(
        SELLER_QUERY.read(q), PAGE.read(q), PAGE_SIZE.read(q)
    )
    return view_response(request, view)


async def v1_seller_events(request: web.Request) -> web.Response:
    seller_id = ID.read(request.match_info)
    q = request.query
    view = await request.app[READS].seller_events(
        seller_id, INCLUDE_PAST.read(q), PAGE.read(q), PAGE_SIZE.read(q)
    )
    return view_response(request, view)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    return body


async def v1_save_override(request: web.Request) -> web.Response:
    lot_id, token = ID.read(request.match_info), writer_token(request)
    try:
        changes = parse_changes(await read_body(request, MAX_BODY_BYTES))
    except GatewayError:
        request.app[METRICS].overrides.labels("rejected").inc()
        raise
    saved = await request.app[WRITES].save_override(
        lot_id, changes, actor=request.get(CLIENT_NAME) or "anonymous",
        if_match=request.headers.get("If-Match"), token=token,
    )
    return web.Response(body=saved.body, headers={"ETag": saved.etag, "Content-Type": JSON})


# --- health, metrics, this document -----------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Ready when an upstream token can be had (answer reused for a second or two)."""
    try:
        await request.app[READINESS]()
    except GatewayError as exc:
        return problem(503, "Not Ready", f"upstream token not obtainable: {exc.detail}")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return request.app[METRICS].exposition()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type="application/json")


@cache
def openapi_bytes() -> bytes:
    return json.dumps(document(ROUTES, version()), indent=1).encode()


ROUTES: tuple[Route, ...] = (
    *mirror_routes(),
    Route("GET", "/api/v1/catalogs/{id}/lots", v1_event_lots,
          "One page of an event's lots, with the event, in lot order",
          params=(ID, PAGE, PAGE_SIZE), answer=schemas.EventPage, cached=True,
          errors=(400, 401, 404, *_UPSTREAM_ERRORS)),
    Route("GET", "/api/v1/lots", v1_lots, "Several lots at once, in the order asked",
          params=(LOT_IDS,), answer=schemas.LotBatch, cached=True,
          errors=(400, 401, *_UPSTREAM_ERRORS)),
    Route("POST", "/api/v1/lots/{id}/override", v1_save_override,
          "Save an operator's corrections to a lot (read-merge-write, If-Match aware)",
          params=(ID,), body=schemas.LotOverride, answer=schemas.Lot,
          errors=(400, 401, 404, 412, 413, 422, *_UPSTREAM_ERRORS)),
    Route("GET", "/api/v1/sellers", v1_sellers, "Sellers, searched by name or display id",
          params=(SELLER_QUERY, PAGE, PAGE_SIZE), answer=schemas.SellerPage, cached=True,
          errors=(400, 401, *_UPSTREAM_ERRORS)),
    Route("GET", "/api/v1/sellers/{id}/events", v1_seller_events,
          "A seller's events: upcoming soonest first, then past ones if asked",
          params=(ID, INCLUDE_PAST, PAGE, PAGE_SIZE), answer=schemas.SellerEvents,
          cached=True, errors=(400, 401, 404, *_UPSTREAM_ERRORS)),
    Route("GET", "/healthz", healthz, "Liveness", answer=schemas.Health, open=True,
          tag="operations"),
    Route("GET", "/readyz", readyz, "Readiness: an upstream token can be had",
          answer=schemas.Ready, errors=(503,), open=True, tag="operations"),
    Route("GET", "/metrics", metrics, "Prometheus metrics",
          media_type="text/plain", open=True, tag="operations"),
    Route("GET", "/openapi.json", openapi_json, "This document", open=True,
          tag="operations"),
)


# --- errors ------------------------------------------------------------------------------------


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except GatewayError as exc:
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="catalog-gateway"'
        if exc.retry_after is not None:
            # Rounded up: a client told to come back must not come back too early.
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return problem(exc.status, exc.title, exc.detail, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, exc.text or exc.reason,
                       {k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "unexpected error; see the gateway log")


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    # Last: any other /api/ path but the gateway's own /api/v1 is the upstream's.
    app.router.add_route("*", PASS_THROUGH, pass_through)


PASS_THROUGH = r"/api/{path:(?!v1/)[^{}]*}"
