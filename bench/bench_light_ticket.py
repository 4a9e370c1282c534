"""What a light ticket costs, part by part (not a test).

    .venv/bin/python bench/bench_light_ticket.py

A request profiled by chance with aggregates on registers a ticket (session.LightTicket)
and releases it at its end; this times each step on its own, in a loop on one asyncio
task (best of 5 batches of 20,000, wall time per call), so that a change to one of them
can be seen.  It reaches into private parts on purpose: they are what is measured.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from otelprof_middleware import Profiler
from otelprof_middleware.integrations import threads
from otelprof_middleware.sampler import get_sampler
from otelprof_middleware.session import LightTicket


class _NoSession:
    def light_session(self, ticket: Any) -> None:
        return None


def _time(label: str, fn: Callable[[], Any], number: int = 20000, repeat: int = 5) -> None:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / number)
    print(f"| {label} | {best / 1000:.2f} |")


async def _main() -> None:
    profiler = Profiler(exporter="none", probability=1.0, sample_hz=100, min_samples=1000, aggregate_window=10,
                        max_profiles_per_minute=1_000_000, max_overhead=1.0, cpu_trigger=False)
    owner = _NoSession()
    task = asyncio.current_task()
    tid = threading.get_ident()
    sampler = get_sampler()

    def ticket() -> LightTicket:
        return LightTicket(tid, task, 100, 10_000_000, 64, owner)

    def profiler_round() -> None:
        t = profiler.light_enter(owner, tid, task)
        assert t is not None
        profiler.light_exit(t)

    def sampler_round() -> None:
        t = ticket()
        sampler.light_enter(t)
        sampler.light_exit(t)

    profiler_round()  # (starts this thread's CPU timer)
    timers = sampler._cpu_timers()
    assert timers is not None, "needs the native extension"

    def timers_round() -> None:
        t = ticket()
        timers.ticket_enter(t)
        timers.ticket_exit(t)

    th = timers._threads[tid]

    def drain() -> None:
        with th.lock:
            timers._drain(th)

    print("| step | µs per call |\n|---|---:|")
    _time("LightTicket()", ticket)
    _time("Profiler.light_enter + light_exit (all below)", profiler_round)
    _time("Sampler.light_enter + light_exit (ticket included)", sampler_round)
    _time("CpuTimers.ticket_enter + ticket_exit (ticket included)", timers_round)
    _time("drain of the thread's buffer", drain)
    _time("stats counter (incr, locked)", lambda: profiler.stats_recorder.incr("bench"))
    _time("stats tally (light_requests)", profiler.stats_recorder.tally("bench-tally"))
    _time("thread-pool hand-off context variable, set + reset", lambda: threads.reset_hops(threads.follow_hops(None)))
    profiler.shutdown(timeout=5)


if __name__ == "__main__":
    asyncio.run(_main())
