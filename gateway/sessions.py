"""Operator sessions: signed cookies, CSRF tokens, sign-in checks and sign-out everywhere.

A session is a signed cookie value (HMAC-SHA256) naming the operator, a random session id,
the session's scope ("write", or "read" after signing in with a read-only API key) and how
it signed in ("password", "key", or "anonymous" when no keys are configured); it anchors the
CSRF token, derived from the session id. Processes sharing the signing secret (forked
workers, replicas with one GW_SESSION_SECRET) accept each other's cookies; sign-out is
shared through the revocation set (Redis when configured), until the cookie would have
expired anyway. The HTTP side (cookie attributes, redirects) is the UI's.

Who may sign in (`SignInRules`): with a password, only `auth.operators` (any case) or a
holder of `auth.operator_role` in the `role` claim of the token the identity server grants;
with neither set, nobody in live mode and any account the identity server accepts in
sandbox mode. With an API key, any configured key, with its scope. Every try is charged to
the sign-in throttle (gateway/throttle.py) before it is checked, and password checks run
at most `limits.sign_in_concurrency` at once, apart from the upstream API's slots.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from gateway.config import ApiKey, Config
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.revocations import Revocations
from gateway.throttle import SignInThrottle
from gateway.upstream.identity import TokenProvider

log = logging.getLogger(__name__)

MAX_AGE_S = 12 * 3600

# Drawn once at import, so worker processes forked after it share it; each start of the
# server draws a new one (every session then ends). Used when no secret is configured.
_START_SECRET = secrets.token_bytes(32)


Scope = Literal["read", "write"]
How = Literal["password", "key", "anonymous"]
# Longest username and password a sign-in checks; longer ones are refused unasked.
MAX_USERNAME, MAX_PASSWORD = 200, 1000


@dataclass(frozen=True)
class Session:
    sid: str
    operator: str | None  # None: the browser has not signed in
    expires: int  # unix time
    scope: Scope = "write"  # "read": signed in with a read-only API key
    auth: How = "anonymous"  # how it signed in

    @property
    def actor(self) -> str:
        """The name the write log records."""
        return self.operator or "anonymous"

    @property
    def read_only(self) -> bool:
        return self.scope != "write"


def signing_secret(configured: str) -> bytes:
    """The configured secret (sessions survive restarts), else one random per start."""
    if not configured:
        return _START_SECRET
    if len(configured) < 32:
        log.warning("GW_SESSION_SECRET is shorter than 32 characters; use a long random value")
    return configured.encode()


class Cookies:
    """Issues and reads session cookie values and their CSRF tokens; pure, no I/O."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    def issue(
        self, operator: str | None, *, scope: Scope = "write", auth: How = "anonymous"
    ) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), operator, int(self._clock()) + MAX_AGE_S,
                          scope, auth)
        payload = _b64(json.dumps([session.sid, session.operator, session.expires,
                                   session.scope, session.auth]).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None if it is absent, forged or expired.
        (Whether it was revoked is asked separately: OperatorSessions.revoked().)"""
        if not cookie or cookie.count(".") != 1 or not cookie.isascii():
            return None  # ours are base64url: anything else (raw bytes included) is forged
        payload, signature = cookie.split(".")
        if not _same(signature, self._sign(payload)):
            return None
        try:
            sid, operator, expires, scope, auth = json.loads(_unb64(payload))
            session = Session(str(sid), operator if operator is None else str(operator),
                              int(expires), scope, auth)
        except (ValueError, TypeError):
            return None  # also a cookie of an older layout: sign in again
        if (session.expires <= self._clock() or session.scope not in get_args(Scope)
                or session.auth not in get_args(How)):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf:" + session.sid)

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        return session is not None and bool(token) and _same(token, self.csrf_token(session))

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class SignInRules:
    """Who may sign in to the UI (see the module docstring), from the configuration."""

    operators: frozenset[str] = frozenset()  # casefolded usernames
    operator_role: str = ""
    anyone: bool = False  # sandbox mode, neither set: any account the identity server accepts
    keys: Mapping[str, ApiKey] = field(default_factory=dict, repr=False)
    names: Mapping[str, str] = field(default_factory=dict)  # casefolded -> as configured

    @classmethod
    def of(cls, config: Config) -> SignInRules:
        auth = config.auth
        return cls(
            operators=frozenset(n.casefold() for n in auth.operators),
            operator_role=auth.operator_role,
            anyone=(config.upstream.mode == "sandbox" and not auth.operators
                    and not auth.operator_role),
            keys=config.api_keys,
            names={n.casefold(): n for n in auth.operators},
        )

    @property
    def passwords_on(self) -> bool:
        """Whether anyone may sign in with a password at all."""
        return bool(self.operators or self.operator_role or self.anyone)

    def is_operator(self, username: str) -> bool:
        """Named in auth.operators (any case)."""
        return username.strip().casefold() in self.operators

    def admits(self, username: str, claims: Mapping[str, Any]) -> bool:
        """Whether an account the identity server accepted may use the UI."""
        if self.anyone or self.is_operator(username):
            return True
        return bool(self.operator_role) and self.operator_role in _roles(claims)

    def operator_name(self, username: str, claims: Mapping[str, Any]) -> str:
        """The name a signed-in operator is shown and logged as: as configured, else as the
        identity server spells it, else as typed."""
        typed = username.strip()
        named = claims.get("preferred_username")
        return self.names.get(typed.casefold()) or (
            named.strip()[:MAX_USERNAME] if isinstance(named, str) and named.strip() else typed)


@dataclass(frozen=True)
class SignIn:
    """What a sign-in came to. outcome: "ok"; "refused" (wrong password or key);
    "not_operator" (a valid account that may not use the UI); "off" (password sign-in is
    not enabled). `operator`, `scope` and `auth` are those of the session to start."""

    outcome: Literal["ok", "refused", "not_operator", "off"]
    auth: Literal["password", "key"]
    operator: str | None = None
    scope: Scope = "read"


class OperatorSessions:
    """Sessions as a service: cookies, the shared sign-out list, the sign-in checks."""

    def __init__(
        self, cookies: Cookies, revocations: Revocations, tokens: TokenProvider, config: Config
    ) -> None:
        self.cookies = cookies
        self._revocations = revocations
        self._tokens = tokens
        self.rules = SignInRules.of(config)
        limits = config.limits
        self.throttle = SignInThrottle(limits.sign_in_failures, limits.sign_in_window_s)
        self._checks = asyncio.Semaphore(limits.sign_in_concurrency)
        self._wait_s = config.upstream.timeout_s  # longest wait for a check's slot

    async def revoked(self, session: Session) -> bool:
        return await self._revocations.revoked(f"session:{session.sid}")

    async def revoke(self, session: Session) -> None:
        """End `session` on every replica, until its cookie would have expired anyway."""
        remaining = session.expires - time.time()
        if remaining > 0:
            await self._revocations.revoke(f"session:{session.sid}", remaining)

    async def password_sign_in(self, username: str, password: str, address: str) -> SignIn:
        """Check a password sign-in from client `address`.

        "off" when password sign-in is not enabled (no identity call, nothing charged).
        Otherwise the try is charged to the throttle first: Throttled (429) when the
        username or the address has failed too often lately, with no identity call. The
        identity call runs under the sign-in semaphore; UpstreamUnavailable when no slot
        frees up within upstream.timeout_s, Upstream* when the identity server cannot be
        asked (the try is then refunded, as it is when the sign-in succeeds).
        """
        if not self.rules.passwords_on:
            return SignIn("off", "password")
        attempt = self.throttle.charge(username, address)
        if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            return SignIn("refused", "password")
        try:
            claims = await self._check_password(username, password)
        except GatewayError:
            attempt.refund()
            raise
        if claims is None:
            return SignIn("refused", "password")
        name = self.rules.operator_name(username, claims)
        if not self.rules.admits(username, claims):
            return SignIn("not_operator", "password", name)
        attempt.refund()
        return SignIn("ok", "password", name, "write")

    def key_sign_in(self, presented: str, address: str) -> SignIn:
        """Check an API-key sign-in: the key's name and scope, or "refused". Charged to the
        address (Throttled when it has failed too often lately), refunded when it matches."""
        attempt = self.throttle.charge(None, address)
        found = find_key(self.rules.keys, presented)
        if found is None:
            return SignIn("refused", "key")
        attempt.refund()
        return SignIn("ok", "key", found[0], found[1].scope)

    async def _check_password(self, username: str, password: str) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._checks.acquire()
        except TimeoutError:
            raise UpstreamUnavailable("too many sign-ins at once; try again in a moment",
                                      retry_after=5.0) from None
        try:
            return await self._tokens.check_password(username, password)
        finally:
            self._checks.release()


def find_key(keys: Mapping[str, ApiKey], presented: str | None) -> tuple[str, ApiKey] | None:
    """The (name, key) matching `presented`, or None. Every key is compared, in constant
    time, as UTF-8 bytes; a value that cannot be encoded (a header's raw non-UTF-8 byte,
    which aiohttp hands over as a lone surrogate) matches nothing."""
    given = as_bytes(presented)
    if not given:
        return None
    found = None
    for name, api_key in keys.items():
        if hmac.compare_digest(api_key.key.encode(), given):
            found = (name, api_key)
    return found


def as_bytes(value: str | None) -> bytes | None:
    """`value` as UTF-8, or None when it cannot be (lone surrogates from undecodable bytes):
    what constant-time comparison needs, since hmac.compare_digest refuses non-ASCII str."""
    if value is None:
        return None
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


def _roles(claims: Mapping[str, Any]) -> set[str]:
    """The token's `role` claim: one string or a list of them."""
    role = claims.get("role")
    if isinstance(role, str):
        return {role}
    if isinstance(role, list):
        return {r for r in role if isinstance(r, str)}
    return set()


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison as bytes; a value that is not valid text is just unequal."""
    given_bytes = as_bytes(given)
    return given_bytes is not None and hmac.compare_digest(given_bytes, expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
