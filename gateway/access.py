"""Request ids, the access log and the audit helper of the edges.

- **Request ids.** Each request gets one: the client's `X-Request-ID` when it is well
  formed (1 to 64 characters of `A-Z a-z 0-9 . _ -`), else a new one (16 hex digits). It
  is set in gateway/context.py's REQUEST_ID for the code serving the request (so every log
  line of the request carries it, gateway/logs.py), sent upstream with every upstream
  request it causes (gateway/upstream/client.py), and echoed as `X-Request-ID` on every
  answer, errors and 304s included. It is never part of a cached body or an ETag.
- **The access log.** One line per request, logger `gateway.access`, at INFO: request id,
  caller, method, route template (never the raw path), status, milliseconds and the cache
  result (the answer's `X-Cache`, or null).
- **The audit trail.** `audit()` appends one line for a write (gateway/audit.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from gateway.context import REQUEST_ID
from gateway.metrics import route_label
from gateway.state import AUDIT, CALLER

access_log = logging.getLogger("gateway.access")

HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_of(request: web.BaseRequest) -> str:
    """The client's X-Request-ID when well formed, else a new random one."""
    given = request.headers.get(HEADER)
    if given is not None and _WELL_FORMED.fullmatch(given):
        return given
    return os.urandom(8).hex()


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
    """The outermost middleware: the request's id, in and out, and its access-log line."""

    @web.middleware
    async def requests(request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.perf_counter()
        request_id = request_id_of(request)
        REQUEST_ID.set(request_id)
        status, cache = 500, None
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects, and anything no inner layer rendered
            exc.headers[HEADER] = request_id
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away before its answer (as nginx logs it)
            raise
        else:
            status = response.status
            if not response.prepared:  # a streamed answer has sent its headers already
                response.headers[HEADER] = request_id
            cache = response.headers.get("X-Cache")
            return response
        finally:
            if access_log.isEnabledFor(logging.INFO):
                ms = round((time.perf_counter() - start) * 1000, 2)
                # Written on the loop's next turn, once the answer is on its way: the line
                # costs the request no latency (the callback keeps this request's context).
                asyncio.get_running_loop().call_soon(
                    _access_line, request, request_id, status, cache, ms)

    return requests


def _access_line(
    request: web.Request, request_id: str, status: int, cache: str | None, ms: float
) -> None:
    route, method, who = route_label(request), request.method, request.get(CALLER)
    # A record made directly (Logger.info would also look up its caller's frame).
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 0,
                               f"{method} {route} {status}", None, None)
    record.fields = {
        "request_id": request_id, "caller": who.name if who is not None else "-",
        "method": method, "route": route, "status": status, "ms": ms, "cache": cache,
    }
    access_log.handle(record)
