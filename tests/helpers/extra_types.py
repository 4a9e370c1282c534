"""Test helpers for the profile types beyond CPU and wall (issue 14).

* :func:`pprof_totals` reads a pprof file into per-type totals and leaf values;
* :func:`hold_elsewhere` makes a lock contended: another thread (outside any
  request) holds it until ``seconds`` after it was seen held.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from .pprof_decode import decode_pprof, stacks_by_function

__all__ = ["PprofTotals", "pprof_totals", "hold_elsewhere"]


class PprofTotals(NamedTuple):
    totals: dict[str, int]  # sample type -> sum over all samples
    leaves: dict[str, dict[str, int]]  # sample type -> {leaf function: value}
    sites: set[str]  # lock_site labels
    functions: set[str]  # every function in any stack


def pprof_totals(path: str) -> PprofTotals:
    with open(path, "rb") as f:
        d = decode_pprof(f.read())
    types = [t for t, _ in d.sample_types]
    out = PprofTotals({t: 0 for t in types}, {t: {} for t in types}, set(), set())
    for names, values, labels in stacks_by_function(d):
        out.functions.update(names)
        for t, v in zip(types, values):
            out.totals[t] += v
            if v and names:
                out.leaves[t][names[0]] = out.leaves[t].get(names[0], 0) + v
        if "lock_site" in labels:
            out.sites.add(labels["lock_site"])
    return out


def hold_elsewhere(lock: Any, seconds: float) -> threading.Thread:
    """Another thread takes ``lock`` and lets it go ``seconds`` after it was seen
    held; returns once it is held (the caller's acquire then waits)."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(seconds, release.set).start()
    return t
