"""Operator sessions, sign-in and CSRF for the UI.

A session is a signed cookie (HMAC-SHA256, HttpOnly, SameSite=Strict) naming the operator
and a random session id. Every browser that opens the UI gets one, signed in or not: it
anchors the CSRF token, which is derived from the session id and must accompany every UI
write (header X-CSRF-Token, or form field csrf_token). With API keys configured
(GW_API_KEYS), every UI page needs a signed-in session; without keys the UI is open and
writes are logged as "anonymous".

Sign-in checks an ABConnect username and password against the identity endpoint, or an API
key against GW_API_KEYS; it always starts a fresh session id, so a session id known before
sign-in is worthless after it. Sign-out revokes the session id on every replica (through
the cache's shared tier), until its cookie would have expired anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web

from gateway.api import CATALOG
from gateway.auth import key_name
from gateway.errors import Forbidden, GatewayError, Unauthorized

log = logging.getLogger("ui.session")

COOKIE = "gw_session"
MAX_AGE_S = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SECRET_ENV = "GW_SESSION_SECRET"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths under the session regime; /static/ stays open.
UI_PREFIXES = ("/ui/", "/sign-in", "/sign-out")


@dataclass(frozen=True)
class Session:
    sid: str
    operator: str | None  # None: the browser has not signed in
    expires: int  # unix time

    @property
    def actor(self) -> str:
        """The name the override log records."""
        return self.operator or "anonymous"


class Sessions:
    """Issues and checks session cookies. Processes sharing the key (forked workers,
    replicas with one GW_SESSION_SECRET) accept each other's cookies; revocation is
    shared through the service layer (see revoke())."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    def issue(self, operator: str | None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), operator, int(self._clock()) + MAX_AGE_S)
        payload = _b64(json.dumps([session.sid, session.operator, session.expires]).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None if it is absent, forged or expired.
        (Whether it was revoked is asked separately: see is_revoked().)"""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not _same(signature, self._sign(payload)):
            return None
        try:
            sid, operator, expires = json.loads(_unb64(payload))
            session = Session(str(sid), operator if operator is None else str(operator),
                              int(expires))
        except (ValueError, TypeError):
            return None
        if session.expires <= self._clock():
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf:" + session.sid)

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        return session is not None and bool(token) and _same(token, self.csrf_token(session))

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; as bytes, so a non-ASCII value is just unequal."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Drawn once at import, so worker processes forked after it share it; each start of the
# server draws a new one (every session then ends).
_START_SECRET = secrets.token_bytes(32)


def session_secret() -> bytes:
    """GW_SESSION_SECRET if set (sessions survive restarts), else random per server start."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        return _START_SECRET
    if len(secret) < 32:
        log.warning("%s is shorter than 32 characters; use a long random value", SECRET_ENV)
    return secret.encode()


SESSIONS = web.AppKey("ui_sessions", Sessions)
API_KEYS = web.AppKey("ui_api_keys", Mapping[str, str])
SESSION = web.RequestKey("ui_session", Session)


def is_ui_path(path: str) -> bool:
    return path == "/" or path.startswith(UI_PREFIXES)


def current(request: web.Request) -> Session:
    return request[SESSION]


def sign_in_required(request: web.Request) -> bool:
    return bool(request.app[API_KEYS])


@web.middleware
async def session_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Attach the session; refuse writes without its CSRF token; send strangers to sign in."""
    if not is_ui_path(request.path):
        return await handler(request)
    sessions = request.app[SESSIONS]
    session = sessions.read(request.cookies.get(COOKIE))
    if session is not None and await request.app[CATALOG].session_revoked(session.sid):
        session = None
    if request.method not in SAFE_METHODS and not sessions.csrf_ok(
        session, request.headers.get(CSRF_HEADER) or await _form_token(request)
    ):
        raise Forbidden("the request carried no valid CSRF token; reload the page and retry")
    signing_in = request.path == "/sign-in"
    if sign_in_required(request) and not signing_in and (session is None or not session.operator):
        return _to_sign_in(request)
    cookie = None
    if session is None:
        session, cookie = sessions.issue(None)
    request[SESSION] = session
    response = await handler(request)
    if cookie is not None and COOKIE not in response.cookies:
        set_cookie(request, response, cookie)
    return response


async def _form_token(request: web.Request) -> str | None:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    value = (await request.post()).get(CSRF_FIELD)
    return value if isinstance(value, str) else None


def _to_sign_in(request: web.Request) -> web.Response:
    location = "/sign-in?next=" + quote(request.path_qs if request.path == "/" else "/", safe="")
    if request.headers.get("HX-Request"):
        # htmx follows HX-Redirect with a full page load, whatever the status.
        return web.Response(status=401, text="sign in first",
                            headers={"HX-Redirect": location})
    if request.method in SAFE_METHODS:
        return web.Response(status=303, headers={"Location": location})
    raise Unauthorized("sign in first")


def set_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE, value, max_age=MAX_AGE_S, path="/", httponly=True, samesite="Strict",
        secure=request.secure,
    )


def safe_next(target: str | None) -> str:
    """Only a path on this site; anything else (//host, http://...) goes to the UI root."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc or "\\" in target else target


# --- sign-in and sign-out handlers ----------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if not sign_in_required(request):
        return web.Response(status=303, headers={"Location": "/"})
    return render_sign_in(request, next_=safe_next(request.query.get("next")))


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Password (checked by the identity endpoint) or API key; a fresh session either way."""
    if not sign_in_required(request):
        return web.Response(status=303, headers={"Location": "/"})
    form = await request.post()
    username, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
    api_key, next_ = str(form.get("api_key", "")).strip(), safe_next(str(form.get("next", "")))
    try:
        operator = await _operator(request, username, password, api_key)
    except GatewayError as exc:
        return render_sign_in(request, next_=next_, username=username, status=exc.status,
                              error=f"Could not check the sign-in: {exc.detail}")
    if operator is None:
        log.info(json.dumps({"event": "ui_sign_in", "outcome": "refused", "username": username}))
        error = ("That API key is not valid." if api_key and not username else
                 "Wrong username or password." if username else
                 "Enter your ABConnect username and password, or an API key.")
        return render_sign_in(request, next_=next_, username=username, status=401, error=error)
    sessions = request.app[SESSIONS]
    await revoke(request, current(request))
    _, cookie = sessions.issue(operator)
    log.info(json.dumps({"event": "ui_sign_in", "outcome": "ok", "operator": operator}))
    response = web.Response(status=303, headers={"Location": next_})
    set_cookie(request, response, cookie)
    return response


async def _operator(
    request: web.Request, username: str, password: str, api_key: str
) -> str | None:
    if username and password:
        if len(username) > 200 or len(password) > 1000:
            return None
        ok = await request.app[CATALOG].verify_operator(username, password)
        return username if ok else None
    if api_key and not username:
        return key_name(request.app[API_KEYS], api_key)
    return None


async def revoke(request: web.Request, session: Session) -> None:
    """End `session` on every replica, until its cookie would have expired anyway."""
    remaining = session.expires - time.time()
    if remaining > 0:
        await request.app[CATALOG].revoke_session(session.sid, remaining)


async def sign_out(request: web.Request) -> web.StreamResponse:
    await revoke(request, current(request))
    response = web.Response(status=303, headers={
        "Location": "/sign-in" if sign_in_required(request) else "/"})
    response.del_cookie(COOKIE, path="/")
    return response


def render_sign_in(
    request: web.Request, *, next_: str, username: str = "", error: str = "", status: int = 200
) -> web.Response:
    context = {**page_context(request), "next": next_, "username": username, "error": error}
    return aiohttp_jinja2.render_template("sign_in.html", request, context, status=status)


def page_context(request: web.Request) -> dict[str, object]:
    """What every page needs: who is signed in and the CSRF token for writes."""
    session = request.get(SESSION)
    return {
        "operator": session.operator if session else None,
        "csrf": request.app[SESSIONS].csrf_token(session) if session else "",
        "sign_in_required": sign_in_required(request),
    }
