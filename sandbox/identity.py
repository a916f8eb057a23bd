"""The sandbox's identity server: RS256 JWT access tokens, a published JWKS, key rollover.

It plays the part of ABConnect's IdentityServer (``login.abconnect.co``) closely enough for
a client to verify tokens locally, the way a resource server does:

* every access token is a JWT signed with RS256 by the current signing key (2048-bit RSA,
  made when the sandbox starts), its header naming the key (``kid``, the key's RFC 7638
  thumbprint);
* the public half of every *published* key is in the JWKS; a rotation makes a new key the
  signer and keeps the previous ones published (IdentityServer's rollover) unless told to
  retire them;
* the sandbox's own API accepts a bearer only if it verifies against a published key, has
  not expired and has not been revoked (``revoke_all`` revokes everything issued so far).

Refresh tokens are opaque handles, as IdentityServer's are. A refresh token is minted only
when the scope asked for includes ``offline_access``, as IdentityServer does.

Roles: ``Identity.roles`` maps a username to its roles; a user with roles gets a ``role``
claim, a string for one role and a list for several (as IdentityServer writes it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["AUDIENCE", "DEFAULT_SCOPE", "Grant", "Identity", "SigningKey", "display_name"]

AUDIENCE = "catalog-api"
DEFAULT_SCOPE = "catalog-api offline_access"
ALGORITHM = "RS256"
KEY_BITS = 2048
# Verified tokens remembered (so a hot path does not redo the RSA check); bounded.
MAX_VERIFIED = 20000

# Display names of the demo accounts (the ``name`` claim); others get a title-cased name.
DISPLAY_NAMES = {
    "gateway": "Catalog Gateway (service account)",
    "alice": "Alice Demo",
    "bob": "Bob Demo",
}


def display_name(username: str) -> str:
    return DISPLAY_NAMES.get(username, username.replace(".", " ").title())


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """One RSA key pair and its public JWK."""

    kid: str
    private_key: rsa.RSAPrivateKey
    jwk: dict[str, str]

    @classmethod
    def generate(cls) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        numbers = private_key.public_key().public_numbers()
        n, e = _b64url_uint(numbers.n), _b64url_uint(numbers.e)
        # RFC 7638 thumbprint: SHA-256 of the required members, sorted, no whitespace.
        canonical = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"),
                               sort_keys=True)
        kid = base64.urlsafe_b64encode(
            hashlib.sha256(canonical.encode()).digest()
        ).rstrip(b"=").decode("ascii")
        jwk = {"kty": "RSA", "use": "sig", "alg": ALGORITHM, "kid": kid, "n": n, "e": e}
        return cls(kid, private_key, jwk)


@dataclass(frozen=True)
class Grant:
    """What a refresh token stands for."""

    username: str
    client_id: str | None
    scope: str


class Identity:
    """Signing keys, issued tokens and their verification."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self.keys: list[SigningKey] = [key or SigningKey.generate()]  # published; [0] signs
        self._live: dict[str, float] = {}  # jti -> exp (epoch seconds) of unrevoked tokens
        self._refresh: dict[str, Grant] = {}
        self._verified: dict[str, tuple[str, dict[str, Any]]] = {}
        self.roles: dict[str, list[str]] = {}  # username -> roles (the ``role`` claim)

    # ------------------------------------------------------------------- keys

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def published_kids(self) -> list[str]:
        return [key.kid for key in self.keys]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(key.jwk) for key in self.keys]}

    def rotate(self, retire_old: bool = False, key: SigningKey | None = None) -> str:
        """Sign with a new key from now on (``key`` if given, e.g. made off the event loop);
        earlier keys stay published unless ``retire_old``. Returns the new key's kid."""
        new = key if key is not None else SigningKey.generate()
        self.keys = [new] if retire_old else [new, *self.keys]
        if retire_old:
            self._verified.clear()
        return new.kid

    # ----------------------------------------------------------------- tokens

    def issue(
        self,
        username: str,
        *,
        issuer: str,
        ttl_s: float,
        client_id: str | None = None,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """A token response (access token JWT, opaque refresh token) for ``username``."""
        scope = " ".join((scope or DEFAULT_SCOPE).split())
        now = time.time()
        iat = int(now)
        # Whole seconds as JWTs usually carry them, rounded up so a token lives at least
        # the `expires_in` it is answered with; a sub-second lifetime (tests) keeps its
        # fraction so that it really is that short (RFC 7519 NumericDate allows it).
        exp: float = math.ceil(now + ttl_s) if ttl_s == int(ttl_s) else round(now + ttl_s, 3)
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": f"user-{username}",
            "preferred_username": username,
            "name": display_name(username),
            "aud": AUDIENCE,
            "scope": scope,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": jti,
        }
        if client_id:
            claims["client_id"] = client_id
        roles = self.roles.get(username, [])
        if roles:
            claims["role"] = roles[0] if len(roles) == 1 else list(roles)
        key = self.current
        access = jwt.encode(claims, key.private_key, algorithm=ALGORITHM,
                            headers={"kid": key.kid, "typ": "at+jwt"})
        self._forget_expired(now)
        self._live[jti] = exp
        answer = {
            "access_token": access,
            "expires_in": int(ttl_s) if ttl_s == int(ttl_s) else round(ttl_s, 3),
            "token_type": "Bearer",
            "scope": scope,
        }
        if "offline_access" in scope.split():
            refresh = secrets.token_urlsafe(32)
            self._refresh[refresh] = Grant(username, client_id or None, scope)
            answer["refresh_token"] = refresh
        return answer

    def refresh_tokens(self) -> int:
        """How many refresh tokens are outstanding (tests: a sign-in check mints none)."""
        return len(self._refresh)

    def refresh_grant(self, refresh_token: str) -> Grant | None:
        return self._refresh.get(refresh_token)

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token this server signed with a published key, still
        within its lifetime and not revoked; else None."""
        cached = self._verified.get(token)
        if cached is None:
            claims = self._verify_signature(token)
            if claims is None:
                return None
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            cached = self._verified[token] = claims
        kid, claims = cached
        if kid not in self.published_kids():
            return None
        now = time.time()
        if claims["jti"] not in self._live or claims["exp"] <= now or claims["nbf"] > now:
            return None
        return claims

    def _verify_signature(self, token: str) -> tuple[str, dict[str, Any]] | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        kid = header.get("kid")
        key = next((k for k in self.keys if k.kid == kid), None)
        if key is None or header.get("alg") != ALGORITHM:
            return None
        try:
            claims = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                # exp is checked by the caller with its fraction (PyJWT truncates it).
                options={"verify_exp": False,
                         "require": ["exp", "iat", "nbf", "jti", "sub", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        if not isinstance(claims["jti"], str) or not all(
            isinstance(claims[name], int | float) for name in ("exp", "nbf")
        ):
            return None
        return key.kid, claims

    def revoke_all(self) -> int:
        """Revoke every access and refresh token issued so far; returns how many."""
        count = len(self._live) + len(self._refresh)
        self._live.clear()
        self._refresh.clear()
        self._verified.clear()
        return count

    def _forget_expired(self, now: float) -> None:
        if len(self._live) > 1000:
            self._live = {jti: exp for jti, exp in self._live.items() if exp > now}
