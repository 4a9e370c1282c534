"""Entry decisions of the request policy, with fake clocks and random sources:
probability, trace-id consistency, exclusions, custom gate, header, on-demand
windows, route arming, high CPU, sub-limits, budgets and the overhead governor."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from typing import Any, Optional

import pytest
from helpers.clock import FakeClock

from otelprof_middleware import ConfigError
from otelprof_middleware.policy import Policy, RequestInfo
from otelprof_middleware.policy.cpu import CpuMonitor, CpuTrigger
from otelprof_middleware.policy.governor import Governor
from otelprof_middleware.policy.triggers import RouteArming, route_pattern
from otelprof_middleware.profile import SpanLink


def make_policy(profiler_factory: Any, clock: Optional[FakeClock] = None, cpu: Any = None,
                gov: Any = None, seed: int = 1, **options: Any) -> Policy:
    options.setdefault("exporter", "none")
    options.setdefault("probability", 0.0)
    options.setdefault("cpu_trigger", False)
    p = profiler_factory(**options)
    policy = Policy(p, clock=clock or FakeClock(), rng=random.Random(seed), cpu_monitor=cpu,
                    governor_sources=gov, start_threads=False)
    p.policy = policy  # the public seam: the profiler's policy, replaced before any middleware uses it
    return policy


def req(path: str = "/x", route: Optional[str] = None, headers: Optional[dict[str, str]] = None,
        link: Optional[SpanLink] = None, url: str = "", template: Optional[str] = None) -> RequestInfo:
    """A request; ``route`` is a template known at entry, ``template`` one the
    framework's router answers when asked (as the integrations do while a route is armed)."""
    h = {k.lower(): v for k, v in (headers or {}).items()}
    return RequestInfo(method="GET", path=path, url=url or ("http://127.0.0.1" + path), route=route,
                       header=h.get, link=link, route_resolver=(lambda: template) if template else None)


def trace(tid: int, sampled: bool = True) -> SpanLink:
    return SpanLink(trace_id=tid, span_id=7, sampled=sampled, source="traceparent")


# ----------------------------------------------------------------------------- probability

def test_probability_one_and_zero(profiler_factory: Any) -> None:
    always = make_policy(profiler_factory, probability=1.0, max_profiles_per_minute=1000)
    never = make_policy(profiler_factory, probability=0.0)
    for i in range(50):
        d = always.decide(req(link=trace(i * 7919 + 1)))
        assert d.profile and d.triggers == ("probability",)
        d0 = never.decide(req(link=trace(i * 7919 + 1)))
        assert not d0.profile and d0.declined == "not_selected"
    assert always.profiler.stats()["declined"] == {}


def test_same_trace_id_same_decision_across_policies(profiler_factory: Any) -> None:
    a = make_policy(profiler_factory, probability=0.3, seed=1, max_profiles_per_minute=100000)
    b = make_policy(profiler_factory, probability=0.3, seed=99, max_profiles_per_minute=100000)
    rng = random.Random(5)
    picked = 0
    for _ in range(2000):
        tid = rng.getrandbits(128) or 1
        da, db = a.decide(req(link=trace(tid))), b.decide(req(link=trace(tid)))
        assert da.profile == db.profile  # two services, one answer per trace
        assert a.decide(req(link=trace(tid))).profile == da.profile  # and stable over time
        picked += da.profile
    assert 450 < picked < 750  # about 30 % of 2000


def test_trace_id_ratio_uses_low_64_bits(profiler_factory: Any) -> None:
    pol = make_policy(profiler_factory, probability=0.5, max_profiles_per_minute=1000)
    assert pol.decide(req(link=trace((1 << 100) | 5))).profile  # low bits tiny -> below 0.5
    assert not pol.decide(req(link=trace((1 << 64) - 5))).profile


def test_unsampled_trace_not_profiled_by_probability_alone(profiler_factory: Any) -> None:
    pol = make_policy(profiler_factory, probability=1.0)
    assert not pol.decide(req(link=trace(5, sampled=False))).profile
    pol2 = make_policy(profiler_factory, probability=1.0, profile_unsampled_traces=True)
    assert pol2.decide(req(link=trace(5, sampled=False))).profile
    # other triggers still apply to unsampled traces
    pol.enable_window(10)
    assert pol.decide(req(link=trace(5, sampled=False))).triggers == ("on_demand",)


