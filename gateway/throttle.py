"""Sign-in throttling: failed tries per username and per client address, in a sliding window.

Contract (`SignInThrottle`):

- `charge(username, address)` counts one try against the username (compared in any case;
  None for an API-key try, which counts against the address only) and against the address,
  before the try is checked. When either already holds `failures` tries within the last
  `window_s` seconds, it raises `Throttled` (429, with the seconds until the oldest of those
  tries ages out) and counts nothing: the caller must then not ask the identity server.
- Charging before checking means concurrent tries cannot overshoot: at most `failures`
  checks per username or address are ever started within one window.
- `Attempt.refund()` takes one try back: a sign-in that succeeded, or one the identity
  server could not judge (unreachable). It removes only that try: it never clears failures
  of the same address or username made by others.
- Memory is bounded: at most `max_entries` usernames and as many addresses are tracked;
  entries whose tries have all aged out go first, then the least recently charged.

The counts are per process: N replicas allow up to N times the tries.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import TooManyRequests

__all__ = ["Attempt", "SignInThrottle", "Throttled"]

MAX_ENTRIES = 10_000


class Throttled(TooManyRequests):
    """Too many failed sign-ins lately; `retry_after` says when the next try may come."""


class _Window:
    """Try times per key, oldest first, bounded in keys."""

    def __init__(self, limit: int, window_s: float, max_entries: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_entries = max_entries
        self.tries: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        times = self.tries.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return times[-self.limit] + self.window_s - now

    def add(self, key: str, now: float) -> None:
        times = self.tries.pop(key, None) or deque(maxlen=self.limit)
        times.append(now)
        self.tries[key] = times  # most recently charged last
        self._evict(now)

    def remove(self, key: str, when: float) -> None:
        times = self.tries.get(key)
        if times is not None and when in times:
            times.remove(when)

    def _evict(self, now: float) -> None:
        """From the least recently charged: drop what has aged out, and more while over the
        bound. Stops at the first live entry, so each call costs what it removes."""
        while self.tries:
            key, times = next(iter(self.tries.items()))
            live = bool(times) and times[-1] > now - self.window_s
            if live and len(self.tries) <= self.max_entries:
                return
            del self.tries[key]


@dataclass
class Attempt:
    """One charged try; `refund()` takes it back (at most once)."""

    _keys: list[tuple[_Window, str]]
    _when: float
    _refunded: bool = field(default=False)

    def refund(self) -> None:
        if not self._refunded:
            self._refunded = True
            for window, key in self._keys:
                window.remove(key, self._when)


class SignInThrottle:
    def __init__(
        self, failures: int, window_s: float, *, max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = _Window(failures, window_s, max_entries)
        self._addresses = _Window(failures, window_s, max_entries)
        self._clock = clock

    def charge(self, username: str | None, address: str) -> Attempt:
        """Count one try, or raise Throttled (counting nothing). See the module docstring."""
        now = self._clock()
        keys = [(self._addresses, address)]
        if username is not None:
            keys.append((self._users, username.strip().casefold()))
        wait = max(window.wait_s(key, now) for window, key in keys)
        if wait > 0:
            raise Throttled(
                "too many failed sign-ins for this username or from this address; try again "
                "later", retry_after=wait,
            )
        for window, key in keys:
            window.add(key, now)
        return Attempt(keys, now)

    def tracked(self) -> int:
        """Usernames and addresses held (for tests of the memory bound)."""
        return len(self._users.tries) + len(self._addresses.tries)
