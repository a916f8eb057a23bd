"""The JSON edge: the drop-in mirror of the upstream API, /api/v1, health and metrics.

Every route is declared once in ROUTES (gateway/routes.py): add_routes registers them and
the OpenAPI document at /openapi.json is generated from the same list. The mirror's routes
are the upstream's own operations (gateway/contract.py), with their query parameters
checked by the types the upstream document gives. Handlers parse their parameters, call one
domain method, and render its answer here, as bytes. Every error leaves as
application/problem+json (see problem_middleware).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiohttp import web

from gateway import contract, keys, params, schemas
from gateway.access import audit
from gateway.auth import require_write
from gateway.cache import Lookup, etag_of, etags_in
from gateway.errors import GatewayError, PayloadTooLarge, RequestTimeout, Unauthorized
from gateway.openapi import document, version
from gateway.overrides import MAX_BODY_BYTES, parse_changes
from gateway.reads import MAX_IDS, MAX_PAGE_SIZE, EventPage, LotBatch, View
from gateway.representations import Forms, negotiate
from gateway.routes import Handler, Route, Warm, other_methods
from gateway.state import (
    CALLER,
    CLIENT_NAME,
    CONFIG,
    METRICS,
    PAGES,
    READINESS,
    READS,
    WRITES,
)
from gateway.upstream.client import Answer
from gateway.wire import Cached, Fixed, Parts

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


def cached_answer(
    request: web.BaseRequest, forms: Forms, cache: str, age_s: float | None, ttl_s: float,
    parts: Parts = (),
) -> Cached:
    """200 with the body in the form the client takes (compressed when it asks and the body
    is large enough: gateway/representations.py), or 304 when the client already holds that
    form's ETag. Its fixed headers are decided once per form, status and X-Cache, and kept
    with the form (gateway/wire.py). (The request is a BaseRequest: the hot path,
    gateway/hot.py, answers before routing, so `request.app` is not there; what is needed
    of the app is passed.)"""
    coding = negotiate(request.headers.get("Accept-Encoding", ""), len(forms.body))
    body, etag = forms.form(coding)
    if_none_match = request.headers.get("If-None-Match")
    fresh = bool(if_none_match) and etag in etags_in(if_none_match)
    fixed = forms.derive((coding, fresh, cache), lambda: _fixed(body, etag, coding, fresh,
                                                                 cache))
    return Cached(fixed, age_s, ttl_s, parts)


def _fixed(body: bytes, etag: str, coding: str | None, fresh: bool, cache: str) -> Fixed:
    headers = {"ETag": etag, "X-Cache": cache, "Cache-Control": "no-cache",
               "Vary": "Accept-Encoding"}
    if fresh:  # the client holds these bytes: 304, no body
        return Fixed(304, headers, b"")
    headers["Content-Type"] = JSON
    if coding is not None:
        headers["Content-Encoding"] = coding
    return Fixed(200, headers, body)


def lookup_answer(app: web.Application, request: web.BaseRequest, lookup: Lookup,
                  kind: str = "") -> Cached:
    """The answer of one lookup; with `kind` (its key's), one the hot path may keep."""
    entry = lookup.entry
    forms = entry.derive("forms", lambda body: Forms(body, entry.etag))
    return cached_answer(request, forms, lookup.result.header, lookup.age_s,
                         app[CONFIG].cache.ttl_s, ((kind, entry),) if kind else ())


def view_response(request: web.Request, view: View) -> web.Response:
    body = json.dumps(view.payload, separators=(",", ":")).encode()
    return cached_answer(request, Forms(body, etag_of(body)), view.cache, view.age_s,
                         request.app[CONFIG].cache.ttl_s).response()


def batch_answer(app: web.Application, request: web.BaseRequest, batch: LotBatch,
                 held_s: float = 0.0, *, keep: bool = False) -> Cached:
    """Lots (and for an event page, its catalog and paging) as one JSON body whose ETag
    derives from its parts' ETags: it changes whenever any part does. Assembled once for
    the same parts (app[PAGES]); a page with errors or stale parts is assembled anew.
    With `keep`, one the hot path may keep when it is made of fresh hits alone."""
    if batch.errors or batch.stale_ids:
        forms = assemble(batch)
    else:  # once per batch (a kept page's copies share it), once per set of parts
        forms = batch.derived("forms", lambda: app[PAGES].get(
            tuple(lk.entry for lk in batch.parts),
            batch.paging if isinstance(batch, EventPage) else None,
            lambda: assemble(batch)))
    age_s = batch.age_s  # a kept batch handed out as it is: `held_s` older than it says
    return cached_answer(request, forms, batch.cache, None if age_s is None else age_s + held_s,
                         app[CONFIG].cache.ttl_s, batch.entries if keep and batch.reusable else ())


def assemble(batch: LotBatch) -> Forms:
    """The batch's JSON body, from its parts' bytes as they are."""
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
    return Forms(body, combined_etag([lk.entry.etag for lk in batch.parts], extra))


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


# --- the audit trail of writes -------------------------------------------------------------------


_READS = ("GET", "HEAD")
_SHOWN_PATH = 200  # characters of a raw path an audit or log line shows at most


@dataclass
class Written:
    """What a write handler tells its audit line; `audited` adds the rest. outcome None:
    from the answer's status ("ok" for a 2xx, else "status_<n>", as the upstream said)."""

    targets: list[int | str]
    outcome: str | None = None
    changes: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


WriteHandler = Callable[[web.Request, Written], Awaitable[web.StreamResponse]]


def audited(action: str) -> Callable[[WriteHandler], Handler]:
    """A write handler that leaves one audit line (`gateway.access.audit`) however it ends:
    with its answer, or with the refusal or failure it raised (403 for a read-only caller,
    400, 408, 413, an upstream error ...: outcome `refused_outcome`). The line has the
    request id, the caller and how it authenticated, the action, the target ids (the path's
    id unless the handler names others), the outcome and the status answered. A read
    through the same handler (GET or HEAD on a pass-through path) leaves none."""

    def wrap(handler: WriteHandler) -> Handler:
        @functools.wraps(handler)
        async def write(request: web.Request) -> web.StreamResponse:
            written = Written(path_ids(request))
            if request.method in _READS:
                return await handler(request, written)
            try:
                response = await handler(request, written)
            except (GatewayError, web.HTTPException) as exc:
                outcome = written.outcome or refused_outcome(exc.status)
                await _record(request, action, written, outcome, exc.status)
                raise
            status = response.status
            outcome = written.outcome or ("ok" if 200 <= status < 300 else f"status_{status}")
            await _record(request, action, written, outcome, status)
            return response

        return write

    return wrap


async def _record(
    request: web.Request, action: str, written: Written, outcome: str, status: int
) -> None:
    await audit(request, action, targets=written.targets, outcome=outcome,
                changes=written.changes, status=status, **written.extra)


def refused_outcome(status: int) -> str:
    """The outcome of a write the gateway did not carry out, by the status it answered."""
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not_found"
    if status in (409, 412):
        return "conflict"
    if status >= 500:
        return "upstream_error"
    return "rejected"  # 400, 401, 405, 408, 413, 415, 422, ...


def path_ids(request: web.Request) -> list[int | str]:
    """The id in the request's path, if it has a well-formed one."""
    if "id" not in request.match_info:
        return []
    try:
        return [ID.read(request.match_info)]
    except GatewayError:
        return []


def created_ids(answer: Answer) -> list[int | str]:
    """The id of what a create made, from the upstream's answer (none if it failed)."""
    if not 200 <= answer.status < 300:
        return []
    try:
        created = json.loads(answer.body)
    except ValueError:
        return []
    ident = created.get("id") if isinstance(created, dict) else None
    return [ident] if isinstance(ident, int) else []


def bulk_catalog_ids(body: bytes) -> list[int | str]:
    """The customer catalog ids a bulk insert names (its answer names no ids), at most 100."""
    try:
        bulk = json.loads(body)
    except ValueError:
        return []
    catalogs = bulk.get("catalogs") if isinstance(bulk, dict) else None
    if not isinstance(catalogs, list):
        return []
    ids = [c.get("customerCatalogId") for c in catalogs[:100] if isinstance(c, dict)]
    return [i if isinstance(i, int) else i[:100] for i in ids if isinstance(i, int | str)]


# --- drop-in mirror ----------------------------------------------------------------------------


def check_query(request: web.Request, operation: contract.Operation) -> list[tuple[str, str]]:
    """The query as the upstream's document spells it, in the order given.

    Names are matched in any case (as the upstream's ASP.NET does) and renamed to the
    document's spelling, so `pagesize=5` and `PageSize=5` are one request. Refused with a
    400 naming the parameter, before anything is sent: a name the operation does not accept
    (contract: the document's, plus those ABConnect itself sends), a value of the wrong
    type, a parameter given twice in any case (only an array, e.g. `SellerIds`, may
    repeat), a `PageSize` above `limits.max_page_size`. An empty value is passed on
    unchecked: the upstream reads it as not given."""
    max_page_size = request.app[CONFIG].limits.max_page_size
    query: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in request.query.items():
        param = operation.query_parameter(name)
        if param is None:
            accepted = ", ".join(p.name for p in operation.query)
            raise params.BadRequest(f"unknown query parameter {params.shown(name)}; "
                                    f"{operation.path} accepts {accepted}")
        if param.name in seen and not isinstance(param, contract.IntList):
            raise params.BadRequest(f"{param.name} may be given only once")
        seen.add(param.name)
        if value == "":
            pass
        elif param.name == contract.PAGE_SIZE:
            params.parse_int(param.name, value, 1, max_page_size)
        else:
            param.parse(value)
        query.append((param.name, value))
    return query


def mirror_get_one(operation: contract.Operation) -> Handler:
    async def get_one(request: web.Request) -> web.Response:
        ident = ID.read(request.match_info)
        lookup = await request.app[READS].resource(operation.resource, ident)
        return lookup_answer(request.app, request, lookup).response()

    return get_one


def mirror_get_one_warm(operation: contract.Operation) -> Warm:
    kind = keys.one(operation.resource, 0)[0]

    def get_one_now(app: web.Application, request: web.BaseRequest,
                    match: Mapping[str, str]) -> Cached | None:
        lookup = app[READS].resource_now(operation.resource, ID.read(match))
        return None if lookup is None else lookup_answer(app, request, lookup, kind)

    return get_one_now


def mirror_get_list(operation: contract.Operation) -> Handler:
    async def get_list(request: web.Request) -> web.Response:
        """Only the query parameters listed here are accepted, their names in any case;
        any other is refused with 400, as is a parameter given twice (an array may
        repeat) and a `PageSize` above the gateway's `limits.max_page_size`."""
        query = check_query(request, operation)
        lookup = await request.app[READS].listing(operation.resource, query)
        return lookup_answer(request.app, request, lookup).response()

    return get_list


def relayed(answer: Answer) -> web.Response:
    """The upstream's answer to a passed-through request, as it came."""
    headers = {"Content-Type": answer.content_type} if answer.content_type else {}
    return web.Response(status=answer.status, body=answer.body or None, headers=headers)


def mirror_create(op: contract.Operation) -> Handler:
    @audited("create")
    async def create(request: web.Request, written: Written) -> web.Response:
        token = writer_token(request)
        body = await read_body(request, MAX_PUT_BYTES)
        answer = await request.app[WRITES].create(op.resource, body, token)
        written.targets = created_ids(answer)
        return relayed(answer)

    return create


def mirror_update(op: contract.Operation) -> Handler:
    @audited("update")
    async def update(request: web.Request, written: Written) -> web.Response:
        ident, token = ID.read(request.match_info), writer_token(request)
        body = await read_body(request, MAX_PUT_BYTES)
        return relayed(await request.app[WRITES].update(op.resource, ident, body, token))

    return update


def mirror_delete(op: contract.Operation) -> Handler:
    @audited("delete")
    async def delete(request: web.Request, written: Written) -> web.Response:
        ident, token = ID.read(request.match_info), writer_token(request)
        return relayed(await request.app[WRITES].delete(op.resource, ident, token))

    return delete


@audited("bulk_insert")
async def mirror_bulk_insert(request: web.Request, written: Written) -> web.Response:
    token = writer_token(request)
    body = await read_body(request, MAX_PUT_BYTES)
    written.targets = bulk_catalog_ids(body)
    return relayed(await request.app[WRITES].bulk_insert(body, token))


async def mirror_get_overrides(request: web.Request) -> web.Response:
    """A read sent as POST: passed through, never cached (a lot write would outdate it)."""
    body = await read_body(request, MAX_PUT_BYTES)
    answer = await request.app[READS].uncached(
        "POST", "/api/Lot/get-overrides", (), body, endpoint="/api/Lot/get-overrides"
    )
    return relayed(answer)


@audited("pass_through")
async def pass_through(request: web.Request, written: Written) -> web.Response:
    """Any other /api/ path (the API grows): passed on unchanged and never cached. A read
    goes with the gateway's token; anything else is a write the gateway cannot see into,
    so everything cached before it is outdated."""
    allowed = await other_methods(request)
    if allowed:  # a path of the document, with a method it does not have
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    path, params = request.path, list(request.query.items())
    if request.method in _READS:
        body = await read_body(request, MAX_PUT_BYTES) if request.can_read_body else None
        answer = await request.app[READS].uncached(request.method, path, params, body,
                                                   endpoint="other")
        return relayed(answer)
    written.extra["path"] = path[:_SHOWN_PATH]
    token = writer_token(request)
    body = await read_body(request, MAX_PUT_BYTES) if request.can_read_body else None
    return relayed(await request.app[WRITES].unknown(request.method, path, params, body, token))


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
            warm=mirror_get_one_warm(op) if op.method == "GET" and one else None,
        ))
    return routes


