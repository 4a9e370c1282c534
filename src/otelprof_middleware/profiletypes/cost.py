"""The time the profile-type hooks spend on the application's threads, for the
overhead governor (``max_overhead``) and ``stats()["overhead_cpu"]``.

The sampler thread and the export workers are measured with their own CPU
clocks (:mod:`otelprof_middleware.overhead`); the hooks run on the request
threads instead, so their cost is measured where it is done, or estimated:

* allocations: the extension counts the hooked calls (each costs about
  :data:`ALLOC_CALL_NS` while the allocator is wrapped, on every thread) and
  times each sampled allocation's stack walk;
* lock waits: the recording of a timed wait (stack walk, table update), timed;
  the wait itself is the application's;
* GC: the callback's bookkeeping, timed; the collection itself is the application's;
* drains of the allocation buffers done on a request thread (a thread leaving a
  profile), timed (the sampler thread's drains are in its own CPU already).

The estimate counts wall time of short stretches on the thread that runs them
(no I/O in them, so about CPU time).  :meth:`HookCost.hook_ns` of :data:`hook_cost`
is registered as a CPU source of :mod:`otelprof_middleware.overhead` when this
module is imported; a forked child starts from zero.
"""

from __future__ import annotations

from .._safety import at_fork_reinit
from ..overhead import add_cpu_source

__all__ = ["HookCost", "hook_cost", "ALLOC_CALL_NS"]

#: estimated ns per hooked allocation on the unsampled path (a countdown update
#: and compare; ``bench/bench_profile_types.py`` measures it with ``alloc_bench``)
ALLOC_CALL_NS = 4


def _alloc_ns() -> int:
    from . import alloc

    stats = alloc.stats()
    if not stats:
        return 0
    return int(stats.get("calls", 0)) * ALLOC_CALL_NS + int(stats.get("sample_ns", 0))


class HookCost:
    """The running total of :func:`hook_ns`; one per process (:data:`hook_cost`)."""

    def __init__(self) -> None:
        self.timed_ns = 0  # lock recording, GC callbacks, request-thread drains
        self.base = 0  # the extension's estimate at fork: a child starts from zero
        at_fork_reinit(self._after_fork)

    def add(self, ns: int) -> None:
        """A hook on an application thread spent ``ns`` (GIL held: a plain add)."""
        if ns > 0:
            self.timed_ns += ns

    def hook_ns(self) -> int:
        """The hooks' time on application threads so far, in this process (ns)."""
        return self.timed_ns + _alloc_ns() - self.base

    def _after_fork(self) -> None:
        self.timed_ns = 0
        try:
            self.base = _alloc_ns()
        except Exception:  # never break the child
            self.base = 0


hook_cost = HookCost()
add_cpu_source(hook_cost.hook_ns)
