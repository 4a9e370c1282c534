"""Late triggers through the shared request lifecycle, with the real sampler:
in-flight slow promotion (threads and asyncio tasks), route arming after slow
or failing requests, the flight recorder, a real CPU burn and the overhead
governor under a deliberately expensive sampling rate."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, Optional

import pytest
from helpers.clock import FakeClock

from otelprof_middleware.integrations.lifecycle import RequestProfiling
from otelprof_middleware.policy import Policy, RequestInfo, TailState
from otelprof_middleware.policy.cpu import CpuMonitor, available_cores


def setup(profiler_factory: Any, profile_collector: Any, clock: Any = None, start_threads: bool = False,
          **options: Any) -> tuple[RequestProfiling, Policy, Any]:
    options.setdefault("exporter", "none")
    options.setdefault("probability", 0.0)
    options.setdefault("cpu_trigger", False)
    options.setdefault("max_overhead", 1.0)
    p = profiler_factory(**options)
    policy = Policy(p, clock=clock or time.monotonic, rng=random.Random(3), start_threads=start_threads)
    p.policy = policy  # the public seam: replaced before the request layer is built
    collected = profile_collector(p)
    return RequestProfiling(p), policy, collected


def req(path: str = "/x", route: Optional[str] = None, template: Optional[str] = None) -> RequestInfo:
    """A request; ``route`` is a template known at entry, ``template`` one the
    framework's router answers when asked (as the integrations do while a route is armed)."""
    return RequestInfo(method="GET", path=path, url="http://127.0.0.1" + path, route=route,
                       route_resolver=(lambda: template) if template else None)


def burn_in_marker_function(seconds: float) -> int:
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += sum(i * i for i in range(200))
    return n


def function_names(profile: Any) -> set[str]:
    return {f.name for f in profile.functions}


def wait_until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# ----------------------------------------------------------------------------- promotion

def test_slow_thread_request_promoted_with_its_frames(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, slow_threshold=0.5, sample_hz=200,
                                  slow_route_arming=False)
    go = threading.Event()
    handles = []

    def request() -> None:
        h = rp.begin(req("/slow"))
        handles.append(h)
        go.wait(10)
        burn_in_marker_function(0.3)
        h.set_status(200)
        h.finish()

    t = threading.Thread(target=request, name="req-thread")
    t.start()
    assert wait_until(lambda: len(policy.watchdog) == 1)
    h = handles[0]
    assert not h.profiled
    policy.watchdog.scan()  # not yet slow
    assert not h.profiled
    clock.advance(0.75)
    policy.watchdog.scan()
    assert h.profiled and h.session.triggers == ("slow",)
    go.set()
    t.join(10)
    assert collected.wait_for(1, 20)
    prof = collected.profiles[0]
    assert prof.triggers == ("slow",)
    assert prof.attributes["otelprof.unsampled_head_ms"] == pytest.approx(750.0)
    assert "burn_in_marker_function" in function_names(prof)
    assert prof.cpu_ns > 100_000_000  # the burn was sampled with CPU time
    assert policy.profiler.stats()["promotions"] == 1
    assert policy.profiler.active_sessions == 0


def test_slow_asyncio_task_promoted(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, slow_threshold=1.0, sample_hz=200,
                                  slow_route_arming=False)
    promoted = threading.Event()

    async def slow_endpoint_coroutine() -> None:
        await asyncio.sleep(0)
        while not promoted.is_set():
            await asyncio.sleep(0.005)
        burn_in_marker_function(0.25)

    async def request(h_out: list[Any]) -> None:
        h = rp.begin(req("/aslow"))
        h_out.append(h)
        try:
            await slow_endpoint_coroutine()
        finally:
            h.finish()

    async def main() -> None:
        out: list[Any] = []
        other = asyncio.ensure_future(asyncio.sleep(0.2))  # a sibling task, not part of the request
        task = asyncio.ensure_future(request(out))
        while not out:
            await asyncio.sleep(0.001)
        clock.advance(2.0)
        await asyncio.get_running_loop().run_in_executor(None, policy.watchdog.scan)
        assert out[0].profiled
        promoted.set()
        await task
        await other

    asyncio.run(main())
    assert collected.wait_for(1, 20)
    prof = collected.profiles[0]
    assert prof.triggers == ("slow",)
    names = {n.rsplit(".", 1)[-1] for n in function_names(prof)}
    assert "burn_in_marker_function" in names and "slow_endpoint_coroutine" in names