def test_random_when_no_trace(profiler_factory: Any) -> None:
    pol = make_policy(profiler_factory, probability=0.25, max_profiles_per_minute=100000)
    n = sum(pol.decide(req()).profile for _ in range(4000))
    assert 850 < n < 1150


# ----------------------------------------------------------------------------- exclusions, gate, header

def test_excluded_urls_never_profiled(profiler_factory: Any) -> None:
    calls = []
    pol = make_policy(profiler_factory, probability=1.0, excluded_urls="/healthz,^http://[^/]+/metrics",
                      should_profile=lambda info: calls.append(info.path) or True)
    pol.enable_window(60)
    pol.arming.arm_path("/healthz", "slow", 60, 1.0, pol.clock())
    for path in ("/healthz", "/api/healthz/deep", "/metrics"):
        d = pol.decide(req(path, headers={"X-Enable-Profiling": "1"}))
        assert not d.profile and d.declined == "excluded"
    assert calls == []  # excluded before the gate runs
    assert pol.decide(req("/api/metrics")).profile  # anchored pattern does not match here
    assert pol.profiler.stats()["declined"]["excluded"] == 3


def test_custom_gate_forces_vetoes_defers(profiler_factory: Any) -> None:
    answers = {"/force": True, "/veto": False, "/defer": None}

    def gate(info: RequestInfo) -> Optional[bool]:
        if info.path == "/boom":
            raise RuntimeError("gate bug")
        return answers[info.path]

    pol = make_policy(profiler_factory, probability=0.0, should_profile=gate)
    assert pol.decide(req("/force")).triggers == ("custom",)
    d = pol.decide(req("/veto", headers={"x-enable-profiling": "true"}))
    assert not d.profile and d.declined == "custom"
    assert not pol.decide(req("/defer")).profile
    assert not pol.decide(req("/boom")).profile  # a broken gate never breaks the request
    assert pol.profiler.stats()["should_profile_errors"] == 1
    pol2 = make_policy(profiler_factory, probability=1.0, should_profile=gate)
    assert pol2.decide(req("/defer")).triggers == ("probability",)
    assert not pol2.decide(req("/veto")).profile


def test_header_with_secret_and_rate(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, header_secret="s3cret", max_header_profiles_per_minute=2)
    assert not pol.decide(req(headers={"X-Enable-Profiling": "1"})).profile
    assert pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).triggers == ("header",)
    assert pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).profile
    d = pol.decide(req(headers={"X-Enable-Profiling": "s3cret"}))
    assert not d.profile and d.header_requested
    assert pol.profiler.stats()["declined"]["header_rate"] == 1
    clock.advance(59.9)  # a sliding window: still two within the last 60 s
    assert not pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).profile
    clock.advance(0.1)  # the first two are 60 s old
    assert pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).profile
    assert pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).profile
    assert not pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).profile


@pytest.mark.parametrize("trust, debug, value, profiled", [
    ("debug", True, "1", True), ("debug", True, "ON", True), ("debug", False, "1", False),
    ("debug", None, "1", False), ("debug", True, "please", False), ("debug", True, "0", False),
    ("any", None, "yes", True), ("any", False, "true", True), ("any", None, "nope", False),
    ("off", True, "1", False),
])
def test_header_trust_without_a_secret(profiler_factory: Any, trust: str, debug: Optional[bool], value: str,
                                       profiled: bool) -> None:
    pol = make_policy(profiler_factory, header_trust=trust)
    info = RequestInfo(path="/x", header={"x-enable-profiling": value}.get, debug=lambda: debug,
                       debug_flag="Test app.debug")
    assert pol.decide(info).profile is profiled
    declined = pol.profiler.stats()["declined"]
    assert declined.get("header_ignored", 0) == (0 if profiled or value == "0" else 1)


