"""The identity server's published signing keys, for verifying callers' own access tokens.

OpenID Connect discovery (`<issuer>/.well-known/openid-configuration`) names the key set
(`jwks_uri`); the key set (JWKS) holds the public keys the server signs tokens with, each
under a key id (`kid`). They are fetched once and kept.

A token signed under a `kid` not in hand means the server rotated its keys (or the token is
forged): `key(kid)` then fetches the key set again, but at most once per `refetch_every_s`,
and every caller that wants a fetch while one is in flight awaits that one, so a burst of
forged `kid`s costs the identity server one request, not one each. A fetch that fails is
logged and leaves the keys already in hand in place; one that succeeds replaces them all
(a key the server withdrew stops verifying). Outcomes are reported to `on_fetch(endpoint,
status)` with endpoint "discovery" or "jwks" (status: the HTTP status, or "error").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"


class _FetchFailed(Exception):
    """One fetch of discovery or the key set failed; the message is safe to log."""


class SigningKeys:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        issuer: str,
        *,
        timeout_s: float = 10.0,
        refetch_every_s: float = 30.0,
        on_fetch: Callable[[str, str], None] = lambda endpoint, status: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._issuer = issuer
        self._timeout_s = timeout_s
        self._refetch_every_s = refetch_every_s
        self._on_fetch = on_fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks_uri: str | None = None  # from discovery; forgotten when it stops working
        # When key() last started a fetch (None: never); load() does not count.
        self._asked_at: float | None = None
        # The fetch in flight, shared by every caller; None when idle.
        self._pending: asyncio.Task[None] | None = None

    @property
    def issuer(self) -> str:
        """The issuer whose keys these are: the `iss` tokens must carry."""
        return self._issuer

    @property
    def loaded(self) -> bool:
        """True once a key set has been fetched (a fetch failure does not clear it)."""
        return bool(self._keys)

    def start(self) -> None:
        """Begin fetching the key set in the background (at start-up, so the first token
        need not wait for it). Not counted against the refetch limit; failures are logged."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._fetch())
            self._pending.add_done_callback(self._clear_pending)

    async def load(self) -> None:
        """start(), and wait until the fetch (this one or one already in flight) is done."""
        self.start()
        assert self._pending is not None
        # Shielded: a caller that goes away does not cancel the fetch others may await.
        await asyncio.shield(self._pending)

    def close(self) -> None:
        """Stop a fetch in flight (the session it uses is about to close)."""
        if self._pending is not None:
            self._pending.cancel()

    def in_hand(self, kid: str) -> jwt.PyJWK | None:
        """The key with id `kid` as now held, without fetching. A refetch that succeeds
        replaces every key object, even under the same ids."""
        return self._keys.get(kid)

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with id `kid`: at once if known; else after at most one refetch, and
        only if none was started in the last `refetch_every_s`; else None."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._pending is None:
            now = self._clock()
            if self._asked_at is not None and now - self._asked_at < self._refetch_every_s:
                return None
            self._asked_at = now
        await self.load()
        return self._keys.get(kid)

    def _clear_pending(self, task: asyncio.Task[None]) -> None:
        if self._pending is task:
            self._pending = None
        if not task.cancelled():
            task.exception()  # retrieved: _fetch() raises nothing it expects

    async def _fetch(self) -> None:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            try:
                keys = await self._key_set(self._jwks_uri)
            except _FetchFailed:
                self._jwks_uri = None  # discover again next time: the document may have moved
                raise
        except _FetchFailed as exc:
            log.warning("could not fetch the identity server's signing keys (%s); "
                        "keeping the %d in hand", exc, len(self._keys))
            return
        self._keys = keys
        log.info("identity server signing keys: %s", ", ".join(sorted(keys)) or "none")

    async def _discover(self) -> str:
        url = self._issuer.rstrip("/") + DISCOVERY_PATH
        document = await self._get_json("discovery", url)
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
            raise _FetchFailed(f"{url} names no jwks_uri")
        if document.get("issuer") != self._issuer:
            # Tokens carry the server's own issuer; auth.issuer must be exactly it.
            log.warning("the identity server at %s calls itself %r, not %r: tokens will be "
                        "refused as from another issuer (see auth.issuer)",
                        url, document.get("issuer"), self._issuer)
        return jwks_uri

    async def _key_set(self, url: str) -> dict[str, jwt.PyJWK]:
        document = await self._get_json("jwks", url)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise _FetchFailed(f"{url} is not a JSON Web Key Set")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            kid = entry.get("kid")
            # Signature keys for RS256 only: the one algorithm tokens are verified with.
            if (not isinstance(kid, str) or entry.get("kty") != "RSA"
                    or entry.get("use", "sig") != "sig"
                    or entry.get("alg", "RS256") != "RS256"):
                continue
            try:
                keys[kid] = jwt.PyJWK(entry, algorithm="RS256")
            except jwt.PyJWTError:
                log.warning("ignoring unusable signing key %r from %s", kid, url)
        return keys

    async def _get_json(self, endpoint: str, url: str) -> Any:
        status = "error"  # reported once: the answer's status, or "error" if none came
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"Accept": "application/json"},
            ) as resp:
                status = str(resp.status)
                if resp.status != 200:
                    raise _FetchFailed(f"{url} answered {resp.status}")
                return await resp.json(content_type=None)
        except TimeoutError:
            raise _FetchFailed(f"{url} did not answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _FetchFailed(f"{url} unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise _FetchFailed(f"{url} answered something that is not JSON") from None
        finally:
            self._on_fetch(endpoint, status)