def test_promotion_racing_with_finish_before_start(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1)
    h = rp.begin(req("/race"))
    clock.advance(1)
    original_admit = policy.entry.admit

    def admit_while_request_ends(triggers: list[str], **kw: Any) -> Any:
        h.finish()  # the request ends while the watchdog decides
        assert h.tail_state is TailState.DONE
        return original_admit(triggers, **kw)

    policy.entry.admit = admit_while_request_ends  # type: ignore[method-assign]
    assert not policy.watchdog.scan() < 0
    assert h.session is None  # too late: no profile started for an ended request
    assert policy.profiler.active_sessions == 0


def test_promotion_racing_with_finish_hands_over(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1, min_samples=0)
    h = rp.begin(req("/race"))
    clock.advance(1)
    profiler = policy.profiler
    original = profiler.start_session

    def start_then_request_ends(*a: Any, **kw: Any) -> Any:
        session = original(*a, **kw)
        h.set_status(201)
        h.finish()  # ends between the profile's start and the hand-over
        assert h.tail_state is TailState.DONE
        return session

    profiler.start_session = start_then_request_ends  # type: ignore[method-assign]
    policy.watchdog.scan()
    # the watchdog finished the profile it started for the ended request: nothing leaks
    assert profiler.active_sessions == 0
    assert h.session is not None and h.session.finished
    assert collected.wait_for(1, 20)
    prof = collected.profiles[0]
    assert prof.triggers == ("slow",) and prof.attributes["http.response.status_code"] == 201


def test_finished_request_never_promoted(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1)
    h = rp.begin(req())
    h.finish()
    clock.advance(5)
    policy.watchdog.scan()
    assert not h.profiled and len(policy.watchdog) == 0
    assert policy.profiler.stats().get("promotions", 0) == 0


def test_promotion_respects_budgets(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1,
                          max_concurrent_profiles=2, max_profiles_per_minute=1000)
    hs = [rp.begin(req()) for _ in range(5)]
    clock.advance(1)
    policy.watchdog.scan()
    assert sum(h.profiled for h in hs) == 2
    assert policy.profiler.stats()["declined"]["concurrency"] == 3
    for h in hs:
        h.finish()
    assert policy.profiler.active_sessions == 0


def test_real_watchdog_thread_promotes(profiler_factory: Any, profile_collector: Any) -> None:
    rp, policy, collected = setup(profiler_factory, profile_collector, start_threads=True, slow_threshold=0.1,
                                  sample_hz=200)
    h = rp.begin(req("/real"))
    assert wait_until(lambda: h.profiled, 5)
    burn_in_marker_function(0.15)
    h.finish()
    assert collected.wait_for(1, 20)
    assert collected.profiles[0].triggers == ("slow",)
    assert "burn_in_marker_function" in function_names(collected.profiles[0])


# ----------------------------------------------------------------------------- route arming via outcome

def test_slow_request_arms_route_then_disarms(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, slow_threshold=0.5, slow_promotion=False,
                          slow_profile_duration=10, max_profiles_per_minute=1000)
    h = rp.begin(req("/items/5"))
    h.set_route("/items/{id}")  # the router reports the template
    clock.advance(0.6)
    h.set_status(200)
    h.finish()
    assert not h.profiled  # promotion off: the slow one itself is not profiled
    nxt = rp.begin(req("/items/9", template="/items/{id}"))  # the router is asked at entry
    assert nxt.profiled and nxt.session.triggers == ("slow",)
    nxt.finish()
    assert not rp.begin(req("/other", template="/other")).profiled
    assert not rp.begin(req("/items/9")).profiled  # no template: the armed template cannot match
    clock.advance(10.1)
    later = rp.begin(req("/items/9", template="/items/{id}"))
    assert not later.profiled
    later.finish()


@pytest.mark.parametrize("outcome", ["status", "exception"])
def test_failing_request_arms_route_with_error(profiler_factory: Any, profile_collector: Any, outcome: str) -> None:
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, error_sample_rate=1.0,
                          error_profile_duration=5, max_profiles_per_minute=1000)
    h = rp.begin(req("/fail", route="/fail"))
    if outcome == "status":
        h.set_status(503)
        h.finish()
    else:
        h.finish(error=ValueError("boom"))
    ok = rp.begin(req("/fail", route="/fail"))
    assert ok.profiled and ok.session.triggers == ("error",)
    ok.set_status(200)
    ok.finish()
    clock.advance(5.01)
    assert not rp.begin(req("/fail", route="/fail")).profiled
    h4 = rp.begin(req("/fine"))
    h4.set_status(404)
    h4.finish()
    assert not rp.begin(req("/fine")).profiled  # 4xx is not an error


