"""A sliding-window rate limit per key (a client address, a participant), bounded in memory.

Shared by the token endpoint (tokens per client address) and the ``say`` control message
(messages per session), so both refuse the same way: with the seconds until the next one fits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable


class RateLimit:
    """At most ``limit`` events per ``window`` seconds for each key.

    Only the keys with an event inside the window are kept, and at most ``max_keys`` of them
    (the oldest are forgotten first), so a flood of distinct keys cannot grow it without end.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window more than 0")
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._events: dict[Hashable, deque[float]] = {}

    def acquire(self, key: Hashable = None) -> float | None:
        """Count one event for ``key``; None if it is allowed, else the seconds to wait."""
        now = self._clock()
        events = self._events.pop(key, None) or deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            self._events[key] = events  # re-inserted: the most recently seen key
            return max(events[0] + self.window - now, 0.0)
        events.append(now)
        self._events[key] = events
        if len(self._events) > self._max_keys:
            self._forget_stale(now)
        return None

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        """An HTTP ``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(seconds)))

    def _forget_stale(self, now: float) -> None:
        for key in [k for k, ev in self._events.items() if ev[-1] <= now - self.window]:
            del self._events[key]
        while len(self._events) > self._max_keys:  # still too many: drop the least recent
            del self._events[next(iter(self._events))]
