"""Sandbox: an aiohttp app standing in for the ABConnect Catalog API and identity server.

It is the gateway's default upstream (no credentials, no internet needed) and the
target of tests and benchmarks. It serves the production paths, query names, paging
envelope and camelCase JSON, with production-like latency and switchable faults.

Routes
  POST /connect/token                  password / refresh_token grants (form encoded)
  GET  /api/Seller, /api/Seller/{id}   SellerExpandedDto(PaginatedList)
  GET  /api/Catalog, /api/Catalog/{id} CatalogExpandedDto(PaginatedList)
  GET  /api/Lot, /api/Lot/{id}         LotDto(PaginatedList)
  PUT  /api/Lot/{id}                   UpdateLotRequest -> LotDto
  GET  /images/{lot_id}/{n}.svg        generated placeholder image (no auth, no latency)
  GET  /_sandbox/stats, POST /_sandbox/stats/reset, GET|POST /_sandbox/config,
  POST /_sandbox/revoke-tokens         control endpoints (no auth, no latency, not counted)
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import math
import random
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ABConnect.api.models.catalog import UpdateLotRequest
from aiohttp import web
from pydantic import ValidationError

from gateway.params import InvalidParam, parse_int
from sandbox.data import HTML_LOT_ID, LOT_DATA_FIELDS, SandboxData

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

JSON_TYPE = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _AccessToken:
    username: str
    expires_at: float


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
        self.inflight: int = 0
        self.max_inflight: int = 0
        self.rng = random.Random(seed + 7919)  # jitter and error_rate draws only
        self.stopping = False
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, str] = {}
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
        self.max_inflight = 0

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "inflight": self.inflight,
            "maxInflight": self.max_inflight,
        }

    # ----------------------------------------------------------------- tokens

    def issue_tokens(self, username: str) -> dict[str, Any]:
        now = time.monotonic()
        if len(self._access) > 1000:
            self._access = {k: v for k, v in self._access.items() if v.expires_at > now}
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        self._access[access] = _AccessToken(username, now + self.token_ttl_s)
        self._refresh[refresh] = username
        ttl = self.token_ttl_s
        return {
            "access_token": access,
            "expires_in": int(ttl) if ttl == int(ttl) else round(ttl, 3),
            "refresh_token": refresh,
            "token_type": "Bearer",
        }

    def token_user(self, token: str) -> str | None:
        """The account a still-valid access token belongs to, else None."""
        entry = self._access.get(token)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            del self._access[token]
            return None
        return entry.username

    def refresh_user(self, refresh_token: str) -> str | None:
        return self._refresh.get(refresh_token)

    def revoke_tokens(self) -> int:
        """Invalidate every issued access and refresh token; returns how many."""
        count = len(self._access) + len(self._refresh)
        self._access.clear()
        self._refresh.clear()
        return count

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
        if value not in (None, "before", "after"):
            raise ValueError("fail_writes must be null, 'before' or 'after'")
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
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _problem(status: int, detail: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES[status], "status": status}
    if detail:
        body["detail"] = detail
    return _json(body, status, headers or None)


class _BadRequest(Exception):
    """Raised by parsing helpers; turned into a 400 problem answer."""


def _route_label(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return f"{request.method} {resource.canonical}"


def _is_counted(path: str) -> bool:
    return path.startswith("/api/") or path == "/connect/token"


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counting, latency, faults and bearer auth for /api/* and /connect/token."""
    label = _route_label(request)
    if label is None or not _is_counted(request.path):
        return await handler(request)
    sandbox = request.app[SANDBOX]
    is_api = request.path.startswith("/api/")
    sandbox.calls[label] += 1
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
            if sandbox.token_user(token) is None:
                return _problem(
                    401,
                    "Invalid or expired token",
                    **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
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


def _parse_int(raw: str, name: str) -> int:
    """An int32 by the gateway's one integer rule, refused in ASP.NET's words."""
    try:
        return parse_int(name, raw, -(2**31), 2**31 - 1)
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


# ---------------------------------------------------------------------- identity


async def token(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    form = await request.post()
    grant_type = form.get("grant_type")
    if grant_type == "password":
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or DEMO_ACCOUNTS.get(username) != password:
            return _json(
                {"error": "invalid_grant", "error_description": "invalid_username_or_password"},
                400,
            )
        return _json(sandbox.issue_tokens(username))
    if grant_type == "refresh_token":
        refresh = form.get("refresh_token")
        user = sandbox.refresh_user(refresh) if isinstance(refresh, str) else None
        if user is None:
            return _json({"error": "invalid_grant"}, 400)
        return _json(sandbox.issue_tokens(user))
    if not grant_type:
        return _json({"error": "invalid_request"}, 400)
    return _json({"error": "unsupported_grant_type"}, 400)


# ------------------------------------------------------------------- catalog API


async def list_sellers(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    query = _Query(request)
    ids = query.int_list("SellerIds")
    display_id = query.get("CustomerDisplayId")
    display = _parse_int(display_id, "CustomerDisplayId") if display_id is not None else None
    selected = [
        sid for sid, seller in data.sellers.items()
        if (ids is None or sid in ids)
        and (display is None or seller["customerDisplayId"] == display)
    ]
    return _json(_page(query, selected, data.seller_expanded))


async def get_seller(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    seller_id = _path_id(request)
    if seller_id not in data.sellers:
        return _problem(404, f"Seller {seller_id} not found")
    return _json(data.seller_expanded(seller_id))


async def list_catalogs(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    query = _Query(request)
    seller_ids = query.int_list("SellerIds")
    customer_catalog_id = query.get("CustomerCatalogId")
    selected = [
        catalog for catalog in data.catalogs.values()
        if (customer_catalog_id is None or catalog["customerCatalogId"] == customer_catalog_id)
        and (seller_ids is None or any(s["id"] in seller_ids for s in catalog["sellers"]))
    ]
    return _json(_page(query, selected, lambda catalog: catalog))


async def get_catalog(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    catalog_id = _path_id(request)
    if catalog_id not in data.catalogs:
        return _problem(404, f"Catalog {catalog_id} not found")
    return _json(data.catalog_expanded(catalog_id))


async def list_lots(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    query = _Query(request)
    customer_catalog_id = query.get("CustomerCatalogId")
    customer_item_id = query.get("CustomerItemId")
    lot_number = query.get("LotNumber")
    if customer_catalog_id is not None:
        catalog = data.catalog_by_customer_id(customer_catalog_id)
        entries = catalog["lots"] if catalog is not None else []
        candidates = [
            entry["id"] for entry in entries
            if lot_number is None or entry["lotNumber"] == lot_number
        ]
    else:
        candidates = [
            lot_id for lot_id, lot in data.lots.items()
            if lot_number is None or any(c["lotNumber"] == lot_number for c in lot["catalogs"])
        ]
    if customer_item_id is not None:
        candidates = [i for i in candidates if data.lots[i]["customerItemId"] == customer_item_id]
    origin = _origin(request)
    return _json(_page(query, candidates, lambda lot_id: data.lot_dto(lot_id, origin)))


async def get_lot(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].data
    lot_id = _path_id(request)
    if lot_id not in data.lots:
        return _problem(404, f"Lot {lot_id} not found")
    return _json(data.lot_dto(lot_id, _origin(request)))


async def put_lot(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    data = sandbox.data
    lot_id = _path_id(request)
    if lot_id not in data.lots:
        return _problem(404, f"Lot {lot_id} not found")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problem(400, "Request body is not valid JSON")
    if not isinstance(body, dict):
        return _problem(400, "Request body must be a JSON object")
    try:
        update = UpdateLotRequest.model_validate(body)
    except ValidationError as exc:
        return _problem(400, _validation_detail(exc))
    if sandbox.fail_writes == "before":
        return _problem(502, "Injected write failure (not applied)")
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
        changes["catalogs"] = [
            {"catalogId": c.catalog_id, "lotNumber": c.lot_number} for c in update.catalogs
        ]
    try:
        data.update_lot(lot_id, origin=origin, **changes)
    except ValueError as exc:
        return _problem(400, str(exc))
    if sandbox.fail_writes == "after":
        return _problem(502, "Injected write failure (applied, response lost)")
    return _json(data.lot_dto(lot_id, origin))


def _read_shape(entry: Any) -> dict[str, Any]:
    """LotDataDto as the API reads it back: camelCase, only fields given, no nulls."""
    dumped = entry.model_dump(exclude_unset=True)
    return {
        LOT_DATA_FIELDS[name]: value
        for name, value in dumped.items()
        if value is not None and name in LOT_DATA_FIELDS
    }


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


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
    app.router.add_post("/connect/token", token)
    app.router.add_get("/api/Seller", list_sellers)
    app.router.add_get("/api/Seller/{id}", get_seller)
    app.router.add_get("/api/Catalog", list_catalogs)
    app.router.add_get("/api/Catalog/{id}", get_catalog)
    app.router.add_get("/api/Lot", list_lots)
    app.router.add_get("/api/Lot/{id}", get_lot)
    app.router.add_put("/api/Lot/{id}", put_lot)
    app.router.add_get("/images/{lot_id}/{name}", image)
    app.router.add_get("/_sandbox/stats", control_stats)
    app.router.add_post("/_sandbox/stats/reset", control_reset)
    app.router.add_get("/_sandbox/config", control_get_config)
    app.router.add_post("/_sandbox/config", control_config)
    app.router.add_post("/_sandbox/revoke-tokens", control_revoke)
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
    return runner, f"http://{shown_host}:{bound_port}", app[SANDBOX]


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
        f"latency {latency_ms:g}±{jitter_ms:g} ms; accounts {accounts}",
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