def test_an_ignored_header_is_logged_once_per_reason(profiler_factory: Any, caplog: Any) -> None:
    caplog.set_level("WARNING", "otelprof_middleware")
    pol = make_policy(profiler_factory)
    for debug in (False, False, None, None):
        pol.decide(RequestInfo(path="/x", header={"x-enable-profiling": "1"}.get, debug=debug,
                               debug_flag="Test app.debug"))
    pol.decide(RequestInfo(path="/x", header={"x-enable-profiling": "change-me"}.get, debug=True))
    opens = ("to profile such requests, set header_secret (OTELPROF_HEADER_SECRET) and send it as the header's "
             "value, or header_trust='any' (OTELPROF_HEADER_TRUST=any) to honour the header from anyone")
    assert [r.getMessage() for r in caplog.records] == [
        "otelprof: ignored the X-Enable-Profiling header: no header_secret is set and the app is not in debug mode "
        f"(Test app.debug is False); {opens}",
        "otelprof: ignored the X-Enable-Profiling header: no header_secret is set and this app has no debug mode "
        f"(a plain WSGI/ASGI app); {opens}",
        "otelprof: ignored the X-Enable-Profiling header: its value is not one of 1, true, yes, on (no "
        "header_secret is set); to profile such requests, send 1, or set header_secret and send that",
    ]
    assert pol.profiler.stats()["declined"]["header_ignored"] == 5


# ----------------------------------------------------------------------------- on demand

def test_on_demand_window_opens_and_closes(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_window=20, max_profiles_per_minute=1000)
    assert not pol.decide(req("/a")).profile
    w = pol.profiler.enable_window(60)  # capped by max_window
    assert w.until == pytest.approx(clock.t + 20)
    assert pol.decide(req("/a")).triggers == ("on_demand",)
    clock.advance(19.9)
    assert pol.decide(req("/b")).profile
    clock.advance(0.2)
    assert not pol.decide(req("/a")).profile  # closed by time
    assert not pol.windows
    w2 = pol.profiler.enable_window(5)
    assert pol.decide(req("/a")).profile
    w2.close()
    assert not pol.decide(req("/a")).profile  # closed by hand


def test_on_demand_window_route_and_probability(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_profiles_per_minute=100000)
    pol.profiler.enable_window(10, route="/items/{item_id}")
    assert pol.decide(req("/items/42")).triggers == ("on_demand",)  # route unknown at entry: path pattern
    assert pol.decide(req("/items/42", route="/items/{item_id}")).profile
    assert not pol.decide(req("/items/42/children")).profile
    assert not pol.decide(req("/other")).profile
    for w in pol.windows.open_windows():
        w.close()
    pol.profiler.enable_window(10, probability=0.2, route="/p")
    n = sum(pol.decide(req("/p")).profile for _ in range(2000))
    assert 300 < n < 500


@pytest.mark.parametrize("bad", [dict(seconds=0), dict(seconds=-1), dict(seconds=float("nan")),
                                 dict(seconds=5, probability=1.5), dict(seconds=5, route=3)])
def test_enable_window_rejects_bad_arguments(profiler_factory: Any, bad: dict[str, Any]) -> None:
    pol = make_policy(profiler_factory)
    with pytest.raises(ValueError):
        pol.profiler.enable_window(**bad)
    assert not pol.windows


# ----------------------------------------------------------------------------- route arming

def test_route_patterns() -> None:
    assert route_pattern("/plain") is None
    assert route_pattern("/items/{id}").match("/items/5")
    assert not route_pattern("/items/{id}").match("/items/5/x")
    assert route_pattern("/files/{p:path}").match("/files/a/b/c")
    assert route_pattern("/u/<int:uid>/posts").match("/u/3/posts")
    assert route_pattern("/f/<path:rest>").match("/f/x/y")
    assert not route_pattern("/a.{x}").match("/abz")  # the dot is literal


