"""Fair shares of the upstream slots: one caller's calls hold at most `per_caller` at once.

The upstream client takes a caller's share before it joins the global queue for a slot,
so a caller with more calls than its share waits in a queue of its own, behind its own
calls only, and never stands in the global queue ahead of other callers.

A caller's queue exists only while it has a call holding or waiting for its share: the
last one out drops it, so memory follows the calls in flight, not the callers ever seen.
"""

from __future__ import annotations

import asyncio


class _Share:
    __slots__ = ("held", "slots", "users")

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.users = 0  # calls holding or waiting for a slot of this share
        self.held = 0  # of which holding one


class FairShares:
    def __init__(self, per_caller: int) -> None:
        if per_caller < 1:
            raise ValueError("per_caller must be at least 1")
        self.per_caller = per_caller
        self._shares: dict[str, _Share] = {}

    def __len__(self) -> int:
        """Callers with a call holding or waiting for their share now."""
        return len(self._shares)

    def holding(self) -> dict[str, int]:
        """Caller -> slots of its share held now (callers holding none left out)."""
        return {caller: s.held for caller, s in self._shares.items() if s.held}

    async def acquire(self, caller: str) -> None:
        """Wait for a slot of `caller`'s share (FIFO among its own calls). Cancelled
        (e.g. by a timeout around it), it holds nothing."""
        share = self._shares.get(caller)
        if share is None:
            share = self._shares[caller] = _Share(self.per_caller)
        share.users += 1
        try:
            await share.slots.acquire()
        except BaseException:
            self._leave(caller, share)
            raise
        share.held += 1

    def release(self, caller: str) -> None:
        share = self._shares[caller]
        share.held -= 1
        share.slots.release()
        self._leave(caller, share)

    def _leave(self, caller: str, share: _Share) -> None:
        share.users -= 1
        if share.users == 0:
            del self._shares[caller]
