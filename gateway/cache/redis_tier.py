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
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from gateway.cache.lease import Leases
from gateway.cache.listener import REDIS_ERRORS, Listener
from gateway.cache.locks import KeyedLocks
from gateway.cache.redis_layout import Layout, invalidated, invalidated_kind, key_text
from gateway.cache.store import Key
from gateway.cache.tier import Fetch, Fetched, Generation, OnInvalidate

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
        it (the stale windows); lease_s: must outlast the slowest upstream call, retries
        included (leases are not renewed); op_timeout_s: a Redis operation slower than
        this counts as Redis down; prefix: keeps environments sharing one Redis apart."""
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
        )
        self._local_locks = KeyedLocks()
        # generation() requests waiting for the next MGET; taken whole by each flush.
        self._gen_batch: list[tuple[list[str], asyncio.Future[list[Any] | None]]] = []
        self._background: set[asyncio.Task[None]] = set()  # strong refs to flush tasks

    @property
    def up(self) -> bool:
        return self._listener.up

    def _down(self, exc: BaseException) -> None:
        self._listener.down(exc)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, on_invalidate: OnInvalidate) -> None:
        self._listener.start(on_invalidate)

    async def close(self) -> None:
        await self._listener.close()
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

    async def fetch(self, key: Key, generation: Generation | None, fetch: Fetch) -> Fetched:
        """The body for `key` at `generation`: from Redis if a replica stored it, else from
        upstream by whoever holds the key's fetch lease, the others waiting for it and
        then reading what it stored. Errors of `fetch()` reach the caller unchanged."""
        if not self.up or generation is None:
            return Fetched(await fetch())
        text = key_text(key)
        lease = self._layout.fetch_lease(text)
        acquired = await self._leases.acquire(lease, lambda: self._read(text, generation))
        if acquired.found is not None:
            return acquired.found
        if acquired.token is None:  # Redis went away meanwhile
            return Fetched(await fetch())
        try:
            # The previous holder may have stored it and released the lease between our
            # last look and our taking the lease: look once more before calling upstream.
            try:
                found = await self._read(text, generation)
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

    async def _read(self, text: str, generation: Generation) -> Fetched | None:
        value = await self._redis.hgetall(self._layout.value(text))
        if not value or value.get(b"g", b"").decode() != generation:
            return None
        age = max(0.0, time.time() - float(value[b"t"]))
        return Fetched(value[b"b"], age, from_tier=True) if age < self._ttl_s else None

    # --- invalidation --------------------------------------------------------------------

    async def invalidate(self, key: Key) -> None:
        """Bump the key's generation, drop its value, tell every replica. Returns only
        once Redis has it: after this, no replica serves the old value."""
        if not self.up:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._gen_keys(key)[0])
                pipe.delete(self._layout.value(key_text(key)))
                pipe.publish(self._layout.channel, invalidated(self._me, key))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._down(exc)

    async def invalidate_kind(self, kind: str) -> None:
        if not self.up:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._layout.kind_generation(kind))
                pipe.publish(self._layout.channel, invalidated_kind(self._me, kind))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._down(exc)

    # --- locks ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Held by one task across all replicas: a lease, renewed by nobody, so the work
        must finish within lease_s. Degraded: held by one task in this process."""
        async with self._local_locks.hold(name):
            lease = self._layout.lock(name)
            token = (await self._leases.acquire(lease)).token if self.up else None
            try:
                yield
            finally:
                if token is not None:
                    await self._leases.release(lease, token)
