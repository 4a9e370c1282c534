"""The fixed amount of pure-Python work behind the benchmarks' ``/cpu`` endpoints."""

from __future__ import annotations

import statistics
import time

_SHARED: list[int] = []


def spin(loops: int) -> int:
    """The work itself: ``loops`` iterations of integer arithmetic."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def calibrate(seconds: float = 0.005) -> int:
    """Loop count of :func:`spin` that takes about ``seconds`` of CPU here."""
    loops = 20000
    while True:
        t0 = time.thread_time()
        spin(loops)
        dt = time.thread_time() - t0
        if dt > 0.02:
            return max(1, int(loops * seconds / dt))
        loops *= 2


def shared_loops() -> int:
    """One calibration (median of 5) for all servers of a run, so every configuration does
    the same work per ``/cpu`` request: per-server calibration varied by up to 40 % on a
    loaded machine and showed up as fake speed-ups."""
    if not _SHARED:
        _SHARED.append(int(statistics.median(calibrate() for _ in range(5))))
    return _SHARED[0]
