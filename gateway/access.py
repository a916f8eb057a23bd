"""Request ids, the access log and the audit helper of the edges.

- **Request ids.** Each request gets one: the client's `X-Request-ID` when it is well
  formed (1 to 64 characters of `A-Z a-z 0-9 . _ -`), else a new one: 16 hex digits, the
  first 8 random for this process, the last 8 counting its requests (unique without a
  system call per request; an id correlates lines, it is not a secret). It
  is set in gateway/context.py's REQUEST_ID for the code serving the request (so every log
  line of the request carries it, gateway/logs.py), sent upstream with every upstream
  request it causes (gateway/upstream/client.py), and echoed as `X-Request-ID` on every
  answer, errors and 304s included. It is never part of a cached body or an ETag.
- **The access log.** One line per request, logger `gateway.access`, at INFO: request id,
  caller, method, route template (never the raw path), status, milliseconds and the cache
  result (the answer's `X-Cache`, or null). Written once the answer is on its way: the
  lines of one turn of the event loop go out together, after the answers.
- **Request metrics.** gateway_http_requests_total and gateway_http_request_seconds by
  route template, counted by the same middleware (gateway/metrics.py `served`). A client
  that goes away before its answer is counted (and logged) with status 499, as nginx does.
- **The audit trail.** `audit()` appends one line for a write (gateway/audit.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from aiohttp import web

from gateway import logs
from gateway.context import REQUEST_ID
from gateway.metrics import Metrics, route_label
from gateway.state import AUDIT, CALLER

access_log = logging.getLogger("gateway.access")

HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PROCESS = os.urandom(4).hex()  # new ids: this, then the request's number in this process
_NUMBERS = itertools.count(1)


def request_id_of(request: web.BaseRequest) -> str:
    """The client's X-Request-ID when well formed, else a new one."""
    given = request.headers.get(HEADER)
    if given is not None and _WELL_FORMED.fullmatch(given):
        return given
    return f"{_PROCESS}{next(_NUMBERS) & 0xFFFFFFFF:08x}"


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


class _Served(NamedTuple):
    """What the access line of one request says."""

    created: float  # time.time() when it was answered
    request_id: str
    caller: str
    method: str
    route: str
    status: int
    ms: float
    cache: str | None


class AccessLog:
    """Each answered request counted (gateway_http_requests_total and _seconds) and its
    access line written: by the outermost middleware, or by the hot path for what it
    answers itself (`answered`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._pending: list[_Served] = []  # this loop turn's lines, written on the next
        self._pid = os.getpid()

    def answered(self, request: web.BaseRequest, request_id: str, route: str, status: int,
                 seconds: float, cache: str | None) -> None:
        method = request.method
        self._metrics.served(route, method, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            # Written on the loop's next turn, once the answer is on its way: the line
            # costs the request no latency. One callback writes the whole turn's lines.
            who = request.get(CALLER)
            self._pending.append(_Served(
                time.time(), request_id, who.name if who is not None else "-", method,
                route, status, round(seconds * 1000, 2), cache))
            if len(self._pending) == 1:
                asyncio.get_running_loop().call_soon(self._write_lines)

    def _write_lines(self) -> None:
        served = self._pending.copy()
        self._pending.clear()
        handler = logs.direct(access_log)
        if handler is not None and isinstance(handler.formatter, logs.JsonFormatter):
            stamp = handler.formatter.timestamp
            handler.write_lines([_access_json(line, stamp, self._pid) for line in served])
        else:
            for line in served:
                access_log.handle(_access_record(line))

    def middleware(self) -> Any:
        """The outermost middleware: the request's id, in and out, its metrics and its
        access-log line."""
        answered = self.answered

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
                answered(request, request_id, route_label(request), status,
                         time.perf_counter() - start, cache)

        return requests


def _access_json(line: _Served, stamp: Callable[[float], str], pid: int) -> str:
    """The line JsonFormatter would make of _access_record(line), made directly: one per
    request, so cheaply (a test holds the two equal). Every text a client chose (the
    caller's name from a token, the method) is JSON-encoded; the rest is the gateway's:
    a validated request id, a route template, numbers, the X-Cache value. All but the
    time, the id and the milliseconds repeats from line to line, so it is kept, encoded."""
    key = (line.caller, line.method, line.route, line.status, line.cache, pid)
    parts = _PARTS.get(key)
    if parts is None:
        if len(_PARTS) >= _PARTS_MAX:  # many callers' names: start again, bounded
            _PARTS.clear()
        parts = _PARTS[key] = _parts(line, pid)
    before_id, before_ms, tail = parts
    time_ = stamp(line.created)
    return f'{{"time": "{time_}{before_id}{line.request_id}{before_ms}{line.ms!r}{tail}'


# (caller, method, route, status, cache, pid) -> the access line's fixed parts, encoded.
_PARTS: dict[tuple[str, str, str, int, str | None, int], tuple[str, str, str]] = {}
_PARTS_MAX = 4096


def _parts(line: _Served, pid: int) -> tuple[str, str, str]:
    e = logs.encode
    return (
        f'", "level": "INFO", "logger": "gateway.access", '
        f'"message": {e(f"{line.method} {line.route} {line.status}")}, "pid": {pid}, '
        f'"request_id": "',
        f'", "caller": {e(line.caller)}, "method": {e(line.method)}, '
        f'"route": {e(line.route)}, "status": {line.status}, "ms": ',
        f', "cache": {e(line.cache)}}}\n',
    )


def _access_record(line: _Served) -> logging.LogRecord:
    # A record made directly (Logger.info would also look up its caller's frame).
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 0,
                               f"{line.method} {line.route} {line.status}", None, None)
    record.created = line.created
    record.fields = {
        "request_id": line.request_id, "caller": line.caller, "method": line.method,
        "route": line.route, "status": line.status, "ms": line.ms, "cache": line.cache,
    }
    return record
