"""Sign-in, sign-out and the session check of the UI's routes: the HTTP side of sessions.

Every browser that opens the UI gets a session cookie (HttpOnly, SameSite=Strict), signed in
or not: it anchors the CSRF token that must accompany every UI write (header X-CSRF-Token,
or form field csrf_token). With API keys configured (GW_API_KEYS), every UI page needs a
signed-in session; without keys the UI is open and writes are logged as "anonymous".

Sign-in checks an ABConnect username and password against the identity endpoint, or an API
key against GW_API_KEYS; it always starts a fresh session id, so a session id known before
sign-in is worthless after it. Sign-out revokes the session id on every replica. Cookies,
CSRF tokens and revocation themselves are gateway/sessions.py's.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web

from gateway.auth import key_name
from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.routes import Handler
from gateway.sessions import MAX_AGE_S, Session
from gateway.state import CONFIG, SESSION, SESSIONS

log = logging.getLogger("ui.session")

COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def current(request: web.Request) -> Session:
    return request[SESSION]


def sign_in_required(request: web.Request) -> bool:
    return bool(request.app[CONFIG].api_keys)


async def with_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the session; refuse writes without its CSRF token; send strangers to sign in."""
    sessions = request.app[SESSIONS]
    cookies = sessions.cookies
    session = cookies.read(request.cookies.get(COOKIE))
    if session is not None and await sessions.revoked(session):
        session = None
    if request.method not in SAFE_METHODS and not cookies.csrf_ok(
        session, request.headers.get(CSRF_HEADER) or await _form_token(request)
    ):
        raise Forbidden("the request carried no valid CSRF token; reload the page and retry")
    signing_in = request.path == "/sign-in"
    if sign_in_required(request) and not signing_in and (session is None or not session.operator):
        return _to_sign_in(request)
    cookie = None
    if session is None:
        session, cookie = cookies.issue(None)
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
    await request.app[SESSIONS].revoke(current(request))
    _, cookie = request.app[SESSIONS].cookies.issue(operator)
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
        ok = await request.app[SESSIONS].password_ok(username, password)
        return username if ok else None
    if api_key and not username:
        return key_name(request.app[CONFIG].api_keys, api_key)
    return None


async def sign_out(request: web.Request) -> web.StreamResponse:
    await request.app[SESSIONS].revoke(current(request))
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
        "csrf": request.app[SESSIONS].cookies.csrf_token(session) if session else "",
        "sign_in_required": sign_in_required(request),
    }
