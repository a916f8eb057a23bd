"""A route declared once: the edge registers it and the OpenAPI document describes it.

Each JSON route of the gateway is one `Route`: method, path, handler, the parameters it
reads (gateway/params.py declarations, which parse and document themselves), the pydantic
models of its body and answer. The mirror's routes carry the upstream operation they serve
instead, so their parameters and shapes come from the upstream's own document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.params import Param
from gateway.wire import Cached

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The route's answer made at once, when it can be (a warm GET): app, request, the path's
# parameters -> the cached answer, or None for the full path (gateway/hot.py).
Warm = Callable[[web.Application, web.BaseRequest, Mapping[str, str]], Cached | None]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    params: tuple[Param[Any], ...] = ()
    body: type[BaseModel] | None = None  # the request body's model (JSON)
    answer: type[BaseModel] | None = None  # the 200 answer's model (JSON)
    media_type: str = "application/json"  # of the 200 answer
    errors: tuple[int, ...] = ()  # statuses this route answers besides 200 (problem+json)
    cached: bool = False  # answers carry ETag, X-Cache and Cache-Status; 304 on a match
    operation: Any = None  # mirror routes: the upstream operation (gateway.contract)
    tag: str = "gateway"
    open: bool = False  # needs no API key (health, readiness, metrics, this document)
    warm: Warm | None = None  # its answer without an await, when warm (gateway/hot.py)


async def other_methods(request: web.Request) -> set[str]:
    """The methods that routes other than the one matched (a catch-all) accept for this
    path: a catch-all answers 405 with them rather than taking a known path's wrong method."""
    own = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not own:
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods
    return allowed
