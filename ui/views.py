"""The operator screen: one page of three panels (sellers, events, lots) and their fragments.

Every handler parses the view state, calls one domain method, and renders one
template partial; the full page renders all three partials from the same state, so a deep
link (/?seller=ID&event=ID&page=N) restores what a sequence of clicks produced. Failures are
rendered as HTML into the panel that asked (never problem+json, never a traceback); a
failed save answers with plain text and `HX-Reswap: none`, so the cell keeps what the
operator typed and ui.js shows why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp_jinja2
from aiohttp import web

from gateway import params
from gateway.access import audit
from gateway.errors import BadRequest, GatewayError, NotFound, PreconditionFailed, Unprocessable
from gateway.overrides import FIELDS
from gateway.reads import MAX_PAGE_SIZE, Reads
from gateway.routes import Handler, other_methods
from gateway.state import CONFIG, READS, WRITES
from ui.lots import (
    RECENT_SAVES,
    TABLE_FIELDS,
    LotsView,
    LotView,
    form_changes,
    implausible,
)
from ui.session import current, page_context, require_write

log = logging.getLogger(__name__)

SELLERS_PER_PAGE = 10
EVENTS_PER_PAGE = 10
PAGE_SIZES = (10, 25, 50, 100)
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


# The page URL's parameters, declared once (gateway/params.py rules and messages).
Q = params.Text("q")
SPAGE = params.Int("spage", fallback=1)
SELLER = params.Id("seller")
PAST = params.Bool("past")
EPAGE = params.Int("epage", fallback=1)
EVENT = params.Id("event")
PAGE = params.Int("page", fallback=1)
PAGE_SIZE = params.Int("page_size", hi=MAX_PAGE_SIZE, fallback=25)
LOT_ID = params.PathId("id")


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
        return cls(
            q=Q.read(query), spage=SPAGE.read(query), seller=SELLER.read(query),
            past=PAST.read(query), epage=EPAGE.read(query), event=EVENT.read(query),
            page=PAGE.read(query), page_size=PAGE_SIZE.read(query),
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


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {**page_context(request), **context}, status=status
    )


# --- panels: one service call each; a failure is kept for the partial to show ------------


async def sellers_panel(reads: Reads, st: ViewState) -> dict[str, Any]:
    panel: dict[str, Any] = {"st": st, "error": None, "sellers": None}
    try:
        panel["sellers"] = (await reads.sellers(st.q, st.spage, SELLERS_PER_PAGE)).payload
    except GatewayError as exc:
        panel["error"] = exc
    return panel


async def events_panel(reads: Reads, st: ViewState) -> dict[str, Any]:
    panel: dict[str, Any] = {"st": st, "error": None, "events": None}
    if st.seller is not None:
        try:
            view = await reads.seller_events(st.seller, st.past, st.epage, EVENTS_PER_PAGE)
            panel["events"] = view.payload
        except GatewayError as exc:
            panel["error"] = exc
    return panel


def wants_fresh(request: web.Request) -> bool:
    """The lots panel is to be read fresh from upstream: its Refresh button (`refresh=1`),
    or a hard reload (the browser sends `Cache-Control: no-cache` / `Pragma: no-cache`)."""
    directives = {d.strip().lower() for d in request.headers.get("Cache-Control", "").split(",")}
    return (request.query.get("refresh") == "1" or "no-cache" in directives
            or request.headers.get("Pragma", "").strip().lower() == "no-cache")


async def lots_panel(reads: Reads, st: ViewState, fresh: bool = False) -> dict[str, Any]:
    """`fresh`: the event's catalog and the page's lots refreshed from upstream (coalesced
    with other refreshes; the last good copy, marked stale, if the upstream fails)."""
    fragment = st.fragment("lots")
    panel: dict[str, Any] = {"st": st, "error": None, "lots": None, "page_sizes": PAGE_SIZES,
                             "refresh_url": fragment + ("&" if "?" in fragment else "?")
                             + "refresh=1"}
    if st.event is not None:
        try:
            panel["lots"] = LotsView.from_page(
                await reads.event_page(st.event, st.page, st.page_size, fresh=fresh)
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
    reads = request.app[READS]
    sellers, events, lots, owner = await asyncio.gather(
        sellers_panel(reads, st), events_panel(reads, st),
        lots_panel(reads, st, wants_fresh(request)),
        event_owner(reads, st),
    )
    moved, asked = None, st
    if owner is not None and owner["id"] != st.seller:
        # The event is another seller's (or the link names none): show the event's seller,
        # and say so when the link named a different one.
        if st.seller is not None:
            moved = {"event": st.event, "asked": st.seller, "name": owner["name"]}
        st = st.with_(seller=owner["id"], past=st.past or owner["past"], epage=1)
        events = await events_panel(reads, st)
        lots = {**lots, "st": st}
    show = "lots" if st.event is not None else "events" if st.seller is not None else "sellers"
    return render(request, "page.html", {
        "st": st, "sellers": sellers, "events": events, "lots": lots, "oob": False,
        "show": show, "moved": moved, "canonical": st.url() if st != asked else None,
    })


async def event_owner(reads: Reads, st: ViewState) -> dict[str, Any] | None:
    """The seller of the deep link's event when it is not the link's seller (None when it is,
    or when the event cannot be read: the lots panel then says why)."""
    if st.event is None:
        return None
    try:
        catalog = json.loads((await reads.catalog(st.event)).entry.body)
    except (GatewayError, ValueError):
        return None
    owners = [s for s in catalog.get("sellers") or [] if isinstance(s, dict) and "id" in s]
    if not owners or any(s["id"] == st.seller for s in owners):
        return None
    owner = owners[0]
    return {"id": int(owner["id"]), "name": owner.get("name") or f"seller #{owner['id']}",
            "past": bool(catalog.get("isCompleted"))}


async def sellers_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "sellers")
    panel = await sellers_panel(request.app[READS], st)
    return render_panel(request, "_sellers.html", panel, history="Replace")  # not per keystroke


async def events_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "events")
    if st.seller is None:
        raise BadRequest("seller is required")
    return render_panel(request, "_events.html", await events_panel(request.app[READS], st))


async def lots_fragment(request: web.Request) -> web.Response:
    st = ViewState.for_panel(request, "lots")
    if st.event is None:
        raise BadRequest("event is required")
    fresh = wants_fresh(request)
    panel = await lots_panel(request.app[READS], st, fresh)
    # A refresh shows the same view again: no new history entry.
    return render_panel(request, "_lots.html", panel, history="Replace" if fresh else "Push")


async def event_lot_count(request: web.Request) -> web.Response:
    """An event's lot count for its line in the events panel, loaded after the list (the
    seller's embedded events carry no lots): "25 lots", or nothing if it cannot be read."""
    catalog_id = LOT_ID.read(request.match_info)
    try:
        count = await request.app[READS].lot_count(catalog_id)
    except GatewayError:
        return web.Response(text="", content_type="text/html")
    text = f"{count:,} lot{'' if count == 1 else 's'}"
    return web.Response(text=f'<span class="lot-count"> · {text}</span>',
                        content_type="text/html")