def test_excluded_request_does_nothing(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, excluded_urls="/healthz",
                          slow_threshold=0.1, tail_sampling_hz=50)
    h = rp.begin(req("/healthz"))
    assert len(policy.watchdog) == 0 and not h.profiled
    clock.advance(1)
    h.set_status(500)
    h.finish()
    assert not policy.arming


# ----------------------------------------------------------------------------- flight recorder

def test_flight_recorder_keeps_only_slow_or_failed(profiler_factory: Any, profile_collector: Any) -> None:
    rp, policy, collected = setup(profiler_factory, profile_collector, tail_sampling_hz=100, slow_threshold=30,
                                  slow_promotion=False, slow_route_arming=False, error_profile_duration=0,
                                  max_profiles_per_minute=1000)

    def request(path: str, status: int) -> Any:
        h = rp.begin(req(path))
        assert h.profiled and h.recording
        burn_in_marker_function(0.08)
        h.set_status(status)
        h.finish()
        return h

    ok = request("/ok", 200)
    assert not ok.profiled  # discarded
    bad = request("/bad", 500)
    assert bad.profiled
    assert collected.wait_for(1, 20)
    policy.profiler.force_flush(5)
    assert len(collected.profiles) == 1
    prof = collected.profiles[0]
    assert prof.triggers == ("error",) and prof.attributes["otelprof.flight_recorder_hz"] == 100
    assert "burn_in_marker_function" in function_names(prof)  # the head of the request is there
    st = policy.profiler.stats()
    assert st["recordings_started"] == 2 and st["recordings_kept"] == 1 and st["profiles_discarded"] == 1
    assert policy.profiler.active_sessions == 0 and len(policy.late.recording) == 0


def test_flight_recorder_error_by_exception_and_slow(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, tail_sampling_hz=100,
                                  slow_threshold=1, slow_promotion=False, max_profiles_per_minute=1000)
    h = rp.begin(req("/exc"))
    burn_in_marker_function(0.05)
    h.finish(error=KeyError("x"))
    h2 = rp.begin(req("/slowish"))
    burn_in_marker_function(0.05)
    clock.advance(1.5)
    h2.set_status(200)
    h2.finish()
    assert collected.wait_for(2, 20)
    triggers = sorted(p.triggers for p in collected.profiles)
    assert triggers == [("error",), ("slow",)]


def test_flight_recorder_promotion_raises_rate(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, tail_sampling_hz=10, sample_hz=250,
                                  slow_threshold=1, max_profiles_per_minute=1000, min_samples=0)
    h = rp.begin(req("/r"))
    assert h.session.hz == 10 and len(policy.watchdog) == 1
    clock.advance(1.2)
    policy.watchdog.scan()
    assert h.session.hz == 250 and h.session.triggers == ("slow",)
    assert len(policy.late.recording) == 0  # now a real profile, counted by the concurrency budget
    assert len(policy.entry.slots) == 1
    burn_in_marker_function(0.1)
    h.finish()
    assert collected.wait_for(1, 20)
    prof = collected.profiles[0]
    assert prof.triggers == ("slow",) and prof.attributes["otelprof.promoted_after_ms"] == pytest.approx(1200.0)


def test_flight_recorder_rate_budget_and_cap(profiler_factory: Any, profile_collector: Any) -> None:
    rp, policy, collected = setup(profiler_factory, profile_collector, tail_sampling_hz=10, slow_promotion=False,
                                  max_profiles_per_minute=2, error_profile_duration=0)
    policy.late.recording.limit = 3
    hs = [rp.begin(req()) for _ in range(5)]
    assert sum(h.recording for h in hs) == 3
    assert policy.profiler.stats()["recordings_skipped.max_inflight"] == 2
    for h in hs:
        h.set_status(500)
        h.finish()
    assert policy.profiler.stats()["recordings_kept"] == 2  # the per-minute budget
    assert policy.profiler.stats()["declined"]["rate"] == 1
    assert policy.profiler.active_sessions == 0


# ----------------------------------------------------------------------------- real CPU burn

