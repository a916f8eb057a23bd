"""The operators' HTMX screen, served by the gateway and calling the domain in-process."""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.routes import Handler
from ui import session, views
from ui.lots import TABLE_FIELDS, TEXT_FIELDS, UNITS

HERE = Path(__file__).resolve().parent
HTMX = "htmx-2.0.11.min.js"  # vendored from the npm package htmx.org, with htmx.LICENSE


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
        asset=functools.cache(lambda name: str(static.url_for(filename=name))),
    )
    env.filters.update(when=when, ms=milliseconds)
    routes = [
        ("GET", "/", views.page),
        ("GET", "/ui/panels/sellers", views.sellers_fragment),
        ("GET", "/ui/panels/events", views.events_fragment),
        ("GET", "/ui/panels/lots", views.lots_fragment),
        ("GET", "/ui/lots/{id}", views.lot_dialog),
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


def when(text: Any) -> str:
    """An upstream ISO timestamp as '3 Dec 2026 15:00' (as given when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text or "")
    return f"{moment.day} {moment:%b %Y %H:%M}"


def milliseconds(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"
