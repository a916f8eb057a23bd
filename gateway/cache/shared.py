"""The tier behind the in-process cache: nothing (one process) or Redis (many replicas).

A tier answers four questions for the in-process cache (L1):
- generation(key): the key's current generation. An L1 entry carries the generation it
  was fetched under and is served only while that is still current, so a save on any
  replica outdates every replica's copy at once, with no message to wait for. None means
  "cannot tell" (Redis unreachable): L1 then serves only young entries.
- fetch(key, generation, fetch): the body, from the shared tier if another replica has
  it, else from upstream, making sure one upstream call is made across all replicas.
- invalidate(key) / invalidate_kind(kind): bump generations so every replica drops it.
- exclusive(name): a lock held across replicas (one read-merge-write per lot).
- revoke(name, ttl_s) / revoked(name): a set shared by replicas (signed-out sessions).

LocalTier is the single-process tier: generation is constant, fetch calls upstream,
exclusive is an in-process lock. RedisTier is the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, NamedTuple

from gateway.cache.store import Key
from gateway.locks import KeyedLocks

log = logging.getLogger(__name__)

Generation = Hashable
Fetch = Callable[[], Awaitable[bytes]]


class Fetched(NamedTuple):
    body: bytes
    age_s: float = 0.0  # how long ago it came from upstream
    shared: bool = False  # found in the shared tier: no upstream call was made for it


class LocalTier:
    """One process: nothing is shared, nothing to coordinate with."""

    up = True
    shared = False
    degraded_ttl_s = float("inf")

    def __init__(self) -> None:
        self._locks = KeyedLocks()
        self._revoked = Revoked()

    async def generation(self, key: Key) -> Generation | None:
        return 0

    async def fetch(self, key: Key, generation: Generation, fetch: Fetch) -> Fetched:
        return Fetched(await fetch())

    async def invalidate(self, key: Key) -> None:
        return None

    async def invalidate_kind(self, kind: str) -> None:
        return None

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        async with self._locks.hold(name):
            yield

    async def revoke(self, name: str, ttl_s: float) -> None:
        self._revoked.add(name, ttl_s)

    async def revoked(self, name: str) -> bool:
        return name in self._revoked

    async def start(self, on_invalidate: Callable[[str, Key | None], None]) -> None:
        return None

    async def close(self) -> None:
        return None


class Revoked:
    """Names revoked until a deadline (signed-out sessions), kept in this process."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # name -> monotonic deadline

    def add(self, name: str, ttl_s: float) -> None:
        now = time.monotonic()
        self._until = {n: t for n, t in self._until.items() if t > now}
        self._until[name] = now + ttl_s

    def __contains__(self, name: str) -> bool:
        return self._until.get(name, 0.0) > time.monotonic()


def key_text(key: Key) -> str:
    """A cache key as a Redis-safe string: kind, then the ident as compact JSON."""
    return f"{key[0]}|{json.dumps(key[1], separators=(',', ':'))}"


def key_from_text(text: str) -> Key:
    kind, _, ident = text.partition("|")
    return kind, _tuples(json.loads(ident))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# Store a fetched body only if neither the key's nor its kind's generation moved since