async def lot_dialog(request: web.Request) -> web.Response:
    lot_id = LOT_ID.read(request.match_info)
    try:
        lookup = await request.app[READS].lot(lot_id)
    except GatewayError as exc:
        return render(request, "_lot_dialog.html", {"error": exc, "lot": None}, exc.status)
    lot = LotView.from_body(lookup.entry.body)
    return render(request, "_lot_dialog.html", {"error": None, "lot": lot})


async def save_field(request: web.Request) -> web.Response:
    """POST /ui/lots/{id}/override with one field: the saved field, re-rendered. A read-only
    session gets 403 and nothing is written; every save, refused or not, is audited.

    The page sends the ETag of the lot it shows as If-Match: if the lot changed since, 412
    with the field rendered in conflict (the current value and the one typed; nothing is
    written). An unusual value (ui.max_quantity, ...) is 422 asking for confirmation
    (X-Confirm) unless the form says `confirmed=1`.
    """
    lot_id = LOT_ID.read(request.match_info)
    session, changes, name, form = current(request), {}, "", {}
    try:
        require_write(session)
        form = await request.post()
        name, changes = form_changes(form)
        question = implausible(name, changes[name], request.app[CONFIG].ui)
        if question and form.get("confirmed") != "1":
            return refusal(Unprocessable(question + " Save it anyway?"), confirm=True)
        saved = await request.app[WRITES].save_override(
            lot_id, changes, actor=session.actor, if_match=request.headers.get("If-Match"))
    except GatewayError as exc:
        await audit_save(request, lot_id, SAVE_OUTCOMES.get(exc.status, "upstream_error"),
                         requested=changes)
        if not isinstance(exc, PreconditionFailed) or name not in FIELDS:
            return refusal(exc)
        # Conflict: show the lot as it is now beside what was typed; the operator chooses.
        lot = LotView.from_body((await request.app[READS].lot(lot_id, fresh=True)).entry.body)
        mine = form.get(name)
        conflict = RECENT_SAVES.conflict(lot_id, name, mine if isinstance(mine, str) else "",
                                         session.actor)
        template = "_field_cell.html" if name in TABLE_FIELDS else "_field_text.html"
        response = render(request, template, {"lot": lot, "field": lot.fields[name],
                                              "saved": False, "conflict": conflict}, 412)
        response.headers["X-Lot-ETag"] = lot.etag
        return response
    await audit_save(request, lot_id, "ok" if saved.changes else "unchanged",
                     changes={c.field: [c.old, c.new] for c in saved.changes})
    RECENT_SAVES.saved(lot_id, [c.field for c in saved.changes], session.actor)
    lot = LotView.from_body(saved.body)
    template = "_field_cell.html" if name in TABLE_FIELDS else "_field_text.html"
    response = render(request, template, {"lot": lot, "field": lot.fields[name],
                                          "saved": True, "conflict": None})
    response.headers["X-Lot-ETag"] = lot.etag
    return response


