"""Self-metrics through the OpenTelemetry metrics API.

The instruments are created once per process on the global meter provider (a proxy
until an SDK ``MeterProvider`` is installed, so they are no-ops without an SDK and
start reporting as soon as one is set).  The profiler creates them when it is
imported and hands them to its :class:`~otelprof_middleware.stats.Stats`, which
calls them at the same moment it updates the numbers that ``Profiler.stats()``
returns, so both always agree.  The overhead gauge reads a callable passed in
(:func:`otelprof_middleware.overhead.overhead_cpu`); this module imports nothing
that reports into it.

* ``otelprof.profiles.collected`` (counter, ``{profile}``): profiles built from a
  finished unit of work.
* ``otelprof.profiles.dropped`` (counter, ``{profile}``, attributes ``reason``;
  ``exporter`` for a drop at a destination, none before collection; ``priority``
  (``promised``, ``kept``, ``sampled``) when known): ``queue_full``,
  ``export_failed``, ``rejected``, ``budget``, ``shutdown``, ``too_large``,
  ``too_short``, ``error``.
* ``otelprof.export.duration`` (histogram, ``s``, attribute ``exporter``): one batch,
  all attempts and waits included.
* ``otelprof.profile.size`` (histogram, ``By``): the in-memory size estimate of
  each collected profile (what ``max_queue_bytes`` counts).
* ``otelprof.collection.duration`` (histogram, ``s``): turning a finished session
  into a profile on the export worker.
* ``otelprof.overhead.cpu`` (gauge, ``1``): CPU of the profiler's own threads
  divided by the process' CPU time.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterator, Optional

from .._version import __version__
from ..stats import NoInstruments, StatsInstruments

__all__ = ["instruments", "Instruments", "METRIC_NAMES"]

METRIC_NAMES = {
    "collected": "otelprof.profiles.collected",
    "dropped": "otelprof.profiles.dropped",
    "export_duration": "otelprof.export.duration",
    "profile_size": "otelprof.profile.size",
    "collection_duration": "otelprof.collection.duration",
    "overhead_cpu": "otelprof.overhead.cpu",
}


class Instruments(NoInstruments):
    """The OpenTelemetry instruments; ``overhead()`` is observed by the overhead gauge."""

    def __init__(self, overhead: Callable[[], float]) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import Observation

        def observe_overhead(options: Any) -> Iterator[Observation]:
            yield Observation(overhead())

        meter = metrics.get_meter("otelprof_middleware", __version__)
        self._collected = meter.create_counter(
            METRIC_NAMES["collected"], unit="{profile}", description="Profiles collected")
        self._dropped = meter.create_counter(
            METRIC_NAMES["dropped"], unit="{profile}", description="Profiles not delivered, by reason")
        self._hist = {
            "export_duration": meter.create_histogram(
                METRIC_NAMES["export_duration"], unit="s", description="Time to export one batch, retries included"),
            "profile_size": meter.create_histogram(
                METRIC_NAMES["profile_size"], unit="By", description="Estimated size of a collected profile"),
            "collection_duration": meter.create_histogram(
                METRIC_NAMES["collection_duration"], unit="s",
                description="Time to build a profile from a finished session"),
        }
        meter.create_observable_gauge(
            METRIC_NAMES["overhead_cpu"], callbacks=[observe_overhead], unit="1",
            description="Profiler threads' CPU time / process CPU time")

    def collected(self, n: int) -> None:
        try:
            with _call_lock:
                self._collected.add(n)
        except Exception:  # pragma: no cover - a metrics SDK bug must not hurt us
            pass

    def dropped(self, reason: str, n: int, exporter: Optional[str], priority: Optional[str] = None) -> None:
        attrs = {"reason": reason}
        if exporter:
            attrs["exporter"] = exporter
        if priority:
            attrs["priority"] = priority
        try:
            with _call_lock:
                self._dropped.add(n, attrs)
        except Exception:  # pragma: no cover
            pass

    def record(self, name: str, value: float, exporter: Optional[str]) -> None:
        try:
            with _call_lock:
                self._hist[name].record(value, {"exporter": exporter} if exporter else None)
        except Exception:  # pragma: no cover
            pass


_instruments: Optional[StatsInstruments] = None
_lock = threading.Lock()
# Held around every call into the metrics API/SDK, and across fork(): a child never
# inherits an SDK lock taken by one of the parent's threads in the middle of a call.
_call_lock = threading.Lock()


def _before_fork() -> None:
    _call_lock.acquire()


def _after_fork_in_parent() -> None:
    _call_lock.release()


def _after_fork_in_child() -> None:
    global _call_lock, _lock
    _call_lock = threading.Lock()
    _lock = threading.Lock()


# Not ``_safety.at_fork_reinit``: the call lock must also be *held* across the fork.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def instruments(overhead: Callable[[], float]) -> StatsInstruments:
    """The process-wide instruments (no-ops if the metrics API is unusable), made on
    the first call; ``overhead`` feeds the gauge.  Call it at import time, never
    first on a worker thread: a fork (gunicorn ``--preload``) while a thread is
    inside a first import would leave the child waiting on that import's lock."""
    global _instruments
    inst = _instruments
    if inst is None:
        with _lock:
            if _instruments is None:
                try:
                    _instruments = Instruments(overhead)
                except Exception:  # pragma: no cover - no/old opentelemetry-api
                    _instruments = NoInstruments()
            inst = _instruments
    return inst
