"""Small thread-safe budgets: a per-minute rate limit (token bucket)."""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allows ``per_minute`` events per minute with a burst of the same size.
    ``per_minute=0`` allows nothing."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._last = clock()
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        if self.per_minute <= 0:
            return False
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.per_minute), self._tokens + (now - self._last) * self.per_minute / 60.0)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def refund(self) -> None:
        with self._lock:
            self._tokens = min(float(self.per_minute), self._tokens + 1.0)
