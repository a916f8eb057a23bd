"""Sandbox: an aiohttp app standing in for the ABConnect Catalog API and identity server.

It is the gateway's default upstream (no credentials, no internet needed) and the
target of tests and benchmarks. It serves every operation of the API's own OpenAPI
document (ABConnect 0.2.1's ``Catalog_709_swagger.json``) with its paths, query names,
paging envelope and camelCase JSON, with production-like latency and switchable faults,
and it is an OpenID Connect-ish identity server issuing RS256 JWTs (sandbox/identity.py).

Routes
  POST /connect/token                         password / refresh_token grants (form) -> JWT
  GET  /.well-known/openid-configuration      discovery: issuer, jwks_uri, token_endpoint
  GET  /.well-known/openid-configuration/jwks the published signing keys (JWKS)
  GET  /api/Seller, /api/Seller/{id}          SellerExpandedDto(PaginatedList)
  POST /api/Seller, PUT /api/Seller/{id}      Add/UpdateSellerRequest -> SellerDto
  GET  /api/Catalog, /api/Catalog/{id}        CatalogExpandedDto(PaginatedList)
  POST /api/Catalog, PUT /api/Catalog/{id}    Add/UpdateCatalogRequest -> CatalogWithSellersDto
  GET  /api/Lot, /api/Lot/{id}                LotDto(PaginatedList)
  POST /api/Lot, PUT /api/Lot/{id}            Add/UpdateLotRequest -> LotDto
  DELETE /api/Seller|Catalog|Lot/{id}         204
  POST /api/Lot/get-overrides                 GetLotsOverridesQuery -> [LotOverrideDto]
  POST /api/Bulk/insert                       BulkInsertRequest -> 200, a small JSON summary
  GET  /images/{lot_id}/{n}.svg               generated placeholder image (no auth, no latency)
  GET  /_sandbox/stats, POST /_sandbox/stats/reset, GET|POST /_sandbox/config,
  POST /_sandbox/revoke-tokens, POST /_sandbox/rotate-signing-key
                                              control endpoints (no auth, no latency, not counted)

Counted (``calls``, keyed "METHOD /path/template"), delayed and fault-injected: /api/*,
/connect/token and /.well-known/*. Bearer auth (a JWT signed with a published key, not
expired, not revoked): /api/* only.
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import math
import random
import re
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from ABConnect.api.models.catalog import (
    AddCatalogRequest,
    AddLotRequest,
    AddSellerRequest,
    BulkInsertRequest,
    GetLotsOverridesQuery,
    UpdateCatalogRequest,
    UpdateLotRequest,
    UpdateSellerRequest,
)
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.params import InvalidParam, parse_bool, parse_int
from sandbox.data import HTML_LOT_ID, LOT_DATA_FIELDS, SandboxData, iso
from sandbox.identity import Identity, SigningKey

__all__ = [
    "DEMO_ACCOUNTS",
    "HTML_LOT_ID",
    "SANDBOX",
    "SERVICE_ACCOUNT",
    "Sandbox",
    "create_sandbox_app",
    "main_sandbox",
    "start_sandbox",
]

# The gateway's service account plus two demo operators.
DEMO_ACCOUNTS: dict[str, str] = {"gateway": "sandbox", "alice": "alice-demo", "bob": "bob-demo"}
# (username, password) a gateway signs in with when it is given no credentials of its own.
SERVICE_ACCOUNT = ("gateway", DEMO_ACCOUNTS["gateway"])

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 10
HANG_POLL_S = 0.05
FAULT_DELAY_S = 0.002  # "fast" 503s still take a moment, like a real load balancer

KNOB_NAMES = (
    "latency_ms", "jitter_ms", "error_rate", "down", "slow_ms", "hang", "fail_writes",
    "token_ttl_s",
)

FAIL_WRITES = (None, "before", "after", "500", "503")
INT32 = (-(2**31), 2**31 - 1)

JSON_TYPE = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class Sandbox:
    """Data plus the mutable knobs, token store and counters of one sandbox app."""

    def __init__(
        self, seed: int = 1, *, anchor: datetime | None = None, **knobs: Any
    ) -> None:
        self.seed = seed
        self.data = SandboxData(seed, anchor)
        self.latency_ms: float = 600.0
        self.jitter_ms: float = 100.0
        self.error_rate: float = 0.0
        self.down: bool = False
        self.slow_ms: float = 0.0
        self.hang: bool = False
        self.fail_writes: str | None = None
        self.token_ttl_s: float = 3600.0
        self.calls: collections.Counter[str] = collections.Counter()
        # (route label, account of the token) -> calls: whose token each call carried.
        self.callers: collections.Counter[tuple[str, str]] = collections.Counter()
        # (route label, X-Request-ID) of the latest counted calls that carried one.
        self.request_ids: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self.inflight: int = 0
        self.max_inflight: int = 0
        self.rng = random.Random(seed + 7919)  # jitter and error_rate draws only
        self.stopping = False
        self.identity = Identity()
        # The origin tokens name as their issuer when minted outside a request
        # (issue_tokens): the served URL once start_sandbox knows it, else the first
        # origin a request arrived at.
        self.origin: str | None = None
        self.configure(**knobs)

    # ------------------------------------------------------------------ knobs

    def configure(self, **knobs: Any) -> None:
        """Set knobs by name; ValueError on an unknown name or a bad value (nothing set)."""
        values = {name: _check_knob(name, value) for name, value in knobs.items()}
        for name, value in values.items():
            setattr(self, name, value)

    def knobs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in KNOB_NAMES}

    # --------------------------------------------------------------- counters

    def reset_stats(self) -> None:
        self.calls.clear()
        self.callers.clear()
        self.request_ids.clear()
        self.max_inflight = 0

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "inflight": self.inflight,
            "maxInflight": self.max_inflight,
        }

    # ----------------------------------------------------------------- tokens

    def issue_tokens(
        self,
        username: str,
        *,
        issuer: str | None = None,
        client_id: str | None = None,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """A token response for ``username`` (no password asked: a way for tests to mint
        one): ``access_token`` (an RS256 JWT), ``expires_in``, ``refresh_token``,
        ``token_type``, ``scope``."""
        return self.identity.issue(
            username,
            issuer=issuer or self.origin or "http://127.0.0.1",
            ttl_s=self.token_ttl_s,
            client_id=client_id,
            scope=scope,
        )

    def verify_token(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token the API would accept now, else None."""
        return self.identity.verify(token)

    def token_user(self, token: str) -> str | None:
        """The account a still-valid access token belongs to, else None."""
        claims = self.identity.verify(token)
        return None if claims is None else claims["preferred_username"]

    def refresh_user(self, refresh_token: str) -> str | None:
        grant = self.identity.refresh_grant(refresh_token)
        return None if grant is None else grant.username

    def revoke_tokens(self) -> int:
        """Invalidate every issued access and refresh token; returns how many."""
        return self.identity.revoke_all()

    def rotate_signing_key(
        self, retire_old: bool = False, key: SigningKey | None = None
    ) -> str:
        """Sign with a new key from now on; the previous keys stay published (and their
        tokens valid) unless ``retire_old``. Returns the new key's ``kid``."""
        return self.identity.rotate(retire_old=retire_old, key=key)

    def jwks(self) -> dict[str, Any]:
        return self.identity.jwks()

    # ---------------------------------------------------------------- latency

    def delay_s(self) -> float:
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return (max(0.0, self.latency_ms + jitter) + self.slow_ms) / 1000.0


