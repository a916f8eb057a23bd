"""Per-key mutual exclusion within one process: one holder per key, keys independent.

Contract:
- `hold(key)` is an async context manager; while a task is inside it, every other task
  entering `hold(key)` waits, in arrival order (asyncio.Lock is FIFO).
- Different keys never wait for each other.
- A key's lock exists only while someone holds or waits for it, so the table never grows
  with the number of keys ever touched (`len()` counts the keys in use).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


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
