"""What the code running for one request knows about it without being handed the request.

Context variables, set by the edge's middlewares when a request arrives and copied into
every task it starts (a cache fetch started for it, a background refresh it triggers). The
upstream client reads them, so it stays free of aiohttp's server side:

- REQUEST_ID: the request's id (X-Request-ID), sent upstream and in every log line;
- CHARGED_TO: the caller whose share of upstream slots an upstream call takes. A fetch that
  other callers join runs in the task of whoever started it, so it is charged to them.
- BACKGROUND: this call is background work (a prefetch, a refresh-ahead), done for no
  client waiting on it; set by the code that starts the work, not by a middleware. The
  upstream client gives it the lowest priority: it never queues for a slot, never takes
  the last free one and never calls while the breaker is not closed (design rule 6); it is
  charged to no caller. Like the others it is inherited by the tasks the work starts, so a
  cache fetch started by a prefetch is background too.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
CHARGED_TO: ContextVar[str | None] = ContextVar("charged_to", default=None)
BACKGROUND: ContextVar[bool] = ContextVar("background", default=False)
