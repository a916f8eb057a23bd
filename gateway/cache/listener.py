"""The Redis tier's pub/sub listener, and the judge of whether Redis is up.

Contract:
- After start(), one task stays subscribed to the channel and turns each message from
  another replica into a call: an invalidation into `on_invalidate(kind, key)`, a lease
  release into `on_released(name)`. Messages this replica sent itself are skipped (it
  acted on them already); verbs it does not know are ignored (a newer replica's).
- A malformed message (anything at all: not bytes, huge, not UTF-8, a key that is no
  key, nested too deeply to parse) is logged (warning, at most its first 200 bytes,
  repr()'d so no control character reaches the log) and skipped; a handler's error is
  logged and skipped too. Nothing a publisher sends can end the listening: one bad
  publisher cannot stop invalidations reaching this replica.
- `up` turns True once subscribed and Redis answers a ping, and False on any Redis error,
  whether seen here or reported by another operation through down(). down() also calls
  `on_down()` every time (waiters stop waiting). While down the task retries every
  `retry_s` (reconnecting if its own connection failed too); on coming back it calls
  `on_invalidate("*", None)`: entries kept while degraded carry no generation and must go,
  then awaits `on_up()` (the tier shares what it could not share while down).
- While subscribed, Redis is pinged whenever the channel has been quiet for `retry_s`, so
  a dead connection is noticed within about that long.
- Only cancellation (close()) ends the task. An unexpected error is logged, counts as
  Redis trouble, and the task subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.cache.redis_layout import Invalidated, InvalidatedKind, Released, parse
from gateway.cache.tier import OnInvalidate

log = logging.getLogger(__name__)

# What counts as Redis being unreachable (a refused connection, a timed-out operation).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def _ignore(kind: str, key: object) -> None:
    return None


async def _nothing() -> None:
    return None


def shown(data: object, limit: int = 200) -> str:
    """`data` for a log line: repr()'d (no control character gets through), at most about
    `limit` characters of it, and how long it was when it was longer."""
    if isinstance(data, bytes | bytearray | str):
        text = repr(data[:limit])
        return text if len(data) <= limit else f"{text}... ({len(data)} long)"
    return f"a {type(data).__name__}"


class Listener:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        *,
        me: str,
        on_released: Callable[[str], None],
        on_down: Callable[[], None],
        on_up: Callable[[], Awaitable[None]] = _nothing,
        retry_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._me = me
        self._on_released = on_released
        self._on_down = on_down
        self._on_up = on_up
        self._retry_s = retry_s
        self._down_at = 0.0  # time.monotonic() of the last down()
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
        self._down_at = time.monotonic()
        self._on_down()

    async def _listen(self) -> None:
        first = True
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._redis.ping()
                await self._came_up(first)
                first = False
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._retry_s
                    )
                    if message is not None:
                        self._dispatch(message)
                    else:
                        await self._redis.ping()
                    if not self.up and time.monotonic() - self._down_at >= self._retry_s:
                        # Another operation failed (down()), but this connection works:
                        # Redis answers again, with no reconnection to notice it.
                        await self._redis.ping()
                        await self._came_up(first=False)
            except asyncio.CancelledError:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("the Redis listener failed; subscribing again")
                first = False
                self.down(exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(self._retry_s)

    async def _came_up(self, first: bool) -> None:
        if self.up:
            return
        self.up = True
        if not first:
            log.warning("Redis reachable again: shared cache tier resumed")
            self.on_invalidate("*", None)
        await self._on_up()

    def _dispatch(self, message: object) -> None:
        data = message.get("data") if isinstance(message, dict) else message
        try:
            parsed = parse(data)
        except Exception as exc:  # MalformedMessage; anything else would be a bug in parse()
            log.warning("Skipping a malformed message on %s (%s): %s", self._channel,
                        shown(str(exc), 100), shown(data))
            return
        try:
            self._handle(parsed)
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