def test_route_arming_arms_and_disarms_after_duration(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_profiles_per_minute=1000, error_sample_rate=1.0)
    pol.arming.arm_route("/slow/{n}", "slow", 10.0, 1.0, clock.t)
    # the template of a request comes from the framework: known at entry, or asked for
    assert pol.decide(req("/slow/3", template="/slow/{n}")).triggers == ("slow",)
    assert pol.decide(req("/slow/3", route="/slow/{n}")).triggers == ("slow",)
    assert not pol.decide(req("/fast", template="/fast")).profile
    assert not pol.decide(req("/slow/3")).profile  # no template: only literal paths can match
    clock.advance(9.99)
    assert pol.decide(req("/slow/4", template="/slow/{n}")).profile
    clock.advance(0.02)
    assert not pol.decide(req("/slow/4", template="/slow/{n}")).profile
    assert len(pol.arming) == 0  # expired entries dropped


def test_literal_path_arming_is_literal(profiler_factory: Any) -> None:
    """Security review M3: a path armed without a template is matched as text, after
    normalisation; braces and angle brackets in it are not placeholders."""
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_profiles_per_minute=1000)
    pol.arming.arm_path("/<path:x>", "slow", 10.0, 1.0, clock.t)
    pol.arming.arm_path("/{a}", "slow", 10.0, 1.0, clock.t)
    pol.arming.arm_path("//reports/./daily/", "slow", 10.0, 1.0, clock.t)
    for path in ("/admin/users", "/checkout/42", "/anything/else", "/x"):
        assert not pol.decide(req(path)).profile, path
    assert pol.decide(req("/<path:x>")).triggers == ("slow",)
    assert pol.decide(req("/{a}")).triggers == ("slow",)
    assert pol.decide(req("/reports/daily")).triggers == ("slow",)
    assert pol.decide(req("/reports//daily/")).triggers == ("slow",)
    assert not pol.decide(req("/reports/daily/x")).profile


def test_route_template_resolved_only_while_a_template_is_armed(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_profiles_per_minute=1000)
    asked: list[str] = []

    def routed(path: str) -> RequestInfo:
        return RequestInfo(method="GET", path=path, route_resolver=lambda: asked.append(path) or "/items/{id}")

    assert not pol.decide(routed("/items/1")).profile
    pol.arming.arm_path("/other", "error", 10.0, 1.0, clock.t)
    assert not pol.decide(routed("/items/2")).profile
    assert asked == []  # nothing armed by template: the router is never asked
    for i in range(300):  # many armed templates: still one dict lookup per request
        pol.arming.arm_route(f"/r{i}/{{id}}", "slow", 10.0, 1.0, clock.t)
    pol.arming.arm_route("/items/{id}", "slow", 10.0, 1.0, clock.t)
    assert pol.decide(routed("/items/3")).triggers == ("slow",)
    assert asked == ["/items/3"]  # asked once


def test_error_arming_uses_error_sample_rate(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, max_profiles_per_minute=100000)
    pol.arming.arm_path("/e", "error", 10.0, 0.5, clock.t)
    n = sum(pol.decide(req("/e")).profile for _ in range(2000))
    assert 880 < n < 1120


def test_route_arming_is_bounded() -> None:
    arming = RouteArming(max_routes=4)
    for i in range(10):
        arming.arm_route(f"/r{i}", "slow", 10.0 + i, 1.0, 0.0)
    assert len(arming) == 4
    assert {r for (_, r) in arming.armed(0.0)} == {"/r6", "/r7", "/r8", "/r9"}
    arming.arm_path("/p", "error", 100.0, 1.0, 0.0)  # paths and templates share the bound
    assert len(arming) == 4 and ("error", "/p") in arming.armed(0.0)
    assert not arming.arm_route("", "slow", 10, 1.0, 0.0) and not arming.arm_route("/x", "slow", 0, 1.0, 0.0)
    assert not arming.arm_path("", "slow", 10, 1.0, 0.0)


# ----------------------------------------------------------------------------- high CPU

def test_cpu_trigger_state_machine() -> None:
    t = CpuTrigger(threshold=0.8, window=5, duration=30, cooldown=300)
    now = 0.0
    fired_at = []
    for _ in range(4):  # 4 s above: not yet
        now += 1
        assert not t.observe(0.95, now - 1, now)
    now += 1
    assert t.observe(0.9, now - 1, now)  # 5 s above
    fired_at.append(now)
    assert t.active(now) and t.active(now + 29.9) and not t.active(now + 30)
    # stays high: no re-fire while active or cooling down
    for _ in range(30 + 299):
        now += 1
        assert not t.observe(0.99, now - 1, now)
    now += 1
    assert not t.observe(0.99, now - 1, now) or now >= fired_at[0] + 330
    # a dip resets the window
    t2 = CpuTrigger(0.8, 5, 30, 300)
    for i, u in enumerate([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9]):
        assert not t2.observe(u, i, i + 1)
    assert t2.observe(0.9, 8, 9)


