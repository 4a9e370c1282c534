"""Self-statistics: what the profiler collected, exported and dropped (and why)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["Stats", "DROP_REASONS"]

DROP_REASONS = ("queue_full", "export_failed", "rejected", "budget", "shutdown", "too_large", "too_short", "error")


class Stats:
    """Thread-safe counters.  ``snapshot()`` returns plain numbers for ``Profiler.stats()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._declined: Counter[str] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason] += n

    def declined(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._declined[reason] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["dropped"] = dict(self._dropped)
            out["dropped_total"] = sum(self._dropped.values())
            out["declined"] = dict(self._declined)
            return out
