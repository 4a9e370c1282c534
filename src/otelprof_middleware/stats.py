"""Self-statistics: what the profiler collected, exported and dropped (and why).

Every number is kept here once and, at the same moment, reported to the metric
instruments the profiler hands in (:mod:`otelprof_middleware.export.metrics`;
no-ops when no OpenTelemetry SDK is set up), so ``Profiler.stats()`` and the
metrics always agree:

=====================================  ===========================================
``stats()`` key                        metric
=====================================  ===========================================
``profiles_collected``                 ``otelprof.profiles.collected``
``dropped[reason]``                    ``otelprof.profiles.dropped{reason}``
``export_duration`` (count/sum/min/max) ``otelprof.export.duration`` (s)
``profile_size``                       ``otelprof.profile.size`` (By)
``collection_duration``                ``otelprof.collection.duration`` (s)
``overhead_cpu``                       ``otelprof.overhead.cpu`` (ratio)
=====================================  ===========================================

Drops are counted in profiles, once, where they happen (``docs/delivery.md``,
"Counting what was lost", has the identities they satisfy):

* ``dropped[reason]``: before a profile was collected (``too_short``,
  ``window_full``, ``queue_full``, ``shutdown``, ``error``);
* ``exporters[name]["dropped"][reason]``: after it, by that destination (a profile
  two exporters could not deliver counts once under each);
* ``dropped_by_priority`` (both levels): the same drops by the profile's priority
  (``promised``, ``kept``, ``sampled``; :mod:`otelprof_middleware.export.priority`)
  where it is known (a server's partial rejection does not say which profiles);
* ``dropped_total``: every drop at every level (0 = nothing was lost anywhere).

``overhead_cpu`` comes from :mod:`otelprof_middleware.overhead`.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import Counter
from typing import Any, Callable, Optional, Protocol

from ._safety import at_fork_reinit
from .overhead import overhead_cpu

__all__ = ["Stats", "StatsInstruments", "NoInstruments", "DROP_REASONS", "HISTOGRAMS"]

DROP_REASONS = ("queue_full", "export_failed", "rejected", "budget", "shutdown", "too_large", "too_short",
                "window_full", "error")
HISTOGRAMS = ("export_duration", "profile_size", "collection_duration")


class StatsInstruments(Protocol):
    """Where :class:`Stats` reports each change as a metric (see ``export.metrics``)."""

    def collected(self, n: int) -> None: ...

    def dropped(self, reason: str, n: int, exporter: Optional[str], priority: Optional[str] = None) -> None: ...

    def record(self, name: str, value: float, exporter: Optional[str]) -> None: ...


class NoInstruments:
    """Instruments that record nothing (no metrics)."""

    def collected(self, n: int) -> None:
        pass

    def dropped(self, reason: str, n: int, exporter: Optional[str], priority: Optional[str] = None) -> None:
        pass

    def record(self, name: str, value: float, exporter: Optional[str]) -> None:
        pass


class _Histogram:
    __slots__ = ("count", "sum", "min", "max")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.min: Optional[float] = None
        self.max: Optional[float] = None

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = value if self.min is None or value < self.min else self.min
        self.max = value if self.max is None or value > self.max else self.max

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max}


class Stats:
    """Thread-safe counters.  ``snapshot()`` returns plain numbers for ``Profiler.stats()``.
    ``instruments`` receive the same changes as metrics (none by default)."""

    def __init__(self, instruments: Optional[StatsInstruments] = None) -> None:
        self._metrics: StatsInstruments = instruments if instruments is not None else NoInstruments()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._tallies: dict[str, itertools.count[int]] = {}  # counters of per-request paths (tally)
        self._dropped: Counter[str] = Counter()  # before collection
        self._dropped_prio: dict[str, Counter[str]] = {}
        self._declined: Counter[str] = Counter()
        self._hist: dict[str, _Histogram] = {name: _Histogram() for name in HISTOGRAMS}
        self._by_exporter: dict[str, dict[str, Any]] = {}
        at_fork_reinit(self._after_fork)

    def _exporter_locked(self, name: str) -> dict[str, Any]:
        e = self._by_exporter.get(name)
        if e is None:
            e = self._by_exporter[name] = {"exported": 0, "dropped": Counter(), "dropped_by_priority": {},
                                           "requests": 0, "retries": 0}
        return e

    # ---------------------------------------------------------------- counters
    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def tally(self, name: str) -> Callable[[], object]:
        """Adding one to counter ``name`` for a path every request may take: a call
        of the result is one C call (``next`` on an :func:`itertools.count`, atomic
        under the GIL), no lock (``incr`` costs ~0.5-0.8 µs).  Read with the others."""
        with self._lock:
            count = self._tallies.get(name)
            if count is None:
                count = self._tallies[name] = itertools.count()
        return functools.partial(next, count)

    def _tallied_locked(self, name: str) -> int:
        count = self._tallies.get(name)
        return int(repr(count)[6:-1]) if count is not None else 0  # ("count(N)": N added so far)

    def collected(self, n: int = 1) -> None:
        """``n`` profiles were built from finished sessions (``profiles_collected``)."""
        with self._lock:
            self._counts["profiles_collected"] += n
        self._metrics.collected(n)

    def dropped(self, reason: str, n: int = 1, *, exporter: Optional[str] = None,
                priority: Optional[str] = None) -> None:
        """``n`` profiles were lost for ``reason``: before collection, or at ``exporter``'s
        destination; ``priority`` (``promised``/``kept``/``sampled``) when known."""
        if n <= 0:
            return
        with self._lock:
            if exporter is None:
                self._dropped[reason] += n
                by_prio = self._dropped_prio
            else:
                e = self._exporter_locked(exporter)
                e["dropped"][reason] += n
                by_prio = e["dropped_by_priority"]
            if priority is not None:
                counts = by_prio.get(priority)
                if counts is None:
                    counts = by_prio[priority] = Counter()
                counts[reason] += n
        self._metrics.dropped(reason, n, exporter, priority)

    def declined(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._declined[reason] += n

    def exported(self, exporter: str, n: int) -> None:
        """``n`` profiles arrived at ``exporter``'s destination."""
        if n <= 0:
            return
        with self._lock:
            self._counts["exported." + exporter] += n
            self._counts["profiles_exported"] += n
            self._exporter_locked(exporter)["exported"] += n

    def request(self, exporter: str, *, retry: bool) -> None:
        """One export request (attempt) went out; ``retry``: it repeats an earlier one."""
        with self._lock:
            e = self._exporter_locked(exporter)
            e["requests"] += 1
            if retry:
                e["retries"] += 1
                self._counts["export_retries"] += 1

    def record(self, name: str, value: float, exporter: Optional[str] = None) -> None:
        """Add one value to a histogram (``export_duration``, ``profile_size``, ``collection_duration``)."""
        with self._lock:
            self._hist[name].add(value)
        self._metrics.record(name, value, exporter)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name] + self._tallied_locked(name)

    def dropped_count(self, reason: Optional[str] = None, *, exporter: Optional[str] = None) -> int:
        with self._lock:
            source: Counter[str] = self._dropped
            if exporter is not None:
                e = self._by_exporter.get(exporter)
                source = e["dropped"] if e else Counter()
            return sum(source.values()) if reason is None else source[reason]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            for name in self._tallies:
                out[name] = out.get(name, 0) + self._tallied_locked(name)
            out.setdefault("profiles_collected", 0)
            out["dropped"] = dict(self._dropped)
            out["dropped_by_priority"] = {p: dict(c) for p, c in self._dropped_prio.items()}
            out["dropped_total"] = sum(self._dropped.values()) + sum(
                sum(e["dropped"].values()) for e in self._by_exporter.values())
            out["declined"] = dict(self._declined)
            for name, h in self._hist.items():
                out[name] = h.snapshot()
            out["exporters"] = {
                name: {**e, "dropped": dict(e["dropped"]),
                       "dropped_by_priority": {p: dict(c) for p, c in e["dropped_by_priority"].items()}}
                for name, e in self._by_exporter.items()
            }
        out["overhead_cpu"] = overhead_cpu()
        return out

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