@pytest.mark.integration
def test_cpu_trigger_fires_under_real_burn_and_cools_down(profiler_factory: Any) -> None:
    mon = CpuMonitor(interval=0.2)
    p = profiler_factory(exporter="none", probability=0.0, cpu_trigger=True, cpu_window=1,
                         cpu_threshold=min(0.9, 0.2 / available_cores()), cpu_profile_duration=0.5,
                         cpu_cooldown=600, max_overhead=1.0)
    policy = Policy(p, cpu_monitor=mon, start_threads=False)
    p.policy = policy
    mon.ensure_running()
    # idle (this test only sleeps): readings stay low, nothing fires
    assert wait_until(lambda: mon.readings >= 6, 10)
    assert policy.cpu_trigger.fired == 0 and not policy.decide(req()).profile
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    t = threading.Thread(target=burn, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: policy.cpu_trigger.fired == 1, 15), mon.readings
        assert policy.decide(req()).triggers == ("high_cpu",)
        assert wait_until(lambda: not policy.decide(req()).profile, 5)  # the 0.5 s profiling period ends
        n = mon.readings
        assert wait_until(lambda: mon.readings >= n + 8, 10)  # keep burning for > 1 window
        # a reading at or above the threshold while cooling down (on a loaded machine the
        # burn may get less CPU for a moment: wait for one) ...
        assert wait_until(lambda: policy.cpu_trigger.last_utilisation >= policy.cpu_trigger.threshold, 10)
        assert policy.cpu_trigger.fired == 1  # ... and no second firing
        assert not policy.decide(req()).profile
    finally:
        stop.set()
        t.join(5)
        mon.unsubscribe(policy.cpu_trigger)


# ----------------------------------------------------------------------------- governor, real sampler

def _deep(n: int, seconds: float) -> int:
    if n:
        return _deep(n - 1, seconds)
    return burn_in_marker_function(seconds)


@pytest.mark.integration
def test_governor_reduces_activity_under_expensive_sampling(profiler_factory: Any, profile_collector: Any) -> None:
    rp, policy, _ = setup(profiler_factory, profile_collector, probability=1.0, sample_hz=1000,
                          max_overhead=0.01, max_concurrent_profiles=64, max_profiles_per_minute=100000,
                          max_stack_depth=256, slow_promotion=False)
    gov = policy.governor
    gov.interval, gov.window, gov.min_process_cpu_ns = 0.1, 1.0, 20_000_000
    stop = threading.Event()
    decisions: list[Any] = []
    idle = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            h = rp.begin(req("/cpu"))
            decisions.append(h.decision)
            _deep(150, 0.02)
            h.finish()
            if idle.is_set():
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: gov.declining, 20), (gov.level, gov.overhead)
        # the expensive rate pushed the measured overhead over budget: rate lowered, then declines
        assert gov.rate_lowered >= 1 and gov.overhead is not None
        n = len(decisions)
        assert wait_until(lambda: len(decisions) > n + 20, 10)
        recent = decisions[n:]
        declined = [d for d in recent if d.declined == "overhead"]
        assert declined, [d.declined for d in recent[:10]]
        st = policy.profiler.stats()
        assert st["declined"]["overhead"] >= len(declined) and st["governor_steps"] >= 1
        lowered = [d.hz for d in decisions if d.profile and d.hz]
        assert lowered and min(lowered) < 1000
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert policy.profiler.active_sessions == 0


def test_abandoned_request_is_not_promoted(profiler_factory: Any, profile_collector: Any) -> None:
    """An integration that drops a handle without finish() must not get a stranger profiled."""
    clock = FakeClock()
    rp, policy, _ = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1)
    rp.begin(req("/dropped"))  # handle not kept, never finished
    kept = rp.begin(req("/kept"))
    clock.advance(1)
    policy.watchdog.scan()
    assert policy.watchdog.abandoned == 1
    assert kept.profiled and policy.profiler.active_sessions == 1
    kept.finish()


def test_promoted_request_without_finish_is_reaped(profiler_factory: Any, profile_collector: Any) -> None:
    clock = FakeClock()
    # max_profile_duration long enough that two scans in a row come well before it, even
    # on a loaded machine
    rp, policy, collected = setup(profiler_factory, profile_collector, clock, slow_threshold=0.1,
                                  max_profile_duration=1.0, min_samples=0)
    h = rp.begin(req("/lost"))
    clock.advance(1)
    policy.watchdog.scan()
    assert h.profiled
    policy.watchdog.scan()
    assert policy.profiler.active_sessions == 1  # still within its duration
    assert wait_until(lambda: h.session.duration_ns > h.session.max_duration_ns)
    policy.watchdog.scan()
    assert policy.profiler.active_sessions == 0 and h.session.finished
    assert policy.profiler.stats()["promotions_reaped"] == 1
    assert collected.wait_for(1, 20)


def test_a_shut_down_profiler_watches_no_request(profiler_factory: Any, profile_collector: Any) -> None:
    rp, policy, _ = setup(profiler_factory, profile_collector, slow_threshold=0.1)
    h = rp.begin(req("/before"))
    assert h.watched and len(policy.watchdog) == 1
    h.finish()
    policy.profiler.shutdown(timeout=1)
    after = rp.begin(req("/after"))
    assert not after.watched and not after.profiled and len(policy.watchdog) == 0
    after.finish()