# the fetch began: a fetch that raced an invalidation never lands in the shared tier.
_STORE_IF_CURRENT = """
local g = (redis.call('GET', KEYS[1]) or '0') .. ':' .. (redis.call('GET', KEYS[2]) or '0')
if g ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[3], 'g', ARGV[1], 't', ARGV[2], 'b', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 1
"""
# Release a lease only if we still hold it (it may have expired and been taken since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTier:
    """Redis as the shared L2: values with their generation and TTL, per-key leases for
    cross-replica coalescing and write locks, pub/sub for wake-ups and L1 eviction.

    Redis trouble never becomes an outage: any Redis error switches the tier to degraded
    mode (logged once, gateway_redis_up 0): generation() answers None so L1 keeps only
    young entries (`degraded_ttl_s`), fetch() calls upstream directly, locks are
    in-process. A background task pings Redis and switches back by itself.
    """

    shared = True

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
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
        )
        self._errors: tuple[type[BaseException], ...] = (
            aioredis.RedisError, OSError, asyncio.TimeoutError,
        )
        self._ttl_s = ttl_s
        self._keep_ms = max(1, int((ttl_s + keep_s) * 1000))
        self._lease_ms = max(1, int(lease_s * 1000))
        self.degraded_ttl_s = degraded_ttl_s
        self._p = prefix
        self._channel = prefix + "events"
        self._store_script = self._redis.register_script(_STORE_IF_CURRENT)
        self._release_script = self._redis.register_script(_RELEASE)
        self._local_locks = KeyedLocks()
        self._local_revoked = Revoked()  # also kept here: they must hold through outages
        self._me = secrets.token_hex(6)  # this replica, to skip its own invalidations
        # Written only by _down() and _watch(); read by every operation.
        self.up = False
        # Futures waiting for a "done"/"released" message about a name, resolved by the
        # listener task. Registered before the waiter re-checks Redis, so no message can
        # slip between the check and the wait.
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # generation() requests waiting for the next MGET; taken whole by each flush.
        self._gen_batch: list[tuple[list[str], asyncio.Future[list[Any] | None]]] = []
        self._background: set[asyncio.Task[None]] = set()  # strong refs to flush tasks
        self._on_invalidate: Callable[[str, Key | None], None] = lambda kind, key: None
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, on_invalidate: Callable[[str, Key | None], None]) -> None:
        """Begin watching Redis; `on_invalidate(kind, key)` drops L1 entries (key None:
        the whole kind) when any replica invalidates."""
        self._on_invalidate = on_invalidate
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    async def _watch(self) -> None:
        """Subscribe and dispatch messages; on any failure go degraded, retry every 1 s."""
        first = True
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._redis.ping()
                if not self.up:
                    self.up = True
                    if not first:
                        log.warning("Redis reachable again: shared cache tier resumed")
                        # Entries kept while degraded carry no generation: drop them all.
                        self._on_invalidate("*", None)
                first = False
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None:
                        self._dispatch(message["data"].decode())
                    else:
                        await self._redis.ping()  # notice a dead connection within ~1 s
            except asyncio.CancelledError:
                with contextlib.suppress(*self._errors):
                    await pubsub.aclose()
                raise
            except self._errors as exc:
                first = False
                self._down(exc)
                with contextlib.suppress(*self._errors, RuntimeError):
                    await pubsub.aclose()
                await asyncio.sleep(1.0)

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            log.warning("Redis unreachable (%s): serving from the in-process cache only, "
                        "retrying in the background", type(exc).__name__)
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)  # waiters re-check and fall back to upstream

    def _dispatch(self, text: str) -> None:
        verb, _, rest = text.partition(" ")
        if verb in ("inv", "invkind"):
            sender, _, what = rest.partition(" ")
            if sender == self._me:
                return  # this replica dropped it already, synchronously
            if verb == "inv":
                self._on_invalidate("key", key_from_text(what))
            else:
                self._on_invalidate(what, None)
        elif verb == "done":
            for future in self._waiters.pop(rest, []):
                if not future.done():
                    future.set_result(None)

    # --- reads ---------------------------------------------------------------------------

    def _gen_keys(self, key: Key) -> list[str]:
        return [f"{self._p}gen:{key_text(key)}", f"{self._p}kgen:{key[0]}"]

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
        except self._errors as exc:
            self._down(exc)
            values = None
        for n, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(None if values is None else values[2 * n : 2 * n + 2])

    async def fetch(self, key: Key, generation: Generation, fetch: Fetch) -> Fetched:
        """The body for `key` at `generation`: from Redis if a replica stored it, else from
        upstream by whoever holds the key's lease; the others wait for its "done" message
        and take over if the lease runs out."""
        if not self.up or generation is None:
            return Fetched(await fetch())
        text = key_text(key)
        try:
            while True:
                found = await self._read(text, generation)
                if found is not None:
                    return found
                token = secrets.token_hex(8)
                if await self._redis.set(f"{self._p}lease:{text}", token, nx=True,
                                         px=self._lease_ms):
                    return await self._fill(key, text, generation, token, fetch)
                waiter = self._wait_for(text)
                found = await self._read(text, generation)  # it may have landed already
                if found is not None:
                    self._forget_waiter(text, waiter)
                    return found
                await self._wait(text, waiter, f"{self._p}lease:{text}")
                if not self.up:
                    return Fetched(await fetch())
        except self._errors as exc:
            self._down(exc)
            return Fetched(await fetch())

    async def _read(self, text: str, generation: Generation) -> Fetched | None:
        value = await self._redis.hgetall(f"{self._p}val:{text}")
        if not value or value.get(b"g", b"").decode() != generation:
            return None
        age = max(0.0, time.time() - float(value[b"t"]))
        return Fetched(value[b"b"], age, shared=True) if age < self._ttl_s else None

    async def _fill(
        self, key: Key, text: str, generation: Generation, token: str, fetch: Fetch
    ) -> Fetched:
        """Holding the key's lease: fetch from upstream, store, release, tell the waiters."""
        try:
            # The previous holder may have stored it and released the lease between our
            # read and our taking the lease: look once more before calling upstream.
            found = await self._read(text, generation)
            if found is not None:
                return found
            body = await fetch()
            with contextlib.suppress(*self._errors):
                await self._store_script(
                    keys=[*self._gen_keys(key), f"{self._p}val:{text}"],
                    args=[generation, repr(time.time()), body, self._keep_ms],
                )
            return Fetched(body)
        finally:
            # Success or failure, the waiters must not sit out the whole lease.
            with contextlib.suppress(*self._errors):
                await self._release_script(keys=[f"{self._p}lease:{text}"], args=[token])
                await self._redis.publish(self._channel, f"done {text}")

    def _wait_for(self, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(future)
        return future

    def _forget_waiter(self, name: str, future: asyncio.Future[None]) -> None:
        futures = self._waiters.get(name)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiters[name]

    async def _wait(self, name: str, waiter: asyncio.Future[None], lease_key: str) -> None:
        """Until the lease holder says "done", or its lease runs out (it may have died)."""
        ttl_ms = await self._redis.pttl(lease_key)
        try:
            await asyncio.wait_for(waiter, max(ttl_ms, 10) / 1000 + 0.05)
        except TimeoutError:
            pass
        finally:
            self._forget_waiter(name, waiter)

    # --- invalidation --------------------------------------------------------------------

    async def invalidate(self, key: Key) -> None:
        """Bump the key's generation, drop its value, tell every replica. Returns only
        once Redis has it: after this, no replica serves the old value."""
        if not self.up:
            return
        text = key_text(key)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._gen_keys(key)[0])
                pipe.delete(f"{self._p}val:{text}")
                pipe.publish(self._channel, f"inv {self._me} {text}")
                await pipe.execute()
        except self._errors as exc:
            self._down(exc)

    async def invalidate_kind(self, kind: str) -> None:
        if not self.up:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(f"{self._p}kgen:{kind}")
                pipe.publish(self._channel, f"invkind {self._me} {kind}")
                await pipe.execute()
        except self._errors as exc:
            self._down(exc)

    # --- revocations ---------------------------------------------------------------------

    async def revoke(self, name: str, ttl_s: float) -> None:
        """Revoked on every replica until ttl_s from now (this one too, if Redis is away)."""
        self._local_revoked.add(name, ttl_s)
        if self.up:
            try:
                await self._redis.set(f"{self._p}revoked:{name}", b"1",
                                      px=max(1, int(ttl_s * 1000)))
            except self._errors as exc:
                self._down(exc)

    async def revoked(self, name: str) -> bool:
        if name in self._local_revoked:
            return True
        if not self.up:
            return False
        try:
            return bool(await self._redis.exists(f"{self._p}revoked:{name}"))
        except self._errors as exc:
            self._down(exc)
            return False

    # --- locks ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Held by one task across all replicas (a lease, renewed by nobody: it must
        outlast the work, see lease_s). Degraded: held by one task in this process."""
        async with self._local_locks.hold(name):
            token = await self._acquire(name) if self.up else None
            try:
                yield
            finally:
                if token is not None:
                    with contextlib.suppress(*self._errors):
                        await self._release_script(keys=[f"{self._p}lock:{name}"],
                                                   args=[token])
                        await self._redis.publish(self._channel, f"done lock:{name}")

    async def _acquire(self, name: str) -> str | None:
        token = secrets.token_hex(8)
        try:
            while self.up:
                if await self._redis.set(f"{self._p}lock:{name}", token, nx=True,
                                         px=self._lease_ms):
                    return token
                waiter = self._wait_for(f"lock:{name}")
                if await self._redis.set(f"{self._p}lock:{name}", token, nx=True,
                                         px=self._lease_ms):
                    self._forget_waiter(f"lock:{name}", waiter)
                    return token
                await self._wait(f"lock:{name}", waiter, f"{self._p}lock:{name}")
        except self._errors as exc:
            self._down(exc)
        return None  # degraded: the in-process lock already held is what we have
