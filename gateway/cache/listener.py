"""The Redis tier's pub/sub listener, and the judge of whether Redis is up.

Contract:
- After start(), one task stays subscribed to the channel and turns each message from
  another replica into a call: an invalidation into `on_invalidate(kind, key)`, a lease
  release into `on_released(name)`. Messages this replica sent itself are skipped (it
  acted on them already); verbs it does not know are ignored (a newer replica's).
- A malformed message is logged (warning, its text repr()'d and shortened) and skipped:
  one bad publisher cannot stop invalidations reaching this replica.
- `up` turns True once subscribed and Redis answers a ping, and False on any Redis error,
  whether seen here or reported by another operation through down(). down() also calls
  `on_down()` every time (waiters stop waiting). While down the task retries every
  `retry_s`; on coming back it calls `on_invalidate("*", None)`: entries kept while
  degraded carry no generation and must go.
- While subscribed, Redis is pinged whenever the channel has been quiet for `retry_s`, so
  a dead connection is noticed within about that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.cache.redis_layout import (
    Invalidated,
    InvalidatedKind,
    MalformedMessage,
    Released,
    parse,
)
from gateway.cache.tier import OnInvalidate

log = logging.getLogger(__name__)

# What counts as Redis being unreachable (a refused connection, a timed-out operation).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def _ignore(kind: str, key: object) -> None:
    return None


class Listener:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        *,
        me: str,
        on_released: Callable[[str], None],
        on_down: Callable[[], None],
        retry_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._me = me
        self._on_released = on_released
        self._on_down = on_down
        self._retry_s = retry_s
        # Set by start(), before the task that calls it exists.
        self.on_invalidate: OnInvalidate = _ignore
        # Written only by down() and the listening task, both on the loop thread; read by
        # every Redis operation of the tier to decide whether to try Redis at all.
        self.up = False
        self._task: asyncio.Task[None] | None = None

    def start(self, on_invalidate: OnInvalidate) -> None:
        self.on_invalidate = on_invalidate
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        """Stop listening. Cancelled again until the task ends: on Python 3.11 a redis
        command sent through asyncio.wait_for can swallow a cancellation that lands just as
        it completes, and the loop would then go on (and shutdown would hang)."""
        if self._task is None:
            return
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.5)
        if not self._task.cancelled() and self._task.exception() is not None:
            log.error("the Redis listener had stopped on an error",
                      exc_info=self._task.exception())

    def down(self, exc: BaseException) -> None:
        """Redis failed an operation: degrade (logged once per outage), wake waiters."""
        if self.up:
            self.up = False
            log.warning("Redis unreachable (%s): serving from the in-process cache only, "
                        "retrying in the background", type(exc).__name__)
        self._on_down()

    async def _listen(self) -> None:
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
                        self.on_invalidate("*", None)
                first = False
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._retry_s
                    )
                    if message is not None:
                        self._dispatch(message["data"])
                    else:
                        await self._redis.ping()
            except asyncio.CancelledError:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
                raise
            except REDIS_ERRORS as exc:
                first = False
                self.down(exc)
                with contextlib.suppress(*REDIS_ERRORS, RuntimeError):
                    await pubsub.aclose()
                await asyncio.sleep(self._retry_s)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = parse(data)
        except MalformedMessage as exc:
            text = repr(data)
            log.warning("Skipping a malformed message on %s (%s): %s", self._channel, exc,
                        text if len(text) <= 200 else text[:200] + "...")
            return
        try:
            self._handle(message)
        except Exception:
            # A handler's bug must not end the listening: reads stay correct without the
            # message (every read checks its key's generation), only less prompt.
            log.exception("a handler failed on a message on %s; listening on", self._channel)

    def _handle(self, message: object) -> None:
        match message:
            case Released(name):
                self._on_released(name)
            case Invalidated(sender, key) if sender != self._me:
                self.on_invalidate("key", key)
            case InvalidatedKind(sender, kind) if sender != self._me:
                self.on_invalidate(kind, None)
