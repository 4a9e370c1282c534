"""The overhead governor: keeps the profiler's own CPU under ``max_overhead`` of the
process's CPU.

Own CPU = the sampler thread's and the export workers' CPU
(:func:`otelprof_middleware.overhead.profiler_cpu_ns`) + the policy's helper thread
(the watchdog), read from per-thread CPU clocks (the policy passes the source in).  Process CPU = ``time.process_time_ns()``.  Both are read at
most once per ``interval`` seconds (lazily, when a profile is about to start, and by
the watchdog), kept in a sliding window of ``window`` seconds, and compared as a
ratio of the deltas across the window.

Reaction, one step per reading:

* above budget: halve the sampling rate of new and running profiles (down to
  ``min_hz``); once already at ``min_hz``, **decline** new profiles (reason
  ``overhead``);
* below ``recover`` x budget: undo one step (accept again, then double the rate).

After a step the window restarts, so the next step is judged on numbers measured
at the new level (at least ``min_process_cpu_ns`` of process CPU).

Everything is injectable (clock, CPU sources) so tests are deterministic.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Optional

from .._safety import at_fork_reinit

__all__ = ["Governor"]


class Governor:
    def __init__(
        self,
        budget: float,
        own_cpu: Callable[[], int],
        process_cpu: Callable[[], int] = time.process_time_ns,
        clock: Callable[[], float] = time.monotonic,
        *,
        window: float = 10.0,
        interval: float = 1.0,
        min_process_cpu_ns: int = 50_000_000,
        recover: float = 0.7,
        max_level: int = 4,
    ) -> None:
        self.budget = budget
        self.own_cpu = own_cpu
        self.process_cpu = process_cpu
        self.clock = clock
        self.window = window
        self.interval = interval
        self.min_process_cpu_ns = min_process_cpu_ns
        self.recover = recover
        self.max_level = max_level  # rate halvings before declining
        self.level = 0  # 0 = normal, 1..max_level = rate / 2**level, max_level+1 = declining
        self.overhead: Optional[float] = None
        self._points: collections.deque[tuple[float, int, int]] = collections.deque()
        self._next = -1e300
        self._lock = threading.Lock()
        self.rate_lowered = 0
        self.on_change: Optional[Callable[[int], None]] = None
        at_fork_reinit(self._after_fork)

    def _after_fork(self) -> None:
        # the parent's readings mean nothing here (and its lock may be held)
        self._lock = threading.Lock()
        self._points = collections.deque()
        self._next = -1e300

    @property
    def enabled(self) -> bool:
        return self.budget < 1.0

    @property
    def declining(self) -> bool:
        return self.level > self.max_level

    def hz(self, base: int, min_hz: int = 10) -> int:
        """The sampling rate to use for a profile configured at ``base`` Hz."""
        level = min(self.level, self.max_level)
        if level <= 0:
            return base
        return max(min(base, min_hz), base >> level)

    def update(self, now: Optional[float] = None) -> None:
        """Take a reading if ``interval`` has passed, and adjust the level.  Cheap otherwise."""
        if not self.enabled:
            return
        if now is None:
            now = self.clock()
        if now < self._next:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is updating
        try:
            if now < self._next:
                return
            self._next = now + self.interval
            self._reading(now)
        finally:
            self._lock.release()

    def _reading(self, now: float) -> None:
        own = self.own_cpu()
        proc = self.process_cpu()
        pts = self._points
        if pts and (own < pts[-1][2] or proc < pts[-1][1]):
            pts.clear()  # a counter went back (fork, new sampler): start over
        pts.append((now, proc, own))
        while len(pts) > 2 and now - pts[1][0] >= self.window:
            pts.popleft()
        first = pts[0]
        d_proc = proc - first[1]
        if d_proc < self.min_process_cpu_ns:
            return  # too little CPU in the window to judge
        overhead = (own - first[2]) / d_proc
        self.overhead = overhead
        old = self.level
        if overhead > self.budget:
            if self.level <= self.max_level:
                self.level += 1
                if self.level <= self.max_level:
                    self.rate_lowered += 1
        elif overhead < self.budget * self.recover and self.level > 0:
            self.level -= 1
        if self.level != old:
            # judge the new level on fresh numbers only
            pts.clear()
            pts.append((now, proc, own))
        if self.level != old and self.on_change is not None:
            try:
                self.on_change(self.level)
            except Exception:
                pass
