"""Per-key mutual exclusion within one process, and a bounded wait for any lock.

Contract of KeyedLocks:
- `hold(key)` is an async context manager; while a task is inside it, every other task
  entering `hold(key)` waits, in arrival order (asyncio.Lock is FIFO).
- Different keys never wait for each other.
- A key's lock exists only while someone holds or waits for it, so the table never grows
  with the number of keys ever touched (`len()` counts the keys in use). A waiter that is
  cancelled leaves no trace either.

`waited(lock, wait_s, what)` enters any lock (an async context manager whose entry may be
cancelled safely: KeyedLocks.hold, a tier's exclusive()) within `wait_s`, else raises
LockBusy, a 503 with Retry-After: a lock held for long means the work holding it is slow
(the upstream is), and a caller queueing behind it for ever helps nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from gateway.errors import UpstreamUnavailable


class LockBusy(UpstreamUnavailable):
    """Waited `wait_s` for a lock and did not get it; nothing was done."""


class KeyedLocks:
    def __init__(self) -> None:
        # key -> (lock, number of holders + waiters). Created by the first caller for a key
        # and removed by the last one to leave; all on the loop thread, between awaits.
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@asynccontextmanager
async def waited(
    lock: AbstractAsyncContextManager[None], wait_s: float, what: str
) -> AsyncIterator[None]:
    """`lock`, entered within `wait_s` (then held for as long as the body runs), or
    LockBusy naming `what` (e.g. "lot 123"). Retry-After: the wait, within 1 to 5 s."""
    async with AsyncExitStack() as held:
        deadline = asyncio.timeout(wait_s)
        try:
            async with deadline:
                await held.enter_async_context(lock)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: some operation inside timed out
            raise LockBusy(
                f"{what} is being written by another request that is taking long; "
                f"waited {wait_s:g} s, try again", retry_after=max(1.0, min(wait_s, 5.0)),
            ) from None
        yield
