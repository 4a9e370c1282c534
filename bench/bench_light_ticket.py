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
        return LightTicket(tid, task, 100, 64, owner)

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


def _session_cost(number: int = 10000, repeat: int = 3) -> None:
    """What a sampled request's session costs: requests through the ASGI middleware,
    each on a new task (as a server runs them), with and without its ticket's session
    made at the start and given one sample (the session, its budgets, its end and its
    entry in the route's aggregate)."""
    from otelprof_middleware.asgi import ProfilingMiddleware
    from otelprof_middleware.integrations import lifecycle

    force = False
    opened = lifecycle.RequestHandle.open

    def open_and_sample(self: Any, *args: Any, **kwargs: Any) -> bool:
        watched = opened(self, *args, **kwargs)
        if force and self.light is not None:
            session = self.light.session_for_sample()
            if session is not None:
                session.stacks.add("MainThread", (app.__code__,), (0,), 1_000_000, 1_000_000)
        return watched

    lifecycle.RequestHandle.open = open_and_sample  # type: ignore[method-assign]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    profiler = Profiler(exporter="none", probability=1.0, sample_hz=100, min_samples=1000, aggregate_window=1,
                        max_profiles_per_minute=1_000_000, max_overhead=1.0, cpu_trigger=False)
    mw = ProfilingMiddleware(app, profiler=profiler)
    scope = {"type": "http", "method": "GET", "path": "/fast", "query_string": b"", "root_path": "", "headers": []}

    async def requests(n: int) -> None:
        for _ in range(n):
            await asyncio.create_task(mw(dict(scope), receive, send))

    best: dict[bool, float] = {}
    for _ in range(repeat):
        for force in (False, True):
            t0 = time.perf_counter_ns()
            asyncio.run(requests(number))
            best[force] = min(best.get(force, float("inf")), (time.perf_counter_ns() - t0) / number)
    lifecycle.RequestHandle.open = opened  # type: ignore[method-assign]
    profiler.shutdown(timeout=5)
    print(f"| a request with a ticket, no sample (ASGI middleware, new task each) | {best[False] / 1000:.2f} |")
    print(f"| the same with its session made and one sample (session, budgets, aggregate) | {best[True] / 1000:.2f} |")


if __name__ == "__main__":
    asyncio.run(_main())
    _session_cost()
