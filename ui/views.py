"""The operator screen: one page of three panels (sellers, events, lots) and their fragments.

Every handler parses the view state, calls one CatalogService method, and renders one
template partial; the full page renders all three partials from the same state, so a deep
link (/?seller=ID&event=ID&page=N) restores what a sequence of clicks produced. Failures are
rendered as HTML into the panel that asked (never problem+json, never a traceback); a
failed save answers with plain text and `HX-Reswap: none`, so the cell keeps what the
operator typed and ui.js shows why.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp_jinja2
from aiohttp import web

from gateway.api import CATALOG, MAX_PAGE_SIZE, parse_id
from gateway.catalog import CatalogService
from gateway.errors import BadRequest, GatewayError, NotFound
from ui.lots import TABLE_FIELDS, LotsView, LotView, form_changes
from ui.session import current, is_ui_path, page_context

log = logging.getLogger(__name__)

SELLERS_PER_PAGE = 10
EVENTS_PER_PAGE = 10
PAGE_SIZES = (10, 25, 50, 100)
MAX_QUERY = 200
_DIGITS = re.compile(r"[0-9]{1,9}")
CSP = ("default-src 'self'; img-src 'self' data: http: https:; script-src 'self'; "
       "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")


# Each panel's own part of the state; a fragment URL carries only its panel's part and the
# rest comes from the page the request was made on (htmx sends it as HX-Current-URL), so a
# pushed URL never mixes the current panel with a stale copy of another.
OWN: dict[str, tuple[str, ...]] = {
    "sellers": ("q", "spage"),
    "events": ("seller", "past", "epage"),
    "lots": ("event", "page"),
}


@dataclass(frozen=True)
class ViewState:
    """What the screen shows: the query of the page URL (/?seller=ID&event=ID&page=N)."""

    q: str = ""  # seller filter
    spage: int = 1  # sellers page
    seller: int | None = None
    past: bool = False  # events: past ones too
    epage: int = 1  # events page
    event: int | None = None
    page: int = 1  # lots page
    page_size: int = 25  # a preference: kept when the event changes

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ViewState:
        """400 naming the parameter for anything malformed or out of range."""
        q = query.get("q", "")
        if len(q) > MAX_QUERY:
            raise BadRequest(f"q must be at most {MAX_QUERY} characters")
        return cls(
            q=q,
            spage=_int(query, "spage", 1, 10**6),
            seller=parse_id(query["seller"], "seller") if query.get("seller") else None,
            past=_bool(query, "past"),
            epage=_int(query, "epage", 1, 10**6),
            event=parse_id(query["event"], "event") if query.get("event") else None,
            page=_int(query, "page", 1, 10**6),
            page_size=_int(query, "page_size", 25, MAX_PAGE_SIZE),
        )

    @classmethod
    def for_panel(cls, request: web.Request, panel: str) -> ViewState:
        """The page's state (HX-Current-URL) with this panel's part from the request."""
        asked = cls.parse(request.query)
        try:
            base = cls.parse(dict(parse_qsl(urlsplit(request.headers["HX-Current-URL"]).query)))
        except (KeyError, ValueError, BadRequest):
            base = cls()
        own = {name: getattr(asked, name) for name in OWN[panel]}
        if "page_size" in request.query:
            own["page_size"] = asked.page_size
        state = replace(base, **own)
        if state.seller != base.seller:  # another seller: its events, no event chosen yet
            state = replace(state, event=None, page=1)
        return state

    def with_(self, **changes: Any) -> ViewState:
        return replace(self, **changes)

    def url(self, path: str = "/") -> str:
        """The page URL of this state (non-default parts only)."""
        return _with_query(path, self._pairs([f.name for f in fields(self)]))

    def fragment(self, panel: str) -> str:
        """The URL of a panel's fragment for this state: only that panel's part."""
        names = [*OWN[panel], "page_size"] if panel == "lots" else list(OWN[panel])
        return _with_query(f"/ui/panels/{panel}", self._pairs(names))

    def _pairs(self, names: list[str]) -> list[tuple[str, Any]]:
        default = ViewState()
        return [(n, "1" if getattr(self, n) is True else getattr(self, n)) for n in names
                if getattr(self, n) != getattr(default, n)]


def _with_query(path: str, pairs: list[tuple[str, Any]]) -> str:
    return f"{path}?{urlencode(pairs)}" if pairs else path


def _int(query: Mapping[str, str], name: str, default: int, hi: int) -> int:
    text = query.get(name, "")
    if text == "":
        return default
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= hi:
        raise BadRequest(f"{name} must be a whole number from 1 to {hi}, got {text[:40]!r}")
    return int(text)


def _bool(query: Mapping[str, str], name: str) -> bool:
    text = query.get(name, "").lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise BadRequest(f"{name} must be true or false, got {text[:40]!r}")


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {**page_context(request), **context}, status=status
    )


# --- panels: one service call each; a failure is kept for the partial to show ------------


async def sellers_panel(catalog: CatalogService, st: ViewState) -> dict[str, Any]:
    panel: dict[str, Any] = {"st": st, "error": None, "sellers": None}
    try:
        panel["sellers"] = (await catalog.sellers(st.q, st.spage, SELLERS_PER_PAGE)).payload
    except GatewayError as exc:
        panel["error"] = exc
    return panel


async def events_panel(catalog: CatalogService, st: ViewState) -> dict[str, Any]:
    panel: dict[str, Any] = {"st": st, "error": None, "events": None}
    if st.seller is not None:
        try:
            view = await catalog.seller_events(st.seller, st.past, st.epage, EVENTS_PER_PAGE)
            panel["events"] = view.payload
        except GatewayError as exc:
            panel["error"] = exc
    return panel


async def lots_panel(catalog: CatalogService, st: ViewState) -> dict[str, Any]:
    panel: dict[str, Any] = {"st": st, "error": None, "lots": None, "page_sizes": PAGE_SIZES}
    if st.event is not None:
        try:
            panel["lots"] = LotsView.from_page(
                await catalog.event_page(st.event, st.page, st.page_size)
            )
        except GatewayError as exc:
            panel["error"] = exc
    return panel


def render_panel(
    request: web.Request, template: str, panel: dict[str, Any], history: str = "Push"
) -> web.Response:
    """A panel fragment; its state becomes the page URL (reload and back/forward restore it).

    The URL is pushed here, from the merged state, rather than taken from the link: the
    link was rendered when its panel was, and another panel may have moved on since.
    """
    status = panel["error"].status if panel["error"] else 200
    response = render(request, template, {"panel": panel, "oob": True}, status)
    response.headers[f"HX-{history}-Url"] = panel["st"].url()
    return response


# --- handlers ------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    """GET / : the three panels as the query says (a deep link, a reload, back/forward)."""
    st = ViewState.parse(request.query)
    catalog = request.app[CATALOG]
    sellers, events, lots = await asyncio.gather(
        sellers_panel(catalog, st), events_panel(catalog, st), lots_panel(catalog, st)
    )
    return render(request, "page.html",
                  {"st": st, "sellers": sellers, "events": events, "lots": lots, "oob": False})


async def sellers_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "sellers")
    panel = await sellers_panel(request.app[CATALOG], st)
    return render_panel(request, "_sellers.html", panel, history="Replace")  # not per keystroke


async def events_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "events")
    if st.seller is None:
        raise BadRequest("seller is required")
    return render_panel(request, "_events.html", await events_panel(request.app[CATALOG], st))


async def lots_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "lots")
    if st.event is None:
        raise BadRequest("event is required")
    return render_panel(request, "_lots.html", await lots_panel(request.app[CATALOG], st))


async def lot_dialog(request: web.Request) -> web.Response:
    lot_id = parse_id(request.match_info["id"])
    try:
        lookup = await request.app[CATALOG].lot(lot_id)
    except GatewayError as exc:
        return render(request, "_lot_dialog.html", {"error": exc, "lot": None}, exc.status)
    lot = LotView.from_body(lookup.entry.body)
    return render(request, "_lot_dialog.html", {"error": None, "lot": lot})


async def save_field(request: web.Request) -> web.Response:
    """POST /ui/lots/{id}/override with one field: the saved field, re-rendered."""
    lot_id = parse_id(request.match_info["id"])
    try:
        name, changes = form_changes(await request.post())
        saved = await request.app[CATALOG].save_override(
            lot_id, changes, actor=current(request).actor
        )
    except GatewayError as exc:
        return refusal(exc)
    lot = LotView.from_body(saved.body)
    template = "_field_cell.html" if name in TABLE_FIELDS else "_field_text.html"
    return render(request, template, {"lot": lot, "field": lot.fields[name], "saved": True})


def refusal(exc: GatewayError) -> web.Response:
    """A refused write: the reason as text, and no swap (what was typed stays)."""
    return web.Response(status=exc.status, text=exc.detail,
                        headers={"HX-Reswap": "none", "Cache-Control": "no-store"})


# --- errors and headers --------------------------------------------------------------------


@web.middleware
async def ui_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """UI answers are HTML (or text for refused writes), never stored, never framed."""
    if not is_ui_path(request.path):
        return await handler(request)
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(request, _as_gateway_error(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(request, GatewayError("unexpected error; see the gateway log"))
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def error_response(request: web.Request, exc: GatewayError) -> web.Response:
    """A whole page for a browser, the panel's fragment for htmx, text for a refused write."""
    if not request.headers.get("HX-Request"):
        return render(request, "error.html", {"error": exc}, exc.status)
    if request.method not in ("GET", "HEAD"):
        return refusal(exc)
    response = render(request, "_error.html", {"error": exc}, exc.status)
    response.headers["HX-Push-Url"] = "false"
    return response


def _as_gateway_error(exc: web.HTTPException) -> GatewayError:
    error = NotFound("no such page") if exc.status == 404 else GatewayError(exc.reason)
    error.status, error.title = exc.status, exc.reason
    return error


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", page)
    r.add_get("/ui/panels/sellers", sellers_fragment)
    r.add_get("/ui/panels/events", events_fragment)
    r.add_get("/ui/panels/lots", lots_fragment)
    r.add_get("/ui/lots/{id}", lot_dialog)
    r.add_post("/ui/lots/{id}/override", save_field)

