"""Request ids, the access log and the audit helper of the edges.

(The request-id and access-log middleware are filled in below.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from gateway.context import REQUEST_ID
from gateway.metrics import route_label
from gateway.state import AUDIT, CALLER


async def audit(
    request: web.Request, action: str, *, targets: Iterable[int | str] = (), outcome: str,
    changes: Mapping[str, Any] | None = None, caller: str | None = None,
    auth: str | None = None, **extra: Any,
) -> None:
    """One audit line for a write made by this request. caller/auth default to the /api/*
    caller (gateway/auth.py); the UI passes its session's operator and how they signed in."""
    who = request.get(CALLER)
    await request.app[AUDIT].record(
        request_id=REQUEST_ID.get(),
        caller=caller or (who.name if who is not None else "anonymous"),
        auth=auth or (who.kind if who is not None else "anonymous"),
        method=request.method, route=route_label(request), action=action,
        targets=targets, outcome=outcome, changes=changes, **extra,
    )


def request_middleware() -> Any:
    """Placeholder: request id and access log (to be filled in)."""

    @web.middleware
    async def requests(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    return requests
