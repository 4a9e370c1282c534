"""CPU accounting: the CPU used by the profiler's own threads, and its share of the process's.

The overhead governor (``policy``), ``Profiler.stats()["overhead_cpu"]`` and the
``otelprof.overhead.cpu`` gauge all read the same numbers from here.

* Threads that do bounded chunks of work (the export workers) push what they used
  with :func:`add_worker_cpu`.
* Threads that keep their own running total (the sampler) are read through a
  source registered with :func:`add_cpu_source`; the profiler, which composes the
  sampler and the export pipeline, registers it.

This module imports nothing from the package, so every layer can report into it
without an import cycle.  After ``fork`` the totals start from zero in the child
(a pid check: the child's own CPU clock also starts from zero).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

__all__ = ["add_worker_cpu", "add_cpu_source", "profiler_cpu_ns", "overhead_cpu"]

_lock = threading.Lock()
_pid = os.getpid()
_worker_cpu_ns = 0
_sources: list[Callable[[], int]] = []


def _check_fork() -> None:
    # a lock held by another thread at fork time would stay locked forever in the child
    global _lock, _pid, _worker_cpu_ns
    if _pid != os.getpid():
        _lock = threading.Lock()
        _worker_cpu_ns = 0
        _pid = os.getpid()


def add_worker_cpu(ns: int) -> None:
    """A worker thread reports ``ns`` nanoseconds of CPU it used."""
    global _worker_cpu_ns
    if ns > 0:
        _check_fork()
        with _lock:
            _worker_cpu_ns += ns


def add_cpu_source(source: Callable[[], int]) -> None:
    """Count ``source()`` (a thread's CPU total in ns so far, in this process) as the
    profiler's.  Adding the same source twice counts it once."""
    _check_fork()
    with _lock:
        if source not in _sources:
            _sources.append(source)


def profiler_cpu_ns() -> int:
    """CPU used by the profiler's own threads in this process, in nanoseconds."""
    _check_fork()
    with _lock:
        total = _worker_cpu_ns
        sources = list(_sources)
    for source in sources:
        try:
            total += int(source())
        except Exception:  # pragma: no cover - a broken source must not break accounting
            pass
    return total


def overhead_cpu() -> float:
    """The profiler's share of this process' CPU time since it started (0..1)."""
    total = time.process_time_ns()
    if total <= 0:
        return 0.0
    return min(1.0, profiler_cpu_ns() / total)
