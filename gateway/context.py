"""What the code running for one request knows about it without being handed the request.

Context variables, set by the edge's middlewares when a request arrives and copied into
every task it starts (a cache fetch started for it, a background refresh it triggers). The
upstream client reads them, so it stays free of aiohttp's server side:

- REQUEST_ID: the request's id (X-Request-ID), sent upstream and in every log line;
- CHARGED_TO: the caller whose share of upstream slots an upstream call takes. A fetch that
  other callers join runs in the task of whoever started it, so it is charged to them.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
CHARGED_TO: ContextVar[str | None] = ContextVar("charged_to", default=None)
