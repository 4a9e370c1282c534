"""Bounded queue + one worker thread: finished sessions go in on the request
path (never blocking, never encoding), the worker builds profiles and hands them
to the exporters.  Modelled on the OpenTelemetry SDK's ``BatchSpanProcessor``:
a full queue drops and counts; ``force_flush``/``shutdown`` drain within a timeout.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ..profile import Profile

if TYPE_CHECKING:
    from ..stats import Stats
    from .base import Exporter

__all__ = ["ExportPipeline"]

log = logging.getLogger("otelprof_middleware")


class ExportPipeline:
    """Queue of finished work items, built into :class:`Profile` and exported by one thread."""

    def __init__(
        self,
        exporters: Sequence["Exporter"],
        stats: "Stats",
        *,
        queue_size: int = 1000,
        build: Callable[[Any], Optional[Profile]] = lambda item: item,
        min_samples: int = 0,
    ) -> None:
        self.exporters = list(exporters)
        self.stats = stats
        self.queue_size = queue_size
        self._build = build
        self.min_samples = min_samples
        self._queue: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._in_flight = 0
        self._shutdown = False
        self._logged: set[str] = set()
        self.cpu_ns_self = 0

    # ------------------------------------------------------------ producer side
    def submit(self, item: Any) -> bool:
        """Queue an item for export; never blocks.  False (and counted) when full or shut down."""
        with self._cond:
            if self._pid != os.getpid():
                self._reset_after_fork_locked()
            if self._shutdown:
                self.stats.dropped("shutdown")
                return False
            if len(self._queue) >= self.queue_size:
                self.stats.dropped("queue_full")
                self._log_once("queue_full", "otelprof: export queue full (%d); dropping profiles", self.queue_size)
                return False
            self._queue.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otelprof-export", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def _reset_after_fork_locked(self) -> None:
        # the parent's worker thread does not exist in the child, and the parent
        # exports its own queue: start empty
        self._pid = os.getpid()
        self._queue.clear()
        self._thread = None
        self._in_flight = 0

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._shutdown:
                    self._cond.wait()
                if not self._queue and self._shutdown:
                    self._cond.notify_all()
                    return
                item = self._queue.popleft()
                self._in_flight += 1
            try:
                self._process(item)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()
                try:
                    self.cpu_ns_self = time.thread_time_ns()
                except Exception:  # pragma: no cover
                    pass

    def _process(self, item: Any) -> None:
        try:
            profile = self._build(item)
        except Exception:
            self.stats.dropped("error")
            self._log_once("build", "otelprof: building a profile failed; it is skipped", exc=True)
            return
        if profile is None:
            return
        if profile.sample_count < self.min_samples:
            self.stats.dropped("too_short")
            return
        self.stats.incr("profiles_collected")
        for exporter in self.exporters:
            try:
                from ..tracecontext import suppressed_instrumentation

                with suppressed_instrumentation():
                    result = exporter.export([profile])
            except Exception as exc:
                self.stats.dropped("export_failed")
                self._log_once("exp-" + exporter.name, "otelprof: %s exporter failed: %r", exporter.name, exc)
                continue
            if result.exported:
                self.stats.incr(f"exported.{exporter.name}", result.exported)
            if result.dropped:
                self.stats.dropped(result.reason or "export_failed", result.dropped)
                self._log_once("drop-" + exporter.name, "otelprof: %s exporter dropped a profile: %s",
                               exporter.name, result.message or result.reason)

    # ------------------------------------------------------------ flush / shutdown
    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is exported.  True if done in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                if self._thread is None or not self._thread.is_alive():
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not self._queue and not self._in_flight

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout``, then stop; what is still queued is dropped (reason ``shutdown``)."""
        done = self.force_flush(timeout)
        with self._cond:
            self._shutdown = True
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if left:
            self.stats.dropped("shutdown", left)
        for exporter in self.exporters:
            try:
                exporter.shutdown()
            except Exception:
                pass
        return done and not left

    def _log_once(self, key: str, msg: str, *args: Any, exc: bool = False) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        if exc:
            log.exception(msg, *args)
        else:
            log.warning(msg, *args)