# --- gateway-native /api/v1 ----------------------------------------------------------------------


async def v1_event_lots(request: web.Request) -> web.Response:
    catalog_id = ID.read(request.match_info)
    page = await request.app[READS].event_page(
        catalog_id, PAGE.read(request.query), PAGE_SIZE.read(request.query)
    )
    return batch_answer(request.app, request, page).response()


def v1_event_lots_warm(app: web.Application, request: web.BaseRequest,
                       match: Mapping[str, str]) -> Cached | None:
    query = request.query
    kept = app[READS].event_page_now(ID.read(match), PAGE.read(query), PAGE_SIZE.read(query))
    return None if kept is None else batch_answer(app, request, *kept, keep=True)


async def v1_lots(request: web.Request) -> web.Response:
    lots = await request.app[READS].lots(LOT_IDS.read(request.query))
    return batch_answer(request.app, request, lots).response()


def v1_lots_warm(app: web.Application, request: web.BaseRequest,
                 match: Mapping[str, str]) -> Cached | None:
    kept = app[READS].lots_now(LOT_IDS.read(request.query))
    return None if kept is None else batch_answer(app, request, *kept, keep=True)


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
    """The whole request body, however it arrives (in several TCP segments, chunked).

    413 as soon as it is known to exceed `limit` bytes: from Content-Length before reading,
    or once more than `limit` bytes have come. 408 if it has not all come within
    server.read_timeout_s (a client that sends its headers, then stalls)."""
    too_large = f"the body is at most {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(too_large)
    timeout_s = request.app[CONFIG].server.read_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(too_large)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


