"""Small thread-safe budgets: a per-minute rate limit (token bucket) and the
concurrency cap, both taken atomically."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .._safety import at_fork_reinit

__all__ = ["PerMinuteLimiter", "ConcurrencySlots"]


class PerMinuteLimiter:
    """Allows ``per_minute`` events per minute with a burst of the same size.
    ``per_minute=0`` allows nothing."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._last = clock()
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

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

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


class ConcurrencySlots:
    """At most ``limit`` holders at once.  :meth:`take` checks and takes a slot in
    one step under a lock, so concurrent requests can never overshoot the cap.

    A slot is taken for a profile about to start (:meth:`take`) and then held by
    its session (:meth:`hold`), or given back if the start failed (:meth:`give_back`).
    :meth:`release` is idempotent.  When the cap is reached, slots whose session has
    finished meanwhile (ended by someone else, e.g. at shutdown) are reclaimed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: set[Any] = set()
        self._reserved = 0
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def __len__(self) -> int:
        """Slots in use (holders whose session finished meanwhile do not count)."""
        return len(self.holders()) + self._reserved

    def __contains__(self, holder: Any) -> bool:
        return holder in self._held

    def holders(self) -> list[Any]:
        """The holders still running."""
        return [h for h in list(self._held) if not getattr(h, "finished", False)]

    def take(self) -> bool:
        """Check and take a slot in one step; False at the cap."""
        with self._lock:
            if not self._free_locked():
                return False
            self._reserved += 1
            return True

    def available(self) -> bool:
        """True while a slot is free (a hint: :meth:`take` is the atomic step)."""
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> bool:
        if len(self._held) + self._reserved < self.limit:
            return True
        self._held.difference_update([s for s in self._held if getattr(s, "finished", False)])
        return len(self._held) + self._reserved < self.limit

    def hold(self, holder: Any) -> None:
        """The reserved slot now belongs to ``holder`` (a session)."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self._held.add(holder)

    def give_back(self) -> None:
        """Return a slot taken by :meth:`take` that no holder got."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def add(self, holder: Any) -> bool:
        """Take a slot for ``holder`` in one step; False at the cap."""
        if not self.take():
            return False
        self.hold(holder)
        return True

    def release(self, holder: Any) -> bool:
        """Free ``holder``'s slot; True if it held one."""
        with self._lock:
            if holder in self._held:
                self._held.discard(holder)
                return True
            return False

    def _after_fork(self) -> None:
        # the parent's profiles do not run in the child
        self._lock = threading.Lock()
        self._held = set()
        self._reserved = 0
