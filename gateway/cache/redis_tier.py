"""The Redis tier: values and their generations in Redis, shared by every replica.

It implements `Tier` (see tier.py for what the cache may rely on) with three parts:
the values and generations here, leases (lease.py) to make one upstream call per key
across replicas and to hold exclusive() locks, and the listener (listener.py) that
carries invalidations between replicas and says whether Redis is up.

Redis trouble never becomes an outage. Any Redis error degrades the tier (logged once,
`up` False): generation() answers None so L1 keeps only entries younger than
`degraded_ttl_s`, fetch() calls upstream directly, exclusive() holds only an in-process
lock, invalidations reach this process only. The listener pings Redis and brings the
tier back by itself.

An invalidation that could not reach Redis (a save on a replica that lost it) is not
dropped silently: it is logged as an error, counted (`unshared_invalidations`), and kept
to be sent once Redis answers again, so the other replicas stop serving what the save
outdated then at the latest. The write itself stands: it was accepted upstream.

The URL is handed to redis-py as it is (`Redis.from_url`): `redis://[[user]:password@]
host[:port][/db]`, `rediss://...` for TLS (certificate options as query parameters, e.g.
`?ssl_ca_certs=/path/ca.pem`), `unix://[[user]:password@]/path.sock`. Every connection of
the tier (values, generations, leases, locks, the listener) comes from that one client.
A password never appears in what this module logs or raises (`redacted()`). Redis
refusing the credentials at start-up is a configuration error (RedisRefused), not an
outage; Redis being unreachable at start-up is an outage (degraded, as ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)

from gateway.cache.lease import Leases
from gateway.cache.listener import REDIS_ERRORS, Listener, shown
from gateway.cache.locks import KeyedLocks
from gateway.cache.redis_layout import Layout, invalidated, invalidated_kind, key_text
from gateway.cache.store import Key
from gateway.cache.tier import Fetch, Fetched, Generation, OnInvalidate

log = logging.getLogger(__name__)

# Redis answered, and said no to these credentials (or this user may not run our commands).
_REFUSED = (AuthenticationError, AuthenticationWrongNumberOfArgsError, AuthorizationError,
            NoPermissionError)

# Invalidations of single keys kept while Redis is away; beyond this many, their kinds are
# kept instead (a coarser invalidation, but a bounded memory).
MAX_UNSHARED_KEYS = 10_000

def redacted(url: str) -> str:
    """`url` fit to show: whatever comes between the scheme and the last "@" (a password,
    or a lone userinfo, which may be one) as ***, a user name kept."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if colon and not any(c in user for c in "/?#@"):
        return f"{scheme}://{user}:***@{after}"
    return f"{scheme}://***@{after}"


async def _nothing() -> None:
    return None


class RedisRefused(Exception):
    """Redis is there but refused the credentials in the URL: a configuration error.
    Its message shows the URL without its password."""

# Store a fetched body only if neither the key's nor its kind's generation moved since
# the fetch began: a fetch that raced an invalidation never lands in Redis.
_STORE_IF_CURRENT = """
local g = (redis.call('GET', KEYS[1]) or '0') .. ':' .. (redis.call('GET', KEYS[2]) or '0')
if g ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[3], 'g', ARGV[1], 't', ARGV[2], 'b', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 1
"""


