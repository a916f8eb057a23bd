"""The operators' HTMX screen, served by the gateway and calling catalog.py in-process."""

from __future__ import annotations

from aiohttp import web


def setup_ui(app: web.Application) -> None:
    """Register the UI's routes, templates and static files on the gateway app."""
