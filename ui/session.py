"""Sign-in, sign-out and the session check of the UI's routes: the HTTP side of sessions.

Every browser that opens the UI gets a session cookie (HttpOnly, SameSite=Strict), signed in
or not: it anchors the CSRF token that must accompany every UI write (header X-CSRF-Token,
or form field csrf_token). With API keys configured (GW_API_KEYS), every UI page needs a
signed-in session; without keys the UI is open and writes are logged as "anonymous".

Sign-in checks an ABConnect username and password against the identity endpoint (operators
only: see gateway/sessions.py SignInRules), or an API key against GW_API_KEYS (the session
then has the key's scope: a read key gives a read-only UI); it always starts a fresh session
id, so a session id known before sign-in is worthless after it. Too many failed tries for a
username or from an address get 429 with Retry-After and no identity call
(gateway/throttle.py). Sign-out revokes the session id on every replica. Every sign-in try
and every sign-out leaves an audit line (never a password or a key; a refused username
that could be a pasted key is shortened). Cookies, CSRF tokens, the sign-in rules and
revocation themselves are gateway/sessions.py's.
"""

from __future__ import annotations

import json
import logging
import math
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web

from gateway.access import audit
from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.policy import client_address, is_https
from gateway.routes import Handler
from gateway.sessions import MAX_AGE_S, Session, SignIn
from gateway.state import CONFIG, SESSION, SESSIONS
from gateway.throttle import Throttled

log = logging.getLogger("ui.session")

COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def current(request: web.Request) -> Session:
    return request[SESSION]


def require_write(session: Session) -> None:
    """Forbidden (403) for a read-only session (signed in with a read API key)."""
    if session.read_only:
        raise Forbidden(f"signed in with the read-only API key {session.actor!r}: this "
                        "session may look but not save")


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
        secure=is_https(request),
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
    how = "password" if username else "key"
    page = {"next_": next_, "username": username}
    try:
        result = await _check(request, username, password, api_key)
    except Throttled as exc:
        await _audit_sign_in(request, "throttled", how, shown_username(request, username))
        wait = max(1, math.ceil(exc.retry_after or 1))
        response = render_sign_in(request, **page, status=429, error=(
            "Too many failed sign-ins for this username or from this address. Try again in "
            f"{math.ceil(wait / 60)} minute{'s' if wait > 60 else ''}."))
        response.headers["Retry-After"] = str(wait)
        return response
    except GatewayError as exc:
        await _audit_sign_in(request, "error", how, shown_username(request, username))
        return render_sign_in(request, **page, status=exc.status,
                              error=f"Could not check the sign-in: {exc.detail}")
    if result is None or result.outcome != "ok":
        return await _refused(request, result, page)
    await request.app[SESSIONS].revoke(current(request))
    _, cookie = request.app[SESSIONS].cookies.issue(
        result.operator, scope=result.scope, auth=result.auth)
    await _audit_sign_in(request, "ok", result.auth, result.operator or "")
    response = web.Response(status=303, headers={"Location": next_})
    set_cookie(request, response, cookie)
    return response


async def _check(
    request: web.Request, username: str, password: str, api_key: str
) -> SignIn | None:
    """The sign-in the form asks for, checked; None when it asks for none."""
    sessions, address = request.app[SESSIONS], client_address(request)
    if username and password:
        return await sessions.password_sign_in(username, password, address)
    if api_key and not username:
        return sessions.key_sign_in(api_key, address)
    return None


REFUSALS = {  # outcome -> (status, message)
    "refused": (401, "Wrong username or password."),
    "not_operator": (403, "This ABConnect account is not an operator of this gateway, so it "
                          "cannot sign in here. Ask for it to be added, or use an API key."),
    "off": (403, "Password sign-in is off on this gateway: sign in with an API key."),
}


async def _refused(
    request: web.Request, result: SignIn | None, page: dict[str, str]
) -> web.Response:
    if result is None:
        return render_sign_in(request, **page, status=401,
                              error="Enter your ABConnect username and password, or an API key.")
    if result.auth == "key":
        status, error, who = 401, "That API key is not valid.", "unknown key"
    else:
        status, error = REFUSALS[result.outcome]
        who = result.operator or shown_username(request, page["username"])
    await _audit_sign_in(request, result.outcome, result.auth, who)
    return render_sign_in(request, **page, status=status, error=error)


async def _audit_sign_in(request: web.Request, outcome: str, how: str, who: str) -> None:
    """The audit line and the log line of one sign-in try (no password, no key)."""
    address = client_address(request)
    await audit(request, "sign_in", outcome=outcome, caller=who or "unknown", auth=how,
                address=address)
    log.info(json.dumps({"event": "ui_sign_in", "outcome": outcome, "operator": who,
                         "auth": how, "address": address}))


def shown_username(request: web.Request, username: str) -> str:
    """`username` as logs may show it: a configured operator as typed; anything else that
    could be a key pasted into the wrong field (16 characters or more, no spaces) cut to its
    first four characters; at most 64 characters either way."""
    if request.app[SESSIONS].rules.is_operator(username):
        return username[:64]
    if len(username) >= 16 and not any(c.isspace() for c in username):
        return f"{username[:4]}… ({len(username)} characters)"
    return username[:64]


async def sign_out(request: web.Request) -> web.StreamResponse:
    session = current(request)
    await request.app[SESSIONS].revoke(session)
    await audit(request, "sign_out", outcome="ok", caller=session.actor, auth=session.auth)
    response = web.Response(status=303, headers={
        "Location": "/sign-in" if sign_in_required(request) else "/"})
    response.del_cookie(COOKIE, path="/")
    return response


def render_sign_in(
    request: web.Request, *, next_: str, username: str = "", error: str = "", status: int = 200
) -> web.Response:
    context = {**page_context(request), "next": next_, "username": username, "error": error,
               "passwords_on": request.app[SESSIONS].rules.passwords_on}
    return aiohttp_jinja2.render_template("sign_in.html", request, context, status=status)


def page_context(request: web.Request) -> dict[str, object]:
    """What every page needs: who is signed in, whether they may save, and the CSRF token
    for writes."""
    session = request.get(SESSION)
    return {
        "operator": session.operator if session else None,
        "read_only": session.read_only if session else False,
        "csrf": request.app[SESSIONS].cookies.csrf_token(session) if session else "",
        "sign_in_required": sign_in_required(request),
    }