class RedisTier:
    fixed_generation = None  # generations move on every replica's saves: always asked

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        keep_s: float,
        lease_s: float,
        degraded_ttl_s: float = 5.0,
        op_timeout_s: float = 0.5,
        prefix: str = "gw:",
    ) -> None:
        """ttl_s: how long a stored value is served; keep_s: how much longer Redis keeps
        it (the stale windows); lease_s: a fetch lease should outlast the slowest upstream
        call, retries included (fetch leases are not renewed; exclusive() locks are), and
        every replica must use the same (a longer expiry found in Redis is cut to it);
        op_timeout_s: a Redis operation slower than this counts as Redis down; prefix:
        keeps environments sharing one Redis apart."""
        self._url = redacted(url)
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
        )
        self._ttl_s = ttl_s
        self._keep_ms = max(1, int((ttl_s + keep_s) * 1000))
        self.degraded_ttl_s = degraded_ttl_s
        self._layout = Layout(prefix)
        self._me = secrets.token_hex(6)  # this replica, in the invalidations it sends
        self._store_script = self._redis.register_script(_STORE_IF_CURRENT)
        self._leases = Leases(
            self._redis, channel=self._layout.channel, ttl_s=lease_s,
            is_up=lambda: self.up, on_error=self._down,
        )
        self._listener = Listener(
            self._redis, self._layout.channel, me=self._me,
            on_released=self._leases.wake, on_down=self._leases.wake_all,
            on_up=self._share_unshared,
        )
        self._local_locks = KeyedLocks()
        # Invalidations Redis has not had yet (see the module docstring), and how many
        # there have been since start.
        self._unshared_keys: set[Key] = set()
        self._unshared_kinds: set[str] = set()
        self.unshared_invalidations = 0
        # generation() requests waiting for the next MGET; taken whole by each flush.
        self._gen_batch: list[tuple[list[str], asyncio.Future[list[Any] | None]]] = []
        self._background: set[asyncio.Task[None]] = set()  # strong refs to flush tasks

    @property
    def up(self) -> bool:
        return self._listener.up

    def _down(self, exc: BaseException) -> None:
        self._listener.down(exc)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def locks_lost(self) -> int:
        """exclusive() locks found expired while still held (see lease.py)."""
        return self._leases.lost

    async def start(self, on_invalidate: OnInvalidate) -> None:
        """Raises RedisRefused if Redis refuses the credentials; unreachable is fine."""
        try:
            await self._redis.ping()
        except _REFUSED as exc:
            raise RedisRefused(
                f"Redis at {self._url} refused this gateway ({type(exc).__name__}: "
                f"{shown(redacted(str(exc)))}): check the user and password of "
                "cache.redis_url"
            ) from None
        except REDIS_ERRORS:
            pass  # unreachable: start degraded; the listener connects when it can
        self._listener.start(on_invalidate)

    async def close(self) -> None:
        await self._listener.close()
        self._leases.close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.aclose()

    # --- generations ---------------------------------------------------------------------

    def _gen_keys(self, key: Key) -> list[str]:
        return [self._layout.generation(key_text(key)), self._layout.kind_generation(key[0])]

    async def generation(self, key: Key) -> Generation | None:
        """The key's generation, or None when Redis cannot be asked.

        Asked on every read, so lookups made in the same loop iteration (the 26 of an
        event page) are answered by one MGET between them.
        """
        if not self.up:
            return None
        future: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
        self._gen_batch.append((self._gen_keys(key), future))
        if len(self._gen_batch) == 1:
            asyncio.get_running_loop().call_soon(self._spawn_gen_flush)
        values = await future
        if values is None:
            return None
        g, kg = values
        return f"{int(g or 0)}:{int(kg or 0)}"

    def _spawn_gen_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_generations())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_generations(self) -> None:
        batch, self._gen_batch = self._gen_batch, []
        try:
            values = await self._redis.mget([k for keys, _ in batch for k in keys])
        except REDIS_ERRORS as exc:
            self._down(exc)
            values = None
        for n, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(None if values is None else values[2 * n : 2 * n + 2])

    # --- values --------------------------------------------------------------------------

    async def fetch(
        self, key: Key, generation: Generation | None, fetch: Fetch, *, fresh: bool = False,
        max_age_s: float | None = None,
    ) -> Fetched:
        """The body for `key` at `generation`: from Redis if a replica stored it, else from
        upstream by whoever holds the key's fetch lease, the others waiting for it and
        then reading what it stored. Errors of `fetch()` reach the caller unchanged.
        `fresh` (a forced refresh): always from `fetch()`, under the key's lease like any
        fetch, and stored over what Redis holds, where the other replicas read it once
        their own copies expire. `max_age_s` (a refresh-ahead): a stored body older than
        that is passed over as if absent, so the first replica to refresh calls upstream
        and the others, waiting for its lease, take what it stored."""
        if not self.up or generation is None:
            return Fetched(await fetch())
        text = key_text(key)
        lease = self._layout.fetch_lease(text)
        acquired = await self._leases.acquire(
            lease, _nothing if fresh else lambda: self._read(text, generation, max_age_s))
        if acquired.found is not None:
            return acquired.found
        if acquired.token is None:  # Redis went away meanwhile
            return Fetched(await fetch())
        try:
            # The previous holder may have stored it and released the lease between our
            # last look and our taking the lease: look once more before calling upstream.
            try:
                found = None if fresh else await self._read(text, generation, max_age_s)
            except REDIS_ERRORS as exc:
                self._down(exc)
                return Fetched(await fetch())
            if found is not None:
                return found
            body = await fetch()
            with contextlib.suppress(*REDIS_ERRORS):
                await self._store_script(
                    keys=[*self._gen_keys(key), self._layout.value(text)],
                    args=[generation, repr(time.time()), body, self._keep_ms],
                )
            return Fetched(body)
        finally:
            # Success or failure, the waiters must not sit out the whole lease.
            await self._leases.release(lease, acquired.token)

    async def _read(
        self, text: str, generation: Generation, max_age_s: float | None = None
    ) -> Fetched | None:
        value = await self._redis.hgetall(self._layout.value(text))
        if not value or value.get(b"g", b"").decode() != generation:
            return None
        age = max(0.0, time.time() - float(value[b"t"]))
        limit = self._ttl_s if max_age_s is None else min(self._ttl_s, max_age_s)
        return Fetched(value[b"b"], age, from_tier=True) if age < limit else None

    # --- invalidation --------------------------------------------------------------------

    async def invalidate(self, key: Key) -> None:
        """Bump the key's generation, drop its value, tell every replica. Returns only
        once Redis has it: after this, no replica serves the old value. Without Redis:
        logged, counted and kept for when it is back (see the module docstring)."""
        if await self._shared(lambda pipe: self._queue_key(pipe, key)):
            return
        self._unshared(key_text(key))
        self._unshared_keys.add(key)
        if len(self._unshared_keys) > MAX_UNSHARED_KEYS:
            self._unshared_kinds.update(k[0] for k in self._unshared_keys)
            self._unshared_keys.clear()

    async def invalidate_kind(self, kind: str) -> None:
        if await self._shared(lambda pipe: self._queue_kind(pipe, kind)):
            return
        self._unshared(f"every {kind}")
        self._unshared_kinds.add(kind)

    async def _shared(self, queue: Callable[[Any], None]) -> bool:
        """Send the commands `queue` puts in a transaction: True once Redis has them, False
        (and the tier marked down) when it is away."""
        if not self.up:
            return False
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                queue(pipe)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._down(exc)
            return False
        return True

    def _queue_key(self, pipe: Any, key: Key) -> None:
        pipe.incr(self._gen_keys(key)[0])
        pipe.delete(self._layout.value(key_text(key)))
        pipe.publish(self._layout.channel, invalidated(self._me, key))

    def _queue_kind(self, pipe: Any, kind: str) -> None:
        pipe.incr(self._layout.kind_generation(kind))
        pipe.publish(self._layout.channel, invalidated_kind(self._me, kind))

    def _unshared(self, what: str) -> None:
        # Not raised: the write it follows was accepted upstream, and failing it now would
        # tell the client a write that happened did not (a retry could apply it twice).
        # Not silent either: until Redis has it, the other replicas may serve the old
        # value (for as long as their copy is fresh).
        self.unshared_invalidations += 1
        log.error("Redis unreachable: the invalidation of %s reached this replica only; "
                  "it is sent to the others once Redis answers again", shown(what))

    async def _share_unshared(self) -> None:
        """Redis answers again (called by the listener): send what it could not have.
        Raises on Redis trouble (the listener retries); what was sent is forgotten."""
        keys, kinds = set(self._unshared_keys), set(self._unshared_kinds)
        if not keys and not kinds:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in keys:
                self._queue_key(pipe, key)
            for kind in kinds:
                self._queue_kind(pipe, kind)
            await pipe.execute()
        self._unshared_keys -= keys
        self._unshared_kinds -= kinds
        log.warning("Redis reachable again: sent %d invalidations made while it was not",
                    len(keys) + len(kinds))

    # --- locks ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Held by one task across all replicas: a lease, renewed while the work inside
        runs however long it takes (lease.py). Degraded: held by one task in this
        process. Cancelled while waiting, it leaves nothing held."""
        async with self._local_locks.hold(name):
            lease = self._layout.lock(name)
            token = (await self._leases.acquire(lease)).token if self.up else None
            if token is None:
                yield
                return
            try:
                async with self._leases.renewed(lease, token):
                    yield
            finally:
                await self._leases.release(lease, token)
