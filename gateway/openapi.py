"""The OpenAPI document of the gateway's JSON API, served as GET /openapi.json.

It describes every JSON route of gateway/api.py: the drop-in mirror of the upstream, the
gateway-native /api/v1 routes, health, readiness, metrics and this document itself. The
operator UI's HTML routes (`/`, `/ui/...`, `/static/...`, `/sign-in`, `/sign-out`) are not
part of it. tests/test_openapi.py checks that the document lists exactly the JSON routes the
app registers and fuzzes every operation from it against a running gateway.

The request limits below are the ones gateway/api.py enforces. They are repeated here, not
imported, because api.py imports this module; the tests compare both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aiohttp import web

from gateway.overrides import ALIASES, FIELDS, MAX_BODY_BYTES, MAX_TEXT

MAX_ID = 2**31 - 1
MAX_PAGE = 10**6  # page / PageNumber / PageSize upper bound
MAX_PAGE_SIZE = 100  # page_size of /api/v1 lists
MAX_IDS = 100  # ids per GET /api/v1/lots
MAX_QUERY = 200  # characters of q in GET /api/v1/sellers
MAX_PUT_BYTES = 1024 * 1024  # body of the drop-in PUT /api/Lot/{id}

JSON = "application/json"
PROBLEM = "application/problem+json"
API_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def _version() -> str:
    try:
        return metadata.version("catalog-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "0.0.0+source"


def _schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


# --- schemas -------------------------------------------------------------------------------

ID = {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_ID}
_KIND_TYPES = {"int": "integer", "number": "number", "text": "string", "bool": "boolean"}


def _override_field(kind: str, non_negative: bool) -> dict[str, Any]:
    """One LotDataDto field as an override accepts it (gateway/overrides.py `_check`)."""
    schema: dict[str, Any] = {"type": _KIND_TYPES[kind]}
    if kind == "int":
        schema.update(format="int32", minimum=0 if non_negative else -MAX_ID, maximum=MAX_ID)
    elif kind == "number" and non_negative:
        schema["minimum"] = 0
    elif kind == "text":
        schema["maxLength"] = MAX_TEXT
    return _nullable(schema)


_PAGING = {
    "pageNumber": {"type": "integer", "minimum": 1},
    "totalPages": {"type": "integer", "minimum": 0},
    "totalItems": {"type": "integer", "minimum": 0},
    "hasPreviousPage": {"type": "boolean"},
    "hasNextPage": {"type": "boolean"},
}
_V1_PAGING = {**_PAGING, "pageSize": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}}


def _upstream_page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"One page of {item} as the upstream answers it.",
        "required": ["items", *_PAGING],
        "properties": {"items": _array(_schema(item)), **_PAGING},
    }


def _v1_page(description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": [*properties, *_V1_PAGING],
        "properties": {**properties, **_V1_PAGING},
    }


_STALE_LOT_IDS = _array(
    {"type": "integer"},
    description="Ids of the lots in `items` served from an expired cache entry (the upstream "
                "failed, or one background call is refreshing them); X-Cache is then STALE.",
)


SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; every error of the gateway has this shape.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "example": "about:blank"},
            "title": {"type": "string", "example": "Bad Request"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
        },
    },
    "LotDataDto": {
        "type": "object",
        "description": "Measures and handling data of a lot, as the upstream reads it "
                       "(camelCase). Passed through as the upstream sent it.",
        "properties": {name: _nullable({"type": _KIND_TYPES[kind]})
                       for name, (kind, _non_negative) in FIELDS.items()},
    },
    "LotOverride": {
        "type": "object",
        "description": (
            "LotDataDto fields to lay over the lot's current override (`overridenData[0]`), "
            "camelCase as the upstream reads them. ABConnect's snake_case names are accepted "
            "too: " + ", ".join(f"`{snake}` for `{camel}`" for snake, camel in ALIASES.items())
            + "; a field given under both names is a 422. A field given `null` is removed "
            f"from the override. At least one field; texts at most {MAX_TEXT} characters; "
            "`qty`, `l`, `w`, `h`, `wgt` and `value` not negative; whole numbers for the "
            f"integer fields (`1.0` is accepted as 1). The body is at most {MAX_BODY_BYTES} "
            "bytes (64 KiB)."
        ),
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {name: _override_field(kind, non_negative)
                       for name, (kind, non_negative) in FIELDS.items()},
    },
    "ImageLinkDto": {
        "type": "object",
        "required": ["id", "link"],
        "properties": {"id": {"type": "integer"}, "link": {"type": "string"}},
    },
    "LotCatalogDto": {
        "type": "object",
        "required": ["catalogId", "lotNumber"],
        "properties": {"catalogId": {"type": "integer"}, "lotNumber": {"type": "string"}},
    },
    "LotDto": {
        "type": "object",
        "description": "A lot as the upstream answers it (relayed byte for byte).",
        "required": ["id", "initialData"],
        "properties": {
            "id": {"type": "integer"},
            "customerItemId": _nullable({"type": "string"}),
            "initialData": _schema("LotDataDto"),
            "overridenData": _array(_schema("LotDataDto")),
            "catalogs": _array(_schema("LotCatalogDto")),
            "imageLinks": _array(_schema("ImageLinkDto")),
        },
    },
    "UpdateLotRequest": {
        "type": "object",
        "description": (
            "The upstream's write model, passed through unchanged: the upstream validates it "
            "(a refusal is a 400). `overridenData` entries are LotDataDto, usually PascalCase "
            f"(`Qty`, `L`, `CPack`, `ForceCrate`, ...). At most {MAX_PUT_BYTES} bytes (1 MiB)."
        ),
        "properties": {
            "customerItemId": _nullable({"type": "string"}),
            "imageLinks": _array({"type": "string"}),
            "overridenData": _array({"type": "object"}),
            "catalogs": _array(_schema("LotCatalogDto")),
        },
    },
    "SellerDto": {
        "type": "object",
        "required": ["id", "customerDisplayId", "isActive"],
        "properties": {
            "id": {"type": "integer"},
            "name": _nullable({"type": "string"}),
            "customerDisplayId": {"type": "integer"},
            "isActive": {"type": "boolean"},
        },
    },
    "CatalogDto": {
        "type": "object",
        "description": "An event (catalog) without its sellers and lots.",
        "required": ["id", "startDate", "endDate", "isCompleted"],
        "properties": {
            "id": {"type": "integer"},
            "customerCatalogId": _nullable({"type": "string"}),
            "agent": _nullable({"type": "string"}),
            "title": _nullable({"type": "string"}),
            "startDate": {"type": "string", "format": "date-time"},
            "endDate": {"type": "string", "format": "date-time"},
            "isCompleted": {"type": "boolean"},
        },
    },
    "LotCatalogInformationDto": {
        "type": "object",
        "required": ["id", "lotNumber"],
        "properties": {"id": {"type": "integer"}, "lotNumber": {"type": "string"}},
    },
    "CatalogExpandedDto": {
        "allOf": [
            _schema("CatalogDto"),
            {
                "type": "object",
                "properties": {
                    "sellers": _array(_schema("SellerDto")),
                    "lots": _array(_schema("LotCatalogInformationDto"),
                                   description="The event's lots in lot order."),
                },
            },
        ],
    },
    "SellerExpandedDto": {
        "allOf": [
            _schema("SellerDto"),
            {"type": "object", "properties": {"catalogs": _array(_schema("CatalogDto"))}},
        ],
    },
    "SellerExpandedDtoPaginatedList": _upstream_page("SellerExpandedDto"),
    "CatalogExpandedDtoPaginatedList": _upstream_page("CatalogExpandedDto"),
    "LotDtoPaginatedList": _upstream_page("LotDto"),
    "LotError": {
        "type": "object",
        "description": "A lot that could not be read, reported beside the others.",
        "required": ["lotId", "status", "detail"],
        "properties": {
            "lotId": {"type": "integer"},
            "status": {"type": "integer", "description": "What a read of the lot alone "
                                                         "would have answered (404, 502...)."},
            "detail": {"type": "string"},
        },
    },
    "LotBatch": {
        "type": "object",
        "description": "Lots in the order asked; a lot that failed is in `errors` instead.",
        "required": ["items", "errors", "staleLotIds"],
        "properties": {
            "items": _array(_schema("LotDto")),
            "errors": _array(_schema("LotError")),
            "staleLotIds": _STALE_LOT_IDS,
        },
    },
    "EventPage": _v1_page(
        "One page of an event's lots in the catalog's lot order. A page past the end has no "
        "items.",
        catalog=_schema("CatalogExpandedDto"),
        items=_array(_schema("LotDto")),
        errors=_array(_schema("LotError")),
        staleLotIds=_STALE_LOT_IDS,
    ),
    "SellerSearchPage": _v1_page(
        "Sellers whose name contains `q` (any case) or whose display id starts with it.",
        items=_array(_schema("SellerExpandedDto")),
    ),
    "SellerEventsPage": _v1_page(
        "A seller's events: upcoming soonest first, then (with `include_past`) past ones, "
        "latest first.",
        seller=_schema("SellerDto"),
        items=_array(_schema("CatalogDto")),
    ),
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "ready"]},
            "pid": {"type": "integer", "description": "The answering worker's process id "
                                                      "(/healthz)."},
        },
    },
}

# --- parameters ----------------------------------------------------------------------------


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    """An optional query parameter; given empty (`page=`) it counts as not given."""
    return {"name": name, "in": "query", "required": False, "allowEmptyValue": True,
            "schema": schema, "description": description, **extra}


_PAGE_NUMBER = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}

PARAMETERS: dict[str, Any] = {
    "id": {"name": "id", "in": "path", "required": True, "schema": ID,
           "description": "Positive integer id."},
    "page": _query("page", {**_PAGE_NUMBER, "default": 1}, "Page number, from 1."),
    "page_size": _query("page_size", {"type": "integer", "minimum": 1,
                                      "maximum": MAX_PAGE_SIZE, "default": 25},
                        f"Items per page, 1 to {MAX_PAGE_SIZE}."),
    "PageNumber": _query("PageNumber", {**_PAGE_NUMBER, "default": 1},
                         "Upstream page number, from 1."),
    "PageSize": _query("PageSize", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                       "Upstream page size (the upstream may cap it)."),
    "SellerIds": _query("SellerIds", _array({"type": "integer"}),
                        "Only these sellers (repeat the parameter; the upstream also splits "
                        "commas). Checked by the upstream.", style="form", explode=True),
    "CustomerCatalogId": _query("CustomerCatalogId", {"type": "string"},
                                "The operator-facing catalog number."),
    "CustomerDisplayId": _query("CustomerDisplayId", {"type": "integer"},
                                "The seller's display id. Checked by the upstream."),
    "CustomerItemId": _query("CustomerItemId", {"type": "string"}, "The lot's item id."),
    "LotNumber": _query("LotNumber", {"type": "string"}, "Lot number within its catalog."),
    "ids": {"name": "ids", "in": "query", "required": True,
            "schema": _array(ID, minItems=1, maxItems=MAX_IDS), "style": "form",
            "explode": False,
            "description": f"Comma-separated lot ids, 1 to {MAX_IDS} (e.g. `ids=3,1,2`); "
                           "answered in this order."},
    "q": _query("q", {"type": "string", "maxLength": MAX_QUERY},
                "Part of the seller's name (any case) or the start of its display id; empty "
                "lists every seller."),
    "include_past": _query("include_past", {"type": "boolean", "default": False},
                           "Also list past events, after the upcoming ones (`1/0`, `yes/no` "
                           "and `on/off` are accepted too)."),
    "If-None-Match": {"name": "If-None-Match", "in": "header", "required": False,
                      "schema": {"type": "string"},
                      "description": "ETags the client holds; a match is answered 304."},
    "If-Match": {"name": "If-Match", "in": "header", "required": False,
                 "schema": {"type": "string"},
                 "description": "The lot's ETag as last read (or `*`); if the lot changed "
                                "since, the save is refused with 412."},
}

# --- headers and responses -----------------------------------------------------------------

HEADERS: dict[str, Any] = {
    "X-Cache": {"required": True,
                "description": "HIT when every part came from the cache, MISS when the "
                               "upstream was asked (or this request waited for another's "
                               "upstream call), STALE when an expired entry was served "
                               "(the upstream failed, or a background call is refreshing "
                               "it).",
                "schema": {"type": "string", "enum": ["HIT", "MISS", "STALE"]}},
    "ETag": {"required": True, "description": "Strong ETag of the body.",
             "schema": {"type": "string"}},
    "Age": {"description": "Seconds since the entry was fetched; only on STALE answers.",
            "schema": {"type": "integer", "minimum": 0}},
    "Cache-Control": {"schema": {"type": "string", "example": "no-cache"}},
    "Retry-After": {"description": "Seconds to wait before retrying, when known (the "
                                   "gateway stopped calling a failing upstream for a moment, "
                                   "or too many requests are waiting for it).",
                    "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"schema": {"type": "string"}},
    "Allow": {"description": "The methods the path accepts.", "schema": {"type": "string"}},
}


def _problem(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description,
                              "content": {PROBLEM: {"schema": _schema("Problem")}}}
    if headers:
        answer["headers"] = {name: _header(ref) for name, ref in headers.items()}
    return answer


RESPONSES: dict[str, Any] = {
    "NotModified": {
        "description": "Not Modified: `If-None-Match` named the current ETag. No body.",
        "headers": {name: _header(name)
                    for name in ("X-Cache", "ETag", "Age", "Cache-Control")},
    },
    "BadRequest": _problem("Bad Request: a parameter or the body is malformed, or the "
                           "upstream refused the request as given."),
    "Unauthorized": _problem("Unauthorized: `GW_API_KEYS` is set and no valid key was sent.",
                             **{"WWW-Authenticate": "WWW-Authenticate"}),
    "NotFound": _problem("Not Found: no such id upstream."),
    "MethodNotAllowed": _problem("Method Not Allowed: the path exists, the method does not.",
                                 Allow="Allow"),
    "PreconditionFailed": _problem("Precondition Failed: `If-Match` does not name the lot's "
                                   "current ETag."),
    "PayloadTooLarge": _problem("Payload Too Large: the body exceeds the route's limit."),
    "UnprocessableContent": _problem("Unprocessable Content: the body is a JSON object but "
                                     "not a valid override; `detail` names the field."),
    "BadGateway": _problem("Bad Gateway: the upstream failed or answered something unusable."),
    "ServiceUnavailable": _problem("Service Unavailable: the upstream could not be reached.",
                                   **{"Retry-After": "Retry-After"}),
    "GatewayTimeout": _problem("Gateway Timeout: the upstream did not answer in time."),
}
_ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound",
                405: "MethodNotAllowed", 412: "PreconditionFailed", 413: "PayloadTooLarge",
                422: "UnprocessableContent", 502: "BadGateway", 503: "ServiceUnavailable",
                504: "GatewayTimeout"}
_UPSTREAM = (502, 503, 504)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"$ref": f"#/components/responses/{_ERROR_NAMES[code]}"}
            for code in codes}


def _cached(schema: str, description: str, *errors: int) -> dict[str, Any]:
    """Responses of a cached read: 200 with X-Cache and ETag, 304, and `errors`."""
    return {
        "200": {
            "description": description,
            "headers": {name: _header(name)
                        for name in ("X-Cache", "ETag", "Age", "Cache-Control")},
            "content": {JSON: {"schema": _schema(schema)}},
        },
        "304": {"$ref": "#/components/responses/NotModified"},
        **_errors(*errors),
    }


def _op(op_id: str, tag: str, summary: str, description: str, responses: dict[str, Any],
        parameters: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {
        "operationId": op_id, "tags": [tag], "summary": summary, "description": description,
        **({"parameters": [_param(p) for p in parameters]} if parameters else {}),
        **extra, "responses": responses,
    }


def _api(operation: dict[str, Any]) -> dict[str, Any]:
    """An /api/* operation: API key when GW_API_KEYS is set, hence a possible 401."""
    responses = {**operation["responses"], **_errors(401)}
    return {**operation, "security": API_SECURITY,
            "responses": dict(sorted(responses.items()))}


def _open(operation: dict[str, Any]) -> dict[str, Any]:
    return {**operation, "security": []}


# --- paths ---------------------------------------------------------------------------------

_FILTERS = {
    "Seller": ["SellerIds", "CustomerDisplayId"],
    "Catalog": ["SellerIds", "CustomerCatalogId"],
    "Lot": ["CustomerCatalogId", "CustomerItemId", "LotNumber"],
}
_ONE = {"Seller": "SellerExpandedDto", "Catalog": "CatalogExpandedDto", "Lot": "LotDto"}
_MIRROR_NOTE = ("Drop-in mirror of the upstream's route: same path, query names and JSON, "
                "served from the gateway's cache.")


def _mirror_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for resource, filters in _FILTERS.items():
        paths[f"/api/{resource}"] = {"get": _api(_op(
            f"list{resource}s", "mirror", f"List {resource.lower()}s (upstream paging)",
            _MIRROR_NOTE + " Query parameters are passed on as given (so filters not listed "
            "here still work); `PageNumber` and `PageSize` must be positive integers.",
            _cached(f"{_ONE[resource]}PaginatedList", "One page of the upstream list.",
                    400, 405, *_UPSTREAM),
            ["PageNumber", "PageSize", *filters, "If-None-Match"],
        ))}
        one = {"get": _api(_op(
            f"get{resource}", "mirror", f"One {resource.lower()}", _MIRROR_NOTE,
            _cached(_ONE[resource], f"The {resource.lower()}.", 400, 404, 405, *_UPSTREAM),
            ["id", "If-None-Match"],
        ))}
        paths[f"/api/{resource}/{{id}}"] = one
    paths["/api/Lot/{id}"]["put"] = _api(_op(
        "putLot", "mirror", "Write a lot (passed through)",
        "Passed through to the upstream under the lot's write lock; the gateway then drops "
        "what it holds of the lot, every cached list, and the catalogs the lot was in or "
        "moves to. A failed write is a 502 (or 504 on a timeout) and also drops the lot.",
        {"200": {"description": "The lot as the upstream answered the write.",
                 "content": {JSON: {"schema": _schema("LotDto")}}},
         **_errors(400, 404, 405, 413, 502, 504)},
        ["id"],
        requestBody={"required": True, "content": {JSON: {
            "schema": _schema("UpdateLotRequest")}}},
    ))
    return paths


def _v1_paths() -> dict[str, Any]:
    return {
        "/api/v1/catalogs/{id}/lots": {"get": _api(_op(
            "getEventPage", "v1", "One page of an event's lots",
            "Catalog first (for its lot ids), then every lot of the page at once; two upstream "
            "round trips when cold, none when warm. A lot that failed is listed in `errors` "
            "while the others are returned. The ETag is derived from the ETags of the catalog "
            "and every lot on the page.",
            _cached("EventPage", "The page.", 400, 404, 405, *_UPSTREAM),
            ["id", "page", "page_size", "If-None-Match"],
        ))},
        "/api/v1/lots": {"get": _api(_op(
            "getLots", "v1", "Several lots at once",
            "Every lot at once, in the order asked. A lot that failed (unknown, upstream "
            "error) is listed in `errors` with the status a read of it alone would have had.",
            _cached("LotBatch", "The lots.", 400, 405),
            ["ids", "If-None-Match"],
        ))},
        "/api/v1/lots/{id}/override": {"post": _api(_op(
            "saveLotOverride", "v1", "Save an override of a lot's data",
            "Read-merge-write, serialised per lot: the lot is read fresh from the upstream, "
            "the given fields are laid over its `overridenData[0]`, and the whole lot is "
            "written back. A save that changes nothing does not write. Before the answer, the "
            "lot's cache entry and every cached list are invalidated. Invalid bodies never "
            "reach the upstream.",
            {"200": {"description": "The updated lot.",
                     "headers": {"ETag": _header("ETag")},
                     "content": {JSON: {"schema": _schema("LotDto")}}},
             **_errors(400, 404, 405, 412, 413, 422, *_UPSTREAM)},
            ["id", "If-Match"],
            requestBody={"required": True, "content": {JSON: {
                "schema": _schema("LotOverride")}}},
        ))},
        "/api/v1/sellers": {"get": _api(_op(
            "searchSellers", "v1", "Search sellers",
            "The whole seller list is read (cached) and filtered by the gateway, since the "
            "upstream cannot search by name.",
            _cached("SellerSearchPage", "The matching sellers.", 400, 405, *_UPSTREAM),
            ["q", "page", "page_size", "If-None-Match"],
        ))},
        "/api/v1/sellers/{id}/events": {"get": _api(_op(
            "getSellerEvents", "v1", "A seller's events",
            "An event is past when `isCompleted` or its end date has passed.",
            _cached("SellerEventsPage", "The seller and a page of its events.",
                    400, 404, 405, *_UPSTREAM),
            ["id", "include_past", "page", "page_size", "If-None-Match"],
        ))},
    }


def _status(value: str) -> dict[str, Any]:
    return {JSON: {"schema": _schema("Status"), "example": {"status": value}}}


def _operations_paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": _open(_op(
            "healthz", "operations", "Liveness", "200 while the process runs.",
            {"200": {"description": "Alive.", "content": _status("ok")}, **_errors(405)},
        ))},
        "/readyz": {"get": _open(_op(
            "readyz", "operations", "Readiness",
            "200 when an upstream token can be had (checked at most every 2 s), else 503.",
            {"200": {"description": "Ready.", "content": _status("ready")},
             **_errors(405, 503)},
        ))},
        "/metrics": {"get": _open(_op(
            "metrics", "operations", "Prometheus metrics", "Prometheus text format.",
            {"200": {"description": "The exposition.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
             **_errors(405)},
        ))},
        "/openapi.json": {"get": _open(_op(
            "openapi", "operations", "This document", "The OpenAPI document of the JSON API.",
            {"200": {"description": "OpenAPI 3.0 document.",
                     "content": {JSON: {"schema": {"type": "object"}}}},
             **_errors(405)},
        ))},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "catalog-gateway",
        "version": _version(),
        "description": (
            "A caching, coalescing API gateway in front of the ABConnect Catalog API.\n\n"
            "Every error is `application/problem+json` (`{type, title, status, detail}`); an "
            "unknown route is a 404 and a wrong method a 405 (with `Allow`). A client error "
            "is never a 500. Cached answers carry `X-Cache` and a strong `ETag`; "
            "`If-None-Match` gets a 304.\n\n"
            "With `GW_API_KEYS` set, every `/api/*` request needs `Authorization: Bearer "
            "<key>` or `X-API-Key: <key>` (else 401); `/healthz`, `/readyz`, `/metrics` and "
            "`/openapi.json` stay open."
        ),
    },
    "tags": [
        {"name": "mirror", "description": "Drop-in mirror of the upstream API (same paths, "
                                          "query names and JSON)."},
        {"name": "v1", "description": "Gateway-native routes with camelCase envelopes."},
        {"name": "operations", "description": "Health, readiness, metrics, this document."},
    ],
    "paths": {**_mirror_paths(), **_v1_paths(), **_operations_paths()},
    "components": {
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "headers": HEADERS,
        "responses": RESPONSES,
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "A key of GW_API_KEYS; only when it is set."},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                             "description": "A key of GW_API_KEYS; only when it is set."},
        },
    },
}

_BODY = json.dumps(OPENAPI, separators=(",", ":")).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the document above, serialised once at import."""
    return web.Response(body=_BODY, headers={"Content-Type": JSON + "; charset=utf-8"})
