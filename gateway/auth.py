"""Who is calling /api/*: a gateway API key, a caller's own ABConnect token, or nobody.

One step of admission (gateway/admission.py) decides, and puts a `Caller` on the request
(`request[CALLER]`; the name also as `request[CLIENT_NAME]`, which the override log uses as
the actor):

- **API keys** (GW_API_KEYS), as `Authorization: Bearer <key>` or `X-API-Key: <key>`,
  compared in constant time as bytes (`find_key`, gateway/sessions.py), never logged:
  caller kind "key", named by the key's name, with the key's scope ("read" unless
  configured `:write`); it writes upstream as the gateway's service account. A header value
  that is not valid text (a raw 0xFF byte) matches no key: with keys configured it is a 401
  like any wrong key, never a 500.
- **ABConnect access tokens**, with `auth.upstream_tokens = "read"` or `"write"`: a bearer
  that is a JWT (three base64url segments) is verified here, with no upstream call: RS256
  only, signed by a key the identity server publishes (gateway/upstream/signing_keys.py),
  `iss` the configured issuer, `exp` required and `nbf` honoured with a 30 s leeway, `aud`
  when `auth.audience` is set. Caller kind "token", named by `preferred_username`, `name`
  or `sub`; its scope is the config value; its raw token is kept for relaying its writes.
  A token that fails any check is a 401 and nothing is sent upstream. While the identity
  server's keys have never been fetched (it is unreachable), a token cannot be judged: 503.
  A verified token is not verified again on its next requests while a verification
  would still pass it (`VerifiedTokens`): so a caller's warm reads take the hot path too.
- **Nobody**: with API keys configured, a 401. Without them the request stays open, as
  anonymous (the gateway then listens on loopback only) — also with tokens on: only a
  bearer that looks like a JWT is verified; a request without one is anonymous.

Health, readiness, metrics and the UI's pages are not /api/*: this step leaves them be.
Every write handler calls `require_write` before it reads the body or calls the upstream:
a read-scoped caller gets 403 and the upstream sees nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from aiohttp import web

from gateway.config import ApiKey, AuthConfig
from gateway.errors import Forbidden, Unauthorized, UpstreamUnavailable
from gateway.sessions import find_key
from gateway.state import CALLER, CLIENT_NAME, SIGNING_KEYS
from gateway.upstream.signing_keys import SigningKeys

ALGORITHMS = ["RS256"]  # the identity server's; never "none", never an HMAC
LEEWAY_S = 30.0  # clock skew allowed on exp and nbf
# header.payload.signature, each base64url without padding (an empty signature is still a
# JWT's shape, so that an unsigned token is refused as one rather than taken as a key).
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Caller:
    """Who made a request. kind: "key" (a gateway API key), "token" (the caller's own
    ABConnect access token) or "anonymous" (no keys configured, no credential presented).
    scope: "read" or "write". token: the raw access token of a "token" caller, for writes
    relayed as that caller; None for the others, who write as the service account."""

    kind: Literal["key", "token", "anonymous"]
    name: str
    scope: Literal["read", "write"]
    token: str | None = field(default=None, repr=False)


ANONYMOUS = Caller("anonymous", "anonymous", "write")


def looks_like_jwt(value: str | None) -> bool:
    return value is not None and _JWT_SHAPE.fullmatch(value) is not None


class CallerStep:
    """`await step(request)`: identify the caller of an /api/* request (see the module
    docstring), or raise. With tokens on, it needs app[SIGNING_KEYS] (set by the start-up
    context), whose issuer is the one tokens must carry. `step.at_once(request)` does the
    same without awaiting, for the hot path (gateway/hot.py), when that can be done."""

    def __init__(self, api_keys: Mapping[str, ApiKey], auth: AuthConfig) -> None:
        self._api_keys = api_keys
        self._auth = auth
        self._tokens_on = auth.upstream_tokens != "off"
        self._verified = VerifiedTokens()
        self._required = (
            "an API key or an ABConnect access token is required: send 'Authorization: "
            "Bearer <key or token>' or 'X-API-Key: <key>'" if self._tokens_on else
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")

    async def __call__(self, request: web.Request) -> None:
        if request.path.startswith("/api/"):
            found = self._known(request)
            if isinstance(found, str):  # an access token, verified against the issuer's keys
                token = found
                found = self._verified.caller(token)
                if found is None:
                    found = await _token_caller(request, token, self._auth, self._verified)
            _put(request, found)

    def at_once(self, request: web.Request) -> bool:
        """Identify the caller of an /api/* request without awaiting: True when done (an API
        key, nobody, or an access token verified before), False when the request carries an
        access token to verify (the full step does that). Raises the refusal, as the full
        step would."""
        found = self._known(request)
        if isinstance(found, str):
            found = self._verified.caller(found)
            if found is None:
                return False
        _put(request, found)
        return True

    def _known(self, request: web.Request) -> Caller | str:
        """The caller when no verification is needed, else the access token to verify."""
        bearer = _bearer(request)
        api_keys = self._api_keys
        if api_keys:
            for presented in (bearer, request.headers.get("X-API-Key")):
                found = find_key(api_keys, presented)
                if found is not None:
                    return Caller("key", found[0], found[1].scope)
        if self._tokens_on and bearer is not None and looks_like_jwt(bearer):
            return bearer
        if api_keys:
            raise Unauthorized(self._required)
        return ANONYMOUS


class VerifiedTokens:
    """Tokens this process has verified, so that a caller's next request is not verified
    again (an RS256 signature check per request costs more than a warm answer).

    A token is taken as verified again only while all of these hold, so that it is refused
    exactly when a new verification would refuse it:
    - the time is before its `exp` plus the leeway every verification allows (and within
      HOLD_S of its verification);
    - the identity server's key it was verified with is still the key in hand under its
      `kid`: a key set fetched since (a rotation, a withdrawn key) ends every such entry.
    Only tokens that passed every check are kept; the raw token is the key (a forged token
    differs from every kept one in some byte and is verified as usual). At most MAX_TOKENS
    are kept; beyond that the oldest go first."""

    HOLD_S = 300.0
    MAX_TOKENS = 10_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # token -> (its Caller, kept until, the signing keys, the key's id, the key)
        self._kept: dict[str, tuple[Caller, float, SigningKeys, str, jwt.PyJWK]] = {}

    def caller(self, token: str) -> Caller | None:
        kept = self._kept.get(token)
        if kept is None:
            return None
        caller, until, keys, kid, key = kept
        if self._clock() < until and keys.in_hand(kid) is key:
            return caller
        del self._kept[token]
        return None

    def keep(self, token: str, caller: Caller, exp: float, keys: SigningKeys, kid: str,
             key: jwt.PyJWK) -> None:
        until = min(exp + LEEWAY_S, self._clock() + self.HOLD_S)
        while len(self._kept) >= self.MAX_TOKENS:
            del self._kept[next(iter(self._kept))]
        self._kept[token] = (caller, until, keys, kid, key)


def _put(request: web.Request, caller: Caller) -> None:
    request[CALLER] = caller
    if caller.kind != "anonymous":
        request[CLIENT_NAME] = caller.name


def caller_middleware(api_keys: Mapping[str, ApiKey], auth: AuthConfig) -> Callable:
    """CallerStep as a middleware of its own (the app runs it in gateway/admission.py)."""
    identify = CallerStep(api_keys, auth)

    @web.middleware
    async def identified(request: web.Request, handler: Callable) -> web.StreamResponse:
        await identify(request)
        return await handler(request)

    return identified


def require_write(request: web.Request) -> None:
    """Raise Forbidden (403) unless the request's caller may write. Called by every write
    handler before it reads the body: a refused write never reaches the upstream."""
    caller = request.get(CALLER, ANONYMOUS)
    if caller.scope == "write":
        return
    if caller.kind == "key":
        raise Forbidden(
            f"the API key {caller.name!r} is read-only: it may read but not write (a key "
            "writes only when GW_API_KEYS gives it ':write')"
        )
    raise Forbidden(
        "this caller may read but not write: the gateway accepts ABConnect tokens for "
        "reads only (auth.upstream_tokens = \"read\")"
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


async def _token_caller(request: web.Request, token: str, auth: AuthConfig,
                        verified: VerifiedTokens) -> Caller:
    keys = request.app.get(SIGNING_KEYS)
    if keys is None:  # not started, or tokens off: nothing to verify against
        raise UpstreamUnavailable("access tokens cannot be verified yet")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is not a well-formed JWT") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        # Refused before any key lookup: no key fetch for a token that could never verify.
        raise Unauthorized(f"token algorithm {str(alg)[:20]!r} is not accepted; RS256 only")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the token names no signing key (no 'kid' in its header)")
    key = await keys.key(kid)
    if key is None:
        if not keys.loaded:
            raise UpstreamUnavailable(
                "access tokens cannot be verified now: the identity server's signing keys "
                "could not be fetched", retry_after=5.0,
            )
        raise Unauthorized("the token is signed with a key the identity server does not publish")
    claims = _verified_claims(token, key, keys.issuer, auth.audience)
    scope: Literal["read", "write"] = "write" if auth.upstream_tokens == "write" else "read"
    caller = Caller("token", _user_name(claims), scope, token)
    verified.keep(token, caller, float(claims["exp"]), keys, kid, key)
    return caller


def _verified_claims(token: str, key: jwt.PyJWK, issuer: str, audience: str) -> dict[str, Any]:
    require = ["exp", "iss", *(["aud"] if audience else [])]
    try:
        return jwt.decode(
            token, key.key, algorithms=ALGORITHMS, issuer=issuer,
            audience=audience or None, leeway=LEEWAY_S,
            options={"require": require, "verify_aud": bool(audience)},
        )
    except jwt.ExpiredSignatureError:
        why = "the token has expired"
    except jwt.ImmatureSignatureError:
        why = "the token is not valid yet (nbf or iat in the future)"
    except jwt.InvalidIssuerError:
        why = f"the token was not issued by {issuer}"
    except jwt.InvalidAudienceError:
        why = "the token is not meant for this audience"
    except jwt.MissingRequiredClaimError as exc:
        why = f"the token has no '{exc.claim}' claim"
    except jwt.InvalidSignatureError:
        why = "the token's signature does not verify"
    except jwt.PyJWTError:
        why = "the token is not valid"
    raise Unauthorized(why)


def _user_name(claims: Mapping[str, Any]) -> str:
    for claim in ("preferred_username", "name", "sub"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return "unnamed token"
