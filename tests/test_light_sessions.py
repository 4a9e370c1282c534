"""Light sessions: requests profiled by chance, with short-request aggregates on, are
sampled by the shared light tick and billed by sample (sampler.LightSessions), and
the numbers still tell the truth over many requests."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Iterator

import pytest

from otelprof_middleware import native_sampler
from otelprof_middleware.profile import SpanLink
from otelprof_middleware.sampler import get_sampler
from otelprof_middleware.testing import InMemoryProfileExporter

needs_native = pytest.mark.skipif(native_sampler.load()[0] is None, reason="native sampler unavailable here")


def light_burn(seconds: float) -> int:
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


def make(profiler_factory: Any, **options: Any) -> tuple[Any, InMemoryProfileExporter]:
    exp = InMemoryProfileExporter()
    options = {"exporters": [exp], "probability": 1.0, "sample_hz": 100, "min_samples": 1000,
               "aggregate_window": 3600, "max_profiles_per_minute": 1_000_000, "max_overhead": 1.0,
               "cpu_trigger": False, **options}
    return profiler_factory(**options), exp


def _cpu_ns(profile: Any, function: str) -> int:
    """CPU of the samples whose leaf is ``function``."""
    total = 0
    for s in profile.samples:
        leaf = profile.locations[profile.stacks[s.stack_index][0]]
        if profile.functions[leaf.function_index].name.endswith(function):
            total += s.cpu_ns
    return total


@needs_native
def test_which_sessions_are_light(profiler_factory: Any) -> None:
    profiler, _exp = make(profiler_factory)
    chance = profiler.start_session("GET /a", link=None, triggers=("probability",))
    kept = profiler.start_session("GET /b", link=None, triggers=("header",))
    boosted = profiler.start_session("GET /c", link=None, triggers=("probability",), hz=1000)
    detached = profiler.start_session("GET /d", link=None, triggers=("probability",), attach=False)
    assert chance is not None and kept is not None and boosted is not None and detached is not None
    assert chance.light and not kept.light and not boosted.light and not detached.light
    for s in (chance, kept, boosted, detached):
        profiler.finish_session(s)
    without_aggregates, _ = make(profiler_factory, min_samples=1)
    s = without_aggregates.start_session("GET /a", link=None, triggers=("probability",))
    assert s is not None and not s.light
    without_aggregates.finish_session(s)
    python_only, _ = make(profiler_factory, native_sampler=False)
    s = python_only.start_session("GET /a", link=None, triggers=("probability",))
    assert s is not None and not s.light
    python_only.finish_session(s)
    assert not make(profiler_factory, expose_profile_id=True)[0].light_sessions  # promised ids are kept
    assert not make(profiler_factory, profile_types="cpu,wall,alloc")[0].light_sessions
    assert make(profiler_factory)[0].light_sessions


@needs_native
def test_a_light_session_still_running_at_shutdown_is_exported_under_a_name(profiler_factory: Any) -> None:
    from otelprof_middleware.profiler import UNFINISHED_LIGHT_NAME

    profiler, exp = make(profiler_factory, sample_hz=1000, min_samples=2)
    session = profiler.start_session(UNFINISHED_LIGHT_NAME, link=SpanLink(trace_id=5, span_id=6),
                                     triggers=("probability",), light=True)
    assert session is not None and session.light
    light_burn(0.05)
    profiler.shutdown(timeout=5)
    assert [p.name for p in exp.profiles] == [UNFINISHED_LIGHT_NAME]


@pytest.fixture(params=["perf_event", "posix_timer"])
def cpu_timer(request: Any, monkeypatch: Any) -> Iterator[str]:
    """Both kinds of CPU timer (a thread's parked timer is paused between profiles)."""
    get_sampler().release_idle_timers()  # a timer of the other kind, parked by an earlier test
    monkeypatch.setattr(native_sampler, "PERF_EVENTS", request.param == "perf_event")
    yield request.param
    get_sampler().release_idle_timers()


@needs_native
def test_short_async_requests_add_up_to_their_cpu_in_the_aggregate(profiler_factory: Any, cpu_timer: str) -> None:
    """300 requests of 4 ms CPU each, as asyncio tasks on one loop (so most get no
    sample at all; the loop thread's timer is paused between them): the aggregate's
    CPU in the request's function is the CPU they burnt, within the statistical
    error of ~120 samples."""
    profiler, exp = make(profiler_factory)
    spent = 0
    links = []

    async def request(i: int) -> None:
        nonlocal spent
        link = SpanLink(trace_id=1000 + i, span_id=2000 + i, span_name="GET /work")
        links.append(link)
        session = profiler.start_session("GET /work", link=link, triggers=("probability",),
                                         attributes={"http.route": "/work", "http.request.method": "GET"})
        assert session is not None and session.light
        t0 = time.thread_time_ns()
        light_burn(0.004)
        spent += time.thread_time_ns() - t0
        await asyncio.sleep(0)
        profiler.finish_session(session)

    async def main() -> None:
        for i in range(300):
            await request(i)

    asyncio.run(main())
    assert profiler.force_flush(10)
    agg = exp.by_name("GET /work")
    assert len(agg) == 1 and agg[0].attributes["otelprof.window"] == "aggregate"
    cpu = _cpu_ns(agg[0], "light_burn")
    assert 0.7 * spent <= cpu <= 1.3 * spent, (cpu, spent)
    # each sample keeps its own request's span
    sample_links = {s.link for s in agg[0].samples if s.link is not None}
    assert sample_links and sample_links <= set(links)
    st = profiler.stats()
    assert st["profiles_aggregated"] + st["dropped"].get("too_short", 0) == 300, st
    assert get_sampler().light_targets == 0  # nothing left behind


@needs_native
def test_short_thread_requests_and_a_long_one(profiler_factory: Any, cpu_timer: str) -> None:
    """Requests in a worker thread (WSGI-like): short ones add up in the aggregate; one
    that runs long enough gets a profile of its own, with its link and its CPU."""
    profiler, exp = make(profiler_factory, min_samples=20)
    spent = 0
    long_cpu = 0

    def worker() -> None:
        nonlocal spent, long_cpu
        for i in range(200):
            s = profiler.start_session("GET /short", link=SpanLink(trace_id=1, span_id=10 + i),
                                       triggers=("probability",))
            assert s is not None and s.light
            t0 = time.thread_time_ns()
            light_burn(0.005)
            spent += time.thread_time_ns() - t0
            profiler.finish_session(s)
        s = profiler.start_session("GET /long", link=SpanLink(trace_id=2, span_id=99), triggers=("probability",))
        assert s is not None and s.light
        t0 = time.thread_time_ns()
        light_burn(0.5)
        long_cpu = time.thread_time_ns() - t0
        profiler.finish_session(s)

    t = threading.Thread(target=worker, name="light-worker")
    t.start()
    t.join(60)
    assert profiler.force_flush(10)
    short = exp.by_name("GET /short")
    assert len(short) == 1
    cpu = _cpu_ns(short[0], "light_burn")
    assert 0.7 * spent <= cpu <= 1.3 * spent, (cpu, spent)
    (own,) = exp.by_name("GET /long")
    assert own.link is not None and own.link.span_id == 99 and "otelprof.window" not in own.attributes
    assert own.attributes["otelprof.sampler"] == "native" and own.attributes["otelprof.cpu_timer"] == cpu_timer
    cpu = _cpu_ns(own, "light_burn")
    assert 0.8 * long_cpu <= cpu <= 1.2 * long_cpu, (cpu, long_cpu)
    wall = sum(s.wall_ns for s in own.samples)
    assert wall >= 0.8 * long_cpu
    assert get_sampler().light_targets == 0


@needs_native
def test_flask_requests_profiled_by_chance_end_in_their_routes_aggregate(profiler_factory: Any) -> None:
    """Through the Flask extension (WSGI adapter): light sessions get their name, route and
    status at the end, only when they have samples, and each sample its request's span."""
    flask = pytest.importorskip("flask")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from otelprof_middleware.flask import OtelProf

    profiler, exp = make(profiler_factory, sample_hz=1000)
    app = flask.Flask("light")
    tracer = TracerProvider().get_tracer("t")

    @app.route("/work/<int:n>")
    def work(n: int) -> str:
        with tracer.start_as_current_span("GET /work/<int:n>", kind=trace.SpanKind.SERVER):
            light_burn(0.02)
        return "ok"

    OtelProf(app, profiler=profiler)
    client = app.test_client()
    for i in range(10):
        assert client.get(f"/work/{i}").status_code == 200
    assert profiler.force_flush(10)
    (agg,) = exp.profiles
    assert agg.name == "GET /work/<int:n>" and agg.attributes["http.route"] == "/work/<int:n>"
    assert agg.attributes["otelprof.window"] == "aggregate" and agg.attributes["otelprof.requests"] == 10
    assert _cpu_ns(agg, "light_burn") > 0.1e9
    st = profiler.stats()
    assert st["profiles_started"] == 10 and st["profiles_aggregated"] == 10, st
    assert get_sampler().light_targets == 0
