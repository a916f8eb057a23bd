"""JSON routes: the drop-in mirror of the upstream API, /api/v1, health and metrics.

Handlers parse and validate parameters, call one CatalogService method, and render.
Every error leaves as application/problem+json (see problem_middleware).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.auth import CLIENT_NAME
from gateway.cache import Lookup, etag_of, etags_in
from gateway.catalog import RESOURCES, CatalogService, LotBatch, View
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, Unauthorized
from gateway.metrics import Metrics
from gateway.openapi import openapi_json
from gateway.overrides import MAX_BODY_BYTES, parse_changes

log = logging.getLogger(__name__)

CATALOG = web.AppKey("catalog", CatalogService)
METRICS = web.AppKey("metrics", Metrics)
# Readiness check: a token can be had. app.py wraps TokenProvider.token in async-lru
# (one key, short fixed TTL, concurrent probes share one call, failures not kept): the
# one place where a plain memoising cache is exactly what is needed.
READINESS = web.AppKey("readiness", Callable[[], Awaitable[str]])

MAX_ID = 2**31 - 1
_INTEGER = re.compile(r"-?[0-9]{1,18}")
MAX_PAGE_SIZE = 100
MAX_IDS = 100
JSON = "application/json; charset=utf-8"
PROBLEM = "application/problem+json"

# --- rendering ---------------------------------------------------------------------------


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
    ages = [lk.age_s for lk in batch.lookups]
    age = max(ages) if ages else None
    return cached_response(request, batch.body(), batch.etag, batch.cache, age)


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status, body=json.dumps(body).encode(),
        headers={"Content-Type": PROBLEM, **(headers or {})},
    )



# --- parameters ----------------------------------------------------------------------------


def parse_id(text: str, name: str = "id") -> int:
    # ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses.
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_ID:
        raise BadRequest(f"{name} must be a positive integer, got {text[:40]!r}")
    return int(text)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not _INTEGER.fullmatch(text):  # int() would also take " 7", "1_0" and "١٠"
        raise BadRequest(f"{name} must be an integer, got {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name, "").lower()
    if text == "":
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, got {text[:40]!r}")


def paging(request: web.Request) -> tuple[int, int]:
    page = int_param(request, "page", 1, 1, 10**6)
    return page, int_param(request, "page_size", 25, 1, MAX_PAGE_SIZE)


# --- drop-in mirror --------------------------------------------------------------------------


def mirror_get_one(resource: str) -> Callable:
    async def get_one(request: web.Request) -> web.Response:
        ident = parse_id(request.match_info["id"])
        return lookup_response(request, await request.app[CATALOG].resource(resource, ident))

    return get_one


def mirror_get_list(resource: str) -> Callable:
    async def get_list(request: web.Request) -> web.Response:
        # Query names and values are passed on unchanged (an existing client may send
        # filters we do not know); the paging ones are checked so a typo is a 400 here.
        for name in ("PageNumber", "PageSize"):
            int_param(request, name, 1, 1, 10**6)
        params = [(k, v) for k, v in request.query.items()]
        return lookup_response(request, await request.app[CATALOG].listing(resource, params))

    return get_list


async def v1_event_lots(request: web.Request) -> web.Response:
    catalog_id = parse_id(request.match_info["id"])
    page, page_size = paging(request)
    page_view = await request.app[CATALOG].event_page(catalog_id, page, page_size)
    return batch_response(request, page_view)


async def v1_lots(request: web.Request) -> web.Response:
    text = request.query.get("ids", "")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise BadRequest("ids is required: a comma-separated list of lot ids")
    if len(parts) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids per request, got {len(parts)}")
    ids = [parse_id(p, "ids") for p in parts]
    return batch_response(request, await request.app[CATALOG].lots(ids))


async def v1_sellers(request: web.Request) -> web.Response:
    page, page_size = paging(request)
    q = request.query.get("q", "")
    if len(q) > 200:
        raise BadRequest("q must be at most 200 characters")
    return view_response(request, await request.app[CATALOG].sellers(q, page, page_size))


async def v1_seller_events(request: web.Request) -> web.Response:
    seller_id = parse_id(request.match_info["id"])
    page, page_size = paging(request)
    include_past = bool_param(request, "include_past", False)
    view = await request.app[CATALOG].seller_events(seller_id, include_past, page, page_size)
    return view_response(request, view)


# --- writes ------------------------------------------------------------------------------


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    return body


def actor(request: web.Request) -> str:
    """Who is writing, for the save log: the API key's name, never the key."""
    return request.get(CLIENT_NAME) or "anonymous"


async def v1_save_override(request: web.Request) -> web.Response:
    lot_id = parse_id(request.match_info["id"])
    try:
        changes = parse_changes(await read_body(request, MAX_BODY_BYTES))
    except GatewayError:
        request.app[METRICS].overrides.labels("rejected").inc()
        raise
    saved = await request.app[CATALOG].save_override(
        lot_id, changes, actor=actor(request), if_match=request.headers.get("If-Match")
    )
    return web.Response(body=saved.body, headers={"ETag": saved.etag, "Content-Type": JSON})


async def mirror_put_lot(request: web.Request) -> web.Response:
    lot_id = parse_id(request.match_info["id"])
    body = await read_body(request, 1024 * 1024)
    answer = await request.app[CATALOG].put_lot(lot_id, body)
    return web.Response(body=answer, headers={"Content-Type": JSON})


# --- health and metrics ------------------------------------------------------------------------


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


# --- errors ------------------------------------------------------------------------------------


@web.middleware
async def problem_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every failure becomes problem+json; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except GatewayError as exc:
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="catalog-gateway"'
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
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
    r = app.router
    for resource in RESOURCES:
        r.add_get(f"/api/{resource}", mirror_get_list(resource))
        r.add_get(f"/api/{resource}/{{id}}", mirror_get_one(resource))
    r.add_put("/api/Lot/{id}", mirror_put_lot)
    r.add_get("/api/v1/catalogs/{id}/lots", v1_event_lots)
    r.add_get("/api/v1/lots", v1_lots)
    r.add_post("/api/v1/lots/{id}/override", v1_save_override)
    r.add_get("/api/v1/sellers", v1_sellers)
    r.add_get("/api/v1/sellers/{id}/events", v1_seller_events)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi_json)