def test_cpu_monitor_feeds_trigger_and_policy(profiler_factory: Any) -> None:
    clock = FakeClock(0.0)
    cpu_ns = [0]
    mon = CpuMonitor(read_cpu=lambda: cpu_ns[0], clock=clock, cores=2.0)
    pol = make_policy(profiler_factory, clock, cpu=mon, cpu_trigger=True, cpu_threshold=0.8, cpu_window=3,
                      cpu_profile_duration=10, cpu_cooldown=60, max_profiles_per_minute=100000)
    assert mon.poll() is None  # first reading: nothing to compare

    def second(util: float) -> None:
        clock.advance(1.0)
        cpu_ns[0] += int(util * 2.0 * 1e9)
        assert mon.poll() == pytest.approx(util)

    second(0.5)
    assert not pol.decide(req()).profile
    second(0.9)
    second(0.9)
    assert not pol.decide(req()).profile
    second(0.9)  # 3 s above 0.8
    assert pol.decide(req()).triggers == ("high_cpu",)
    for _ in range(9):
        second(0.5)
        assert pol.decide(req()).profile
    second(0.5)
    assert not pol.decide(req()).profile  # profile duration (10 s) over
    for _ in range(55):  # burning again, but cooling down (60 s after the 10 s)
        second(0.95)
        assert not pol.decide(req()).profile
    assert pol.cpu_trigger.fired == 1
    for _ in range(5):
        second(0.95)
    assert pol.cpu_trigger.fired == 2  # cooldown over: fires again
    assert pol.decide(req()).triggers == ("high_cpu",)


# ----------------------------------------------------------------------------- budgets

def test_budgets_hold_under_flood_exact_counts(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, probability=1.0, max_profiles_per_minute=25,
                      max_concurrent_profiles=1000, trigger_limits="probability=25")
    admitted = sum(pol.decide(req()).profile for _ in range(5000))
    assert admitted == 25
    assert pol.profiler.stats()["declined"] == {"rate": 4975}
    clock.advance(59.0)  # a sliding window: nothing comes back before the first are 60 s old
    assert sum(pol.decide(req()).profile for _ in range(100)) == 0
    clock.advance(1.0)
    assert sum(pol.decide(req()).profile for _ in range(100)) == 25


def test_concurrency_budget_counts_running_profiles(profiler_factory: Any) -> None:
    from otelprof_middleware.integrations.lifecycle import RequestProfiling

    pol = make_policy(profiler_factory, probability=1.0, max_concurrent_profiles=3,
                      max_profiles_per_minute=1000, slow_promotion=False)
    rp = RequestProfiling(pol.profiler)
    handles = [rp.begin(req()) for _ in range(50)]
    assert sum(h.profiled for h in handles) == 3
    assert pol.profiler.stats()["declined"] == {"concurrency": 47}
    for h in handles:
        h.finish()
    assert pol.profiler.active_sessions == 0
    assert rp.begin(req()).profiled


def test_trigger_sub_limits(profiler_factory: Any) -> None:
    clock = FakeClock()
    pol = make_policy(profiler_factory, clock, probability=1.0, max_profiles_per_minute=1000,
                      trigger_limits="probability=5,on_demand=2")
    assert sum(pol.decide(req()).profile for _ in range(100)) == 5
    assert pol.profiler.stats()["declined"]["trigger_rate"] == 95
    pol.enable_window(10)
    ds = [pol.decide(req()) for _ in range(10)]
    assert [d.triggers for d in ds if d.profile] == [("on_demand",), ("on_demand",)]
    pol.arming.arm_path("/x", "slow", 10, 1.0, clock.t)  # slow has no sub-limit
    assert pol.decide(req("/x")).triggers == ("slow",)


