"""Budgets that mean what they say and cannot be starved (issue 12 item 2, security
review M2; issue 16 item 5, reliability review F6), with fake clocks:

* "N per minute" never lets more than N start in any 60-second window (a sliding
  window; the token bucket it replaces let 2 N through in the first minute);
* each automatic trigger spends its own share: a client that picks its own trace id
  makes the probability trigger spend at most its share, and the slow and error
  profiles of that minute still start;
* ``trace_id_ratio=false`` decides probability without the remote trace id.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Optional

import pytest
from helpers.clock import FakeClock

from otelprof_middleware.policy import Policy, RequestInfo, WindowLimiter
from otelprof_middleware.policy.limits import ProfileBudget, default_shares
from otelprof_middleware.wsgi import ProfilingMiddleware

#: the review's crafted trace id: its low 64 bits are 1, under any ratio
CRAFTED = "00-00000000000000000000000000000001-00f067aa0ba902b7-01"


def most_in_any_window(times: list[float], window: float = 60.0) -> int:
    """The largest number of ``times`` inside one window ``[t, t + window)``."""
    times = sorted(times)
    best = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


# ----------------------------------------------------------------------------- the limiter

def test_window_limiter_never_exceeds_its_limit_in_any_window() -> None:
    clock = FakeClock(0.0)
    lim = WindowLimiter(60, clock)
    rng = random.Random(7)
    admitted: list[float] = []
    refused: list[float] = []
    while clock.t < 600:  # 10 minutes of arrivals at random gaps (bursts and lulls)
        clock.advance(rng.expovariate(5.0) if rng.random() < 0.9 else rng.uniform(0, 30))
        (admitted if lim.take() is not None else refused).append(clock.t)
    assert most_in_any_window(admitted) == 60
    # and it is exact, not stingy: it refuses only when the last 60 s hold 60 starts
    assert refused and all(sum(t - 60 < a <= t for a in admitted) == 60 for t in refused)


def test_window_limiter_give_back_returns_exactly_that_place() -> None:
    clock = FakeClock(0.0)
    lim = WindowLimiter(2, clock)
    first = lim.take()
    clock.advance(10)
    second = lim.take()
    assert first is not None and second is not None and lim.take() is None
    lim.give_back(second)  # the newer one: the older still counts until t=60
    assert lim.used() == 1
    clock.advance(49.9)
    assert lim.take() is not None and lim.take() is None
    clock.advance(0.1)  # t=60: the first is a whole window old
    assert lim.used() == 1 and lim.take() is not None
    assert WindowLimiter(0, clock).take() is None


def test_window_limiter_is_atomic_under_threads() -> None:
    lim = WindowLimiter(50)
    got: list[Any] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(100):
            stamp = lim.take()
            if stamp is not None:
                got.append(stamp)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 50 and lim.used() == 50


# ----------------------------------------------------------------------------- floods through the policy

def make_policy(profiler_factory: Any, clock: FakeClock, **options: Any) -> Policy:
    options.setdefault("exporter", "none")
    options.setdefault("probability", 0.0)
    options.setdefault("cpu_trigger", False)
    options.setdefault("max_concurrent_profiles", 1000)
    p = profiler_factory(**options)
    policy = Policy(p, clock=clock, rng=random.Random(5), start_threads=False)
    p.policy = policy
    return policy


def req(headers: Optional[dict[str, str]] = None) -> RequestInfo:
    h = {k.lower(): v for k, v in (headers or {}).items()}
    return RequestInfo(method="GET", path="/x", url="http://127.0.0.1/x", header=h.get)


def flood(policy: Policy, clock: FakeClock, seconds: float, per_second: int, info: RequestInfo) -> list[float]:
    """``per_second`` requests a second for ``seconds`` (fake time); the start times of
    those profiled."""
    admitted: list[float] = []
    t0 = clock.t
    for i in range(int(seconds * per_second)):
        clock.t = t0 + i / per_second
        if policy.decide(info).profile:
            admitted.append(clock.t)
    clock.t = t0 + seconds
    return admitted


def test_header_flood_admits_at_most_n_in_any_minute(profiler_factory: Any) -> None:
    """F6: a header flood at 2,000 requests/s.  The token bucket admitted 69 in the
    first 10 s and 119 in the first 60 s for a "60 per minute" cap."""
    clock = FakeClock()
    policy = make_policy(profiler_factory, clock, header_trust="any", max_header_profiles_per_minute=60)
    t0 = clock.t
    admitted = flood(policy, clock, 300, 2000, req({"X-Enable-Profiling": "1"}))
    assert most_in_any_window(admitted) == 60
    assert len([t for t in admitted if t < t0 + 10]) == 60  # a burst of 60 at once is allowed ...
    assert len([t for t in admitted if t < t0 + 60]) == 60  # ... and then nothing until it is 60 s old
    assert len(admitted) == 300  # 60 in each of the 5 minutes: the cap is not stingy either
    assert policy.profiler.stats()["declined"]["header_rate"] == 600_000 - 300


def test_automatic_flood_admits_at_most_n_in_any_minute(profiler_factory: Any) -> None:
    """F6 for the automatic budget: probability 1 with its share set to the whole budget."""
    clock = FakeClock()
    policy = make_policy(profiler_factory, clock, probability=1.0, max_profiles_per_minute=60,
                         trigger_limits="probability=60")
    admitted = flood(policy, clock, 300, 200, req())
    assert most_in_any_window(admitted) == 60 and len(admitted) == 300


def test_every_trigger_has_a_share_by_default(profiler_factory: Any) -> None:
    clock = FakeClock()
    policy = make_policy(profiler_factory, clock, probability=1.0, max_profiles_per_minute=60)
    assert policy.state().budgets == {"header": (0, 60), "total": (0, 60), "probability": (0, 30),
                                      "high_cpu": (0, 30)}
    assert len(flood(policy, clock, 59, 100, req())) == 30  # probability: its half, no more
    assert policy.profiler.stats()["declined"]["trigger_rate"] == 5900 - 30
    # the reserved half: slow and error (no share of their own) have the rest of the total
    policy.arming.arm_path("/x", "error", 600, 1.0, clock.t)
    ds = [policy.decide(req()) for _ in range(40)]
    assert [d.triggers for d in ds if d.profile] == [("error",)] * 30
    assert policy.state().budgets["total"] == (60, 60)
    # a trigger named in trigger_limits replaces its default; the others keep theirs
    assert default_shares(60) == {"probability": 30, "high_cpu": 30}
    assert default_shares(1) == {"probability": 1, "high_cpu": 1} and default_shares(0) == {"probability": 0,
                                                                                             "high_cpu": 0}
    other = make_policy(profiler_factory, FakeClock(), trigger_limits="probability=10,slow=5")
    assert other.state().budgets == {"header": (0, 60), "total": (0, 60), "probability": (0, 10),
                                     "high_cpu": (0, 30), "slow": (0, 5)}


def test_a_request_of_several_triggers_spends_the_least_valuable_share() -> None:
    clock = FakeClock()
    budget = ProfileBudget(10, {"probability": 5, "high_cpu": 5}, clock)
    for _ in range(5):
        assert budget.take(["high_cpu", "probability"]) is not None
    assert budget.usage() == {"total": (5, 10), "probability": (5, 5), "high_cpu": (0, 5)}
    assert budget.within_shares(["probability", "high_cpu"]) == ["high_cpu"]
    assert budget.take(["high_cpu"]) is not None
    # a trigger without a share (error) pays only the total
    assert budget.take(["probability", "error"]) is not None
    assert budget.usage() == {"total": (7, 10), "probability": (5, 5), "high_cpu": (1, 5)}


# ----------------------------------------------------------------------------- M2, through the WSGI middleware

def _app(clock: FakeClock) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("QUERY_STRING") == "slow":
            clock.advance(6.0)  # longer than slow_threshold (5 s)
        status = "500 Internal Server Error" if environ.get("QUERY_STRING") == "fail" else "200 OK"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"done"]
    return app


def _call(mw: Any, path: str, query: str = "", traceparent: Optional[str] = None) -> dict[str, Any]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    if traceparent:
        environ["HTTP_TRACEPARENT"] = traceparent
    b"".join(mw(environ, lambda status, headers, exc_info=None: None))
    return environ


def _profiled(environ: dict[str, Any]) -> tuple[str, ...]:
    handle = environ.get("otelprof.handle")
    session = handle.session if handle is not None else None
    return session.triggers if session is not None else ()


def _m2(profiler_factory: Any, **options: Any) -> tuple[Any, list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The review's repro: 70 requests with a crafted trace id (probability 0.01, a
    header secret set), then, in the same minute, a slow request, a failing one, and
    40 requests to each of their (armed) routes.  The triggers of the crafted
    requests' profiles, and of the others'."""
    clock = FakeClock()
    options = dict({"probability": 0.01, "header_secret": "s3cret", "error_sample_rate": 1.0,
                    "max_concurrent_profiles": 8, "slow_promotion": False}, **options)
    profiler = profiler_factory(exporter="none", cpu_trigger=False, **options)
    profiler.policy = Policy(profiler, clock=clock, rng=random.Random(1), start_threads=False)
    mw = ProfilingMiddleware(_app(clock), profiler=profiler)
    crafted = [_profiled(_call(mw, "/search", traceparent=CRAFTED)) for _ in range(70)]
    assert profiler.stats()["declined"] == ({"rate": 10} if options.get("trigger_limits") == "probability=60"
                                            else {"trigger_rate": 40} if options.get("trace_id_ratio", True)
                                            else {})
    clock.advance(1.0)
    real = [_profiled(_call(mw, "/report", "slow")), _profiled(_call(mw, "/checkout", "fail"))]
    for _ in range(40):
        clock.advance(0.1)
        real.append(_profiled(_call(mw, "/report")))
        real.append(_profiled(_call(mw, "/checkout")))
    return profiler, crafted, real


