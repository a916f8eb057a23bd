"""Request coalescing: at most one call per key in flight, shared by every caller.

Contract (after Go's singleflight):
- `do(key, fn, keep)` runs `fn()` unless a call for `key` is already running, in which
  case it awaits that call instead. Every caller gets the same value or exception, the
  moment the call finishes (they await its task; nothing polls).
- The call runs in its own task. A caller that is cancelled (its client went away) stops
  waiting, but the call goes on for the others and still lands in the cache.
- `keep(value)` runs inside the call's task, in the same step as the call's completion,
  unless the key was `forget()`-ed meanwhile. So a forgotten call never writes back, and
  there is no moment where the call has finished but its result is not yet stored.
- `forget(key)` detaches the running call: callers already waiting still get its result
  (they asked before the forget), later callers start a fresh call.
- `do(..., renew=True)` (a forced refresh) joins only a call that was itself started
  with `renew`: any other running call is forgotten (it may have begun before the data
  the caller wants replaced) and a new one started, which later callers join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Call(Generic[V]):
    __slots__ = ("background", "forgotten", "renewed", "task")

    def __init__(self, renewed: bool = False, background: bool = False) -> None:
        # Started by a forced refresh (do(..., renew=True)).
        self.renewed = renewed
        # Started as background work (prefetch, refresh): see background().
        self.background = background
        # Set once, right after creation, before any other coroutine can see the call.
        self.task: asyncio.Task[V]
        # Set by forget() only; read by the call's own task before keep(). Both run on the
        # loop thread, so the read sees every forget() that happened before completion.
        self.forgotten = False


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        # key -> the running, not forgotten call. An entry is removed by the call's own
        # task when it finishes, or by forget().
        self._calls: dict[K, _Call[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def running(self, key: K) -> bool:
        return key in self._calls

    def background(self, key: K) -> bool:
        """Whether the call running for `key` was started as background work (whose
        failure may only mean it was not sent: a caller who joined it may try its own)."""
        call = self._calls.get(key)
        return call is not None and call.background

    def keys(self) -> list[K]:
        return list(self._calls)

    async def do(
        self, key: K, fn: Callable[[], Awaitable[V]], keep: Callable[[V], None],
        *, renew: bool = False, background: bool = False,
    ) -> tuple[V, bool]:
        """(value, joined): joined is True when this caller joined a call already running.
        renew: join only a call started with renew too (see the module docstring)."""
        running = self._calls.get(key)
        if renew and running is not None and not running.renewed:
            self.forget(key)
        joined = key in self._calls
        self.start(key, fn, keep, renew=renew, background=background)
        return await asyncio.shield(self._calls[key].task), joined

    def start(
        self, key: K, fn: Callable[[], Awaitable[V]], keep: Callable[[V], None],
        *, renew: bool = False, background: bool = False,
    ) -> None:
        """Begin a call for `key` in the background unless one is running; nobody awaits
        it (a background refresh). Its value lands through keep(), its error is dropped."""
        if key in self._calls:
            return
        call = _Call[V](renew, background)
        call.task = asyncio.get_running_loop().create_task(self._run(key, call, fn, keep))
        call.task.add_done_callback(_consume_exception)
        self._calls[key] = call

    def forget(self, key: K) -> bool:
        call = self._calls.pop(key, None)
        if call is None:
            return False
        call.forgotten = True
        return True

    def cancel_all(self) -> None:
        """Shutdown: cancel every running call."""
        for call in self._calls.values():
            call.task.cancel()
        self._calls.clear()

    async def _run(
        self, key: K, call: _Call[V], fn: Callable[[], Awaitable[V]], keep: Callable[[V], None]
    ) -> V:
        try:
            value = await fn()
            if not call.forgotten:
                keep(value)
            return value
        finally:
            if self._calls.get(key) is call:
                del self._calls[key]


def _consume_exception(task: asyncio.Task) -> None:
    # Every waiter may have gone away; mark the exception retrieved so asyncio does not
    # log "Task exception was never retrieved" for a failure someone else already saw.
    if not task.cancelled():
        task.exception()
