"""The operators' HTMX screen, served by the gateway and calling catalog.py in-process."""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ui import session, views
from ui.lots import TABLE_FIELDS, TEXT_FIELDS, UNITS

HERE = Path(__file__).resolve().parent
HTMX = "htmx-2.0.11.min.js"  # vendored from the npm package htmx.org, with htmx.LICENSE


def setup_ui(app: web.Application) -> None:
    """Register the UI's routes, templates, static files and middlewares on the gateway app."""
    from gateway.app import CONFIG  # gateway.app imports this package: import at call time

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
    app[session.API_KEYS] = app[CONFIG].api_keys
    app[session.SESSIONS] = session.Sessions(session.session_secret())
    # Both run inside the gateway's problem middleware: a UI error is rendered as HTML here
    # before it could become problem+json; the session check runs inside the HTML errors.
    app.middlewares.append(views.ui_middleware)
    app.middlewares.append(session.session_middleware)
    views.add_routes(app)
    app.router.add_get("/sign-in", session.sign_in_page)
    app.router.add_post("/sign-in", session.sign_in)
    app.router.add_post("/sign-out", session.sign_out)


def when(text: Any) -> str:
    """An upstream ISO timestamp as '3 Dec 2026 15:00' (as given when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text or "")
    return f"{moment.day} {moment:%b %Y %H:%M}"


def milliseconds(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"
