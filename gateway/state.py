"""Every typed key of the app's and a request's state, in one place; nothing else.

App keys are set by gateway/app.py: CONFIG and METRICS when the app is created, the rest
by its start-up context once the upstream session and the cache are open. Request keys
are set by the middleware named beside them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.audit import AuditLog
from gateway.cache import Cache
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.reads import Reads
from gateway.representations import Pages
from gateway.sessions import OperatorSessions, Session
from gateway.upstream.identity import TokenProvider
from gateway.upstream.signing_keys import SigningKeys
from gateway.writes import Writes

if TYPE_CHECKING:
    from gateway.access import AccessLog  # gateway.access imports this module
    from gateway.admission import Admission  # through gateway.auth, so does gateway.admission
    from gateway.auth import Caller  # gateway.auth imports this module
    from gateway.policy import Policy  # gateway.policy imports this module

CONFIG = web.AppKey("config", Config)  # as configured (sandbox mode stays "sandbox")
METRICS = web.AppKey("metrics", Metrics)
CACHE = web.AppKey("cache", Cache)
TOKENS = web.AppKey("tokens", TokenProvider)  # the gateway's own upstream sign-in
READS = web.AppKey("reads", Reads)
WRITES = web.AppKey("writes", Writes)
SESSIONS = web.AppKey("sessions", OperatorSessions)
# The identity server's keys for callers' own tokens; set only with auth.upstream_tokens on.
SIGNING_KEYS = web.AppKey("signing_keys", SigningKeys)
# Readiness check: a token can be had. app.py wraps TokenProvider.token in async-lru
# (one key, short fixed TTL, concurrent probes share one call, failures not kept): the
# one place where a plain memoising cache is exactly what is needed.
READINESS = web.AppKey("readiness", Callable[[], Awaitable[str]])
PAGES = web.AppKey("pages", Pages)  # assembled JSON pages, reused while their parts last
AUDIT = web.AppKey("audit", AuditLog)  # audit.path, opened per line (gateway/audit.py)
# Metrics and access line of each answered request, and the admission steps: shared by the
# middlewares and the hot path (gateway/hot.py), so both count and limit as one.
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")

# Set by the hot path (gateway/hot.py) on a request it admitted and then handed on to the
# full path: whom it was charged to (admission happens once per request).
ADMITTED = web.RequestKey("admitted", str)
CLIENT_NAME = web.RequestKey("client_name", str)  # the caller's name (gateway/auth.py)
CALLER: web.RequestKey[Caller] = web.RequestKey("caller")  # who calls /api/* (gateway/auth.py)
SESSION = web.RequestKey("session", Session)  # the UI session (ui/session.py)
# The browser-facing rules and trusted proxies, for client_address and is_https
# (gateway/policy.py, set first thing by its middleware).
POLICY: web.RequestKey[Policy] = web.RequestKey("policy")
