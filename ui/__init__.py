"""The operators' HTMX screen, served by the gateway and calling the domain in-process."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from gateway.routes import Handler
from ui import session, views
from ui.lots import TABLE_FIELDS, TEXT_FIELDS, UNITS

HERE = Path(__file__).resolve().parent
HTMX = "htmx-2.0.11.min.js"  # vendored from the npm package htmx.org, with htmx.LICENSE

# The packing field is ABConnect's `cpack`, "container pack ID": a code of its CPackType
# list, which the Catalog API does not publish. The legend says what the field is and
# reads the codes seen in the data; the wording of each code is ours, to be confirmed by
# operations, and lives here only.
PACKING_INTRO = ("Packing is ABConnect's container pack code (its CPackType list), which "
                 "decides how a lot is packed for shipping.")
PACKING_CODES = {
    "1–4": "container pack type 1 to 4, as ABConnect's CPackType list numbers them",
    "PBOX": "packed box",
    "CRATE": "crate",
}


def add_routes(app: web.Application) -> None:
    """The UI's routes, templates and static files on the gateway app.

    The UI's two middlewares wrap its own handlers only (JSON routes run neither), in this
    order, outermost first: HTML errors (a failure anywhere inside, the session check
    included, is rendered as a page or a panel, never as problem+json), then the session
    (cookie, CSRF check, sign-in redirect).
    """
    static = app.router.add_static("/static/", HERE / "static", append_version=True)
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.globals.update(
        TABLE_FIELDS=TABLE_FIELDS, TEXT_FIELDS=TEXT_FIELDS, UNITS=UNITS, HTMX=HTMX,
        PACKING_CODES=PACKING_CODES, PACKING_INTRO=PACKING_INTRO,
        asset=functools.cache(lambda name: str(static.url_for(filename=name))),
    )
    env.filters.update(when=when, num=grouped)
    routes = [
        ("GET", "/", views.page),
        ("GET", "/ui/panels/sellers", views.sellers_fragment),
        ("GET", "/ui/panels/events", views.events_fragment),
        ("GET", "/ui/panels/lots", views.lots_fragment),
        ("GET", "/ui/lots/{id}", views.lot_dialog),
        ("GET", "/ui/events/{id}/lot-count", views.event_lot_count),
        ("POST", "/ui/lots/{id}/override", views.save_field),
        ("GET", "/sign-in", session.sign_in_page),
        ("POST", "/sign-in", session.sign_in),
        ("POST", "/sign-out", session.sign_out),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _scoped(handler))
    # Last, so it only sees what no UI route took: a page, not problem+json, for a browser.
    app.router.add_route("*", "/ui/{tail:.*}", _scoped(views.no_such_page))


def _scoped(handler: Handler) -> Handler:
    async def ui_route(request: web.Request) -> web.StreamResponse:
        return await views.with_html_errors(
            request, lambda request: session.with_session(request, handler)
        )

    return ui_route


def when(text: Any) -> Markup:
    """An upstream ISO timestamp as `<time datetime="…Z">3 Dec 2026, 15:00 UTC</time>` (as
    given when it does not parse). A time without a zone is UTC, as the upstream writes them;
    ui.js shows it in the operator's own zone, with the zone's name."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return escape(str(text or ""))
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return Markup('<time datetime="{}" data-when>{} {:%b %Y, %H:%M} UTC</time>').format(
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.day, moment)


def grouped(value: Any) -> str:
    """A number with thousands separators (12,345); anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) or not value.is_integer() else f"{int(value):,}"