def _check_knob(name: str, value: Any) -> Any:
    if name not in KNOB_NAMES:
        raise ValueError(f"unknown sandbox knob {name!r}; known: {', '.join(KNOB_NAMES)}")
    if name in ("down", "hang"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if name == "fail_writes":
        if value in (500, 503) and not isinstance(value, bool):
            value = str(value)
        if value not in FAIL_WRITES:
            raise ValueError("fail_writes must be null, 'before', 'after', '500' or '503'")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    value = float(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    if name == "error_rate" and value > 1:
        raise ValueError("error_rate must be between 0 and 1")
    if name == "token_ttl_s" and value <= 0:
        raise ValueError("token_ttl_s must be > 0")
    return value


SANDBOX = web.AppKey("sandbox", Sandbox)


# --------------------------------------------------------------------- helpers


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, separators=(",", ":")),
        status=status,
        content_type=JSON_TYPE,
        headers=headers,
    )


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _problem(status: int, detail: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES[status], "status": status}
    if detail:
        body["detail"] = detail
    response = _json(body, status, headers or None)
    response.content_type = "application/problem+json"  # as ASP.NET answers ProblemDetails
    return response


class _BadRequest(Exception):
    """Raised by parsing helpers; turned into a 400 problem answer."""


def _route_label(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return f"{request.method} {resource.canonical}"


def _is_counted(path: str) -> bool:
    return (path.startswith("/api/") or path == "/connect/token"
            or path.startswith("/.well-known/"))


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counting, latency and faults for /api/*, /connect/token and /.well-known/*;
    bearer auth for /api/*."""
    sandbox = request.app[SANDBOX]
    if sandbox.origin is None:
        sandbox.origin = _origin(request)
    label = _route_label(request)
    if label is None or not _is_counted(request.path):
        return await handler(request)
    is_api = request.path.startswith("/api/")
    sandbox.calls[label] += 1
    if (request_id := request.headers.get("X-Request-ID")) is not None:
        sandbox.request_ids.append((label, request_id))
    sandbox.inflight += 1
    sandbox.max_inflight = max(sandbox.max_inflight, sandbox.inflight)
    try:
        if sandbox.down:
            return _problem(503, "Sandbox is down")
        if sandbox.hang and not await _hang(request, sandbox):
            return _problem(503, "Request abandoned")
        if is_api and sandbox.error_rate > 0 and sandbox.rng.random() < sandbox.error_rate:
            await asyncio.sleep(FAULT_DELAY_S)
            return _problem(503, "Injected failure")
        # Half the latency on the way in, half on the way back, each with its own jitter:
        # the data is read in between, as on a real network, so an answer can arrive well
        # after the moment it describes (what makes stale write-backs possible at all).
        inbound = sandbox.delay_s() / 2
        if inbound > 0:
            await asyncio.sleep(inbound)
        if is_api:
            token = _bearer(request)
            if token is None:
                return _problem(401, "Missing bearer token", **{"WWW-Authenticate": "Bearer"})
            claims = sandbox.verify_token(token)
            if claims is None:
                return _problem(
                    401,
                    "Invalid or expired token",
                    **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            # Who each call came from, as the upstream's audit would record it.
            sandbox.callers[(label, claims["preferred_username"])] += 1
        response = await handler(request)
        outbound = sandbox.delay_s() / 2
        if outbound > 0:
            await asyncio.sleep(outbound)
        return response
    except _BadRequest as exc:
        return _problem(400, str(exc))
    finally:
        sandbox.inflight -= 1


async def _hang(request: web.Request, sandbox: Sandbox) -> bool:
    """Sleep while ``hang`` is on; False if the client went away (or the app stops)."""
    while sandbox.hang:
        transport = request.transport
        if transport is None or transport.is_closing() or sandbox.stopping:
            return False
        await asyncio.sleep(HANG_POLL_S)
    return True


class _Query:
    """Case-insensitive view of the query string, as ASP.NET model binding reads it."""

    def __init__(self, request: web.Request) -> None:
        self._values: dict[str, list[str]] = {}
        for key, value in request.query.items():
            self._values.setdefault(key.lower(), []).append(value)

    def get(self, name: str) -> str | None:
        for value in self._values.get(name.lower(), []):
            if value.strip():
                return value.strip()
        return None

    def integer(self, name: str, default: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        return _parse_int(raw, name)

    def optional_int(self, name: str) -> int | None:
        raw = self.get(name)
        return None if raw is None else _parse_int(raw, name)

    def optional_bool(self, name: str) -> bool | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return parse_bool(name, raw)
        except InvalidParam:
            raise _BadRequest(f"The value {raw[:40]!r} is not valid for {name}.") from None

    def optional_date(self, name: str) -> str | None:
        """A date-time as the stored ISO form (UTC, whole seconds); naive means UTC."""
        raw = self.get(name)
        if raw is None:
            return None
        # An unencoded "+hh:mm" offset arrives as " hh:mm" (a "+" in a query is a space).
        for text in (raw, re.sub(r" (\d\d:?\d\d)$", r"+\1", raw)):
            try:
                return _iso_utc(datetime.fromisoformat(text))
            except ValueError:
                continue
        raise _BadRequest(f"The value {raw[:40]!r} is not valid for {name}.")

    def int_list(self, name: str) -> set[int] | None:
        """Comma separated and/or repeated integers; None when absent."""
        parts = [
            part.strip()
            for value in self._values.get(name.lower(), [])
            for part in value.split(",")
            if part.strip()
        ]
        if not parts:
            return None
        return {_parse_int(part, name) for part in parts}


def _iso_utc(moment: datetime) -> str:
    """A datetime as the API stores and writes it; a naive one is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso(moment.astimezone(UTC))


def _contains(text: str | None, needle: str | None) -> bool:
    """A free-text filter: absent matches everything, else a substring in any case."""
    return needle is None or (text is not None and needle.casefold() in text.casefold())


def _parse_int(raw: str, name: str) -> int:
    """An int32 by the gateway's one integer rule, refused in ASP.NET's words."""
    try:
        return parse_int(name, raw, *INT32)
    except InvalidParam:
        raise _BadRequest(f"The value {raw[:40]!r} is not valid for {name}.") from None


def _path_id(request: web.Request, name: str = "id") -> int:
    return _parse_int(request.match_info[name], name)


def _page(query: _Query, items: list[Any], render: Callable[[Any], Any]) -> dict[str, Any]:
    page_number = query.integer("PageNumber", 1)
    page_size = query.integer("PageSize", DEFAULT_PAGE_SIZE)
    if page_number < 1:
        raise _BadRequest("PageNumber must be greater than or equal to 1.")
    if page_size < 1:
        raise _BadRequest("PageSize must be greater than or equal to 1.")
    page_size = min(page_size, MAX_PAGE_SIZE)
    total = len(items)
    total_pages = math.ceil(total / page_size)
    start = (page_number - 1) * page_size
    return {
        "items": [render(item) for item in items[start:start + page_size]],
        "pageNumber": page_number,
        "totalPages": total_pages,
        "totalItems": total,
        "hasPreviousPage": page_number > 1,
        "hasNextPage": page_number < total_pages,
    }


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


async def _body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated with an ABConnect request model, or a 400 saying why."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("Request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _BadRequest(_validation_detail(exc)) from None


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _read_shape(entry: Any) -> dict[str, Any]:
    """LotDataDto as the API reads it back: camelCase, only fields given, no nulls."""
    dumped = entry.model_dump(exclude_unset=True)
    return {
        LOT_DATA_FIELDS[name]: value
        for name, value in dumped.items()
        if value is not None and name in LOT_DATA_FIELDS
    }


def _commit(sandbox: Sandbox, apply: Callable[[], web.Response]) -> web.Response:
    """Apply a validated write under the ``fail_writes`` knob: "before" (502) and "500" /
    "503" (that status) answer without applying it; "after" applies it and answers 502
    (the response lost on the way back)."""
    mode = sandbox.fail_writes
    if mode == "before":
        return _problem(502, "Injected write failure (not applied)")
    if mode in ("500", "503"):
        return _problem(int(mode), "Injected write failure (not applied)")
    try:
        response = apply()
    except ValueError as exc:  # a reference to something unknown; nothing was changed
        raise _BadRequest(str(exc)) from None
    if mode == "after":
        return _problem(502, "Injected write failure (applied, response lost)")
    return response


def _no_content() -> web.Response:
    return web.Response(status=204)


def _check_int32(value: int, name: str) -> None:
    if not INT32[0] <= value <= INT32[1]:
        raise _BadRequest(f"{name}: must fit in a 32-bit integer")


def _check_dates(start: str, end: str) -> None:
    if end < start:
        raise _BadRequest("endDate must not be before startDate")


# ---------------------------------------------------------------------- identity

SCOPES_SUPPORTED = ["openid", "profile", "catalog-api", "offline_access"]
CLAIMS_SUPPORTED = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "name",
                    "preferred_username", "scope", "client_id"]


async def token(request: web.Request) -> web.Response:
    """The token endpoint: what ABConnect's SDK sends is accepted (``rememberMe``, a
    lowercased username, client id and secret absent or present, any ``scope``)."""
    sandbox = request.app[SANDBOX]
    form = await request.post()
    grant_type = form.get("grant_type")
    client_id = form.get("client_id")
    client_id = client_id.strip() if isinstance(client_id, str) and client_id.strip() else None
    issuer = _origin(request)
    if grant_type == "password":
        username, password = form.get("username"), form.get("password")
        if isinstance(username, str):
            username = username.strip().lower()  # accounts match in any case
        if not isinstance(username, str) or DEMO_ACCOUNTS.get(username) != password:
            return _json(
                {"error": "invalid_grant", "error_description": "invalid_username_or_password"},
                400,
            )
        scope = form.get("scope")
        return _json(sandbox.issue_tokens(
            username, issuer=issuer, client_id=client_id,
            scope=scope if isinstance(scope, str) else None,
        ))
    if grant_type == "refresh_token":
        refresh = form.get("refresh_token")
        grant = sandbox.identity.refresh_grant(refresh) if isinstance(refresh, str) else None
        if grant is None:
            return _json({"error": "invalid_grant"}, 400)
        return _json(sandbox.issue_tokens(
            grant.username, issuer=issuer, client_id=grant.client_id or client_id,
            scope=grant.scope,
        ))
    if not grant_type:
        return _json({"error": "invalid_request"}, 400)
    return _json({"error": "unsupported_grant_type"}, 400)


async def openid_configuration(request: web.Request) -> web.Response:
    origin = _origin(request)
    return _json({
        "issuer": origin,
        "jwks_uri": f"{origin}/.well-known/openid-configuration/jwks",
        "token_endpoint": f"{origin}/connect/token",
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": ["token"],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": CLAIMS_SUPPORTED,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
    })


async def jwks(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].jwks())


# ------------------------------------------------------------------- catalog API: sellers


async def list_sellers(request: web.Request) -> web.Response:
    """Filters: ``Id``, ``Name`` (contains, any case), ``CustomerDisplayId``, ``IsActive``."""
    data = request.app[SANDBOX].data
    query = _Query(request)
    seller_id = query.optional_int("Id")
    name = query.get("Name")
    display = query.optional_int("CustomerDisplayId")
    active = query.optional_bool("IsActive")
    selected = [
        sid for sid, seller in data.sellers.items()
        if (seller_id is None or sid == seller_id)
        and _contains(seller["name"], name)
        and (display is None or seller["customerDisplayId"] == display)
        and (active is None or seller["isActive"] == active)
    ]
    return _json(_page(query, selected, data.seller_expanded))


async def get_seller(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    seller_id = _path_id(request)
    if seller_id not in data.sellers:
        return _problem(404, f"Seller {seller_id} not found")
    return _json(data.seller_expanded(seller_id))


async def post_seller(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    add = await _body(request, AddSellerRequest)
    _check_int32(add.customer_display_id, "customerDisplayId")

    def apply() -> web.Response:
        seller = sandbox.data.add_seller(add.name, add.customer_display_id, add.is_active)
        return _json(sandbox.data.seller_dto(seller["id"]))

    return _commit(sandbox, apply)


async def put_seller(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    seller_id = _path_id(request)
    if seller_id not in sandbox.data.sellers:
        return _problem(404, f"Seller {seller_id} not found")
    update = await _body(request, UpdateSellerRequest)
    _check_int32(update.customer_display_id, "customerDisplayId")
    changes: dict[str, Any] = {"customerDisplayId": update.customer_display_id,
                               "isActive": update.is_active}
    if "name" in update.model_fields_set:
        changes["name"] = update.name

    def apply() -> web.Response:
        sandbox.data.update_seller(seller_id, **changes)
        return _json(sandbox.data.seller_dto(seller_id))

    return _commit(sandbox, apply)


async def delete_seller(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    seller_id = _path_id(request)
    if seller_id not in sandbox.data.sellers:
        return _problem(404, f"Seller {seller_id} not found")

    def apply() -> web.Response:
        sandbox.data.delete_seller(seller_id)
        return _no_content()

    return _commit(sandbox, apply)


# ------------------------------------------------------------------ catalog API: catalogs


async def list_catalogs(request: web.Request) -> web.Response:
    """Filters: ``Id``, ``CustomerCatalogId``, ``Agent`` and ``Title`` (contains, any
    case), ``StartDate``/``EndDate`` (events overlapping that span: ending at or after
    StartDate, starting at or before EndDate), ``IsCompleted``, ``SellerIds`` (repeated
    and/or comma separated; any of them)."""
    data = request.app[SANDBOX].data
    query = _Query(request)
    catalog_id = query.optional_int("Id")
    customer_catalog_id = query.get("CustomerCatalogId")
    agent, title = query.get("Agent"), query.get("Title")
    start, end = query.optional_date("StartDate"), query.optional_date("EndDate")
    completed = query.optional_bool("IsCompleted")
    seller_ids = query.int_list("SellerIds")
    selected = [
        catalog for catalog in data.catalogs.values()
        if (catalog_id is None or catalog["id"] == catalog_id)
        and (customer_catalog_id is None or catalog["customerCatalogId"] == customer_catalog_id)
        and _contains(catalog["agent"], agent)
        and _contains(catalog["title"], title)
        and (start is None or catalog["endDate"] >= start)
        and (end is None or catalog["startDate"] <= end)
        and (completed is None or catalog["isCompleted"] == completed)
        and (seller_ids is None or any(s["id"] in seller_ids for s in catalog["sellers"]))
    ]
    return _json(_page(query, selected, lambda catalog: catalog))


async def get_catalog(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    catalog_id = _path_id(request)
    if catalog_id not in data.catalogs:
        return _problem(404, f"Catalog {catalog_id} not found")
    return _json(data.catalog_expanded(catalog_id))


def _catalog_fields(request: AddCatalogRequest) -> dict[str, Any]:
    """The fields a catalog request sets, in read shape (dates as stored)."""
    given = request.model_fields_set
    fields: dict[str, Any] = {
        "startDate": _iso_utc(request.start_date),
        "endDate": _iso_utc(request.end_date),
    }
    for attr, key in (("customer_catalog_id", "customerCatalogId"), ("agent", "agent"),
                      ("title", "title")):
        if attr in given:
            fields[key] = getattr(request, attr)
    if "seller_ids" in given:
        fields["sellerIds"] = list(request.seller_ids)
    _check_dates(fields["startDate"], fields["endDate"])
    return fields


async def post_catalog(request: web.Request) -> web.Response:
    """AddCatalogRequest -> CatalogWithSellersDto. Dates in any ISO 8601 form (naive ones
    are UTC); the ABConnect SDK cannot send them itself (see tests/test_sandbox.py)."""
    sandbox = request.app[SANDBOX]
    fields = _catalog_fields(await _body(request, AddCatalogRequest))

    def apply() -> web.Response:
        catalog = sandbox.data.add_catalog(
            customer_catalog_id=fields.get("customerCatalogId"),
            agent=fields.get("agent"),
            title=fields.get("title"),
            start_date=fields["startDate"],
            end_date=fields["endDate"],
            seller_ids=fields.get("sellerIds", []),
        )
        return _json(sandbox.data.catalog_with_sellers(catalog["id"]))

    return _commit(sandbox, apply)


async def put_catalog(request: web.Request) -> web.Response:
    """UpdateCatalogRequest -> CatalogWithSellersDto: the fields present replace the
    stored ones (``sellerIds`` replaces the catalog's sellers, moving it between them)."""
    sandbox = request.app[SANDBOX]
    catalog_id = _path_id(request)
    if catalog_id not in sandbox.data.catalogs:
        return _problem(404, f"Catalog {catalog_id} not found")
    fields = _catalog_fields(await _body(request, UpdateCatalogRequest))

    def apply() -> web.Response:
        sandbox.data.update_catalog(catalog_id, **fields)
        return _json(sandbox.data.catalog_with_sellers(catalog_id))

    return _commit(sandbox, apply)


async def delete_catalog(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    catalog_id = _path_id(request)
    if catalog_id not in sandbox.data.catalogs:
        return _problem(404, f"Catalog {catalog_id} not found")

    def apply() -> web.Response:
        sandbox.data.delete_catalog(catalog_id)
        return _no_content()

    return _commit(sandbox, apply)


# ----------------------------------------------------------------------- catalog API: lots


async def list_lots(request: web.Request) -> web.Response:
    """Filters: ``Id``, ``CustomerItemId``, ``LotNumber`` (in any of the lot's catalogs,
    or in the catalog(s) ``CustomerCatalogId`` names: the SDK sends it, the document does
    not list it). With ``CustomerCatalogId`` lots come in lot-number order."""
    data = request.app[SANDBOX].data
    query = _Query(request)
    lot_id = query.optional_int("Id")
    customer_catalog_id = query.get("CustomerCatalogId")
    customer_item_id = query.get("CustomerItemId")
    lot_number = query.get("LotNumber")
    if customer_catalog_id is not None:
        candidates = list(dict.fromkeys(
            entry["id"]
            for catalog in data.catalogs_by_customer_id(customer_catalog_id)
            for entry in catalog["lots"]
            if lot_number is None or entry["lotNumber"] == lot_number
        ))
    else:
        candidates = [
            lid for lid, lot in data.lots.items()
            if lot_number is None or any(c["lotNumber"] == lot_number for c in lot["catalogs"])
        ]
    candidates = [
        lid for lid in candidates
        if (lot_id is None or lid == lot_id)
        and (customer_item_id is None or data.lots[lid]["customerItemId"] == customer_item_id)
    ]
    origin = _origin(request)
    return _json(_page(query, candidates, lambda lid: data.lot_dto(lid, origin)))


async def get_lot(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    lot_id = _path_id(request)
    if lot_id not in data.lots:
        return _problem(404, f"Lot {lot_id} not found")
    return _json(data.lot_dto(lot_id, _origin(request)))


def _lot_catalogs(catalogs: Any) -> list[dict[str, Any]]:
    return [{"catalogId": c.catalog_id, "lotNumber": c.lot_number} for c in catalogs]


async def post_lot(request: web.Request) -> web.Response:
    """AddLotRequest -> LotDto; the lot joins the ``lots`` of each catalog it names."""
    sandbox = request.app[SANDBOX]
    add = await _body(request, AddLotRequest)
    origin = _origin(request)

    def apply() -> web.Response:
        lot = sandbox.data.add_lot(
            customer_item_id=add.customer_item_id,
            initial_data=_read_shape(add.initial_data),
            overriden_data=[_read_shape(entry) for entry in add.overriden_data],
            catalogs=_lot_catalogs(add.catalogs),
            image_links=list(add.image_links),
            origin=origin,
        )
        return _json(sandbox.data.lot_dto(lot["id"], origin))

    return _commit(sandbox, apply)


async def put_lot(request: web.Request) -> web.Response:
    """UpdateLotRequest -> LotDto: the fields present replace the stored ones."""
    sandbox = request.app[SANDBOX]
    data = sandbox.data
    lot_id = _path_id(request)
    if lot_id not in data.lots:
        return _problem(404, f"Lot {lot_id} not found")
    update = await _body(request, UpdateLotRequest)
    origin = _origin(request)
    changes: dict[str, Any] = {}
    fields = update.model_fields_set
    if "customer_item_id" in fields:
        changes["customer_item_id"] = update.customer_item_id
    if "image_links" in fields:
        changes["image_links"] = update.image_links
    if "overriden_data" in fields:
        changes["overriden_data"] = [_read_shape(entry) for entry in update.overriden_data]
    if "catalogs" in fields:
        changes["catalogs"] = _lot_catalogs(update.catalogs)

    def apply() -> web.Response:
        data.update_lot(lot_id, origin=origin, **changes)
        return _json(data.lot_dto(lot_id, origin))

    return _commit(sandbox, apply)


async def delete_lot(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    lot_id = _path_id(request)
    if lot_id not in sandbox.data.lots:
        return _problem(404, f"Lot {lot_id} not found")

    def apply() -> web.Response:
        sandbox.data.delete_lot(lot_id)
        return _no_content()

    return _commit(sandbox, apply)


_ITEM_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


async def get_overrides(request: web.Request) -> web.Response:
    """GetLotsOverridesQuery -> [LotOverrideDto]: the override in effect of each lot named
    by ``customerItemIds`` or mentioned in ``customerComments`` / ``otherRefNo`` (free
    text, read the way an operator writes "items 412345-003, 412345-007"); lots without an
    override are left out. A read: not subject to ``fail_writes``."""
    data = request.app[SANDBOX].data
    query = await _body(request, GetLotsOverridesQuery)
    wanted = list(query.customer_item_ids)
    for text in (query.customer_comments, query.other_ref_no):
        wanted += _ITEM_TOKEN.findall(text or "")
    return _json(data.lot_overrides(wanted))


# ----------------------------------------------------------------------- catalog API: bulk


async def bulk_insert(request: web.Request) -> web.Response:
    """BulkInsertRequest: create or update catalogs, sellers and lots by their customer ids
    (SandboxData.bulk_insert says how).

    The document gives the answer as a bare 200, but ABConnect 0.2.1's ``bulk.insert``
    parses every non-204 answer as JSON and raises on an empty body; so this answers 200
    with a small JSON summary, ``{"sellers"|"catalogs"|"lots": {"created": n, "updated":
    n}}``, which the SDK accepts (and ignores)."""
    sandbox = request.app[SANDBOX]
    bulk = await _body(request, BulkInsertRequest)
    entries = []
    for catalog in bulk.catalogs:
        start, end = _iso_utc(catalog.start_date), _iso_utc(catalog.end_date)
        _check_dates(start, end)
        for seller in catalog.sellers:
            _check_int32(seller.customer_display_id, "customerDisplayId")
        entries.append({
            "customerCatalogId": catalog.customer_catalog_id,
            "agent": catalog.agent,
            "title": catalog.title,
            "startDate": start,
            "endDate": end,
            "sellers": [
                {"name": s.name, "customerDisplayId": s.customer_display_id,
                 "isActive": s.is_active}
                for s in catalog.sellers
            ],
            "lots": [
                {"customerItemId": lot.customer_item_id, "lotNumber": lot.lot_number,
                 "imageLinks": list(lot.image_links),
                 "initialData": _read_shape(lot.initial_data),
                 "overridenData": [_read_shape(entry) for entry in lot.overriden_data]}
                for lot in catalog.lots
            ],
        })
    origin = _origin(request)
    return _commit(sandbox, lambda: _json(sandbox.data.bulk_insert(entries, origin)))


# ------------------------------------------------------------------------ images


async def image(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    name = request.match_info["name"]
    if not name.endswith(".svg"):
        return _problem(404, "Unknown image")
    lot_id = _parse_int_or_none(request.match_info["lot_id"])
    n = _parse_int_or_none(name[:-4])
    if lot_id is None or n is None or lot_id not in data.lots:
        return _problem(404, "Unknown image")
    lot = data.lots[lot_id]
    lot_number = lot["catalogs"][0]["lotNumber"] if lot["catalogs"] else str(lot_id)
    return web.Response(
        text=_svg(lot_id, lot_number, n),
        content_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


def _parse_int_or_none(raw: str) -> int | None:
    try:
        return parse_int("id", raw, 0, 2**31 - 1)
    except InvalidParam:
        return None


def _svg(lot_id: int, lot_number: str, n: int) -> str:
    hue = zlib.crc32(f"{lot_id}/{n}".encode()) % 360
    label = html.escape(f"Lot {lot_number}")
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="240" '
        'viewBox="0 0 320 240">'
        f'<rect width="320" height="240" fill="hsl({hue},55%,62%)"/>'
        f'<rect x="12" y="12" width="296" height="216" fill="none" '
        f'stroke="hsl({hue},45%,35%)" stroke-width="4"/>'
        f'<text x="160" y="120" font-family="sans-serif" font-size="36" '
        f'text-anchor="middle" fill="#fff">{label}</text>'
        f'<text x="160" y="165" font-family="sans-serif" font-size="18" '
        f'text-anchor="middle" fill="#fff">#{lot_id} · photo {n}</text>'
        "</svg>"
    )


# ----------------------------------------------------------------------- control


async def control_stats(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].stats())


async def control_reset(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    sandbox.reset_stats()
    return _json(sandbox.stats())


async def control_get_config(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].knobs())


async def control_config(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problem(400, "Request body is not valid JSON")
    if not isinstance(body, dict):
        return _problem(400, "Request body must be a JSON object of knobs")
    try:
        sandbox.configure(**body)
    except ValueError as exc:
        return _problem(400, str(exc))
    return _json(sandbox.knobs())


async def control_revoke(request: web.Request) -> web.Response:
    return _json({"revoked": request.app[SANDBOX].revoke_tokens()})


async def control_rotate(request: web.Request) -> web.Response:
    """A new signing key signs from now on; the previous ones stay in the JWKS unless the
    JSON body says ``{"retire_old": true}`` (then their tokens are refused too)."""
    sandbox = request.app[SANDBOX]
    raw = await request.read()
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _problem(400, "Request body is not valid JSON")
    if not isinstance(body, dict) or set(body) - {"retire_old"}:
        return _problem(400, 'Request body must be {"retire_old": true|false} or empty')
    retire_old = body.get("retire_old", False)
    if not isinstance(retire_old, bool):
        return _problem(400, "retire_old must be true or false")
    key = await asyncio.to_thread(SigningKey.generate)  # ~50 ms of CPU: off the loop
    kid = sandbox.rotate_signing_key(retire_old=retire_old, key=key)
    return _json({"kid": kid, "published": sandbox.identity.published_kids()})


# ------------------------------------------------------------------------- app


async def _on_shutdown(app: web.Application) -> None:
    app[SANDBOX].stopping = True


def create_sandbox_app(
    *,
    latency_ms: float = 600.0,
    jitter_ms: float = 100.0,
    seed: int = 1,
    token_ttl_s: float = 3600.0,
    anchor: datetime | None = None,
    **knobs: Any,
) -> web.Application:
    """The sandbox app; its state is ``app[SANDBOX]``. Extra knobs go to ``configure``."""
    sandbox = Sandbox(
        seed,
        anchor=anchor,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        token_ttl_s=token_ttl_s,
        **knobs,
    )
    app = web.Application(middlewares=[sandbox_middleware])
    app[SANDBOX] = sandbox
    router = app.router
    router.add_post("/connect/token", token)
    router.add_get("/.well-known/openid-configuration", openid_configuration)
    router.add_get("/.well-known/openid-configuration/jwks", jwks)
    router.add_get("/api/Seller", list_sellers)
    router.add_post("/api/Seller", post_seller)
    router.add_get("/api/Seller/{id}", get_seller)
    router.add_put("/api/Seller/{id}", put_seller)
    router.add_delete("/api/Seller/{id}", delete_seller)
    router.add_get("/api/Catalog", list_catalogs)
    router.add_post("/api/Catalog", post_catalog)
    router.add_get("/api/Catalog/{id}", get_catalog)
    router.add_put("/api/Catalog/{id}", put_catalog)
    router.add_delete("/api/Catalog/{id}", delete_catalog)
    router.add_get("/api/Lot", list_lots)
    router.add_post("/api/Lot", post_lot)
    router.add_post("/api/Lot/get-overrides", get_overrides)  # before /api/Lot/{id}
    router.add_get("/api/Lot/{id}", get_lot)
    router.add_put("/api/Lot/{id}", put_lot)
    router.add_delete("/api/Lot/{id}", delete_lot)
    router.add_post("/api/Bulk/insert", bulk_insert)
    router.add_get("/images/{lot_id}/{name}", image)
    router.add_get("/_sandbox/stats", control_stats)
    router.add_post("/_sandbox/stats/reset", control_reset)
    router.add_get("/_sandbox/config", control_get_config)
    router.add_post("/_sandbox/config", control_config)
    router.add_post("/_sandbox/revoke-tokens", control_revoke)
    router.add_post("/_sandbox/rotate-signing-key", control_rotate)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_sandbox(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> tuple[web.AppRunner, str, Sandbox]:
    """Serve a sandbox on a real socket; returns (runner, base URL, state).

    ``kwargs`` go to :func:`create_sandbox_app`. Stop it with ``await runner.cleanup()``.
    """
    app = create_sandbox_app(**kwargs)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{bound_port}"
    app[SANDBOX].origin = base_url
    return runner, base_url, app[SANDBOX]


def main_sandbox(
    port: int, latency_ms: float, jitter_ms: float, seed: int, host: str = "127.0.0.1"
) -> None:
    """Run a sandbox in the foreground (``catalog-gateway sandbox``)."""
    app = create_sandbox_app(latency_ms=latency_ms, jitter_ms=jitter_ms, seed=seed)
    data = app[SANDBOX].data
    accounts = ", ".join(f"{user}/{password}" for user, password in DEMO_ACCOUNTS.items())
    print(
        f"ABConnect Catalog API sandbox: {len(data.sellers)} sellers, "
        f"{len(data.catalogs)} events, {len(data.lots)} lots (seed {seed}); "
        f"latency {latency_ms:g}±{jitter_ms:g} ms; accounts {accounts}; "
        "RS256 JWTs, keys at /.well-known/openid-configuration/jwks",
        flush=True,
    )
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        print=lambda msg: print(msg, flush=True),
    )
