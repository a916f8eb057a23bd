"""The hot path: a warm GET answered before routing, with no await.

A warm hit costs the gateway little of its own (a dictionary lookup or two); what it paid
for was aiohttp's routing and three layers of middleware, each a coroutine per request.
So the server's handler is wrapped (`install`): a GET of a route that declares a `warm`
answer (gateway/routes.py: the mirror's single resources, the event page, a batch of
lots) is tried
here first, with the very steps the full path runs, called directly:

1. its id (X-Request-ID), as the outermost middleware makes it (gateway/access.py);
2. admission without an await (gateway/admission.py `at_once`): the browser rules, a
   caller known at once (an API key, nobody, or a token verified before: gateway/auth.py
   `VerifiedTokens`), a token of the caller's bucket. A refusal
   is answered here, rendered as problem_middleware renders it (gateway/api.py `refusal`);
3. the route's warm answer: the cache's fresh hit or a kept page, as the handler would
   build it (the same functions), or that answer kept from an earlier request that asked
   the same (below);
4. its metrics and access line (gateway/access.py `AccessLog.answered`);
5. the answer written as bytes made once per version of its body (gateway/wire.py).

A warm answer made of fresh hits alone is kept by what was asked: the raw path and query,
Accept-Encoding and If-None-Match, which are all a warm answer depends on once its caller
is admitted. It is handed out again, its hits counted, under the rules of a kept page
(gateway/cache/views.py): while no cache entry was stored, dropped or evicted (a save drops
its entries) and none of its parts has expired or fallen due for refresh ahead.

Anything else goes the full way, as if this were not here: another method or path, a
percent-encoded path or query (the router and this would read it apart), a request with a
body or an Expect header, a caller's token not yet verified, a parameter the
handler would refuse, a miss. A request handed on after admission carries whom it was
charged to, so it takes one token of its caller's bucket, not two. The full path stays the
reference: this answers only what it would answer, identically (tests/test_hot.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from aiohttp import web

from gateway.access import HEADER, request_id_of
from gateway.api import ROUTES, refusal
from gateway.cache.views import Views
from gateway.context import REQUEST_ID
from gateway.errors import GatewayError
from gateway.routes import Route, Warm
from gateway.state import ACCESS_LOG, ADMISSION, CACHE
from gateway.wire import Cached, Fixed, Wire

MAX_KEPT = 4096  # warm answers kept
MAX_KEPT_KEY = 1024  # characters of what was asked (path, query, two headers), at most
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Hot(NamedTuple):
    warm: Warm
    template: str  # the route's path, its label in metrics and access lines
    name: str  # of its one path parameter, "" for none


class HotPath:
    def __init__(self, app: web.Application, routes: Iterable[Route] = ROUTES) -> None:
        self._app = app
        self._admission = app[ADMISSION]
        self._access = app[ACCESS_LOG]
        # Templates without a parameter (/api/v1/lots), by path; with one, last
        # (/api/Lot/{id}) or before a last literal segment (/api/v1/catalogs/{id}/lots), by
        # what surrounds it.
        self._exact: dict[str, _Hot] = {}
        self._last: dict[str, _Hot] = {}
        self._inner: dict[tuple[str, str], _Hot] = {}
        for route in routes:
            if route.warm is None or route.method != "GET":
                continue
            prefix, _, rest = route.path.partition("{")
            name, _, suffix = rest.partition("}")
            hot = _Hot(route.warm, route.path, name)
            if not rest:
                self._exact[prefix] = hot
            elif not name or "{" in suffix or suffix.count("/") > 1 or ":" in name:
                raise ValueError(f"{route.path}: a warm route has at most one plain parameter")
            elif suffix:
                self._inner[prefix, suffix] = hot
            else:
                self._last[prefix] = hot
        # Warm answers kept by what was asked: the raw path and query, and the two headers
        # an answer depends on. Valid while no cache entry was stored, dropped or evicted
        # and none of its parts needs more than a hit (gateway/cache/views.py).
        cache = app[CACHE]
        self._kept: Views[tuple[Fixed, float, float]] = Views(
            cache, max_views=MAX_KEPT, max_bytes=cache.store.max_bytes // 8)
        self.answered = 0  # requests answered here (for tests and benchmarks)

    def answer(self, request: web.BaseRequest) -> web.StreamResponse | Wire | None:
        """The answer to `request` when it is a warm GET of a warm route, else None (and the
        request is the full path's, with what was done for it noted on it)."""
        if request.method != "GET" or "%" in request.raw_path:
            return None  # the router sees `/api/Lot%2F1` as one segment, the path as two
        found = self._route(request.path)
        if found is None or request.body_exists or "Expect" in request.headers:
            return None
        hot, value = found
        start = time.perf_counter()
        request_id = request_id_of(request)
        REQUEST_ID.set(request_id)
        try:
            admitted = self._admission.at_once(request)
        except GatewayError as exc:
            return self._refused(request, request_id, hot.template, start, refusal(exc))
        cached = None
        if admitted:
            cached = self._kept_answer(request, hot, value)
        if cached is None:
            return None
        answer = cached.wire(request, request_id)
        self._access.answered(request, request_id, hot.template, cached.status,
                              time.perf_counter() - start, cached.cache)
        self.answered += 1
        return answer

    @property
    def kept(self) -> int:
        """Warm answers kept now."""
        return len(self._kept)

    def _kept_answer(self, request: web.BaseRequest, hot: _Hot, value: str) -> Cached | None:
        """The route's warm answer: kept from an earlier request that asked the same, while
        it is exactly what the route would answer now (see the module docstring), else
        made by the route (and kept when it may be)."""
        headers = request.headers
        key = (request.raw_path, headers.get("Accept-Encoding"), headers.get("If-None-Match"))
        kept = self._kept.get(key)
        if kept is not None:
            (fixed, age_s, ttl_s), held_s = kept
            return Cached(fixed, age_s + held_s, ttl_s)
        try:
            cached = hot.warm(self._app, request, {hot.name: value} if hot.name else {})
        except Exception:  # the full path refuses (or reports) it as it always does
            return None
        if (cached is not None and cached.parts
                and sum(len(k) for k in key if k is not None) <= MAX_KEPT_KEY):
            self._kept.keep(key, (cached.fixed, cached.age_s or 0.0, cached.ttl_s),
                            cached.parts)
        return cached

    def _route(self, path: str) -> tuple[_Hot, str] | None:
        hot = self._exact.get(path)
        if hot is not None:
            return hot, ""
        head, _, last = path.rpartition("/")
        hot = self._last.get(head + "/")
        if hot is not None:
            return (hot, last) if last else None
        head, _, value = head.rpartition("/")
        hot = self._inner.get((head + "/", "/" + last))
        return (hot, value) if hot is not None and value else None

    def _refused(self, request: web.BaseRequest, request_id: str, route: str, start: float,
                 response: web.Response) -> web.Response:
        response.headers[HEADER] = request_id
        self._access.answered(request, request_id, route, response.status,
                              time.perf_counter() - start, None)
        self.answered += 1
        return response


def install(runner: web.AppRunner) -> HotPath:
    """Put the hot path in front of the app `runner` serves, for every connection it takes
    from now on. After `runner.setup()` (the app started: the hot path uses its services),
    before its sites start."""
    server = runner.server
    if server is None:
        raise RuntimeError("install the hot path after runner.setup()")
    hot = HotPath(runner.app)
    full: _Handler = server.request_handler

    async def front(request: web.BaseRequest) -> web.StreamResponse:
        response = hot.answer(request)
        if response is None:
            return await full(request)
        return response  # type: ignore[return-value]  # a Wire: as aiohttp takes it

    server.request_handler = front
    return hot