# A refused save's audit outcome, by status; anything else is the upstream's failure.
SAVE_OUTCOMES = {400: "rejected", 403: "forbidden", 404: "not_found", 412: "conflict",
                 413: "rejected", 422: "rejected"}


async def audit_save(request: web.Request, lot_id: int, outcome: str, **details: Any) -> None:
    """The audit line of one UI override save, as its session's operator."""
    session = current(request)
    await audit(request, "override", targets=[lot_id], outcome=outcome, caller=session.actor,
                auth=session.auth, **details)


async def no_such_page(request: web.Request) -> web.Response:
    """/ui/... that no route serves: 405 with Allow if the path exists for other methods."""
    allowed = await other_methods(request)
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise NotFound("no such page")


def refusal(exc: GatewayError, *, confirm: bool = False) -> web.Response:
    """A refused write: the reason as text, and no swap (what was typed stays). `confirm`:
    the value is valid but unusual; the page asks, and sends it again with confirmed=1."""
    headers = {"HX-Reswap": "none", "Cache-Control": "no-store"}
    if confirm:
        headers["X-Confirm"] = "1"
    return web.Response(status=exc.status, text=exc.detail, headers=headers)


# --- errors and headers --------------------------------------------------------------------


async def with_html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """UI answers are HTML (or text for refused writes), never stored, never framed."""
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(request, _as_gateway_error(exc))
        if "Allow" in exc.headers:  # a 405 says what the path does accept
            response.headers["Allow"] = exc.headers["Allow"]
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