@audited("override")
async def v1_save_override(request: web.Request, written: Written) -> web.Response:
    lot_id, token = ID.read(request.match_info), writer_token(request)
    try:
        changes = parse_changes(await read_body(request, MAX_BODY_BYTES))
    except GatewayError:
        request.app[METRICS].overrides.labels("rejected").inc()
        raise
    written.changes = changes
    saved = await request.app[WRITES].save_override(
        lot_id, changes, actor=request.get(CLIENT_NAME) or "anonymous",
        if_match=request.headers.get("If-Match"), token=token,
    )
    written.outcome = "saved" if saved.changes else "unchanged"
    return web.Response(body=saved.body, headers={"ETag": saved.etag, "Content-Type": JSON})


# --- health, metrics, this document -----------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when an upstream token can be had (answer reused for a second or two). Why
    not goes to the log, not to whoever asks."""
    try:
        await request.app[READINESS]()
    except GatewayError as exc:
        log.warning("not ready: upstream token not obtainable: %s", exc.detail)
        return problem(503, "Not Ready", "upstream token not obtainable")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """On the API port unless server.admin_port serves it (gateway/admin.py)."""
    if request.app[CONFIG].server.admin_port:
        raise web.HTTPNotFound()
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
          errors=(400, 401, 404, *_UPSTREAM_ERRORS), warm=v1_event_lots_warm),
    Route("GET", "/api/v1/lots", v1_lots, "Several lots at once, in the order asked",
          params=(LOT_IDS,), answer=schemas.LotBatch, cached=True,
          errors=(400, 401, *_UPSTREAM_ERRORS), warm=v1_lots_warm),
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
        return refusal(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, exc.text or exc.reason,
                       {k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        log.exception("unhandled error on %s %s", request.method,
                      request.path[:_SHOWN_PATH])
        return problem(500, "Internal Server Error", "unexpected error; see the gateway log")


def refusal(exc: GatewayError) -> web.Response:
    """A GatewayError as its problem+json answer (also the hot path's, gateway/hot.py)."""
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="catalog-gateway"'
    if exc.retry_after is not None:
        # Rounded up: a client told to come back must not come back too early.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    response = problem(exc.status, exc.title, exc.detail, headers)
    if isinstance(exc, RequestTimeout):
        response.force_close()  # no keep-alive for a client this slow
    return response


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    # Last: any other /api/ path but the gateway's own /api/v1 is the upstream's.
    app.router.add_route("*", PASS_THROUGH, pass_through)


PASS_THROUGH = r"/api/{path:(?!v1/)[^{}]*}"