def test_crafted_trace_ids_cannot_starve_slow_and_error_profiles(profiler_factory: Any) -> None:
    profiler, crafted, real = _m2(profiler_factory)
    # the crafted trace id makes the probability trigger spend its share (30 of 60), no more
    assert crafted.count(("probability",)) == 30 and crafted.count(()) == 40  # declined: trigger_rate 40
    # the slow and error profiles of that minute still start: the rest of the budget is theirs
    kept = [t for t in real if t]
    assert kept.count(("slow",)) == 15 and kept.count(("error",)) == 15, real
    assert len(kept) == 30 and profiler.policy.state().budgets["total"] == (60, 60)


def test_crafted_trace_ids_starved_them_when_probability_had_the_whole_budget(profiler_factory: Any) -> None:
    """The same repro with probability's share set to the whole budget (the old
    behaviour): 60 of the 70 crafted requests profiled, and no slow or error profile
    for the rest of the minute.  (So the test above can tell the two apart.)"""
    profiler, crafted, real = _m2(profiler_factory, trigger_limits="probability=60")
    assert crafted.count(("probability",)) == 60  # declined: rate 10
    assert [t for t in real if t] == []


def test_edge_services_can_ignore_remote_trace_ids(profiler_factory: Any) -> None:
    """``trace_id_ratio=false``: a random draw per request, whatever trace id the client sends."""
    _profiler, crafted, _real = _m2(profiler_factory, trace_id_ratio=False)
    assert crafted.count(()) >= 66  # about 1 % of 70
    profiler = profiler_factory(exporter="none", probability=0.5, trace_id_ratio=False, cpu_trigger=False)
    profiler.policy = Policy(profiler, rng=random.Random(2), start_threads=False)
    mw = ProfilingMiddleware(_app(FakeClock()), profiler=profiler)
    hits = sum(bool(_profiled(_call(mw, "/x", traceparent=CRAFTED))) for _ in range(40))
    assert 8 <= hits <= 32  # a coin, not the trace id (which would say yes every time)


@pytest.mark.parametrize("sampled, expect", [("01", True), ("00", False)])
def test_random_draw_still_honours_the_sampled_flag(profiler_factory: Any, sampled: str, expect: bool) -> None:
    profiler = profiler_factory(exporter="none", probability=0.999, trace_id_ratio=False, cpu_trigger=False)
    profiler.policy = Policy(profiler, rng=random.Random(2), start_threads=False)
    mw = ProfilingMiddleware(_app(FakeClock()), profiler=profiler)
    tp = CRAFTED[:-2] + sampled
    assert any(_profiled(_call(mw, "/x", traceparent=tp)) for _ in range(5)) is expect
