"""Prefetch: fetch in the background what an operator is likely to open next.

Reads tells it (reads.Prefetch): the events a seller's list just showed (their catalogs),
the next page of the event page just served (its lots). Each wish is a cache key read
later through `Reads`, so it lands in the cache by the same road as a client's read: one
call per key (a client asking meanwhile joins the prefetch instead of making a second call,
which is the point), and never a result fetched under an older generation than a save that
has returned (design rule 3: Cache.get's single flight and generations apply as to any
fetch).

Lowest priority (design rule 6), in two places:
- here: at most `max_inflight` prefetches at once, each sent only when the upstream client
  has room for background work (a free slot beyond those kept for clients) and claimed
  that room, so a burst of prefetches never counts on the same free slot twice;
- in the upstream client (context.BACKGROUND): the call itself never waits for a slot,
  never takes the last free one, never calls while the breaker is not closed, and is
  charged to no caller (UpstreamClient's docstring). A wish whose room a client took in
  between (Deferred) goes back to the head of the queue, MAX_DEFERRALS times at most.

While the breaker is not closed, prefetch stops: what is queued is dropped and new wishes
are refused at once (the upstream is failing; guesses would only add to its load, and the
operator will have moved on by the time it recovers).

The queue is bounded (`queue_size`) and deduplicated (a key queued or in flight is not
queued again); full, it drops the *oldest* wishes: the newest say where the operator is
now, the oldest are the least likely to be asked for next.

Every wish ends with one `Outcome`, reported to `on_outcome(outcome, n)` (metrics, n wishes
at once): the label values of gateway_prefetch_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway import keys
from gateway.cache import Cache, Key
from gateway.context import BACKGROUND, CHARGED_TO, REQUEST_ID
from gateway.reads import Reads
from gateway.upstream.breaker import State
from gateway.upstream.client import BackgroundClaim, Deferred, UpstreamClient

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # wishes waiting at most: two pages of 100 lots and then some
# Times one wish may find its room taken by a client (Deferred) and go back to the head of
# the queue, to be sent once there is room again, before it is dropped.
MAX_DEFERRALS = 3


class Outcome(enum.StrEnum):
    """How one wish ended; the value is the `outcome` label of gateway_prefetch_total."""

    FETCHED = "fetched"  # read through the cache (fetched, or joined a fetch running)
    SKIPPED_FRESH = "skipped_fresh"  # already fresh in the cache: nothing to do
    DROPPED_FULL = "dropped_full"  # pushed out of the full queue by newer wishes
    DEFERRED_BUSY = "deferred_busy"  # a client took the room first: the client won
    PAUSED_BREAKER = "paused_breaker"  # dropped while the breaker was not closed
    FAILED = "failed"  # the read failed (upstream error, no such record)


_RESOURCES = {"catalog": "Catalog", "lot": "Lot"}  # key kind -> Reads resource


class Prefetcher:
    """Implements reads.Prefetch. `catalogs()` and `lots()` only queue (synchronous, never
    block, never raise); `start()` begins sending, `close()` cancels everything."""

    def __init__(
        self, reads: Reads, cache: Cache, upstream: UpstreamClient, *, max_inflight: int,
        queue_size: int = QUEUE_SIZE,
        on_outcome: Callable[[str, int], None] = lambda outcome, n: None,
    ) -> None:
        if max_inflight < 1 or queue_size < 1:
            raise ValueError("max_inflight and queue_size must be at least 1")
        self._reads = reads
        self._cache = cache
        self._upstream = upstream
        self._max_inflight = max_inflight
        self._queue_size = queue_size
        self._on_outcome = on_outcome
        # Wishes not yet sent, oldest first: key -> (the request id of the request that
        # made the wish, sent upstream with the prefetch for tracing; times deferred so
        # far). No key is both queued and in _running. Loop thread only.
        self._queue: OrderedDict[Key, tuple[str | None, int]] = OrderedDict()
        # Keys being prefetched now -> their task; len(_running) <= max_inflight.
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()  # set when a wish is queued or a prefetch ends
        self._dispatcher: asyncio.Task[None] | None = None

    # --- reads.Prefetch --------------------------------------------------------------------

    def catalogs(self, catalog_ids: Sequence[int]) -> None:
        self._want([keys.one("Catalog", i) for i in catalog_ids])

    def lots(self, lot_ids: Sequence[int]) -> None:
        self._want([keys.one("Lot", i) for i in lot_ids])

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def close(self) -> None:
        """Cancel the dispatcher and every prefetch in flight (a cache fetch they started
        goes on for whoever joined it, as Cache.get's flights do); forget the queue."""
        tasks = [t for t in (self._dispatcher, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dispatcher = None
        self._queue.clear()

    @property
    def pending(self) -> int:
        """Wishes queued or in flight now (0: prefetch is idle)."""
        return len(self._queue) + len(self._running)

    @property
    def inflight(self) -> int:
        """Prefetches sent and not yet over (at most max_inflight)."""
        return len(self._running)

    # --- inside --------------------------------------------------------------------------

    def _want(self, wanted: list[Key]) -> None:
        request_id = REQUEST_ID.get()
        if self._upstream.breaker.state is not State.CLOSED:
            self._ended(Outcome.PAUSED_BREAKER, len(wanted))
            return
        fresh = 0
        for key in wanted:
            if key in self._queue or key in self._running:
                continue
            if self._cache.peek(key) is not None:
                fresh += 1
                continue
            self._queue[key] = (request_id, 0)
            if len(self._queue) > self._queue_size:
                self._queue.popitem(last=False)
                self._ended(Outcome.DROPPED_FULL)
        self._ended(Outcome.SKIPPED_FRESH, fresh)
        if self._queue:
            self._wake.set()

    async def _dispatch(self) -> None:
        """Send queued wishes, oldest first, each once there is room for it."""
        while True:
            if not self._queue or len(self._running) >= self._max_inflight:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._upstream.breaker.state is not State.CLOSED:
                self._ended(Outcome.PAUSED_BREAKER, len(self._queue))
                self._queue.clear()
                continue
            key, wish = next(iter(self._queue.items()))
            if self._cache.peek(key) is not None:  # a client fetched it meanwhile
                del self._queue[key]
                self._ended(Outcome.SKIPPED_FRESH)
                continue
            claim = self._upstream.claim_background()
            if claim is None:  # every slot but the clients' reserve is taken
                await self._upstream.room_changed()
                continue
            del self._queue[key]
            task = asyncio.get_running_loop().create_task(self._prefetch(key, *wish, claim))
            self._running[key] = task
            task.add_done_callback(lambda task, key=key: self._finished(key, task))

    async def _prefetch(
        self, key: Key, request_id: str | None, deferred: int, claim: BackgroundClaim
    ) -> None:
        # This task's own context (a copy of the dispatcher's): background, charged to no
        # one, traced to the request that made the wish. Fetch tasks it starts inherit it.
        BACKGROUND.set(True)
        CHARGED_TO.set(None)
        REQUEST_ID.set(request_id)
        kind, ident = key
        try:
            with claim:
                await self._reads.resource(_RESOURCES[kind], ident)
        except Deferred as exc:
            if exc.breaker:
                self._ended(Outcome.PAUSED_BREAKER)
            elif deferred + 1 < MAX_DEFERRALS and len(self._queue) < self._queue_size:
                # A client took the room first (as it should): try again once there is
                # room, ahead of the wishes queued after this one.
                del self._running[key]
                self._queue[key] = (request_id, deferred + 1)
                self._queue.move_to_end(key, last=False)
            else:
                self._ended(Outcome.DEFERRED_BUSY)
        except Exception as exc:  # a guess that failed: the client asking later will see
            log.debug("prefetch of %s %s failed: %s", kind, ident, exc)
            self._ended(Outcome.FAILED)
        else:
            self._ended(Outcome.FETCHED)

    def _finished(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:  # else deferred and queued again, maybe resent
            del self._running[key]
        self._wake.set()

    def _ended(self, outcome: Outcome, count: int = 1) -> None:
        if count:
            self._on_outcome(outcome.value, count)
