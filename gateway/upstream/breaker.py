"""Circuit breaker on the upstream: fail fast while it is down, probe it back to health.

- closed:    calls go through; outcomes are recorded in a sliding window. It opens when,
             over the last `window_s`, at least `min_calls` finished and the failure ratio
             reached `failure_ratio`. A short run of failures among many successes (random
             30 % errors, say) does not trip it: the ratio must be sustained.
- open:      every call is refused at once (UpstreamUnavailable, with Retry-After) for
             `open_s`; then it turns half-open.
- half-open: one probe call at a time goes through; the others are refused. The probe's
             success closes the breaker (and clears the window), its failure reopens it.

A failure is a call that got no answer (connection error, timeout) or a 5xx. A 4xx is an
answer: the upstream is alive.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from gateway.errors import UpstreamUnavailable


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(UpstreamUnavailable):
    """Refused without calling the upstream."""


class CircuitBreaker:
    def __init__(
        self,
        *,
        window_s: float,
        min_calls: int,
        failure_ratio: float,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._min_calls = min_calls
        self._ratio = failure_ratio
        self._open_s = open_s
        self._clock = clock
        # All fields below are read and written on the event loop thread only, and no
        # method awaits, so each transition is atomic.
        self._state = State.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed), oldest first
        self._failures = 0  # failed outcomes in _outcomes

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._open_s:
            self._state = State.HALF_OPEN
        return self._state

    def check(self) -> None:
        """Refuse at once if the breaker is open (cheap; reserves nothing)."""
        if self.state is State.OPEN:
            raise self._refusal()

    def before_call(self) -> None:
        """Admit one call or refuse it. An admitted call must end with record()."""
        state = self.state
        if state is State.OPEN:
            raise self._refusal()
        if state is State.HALF_OPEN:
            if self._probe_in_flight:
                raise self._refusal()
            self._probe_in_flight = True

    def record(self, failed: bool | None) -> None:
        """The outcome of an admitted call; None when it ended without a verdict
        (cancelled), which only frees the probe slot."""
        if self._state is State.HALF_OPEN and self._probe_in_flight:
            self._probe_in_flight = False
            if failed is True:
                self._open()
            elif failed is False:
                self._state = State.CLOSED
                self._outcomes.clear()
                self._failures = 0
            return
        if failed is None or self._state is not State.CLOSED:
            return
        now = self._clock()
        self._outcomes.append((now, failed))
        self._failures += failed
        while self._outcomes and self._outcomes[0][0] < now - self._window_s:
            self._failures -= self._outcomes.popleft()[1]
        calls = len(self._outcomes)
        if calls >= self._min_calls and self._failures / calls >= self._ratio:
            self._open()

    def _open(self) -> None:
        self._state = State.OPEN
        self._opened_at = self._clock()
        self._outcomes.clear()
        self._failures = 0

    def _refusal(self) -> CircuitOpen:
        if self._state is State.OPEN:
            wait = self._open_s - (self._clock() - self._opened_at)
        else:
            wait = 1.0
        return CircuitOpen(
            "the upstream is failing; the gateway stopped calling it for a moment "
            "(circuit open)", retry_after=max(1.0, wait),
        )
