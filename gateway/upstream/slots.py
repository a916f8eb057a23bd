"""The global cap on upstream calls in flight, clients first.

`size` slots. A client's call waits for one in FIFO order (`take`). Background work never
waits: `try_take(reserve)` gives it a slot only if at least `reserve` stay free after it,
so with reserve >= 1 it never takes the last free slot. A slot given back goes straight to
the longest-waiting client, if any, so nothing can take it in between; only when no client
waits does it become free, and then `on_freed` is called.

Hence while a client waits no slot is free, and background work, which needs a free one,
can never stand in front of a client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable


class Slots:
    def __init__(self, size: int, on_freed: Callable[[], None] = lambda: None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._on_freed = on_freed
        # Slots nobody holds. Invariant: free > 0 only when no client waits (release hands
        # a slot to a waiter before it frees one); free + held + handed over == size.
        # Read and written on the loop thread only; no method awaits between a read and
        # the write that depends on it.
        self.free = size
        # Clients waiting, oldest first; a future is done once it was handed a slot (or
        # cancelled: its task removes it, and release skips it meanwhile).
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        """A slot for a client: at once if one is free, else in turn (FIFO). Cancelled (by
        a timeout around it, say), it holds nothing."""
        if self.free > 0:  # then nobody waits (the invariant): no one is passed over
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(fut)
            raise

    def try_take(self, reserve: int) -> bool:
        """A slot for background work, now or never: taken only if `reserve` slots stay
        free after it."""
        if self.free - 1 < reserve:
            return False
        self.free -= 1
        return True

    def release(self) -> None:
        """Give a slot back: to the longest-waiting client, else to the free pool."""
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
        self._on_freed()
