"""Operator sessions: signed cookies, CSRF tokens, sign-in checks and sign-out everywhere.

A session is a signed cookie value (HMAC-SHA256) naming the operator and a random session
id; it anchors the CSRF token, derived from the session id. Processes sharing the signing
secret (forked workers, replicas with one GW_SESSION_SECRET) accept each other's cookies;
sign-out is shared through the revocation set (Redis when configured), until the cookie
would have expired anyway. The HTTP side (cookie attributes, redirects) is the UI's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.revocations import Revocations
from gateway.upstream.identity import TokenProvider

log = logging.getLogger(__name__)

MAX_AGE_S = 12 * 3600

# Drawn once at import, so worker processes forked after it share it; each start of the
# server draws a new one (every session then ends). Used when no secret is configured.
_START_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Session:
    sid: str
    operator: str | None  # None: the browser has not signed in
    expires: int  # unix time

    @property
    def actor(self) -> str:
        """The name the write log records."""
        return self.operator or "anonymous"


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

    def issue(self, operator: str | None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), operator, int(self._clock()) + MAX_AGE_S)
        payload = _b64(json.dumps([session.sid, session.operator, session.expires]).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None if it is absent, forged or expired.
        (Whether it was revoked is asked separately: OperatorSessions.revoked().)"""
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


class OperatorSessions:
    """Sessions as a service: cookies, the shared sign-out list, the password check."""

    def __init__(self, cookies: Cookies, revocations: Revocations, tokens: TokenProvider):
        self.cookies = cookies
        self._revocations = revocations
        self._tokens = tokens

    async def revoked(self, session: Session) -> bool:
        return await self._revocations.revoked(f"session:{session.sid}")

    async def revoke(self, session: Session) -> None:
        """End `session` on every replica, until its cookie would have expired anyway."""
        remaining = session.expires - time.time()
        if remaining > 0:
            await self._revocations.revoke(f"session:{session.sid}", remaining)

    async def password_ok(self, username: str, password: str) -> bool:
        """Whether the upstream identity endpoint accepts these operator credentials
        (Upstream* errors when it cannot be asked)."""
        return await self._tokens.check_password(username, password)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; as bytes, so a non-ASCII value is just unequal."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