def test_trigger_limits_validated(profiler_factory: Any) -> None:
    with pytest.raises(ConfigError, match="trigger_limits"):
        make_policy(profiler_factory, trigger_limits="bogus=1")
    with pytest.raises(ConfigError, match="trigger_limits"):
        make_policy(profiler_factory, trigger_limits="slow=-3")


# ----------------------------------------------------------------------------- governor

def test_governor_lowers_rate_then_declines_then_recovers() -> None:
    clock = FakeClock(0.0)
    own = [0]
    proc = [0]
    gov = Governor(0.05, lambda: own[0], lambda: proc[0], clock, window=10, interval=1,
                   min_process_cpu_ns=100_000_000, max_level=2)

    def second(proc_ms: int, own_ms: int) -> None:
        clock.advance(1)
        proc[0] += proc_ms * 1_000_000
        own[0] += own_ms * 1_000_000
        gov.update()

    second(1000, 10)  # first point
    second(1000, 10)
    assert gov.level == 0 and gov.hz(100) == 100
    second(1000, 200)  # 20 % overhead
    assert gov.level == 1 and gov.hz(100) == 50 and not gov.declining
    second(1000, 200)
    assert gov.level == 2 and gov.hz(100) == 25
    second(1000, 200)
    assert gov.declining
    second(1000, 200)
    assert gov.level == 3  # stays declining, no further
    # back to 1 %: the sliding window (10 s) still holds the expensive seconds, so it
    # takes a few readings before the average falls under 0.7 x 5 %
    n = 0
    while gov.declining:
        second(1000, 10)
        n += 1
        assert n <= 10
    assert n > 1 and gov.level == 2
    second(1000, 10)  # fresh window after each step: one reading per step down
    second(1000, 10)
    assert gov.level == 0 and gov.hz(100) == 100
    assert gov.rate_lowered == 2


def test_governor_declines_profiles_in_policy(profiler_factory: Any) -> None:
    clock = FakeClock(0.0)
    own = [0]
    proc = [0]
    pol = make_policy(profiler_factory, clock, gov=(lambda: own[0], lambda: proc[0]), probability=1.0,
                      max_profiles_per_minute=100000, max_overhead=0.05, sample_hz=200)
    for _ in range(8):
        clock.advance(1.0)
        proc[0] += 1_000_000_000
        own[0] += 300_000_000  # 30 %
        pol.decide(req())
    assert pol.governor.declining
    d = pol.decide(req())
    assert not d.profile and d.declined == "overhead"
    assert pol.profiler.stats()["declined"]["overhead"] >= 1
    hz_seen = []
    for _ in range(30):  # overhead gone: accepts again (at a lowered rate), then full rate
        clock.advance(1.0)
        proc[0] += 1_000_000_000
        d = pol.decide(req())
        if d.profile:
            hz_seen.append(d.hz)
    assert hz_seen[0] == 200 >> 4 and hz_seen[-1] is None and pol.governor.level == 0
    assert sorted(h or 200 for h in hz_seen) == [h or 200 for h in hz_seen]  # rate only went up


def test_governor_off_at_budget_one(profiler_factory: Any) -> None:
    calls = []
    pol = make_policy(profiler_factory, gov=(lambda: calls.append(1) or 0, lambda: 0), probability=1.0,
                      max_overhead=1.0)
    for _ in range(10):
        pol.decide(req())
    assert calls == [] and not pol.governor.enabled


def test_policy_state_snapshot(profiler_factory: Any) -> None:
    pol = make_policy(profiler_factory)
    pol.arming.arm_route("/a", "error", 5, 0.5, pol.clock())
    pol.enable_window(30, probability=0.5, route="/b")
    st = pol.state()
    assert st.armed_routes == {"error:/a": 5.0} and st.governor_level == 0
    assert [(w.route, w.probability, w.seconds_left) for w in st.windows] == [("/b", 0.5, 30.0)]
    assert st.budgets == {"header": (0, 60), "total": (0, 60), "probability": (0, 30), "high_cpu": (0, 30)}
    with pytest.raises(TypeError):
        st.armed_routes["error:/b"] = 1.0  # type: ignore[index]  # read-only
    with pytest.raises(AttributeError):
        st.governor_level = 3  # type: ignore[misc]
    assert st.as_dict()["budgets"]["probability"] == {"used": 0, "limit": 30}
    json.dumps(st.as_dict())


