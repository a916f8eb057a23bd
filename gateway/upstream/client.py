"""The only code that speaks to the ABConnect Catalog API.

One pooled aiohttp session; a global cap on requests in flight (upstream/slots.py), with a
bounded wait for a slot, of which one caller's calls may hold only a share
(upstream/fair.py); a circuit breaker; a bearer token from the TokenProvider (one re-auth
and one retry on a 401); a timeout per attempt; retries with jittered exponential backoff
on connection errors, timeouts and 502/503/504.

Background work (context.BACKGROUND: prefetch, refresh-ahead) comes last, design rule 6:
- it never waits for a slot: it takes one only if `background_reserve` (>= 1) slots stay
  free after it, so it never takes the last free one and never stands in front of a client
  (while a client waits, no slot is free); otherwise it fails at once with `Deferred`;
- it calls only while the breaker is closed: never the half-open probe (`Deferred` too);
- it is charged to no caller's share.
`Deferred` is not an upstream failure: the breaker does not count it, nothing retries it.
Whoever schedules background work asks `room_for_background()` first, may claim that room
(`claim_background()`) so that a burst of its calls does not overcommit it, and awaits
`room_changed()` instead of polling.

Answers come back as body bytes: the gateway relays upstream JSON, it does not re-model it.
Failures come back as the GatewayError the client of the gateway should see.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from gateway.context import BACKGROUND, CHARGED_TO, REQUEST_ID
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstream.breaker import CircuitBreaker, State
from gateway.upstream.fair import FairShares
from gateway.upstream.identity import TokenProvider
from gateway.upstream.slots import Slots

Params = Sequence[tuple[str, str]]

_RETRYABLE_STATUS = {502, 503, 504}
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


@dataclass(frozen=True, slots=True)
class Answer:
    """The upstream's answer as it came: status, body bytes, content type."""

    status: int
    body: bytes
    content_type: str | None = None


class UpstreamObserver:
    """Hooks for metrics; this package stays free of any metrics library (as the cache).

    `sent()` when a request leaves (it holds a slot), `answered()` when it is over: its
    endpoint template, the HTTP status or "error", and how long it took.
    """

    def sent(self) -> None: ...

    def answered(self, endpoint: str, status: str, seconds: float) -> None: ...


class UpstreamBusy(UpstreamUnavailable):
    """Waited longer than queue_timeout_s for a free upstream slot."""


class Deferred(UpstreamBusy):
    """A background call refused at once, without calling the upstream: no room for
    background work (`breaker` False) or the breaker not closed (`breaker` True)."""

    def __init__(self, detail: str, *, breaker: bool) -> None:
        super().__init__(detail, retry_after=1.0)
        self.breaker = breaker


class BackgroundClaim:
    """Room for one background call, claimed ahead of it (UpstreamClient.claim_background).

    Used as `with claim: ...`: the first background call made inside (in this task or a
    task it starts, such as a cache fetch) takes its slot against the claim; until then
    the claim keeps other background work from counting on that room. Leaving the block
    gives an unused claim up. A claim holds no slot: a client can still take the room, and
    the claimed call is then Deferred like any other background call without room.
    """

    __slots__ = ("_client", "_token", "open")

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client
        self.open = True  # not yet used nor given up
        self._token: Token[BackgroundClaim | None] | None = None

    def __enter__(self) -> BackgroundClaim:
        self._token = _CLAIM.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _CLAIM.reset(self._token)
            self._token = None
        self._client._close_claim(self)


# The claim the next background call in this context takes its slot against (if open).
_CLAIM: ContextVar[BackgroundClaim | None] = ContextVar("background_claim", default=None)


class UpstreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        *,
        observer: UpstreamObserver | None = None,
        max_concurrency: int,
        timeout_s: float,
        retries: int,
        queue_timeout_s: float,
        breaker: CircuitBreaker,
        upstream_share: float = 1.0,
        background_reserve: int = 1,
    ) -> None:
        if background_reserve < 1:
            raise ValueError("background_reserve must be at least 1: background work never "
                             "takes the last free slot")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._observer = observer or UpstreamObserver()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._retries = retries
        self._queue_timeout_s = queue_timeout_s
        self.breaker = breaker
        # Held for the duration of one HTTP attempt (not during backoff or token calls):
        # the number of requests the upstream sees at once never exceeds max_concurrency.
        self._slots = Slots(max_concurrency, on_freed=self._room_changed)
        self._max_concurrency = max_concurrency
        # Background calls leave at least this many slots free (see the module docstring).
        self._reserve = background_reserve
        # Open BackgroundClaims: room promised to background calls not yet made. They hold
        # no slot; they only lower the room other background work sees. Loop thread only.
        self._claims = 0
        # Set (then dropped) when room for background work may have grown; made only when
        # someone awaits room_changed().
        self._room: asyncio.Event | None = None
        # One caller's calls (CHARGED_TO) hold at most ceil(upstream_share * max_concurrency)
        # of those slots at once; None when that is all of them.
        per_caller = max(1, math.ceil(upstream_share * max_concurrency - 1e-9))
        self.shares = FairShares(per_caller) if per_caller < max_concurrency else None

    # --- background work ----------------------------------------------------------------

    def room_for_background(self) -> bool:
        """Would a background call be let through now: the breaker closed and a slot free
        beyond the reserve (and beyond the room already claimed)?"""
        return (self.breaker.state is State.CLOSED
                and self._slots.free - 1 - self._claims >= self._reserve)

    def claim_background(self) -> BackgroundClaim | None:
        """Claim the room for one background call (see BackgroundClaim); None if there is
        none now."""
        if not self.room_for_background():
            return None
        self._claims += 1
        return BackgroundClaim(self)

    async def room_changed(self) -> None:
        """Return at the next moment room for background work may have grown (a slot set
        free, a claim given up): a wake-up to check room_for_background() again."""
        if self._room is None:
            self._room = asyncio.Event()
        await self._room.wait()

    @property
    def slots_free(self) -> int:
        """Upstream slots nobody holds now."""
        return self._slots.free

    def _room_changed(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def _close_claim(self, claim: BackgroundClaim) -> None:
        if claim.open:
            claim.open = False
            self._claims -= 1
            self._room_changed()

    # --- calls ---------------------------------------------------------------------------

    async def get(self, path: str, params: Params = (), *, endpoint: str) -> bytes:
        """GET `path`; the 200 body. `endpoint` is the path template, for metrics."""
        answer = await self._call("GET", path, params, None, endpoint, self._retries, None)
        return expect_ok(answer, endpoint)

    async def send(
        self, method: str, path: str, params: Params = (), body: bytes | None = None, *,
        endpoint: str, token: str | None = None,
    ) -> Answer:
        """Any request, passed through: the upstream's answer whatever its status, 4xx
        included (the caller sees what the upstream said); no answer or a 5xx after the
        retries is the GatewayError a client should see.

        `token`: the caller's own upstream token (relayed writes), else the gateway's. A
        relayed token the upstream refuses is the caller's 401, not a re-authentication.
        Only idempotent methods are retried: a POST whose answer was lost may have been
        applied, and sending it again could create a second record.
        """
        retries = self._retries if method in _IDEMPOTENT else 0
        answer = await self._call(method, path, params, body, endpoint, retries, token)
        if answer.status >= 500:
            raise _outcome_error(answer.status, endpoint)
        return answer

    async def _call(
        self, method: str, path: str, params: Params, body: bytes | None, endpoint: str,
        retries: int, relayed: str | None,
    ) -> Answer:
        reauthenticated = relayed is not None  # a caller's token is never renewed here
        attempt = 0
        while True:
            if BACKGROUND.get() and self.breaker.state is not State.CLOSED:
                raise _breaker_deferred()
            self.breaker.check()  # open: refuse now, before waiting for anything
            token = relayed or await self._tokens.token()
            try:
                answer = await self._attempt(method, path, params, body, endpoint, token)
            except TimeoutError:
                failure: GatewayError = UpstreamTimeout(
                    f"upstream did not answer {method} {endpoint} within {self._timeout_s:g} s"
                )
            except aiohttp.ClientError as exc:
                failure = UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}")
            else:
                if answer.status == 401 and not reauthenticated:
                    # The token lapsed or was revoked: one re-auth, one retry, not counted
                    # as a retry. Concurrent 401s for the same token share the re-auth.
                    self._tokens.invalidate(token)
                    reauthenticated = True
                    continue
                if answer.status not in _RETRYABLE_STATUS:
                    return answer
                failure = _outcome_error(answer.status, endpoint)
            if attempt >= retries:
                raise failure
            attempt += 1
            await asyncio.sleep(_backoff(attempt))

    async def _attempt(
        self, method: str, path: str, params: Params, body: bytes | None, endpoint: str,
        token: str,
    ) -> Answer:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if (request_id := REQUEST_ID.get()) is not None:  # the request this call serves
            headers["X-Request-ID"] = request_id
        if body is not None:
            headers["Content-Type"] = "application/json"
        charged = await self._take_slot()
        try:
            self.breaker.before_call()
        except GatewayError:
            self._give_back(charged)
            raise
        self._observer.sent()
        start = time.perf_counter()
        status = "error"
        failed: bool | None = True
        try:
            async with self._session.request(
                method, self._base_url + path, params=list(params), data=body,
                headers=headers, timeout=self._timeout,
            ) as resp:
                data = await resp.read()
                status = str(resp.status)
                failed = resp.status >= 500
                return Answer(resp.status, data, resp.headers.get("Content-Type"))
        except asyncio.CancelledError:
            failed = None
            raise
        finally:
            self.breaker.record(failed)
            self._give_back(charged)
            self._observer.answered(endpoint, status, time.perf_counter() - start)

    async def _take_slot(self) -> str | None:
        """A global slot; before it, for a call charged to a caller (CHARGED_TO), a slot of
        that caller's share, so a caller over its share waits in its own queue, not in the
        global one ahead of others. Both waits together last at most queue_timeout_s.
        Returns the caller whose share is now held: None for the gateway's own work (no
        one charged), which takes a global slot only.

        Background work (BACKGROUND) waits for nothing and is charged to no one: a slot now,
        beyond the reserve, while the breaker is closed, or Deferred."""
        if BACKGROUND.get():
            self._take_background_slot()
            return None
        shares = self.shares
        charged = CHARGED_TO.get() if shares is not None else None
        shared = False
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                if shares is not None and charged is not None:
                    await shares.acquire(charged)
                    shared = True
                await self._slots.take()
        except BaseException as exc:
            if shares is not None and charged is not None and shared:
                shares.release(charged)
            if not isinstance(exc, TimeoutError):
                raise
            if shares is not None and charged is not None and not shared:
                raise UpstreamBusy(
                    f"this caller already has its share of the upstream in flight "
                    f"({shares.per_caller} of {self._max_concurrency} requests) and more "
                    f"waiting; waited {self._queue_timeout_s:g} s", retry_after=1.0,
                ) from None
            raise UpstreamBusy(
                f"more requests are waiting for the upstream than it can take; waited "
                f"{self._queue_timeout_s:g} s", retry_after=1.0,
            ) from None
        return charged

    def _take_background_slot(self) -> None:
        # No await in here: the checks and the take are one step, and the caller's
        # breaker.before_call() follows in the same step, the breaker still closed.
        claim = _CLAIM.get()
        claimed = claim is not None and claim.open and claim._client is self
        if claimed:
            claim.open = False  # used now, whatever follows: this call is the claimed one
            self._claims -= 1
        if self.breaker.state is not State.CLOSED:
            raise _breaker_deferred()
        if not self._slots.try_take(self._reserve + self._claims):
            if claimed:  # a client took the claimed room; the claim no longer keeps it
                self._room_changed()
            raise Deferred(
                f"the upstream is busy: a background fetch gave way to clients' calls "
                f"({self._slots.free} of {self._max_concurrency} slots free, "
                f"{self._reserve} kept for clients)", breaker=False,
            )

    def _give_back(self, charged: str | None) -> None:
        self._slots.release()
        if self.shares is not None and charged is not None:
            self.shares.release(charged)


def _breaker_deferred() -> Deferred:
    return Deferred("background work waits while the upstream breaker is not closed",
                    breaker=True)


def expect_ok(answer: Answer, endpoint: str) -> bytes:
    """The body of a 2xx answer; any other status as the GatewayError it means."""
    status, data = answer.status, answer.body
    if 200 <= status < 300:
        return data
    if status == 404:
        raise NotFound(f"upstream has no such resource ({endpoint})")
    if status == 400:
        raise BadRequest(f"upstream refused the request as malformed ({endpoint})")
    if status == 401:
        raise UpstreamFailed("upstream refused the gateway's token twice")
    raise _outcome_error(status, endpoint)


def _outcome_error(status: int, endpoint: str) -> GatewayError:
    if status == 503:
        return UpstreamUnavailable(f"upstream unavailable (503 on {endpoint})")
    if status == 504:
        return UpstreamTimeout(f"upstream timed out (504 on {endpoint})")
    return UpstreamFailed(f"upstream answered {status} on {endpoint}")


def _backoff(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] spreads retry bursts."""
    return random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
