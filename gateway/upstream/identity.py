"""The ABConnect identity token: obtained by password grant, refreshed before it expires.

However many requests need a token at the same moment, one identity call is made: they
all await the same task. A 401 from the API reports the refused token through
`invalidate(token)`; only the first report for a given token drops it, so a burst of 401s
from one fan-out costs one re-authentication, not one per request.

`check_password` is the operator sign-in check: one password grant for someone else's
credentials, asking for the configured scope without `offline_access` (no refresh token is
minted for a sign-in), whose token is read for its claims and then dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from gateway.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """ABConnect identity credentials (gateway.config reads them from the environment)."""

    username: str
    password: str
    client_id: str = ""
    client_secret: str = ""

    @property
    def complete(self) -> bool:
        """Username and password both set: enough for the password grant."""
        return bool(self.username and self.password)


class IdentityRejected(UpstreamFailed):
    """The identity endpoint refused the request (400 / 401); `error` is its OAuth error
    code ("invalid_grant": wrong credentials; "invalid_scope", "invalid_client", ...: the
    request itself), "" when it gave none."""

    def __init__(self, detail: str, error: str = "") -> None:
        super().__init__(detail)
        self.error = error


# OAuth errors that say the gateway's request is wrong, not the operator's password.
_MISCONFIGURED = frozenset({"invalid_scope", "invalid_client", "unauthorized_client",
                            "unsupported_grant_type"})
OFFLINE_ACCESS = "offline_access"


def sign_in_scope(scope: str) -> str:
    """The scope an operator's password check asks for: `scope` without offline_access (so
    no refresh token is minted), or "openid" when nothing else is left."""
    words = [w for w in scope.split() if w != OFFLINE_ACCESS]
    return " ".join(words) or "openid"


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, its signature unchecked: only for a token the
    gateway just received from the identity endpoint itself (an opaque token: {})."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def identity_form(grant: dict[str, str], creds: Credentials, scope: str) -> dict[str, str]:
    """A token request as ABConnect's own SDK sends it: `rememberMe`, the scope, and the
    client id and secret only when set (never sent empty)."""
    form = {**grant, "scope": scope, "rememberMe": "True"}
    if creds.client_id:
        form["client_id"] = creds.client_id
    if creds.client_secret:
        form["client_secret"] = creds.client_secret
    return form


def password_form(creds: Credentials, scope: str) -> dict[str, str]:
    # The SDK lowercases the username; the identity server matches it in any case.
    grant = {"grant_type": "password", "username": creds.username.lower(),
             "password": creds.password}
    return identity_form(grant, creds, scope)


async def password_grant(
    session: aiohttp.ClientSession, identity_url: str, creds: Credentials,
    timeout_s: float, scope: str = "offline_access",
) -> dict:
    """One password-grant call; the token JSON, or IdentityRejected / Upstream* errors."""
    return await _token_call(session, identity_url, password_form(creds, scope), timeout_s)


class TokenProvider:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        identity_url: str,
        creds: Credentials,
        *,
        timeout_s: float,
        scope: str = "offline_access",
        on_call: Callable[[str], None] = lambda status: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._scope = scope
        self._url = identity_url
        self._creds = creds
        self._timeout_s = timeout_s
        self._on_call = on_call
        self._clock = clock
        # The current token and when to stop using it (a margin before its real expiry).
        # Written only by _obtain(), in one step after a successful identity call.
        self._access: str | None = None
        self._refresh: str | None = None
        self._use_until = 0.0
        # The identity call in progress, shared by every caller; None when idle.
        self._pending: asyncio.Task[str] | None = None

    async def token(self) -> str:
        if self._access is not None and self._clock() < self._use_until:
            return self._access
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._obtain())
            self._pending.add_done_callback(_clear_pending(self))
        return await asyncio.shield(self._pending)

    async def check_password(self, username: str, password: str) -> dict[str, Any] | None:
        """An operator signing in: the claims of the access token the identity endpoint
        grants for these credentials ({} if the token is opaque), or None if it refuses
        them. Asks for `sign_in_scope` (never offline_access). The token is not kept.

        Raises UpstreamFailed when the endpoint refuses the request itself (its scope or
        client: a configuration error, not a wrong password), Upstream* when unreachable.
        """
        creds = Credentials(
            username, password, self._creds.client_id, self._creds.client_secret
        )
        scope = sign_in_scope(self._scope)
        try:
            data = await password_grant(self._session, self._url, creds, self._timeout_s, scope)
        except IdentityRejected as exc:
            if exc.error in _MISCONFIGURED:
                raise UpstreamFailed(
                    f"the identity endpoint refused the sign-in request ({exc.error}, scope "
                    f"{scope!r}); see upstream.scope and ABC_CLIENT_ID"
                ) from None
            return None
        token = data.get("access_token") if isinstance(data, dict) else None
        return unverified_claims(token) if isinstance(token, str) else {}

    def invalidate(self, token: str) -> None:
        """The API refused `token`: stop using it (no-op if it was already replaced).

        A token refused before its expiry was revoked, and its refresh token with it, so
        the next sign-in goes straight to the password grant: one identity call, not two.
        """
        if token == self._access:
            self._access = None
            self._refresh = None

    async def _obtain(self) -> str:
        data = None
        if self._refresh is not None:
            try:
                grant = {"grant_type": "refresh_token", "refresh_token": self._refresh}
                data = await _token_call(
                    self._session, self._url, identity_form(grant, self._creds, self._scope),
                    self._timeout_s, self._on_call,
                )
            except IdentityRejected:
                log.info("refresh token refused; signing in again")
        if data is None:
            data = await _token_call(
                self._session, self._url, password_form(self._creds, self._scope),
                self._timeout_s, self._on_call,
            )
        try:
            access = str(data["access_token"])
            lifetime = float(data.get("expires_in", 3600))
        except (KeyError, TypeError, ValueError):
            raise UpstreamFailed("identity endpoint answered without a usable token") from None
        # Renew a little before expiry so no request goes out with a token about to lapse.
        margin = min(60.0, lifetime * 0.1)
        self._access = access
        self._refresh = data.get("refresh_token") or None
        self._use_until = self._clock() + lifetime - margin
        return access


def _clear_pending(provider: TokenProvider) -> Callable[[asyncio.Task], None]:
    def clear(task: asyncio.Task) -> None:
        if provider._pending is task:
            provider._pending = None
        if not task.cancelled():
            task.exception()  # retrieved: the waiters (if any) got it

    return clear


async def _token_call(
    session: aiohttp.ClientSession, url: str, form: dict[str, str], timeout_s: float,
    on_call: Callable[[str], None] = lambda status: None,
) -> dict:
    try:
        async with session.post(
            url, data=form, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            on_call(str(resp.status))
            if resp.status in (400, 401):
                raise IdentityRejected("identity endpoint refused the credentials",
                                       await _error_code(resp))
            if resp.status == 503:
                raise UpstreamUnavailable("identity endpoint unavailable")
            if resp.status != 200:
                raise UpstreamFailed(f"identity endpoint answered {resp.status}")
            return await resp.json(content_type=None)
    except TimeoutError:
        on_call("error")
        raise UpstreamTimeout(f"identity endpoint did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        on_call("error")
        raise UpstreamUnavailable(f"identity endpoint unreachable: {exc}") from None
    except ValueError:
        raise UpstreamFailed("identity endpoint answered something that is not JSON") from None


async def _error_code(resp: aiohttp.ClientResponse) -> str:
    """The OAuth `error` of a refusal, or "" (no JSON, no code)."""
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return error[:64] if isinstance(error, str) else ""