# ----------------------------------------------------------------------------- security review L1, L12, L13

def test_concurrency_cap_holds_under_simultaneous_starts(profiler_factory: Any) -> None:
    """L1: requests deciding at the same moment never overshoot max_concurrent_profiles
    (the slot is checked and taken in one step)."""
    from otelprof_middleware.integrations.lifecycle import RequestProfiling

    pol = make_policy(profiler_factory, probability=1.0, max_concurrent_profiles=2,
                      max_profiles_per_minute=100000, slow_promotion=False, slow_route_arming=False,
                      error_profile_duration=0)
    rp = RequestProfiling(pol.profiler)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
    try:
        for _trial in range(5):
            barrier = threading.Barrier(24)
            handles: list[Any] = []
            lock = threading.Lock()

            def request() -> None:
                barrier.wait()
                h = rp.begin(req())
                with lock:
                    handles.append(h)

            threads = [threading.Thread(target=request) for _ in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(handles) == 24
            assert sum(h.profiled for h in handles) == 2
            assert pol.profiler.active_sessions == 2
            for h in handles:
                h.finish()
            assert pol.profiler.active_sessions == 0
    finally:
        sys.setswitchinterval(switch)
    assert pol.profiler.stats()["declined"]["concurrency"] == 5 * 22


def test_header_value_with_a_lone_surrogate_never_raises(profiler_factory: Any) -> None:
    """L12: with header_secret set, any header value is compared safely; the request
    still goes through every other trigger."""
    pol = make_policy(profiler_factory, probability=1.0, header_secret="s3cret", max_profiles_per_minute=1000)
    d = pol.decide(req(headers={"X-Enable-Profiling": "s3cret\udcff"}))
    assert d.profile and d.triggers == ("probability",)
    assert pol.decide(req(headers={"X-Enable-Profiling": "\ud800"})).triggers == ("probability",)
    assert pol.decide(req(headers={"X-Enable-Profiling": "s3cret"})).triggers == ("header", "probability")
    assert pol.profiler.stats()["dropped"].get("error", 0) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_policy_state_is_fresh_after_fork(profiler_factory: Any) -> None:
    """L13: in a child process the policy's locks, budgets, slots and recordings are
    its own: a lock another thread held at fork time, a slot a parent's profile holds
    and the parent's recordings do not carry over."""
    from otelprof_middleware.integrations.lifecycle import RequestProfiling

    pol = make_policy(profiler_factory, probability=1.0, max_concurrent_profiles=1, max_profiles_per_minute=1000,
                      tail_sampling_hz=10)
    rp = RequestProfiling(pol.profiler)
    parent_request = rp.begin(req("/parent"))
    recording = rp.begin(req("/recorded"))
    assert parent_request.profiled and recording.recording  # the only slot is taken; one recording runs
    held, release = threading.Event(), threading.Event()
    stop = threading.Event()

    def hold_the_lock() -> None:
        with pol.late.lock:
            held.set()
            release.wait(30)

    def busy() -> None:  # another thread deciding all the time (limiter, slot and arming locks)
        while not stop.is_set():
            rp.begin(req("/busy")).finish()

    threads = [threading.Thread(target=hold_the_lock), threading.Thread(target=busy)]
    for t in threads:
        t.start()
    assert held.wait(10)
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # the child: exit 0 when everything works, and fast (no deadlock)
                signal.alarm(10)
                code = 1
                try:
                    with pol.late.lock:
                        pass
                    h = rp.begin(req("/child"))
                    ok = h.profiled and len(pol.late.recording) == 0 and pol.entry.slots.available() is False
                    h.finish()
                    code = 0 if ok and pol.entry.slots.available() else 2
                finally:
                    os._exit(code)
            _pid, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        stop.set()
        for t in threads:
            t.join(10)
        parent_request.finish()
        recording.finish()
