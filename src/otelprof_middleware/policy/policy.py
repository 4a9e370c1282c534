"""Should this request be profiled?  One policy object per profiler, shared by
every integration (:func:`policy_for`).

Order of evaluation at request entry (:meth:`Policy.decide`):

1. exclusions (``excluded_urls``) — never profiled, never recorded, never arm a route;
2. the custom gate ``should_profile(info)`` — True forces (trigger ``custom``),
   False vetoes, None defers;
3. candidate triggers, all evaluated (a profile may carry several):
   ``header`` (authenticated with ``header_secret`` when set, rate-limited by
   ``max_header_profiles_per_minute``), ``probability`` (from the trace id when
   there is one), ``on_demand`` (an open :meth:`Profiler.enable_window`),
   ``slow`` / ``error`` (the route was armed by a slow / failing request),
   ``high_cpu`` (the process CPU trigger is active);
4. per-trigger sub-limits (``trigger_limits``), then the global budgets:
   the overhead governor (``max_overhead``), ``max_concurrent_profiles`` and
   ``max_profiles_per_minute`` (header and custom profiles are exempt from the
   per-minute budget; the header has its own).

Late triggers act after entry (:meth:`request_started` / :meth:`request_finished`,
called by the shared lifecycle): in-flight promotion of slow requests (a
watchdog thread), the flight recorder (``tail_sampling_hz``), route arming after a
slow or failing request.

Declines are counted per reason in ``Profiler.stats()["declined"]``.
"""

from __future__ import annotations

import hmac
import random
import re
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..config import parse_trigger_limits
from .cpu import CpuMonitor, CpuTrigger, get_cpu_monitor
from .governor import Governor
from .limits import RateLimiter
from .request import Decision, RequestInfo
from .triggers import OnDemandWindow, OnDemandWindows, RouteArming
from .watchdog import DONE, PROMOTED, PROMOTING, REGISTERED, Watchdog

if TYPE_CHECKING:
    from ..integrations.lifecycle import RequestHandle
    from ..profiler import Profiler

__all__ = ["Policy", "TRUTHY", "TRIGGERS", "policy_for"]

TRUTHY = frozenset({"1", "true", "yes", "on"})
TRIGGERS = ("header", "probability", "slow", "error", "high_cpu", "on_demand", "custom")
_TRACE_ID_MAX = (1 << 64) - 1
_NO_TAIL = frozenset({"excluded", "custom", "disabled"})

# Flight recorder: at most this many requests recorded at once (more in-flight
# requests simply run unrecorded), so its cost is bounded whatever the concurrency.
RECORDER_MAX_INFLIGHT = 256


def policy_for(profiler: "Profiler") -> "Policy":
    """One policy per profiler, shared by every integration that uses it."""
    policy = getattr(profiler, "_policy", None)
    if policy is None:
        with _policy_lock:
            policy = getattr(profiler, "_policy", None)
            if policy is None:
                policy = Policy(profiler)
                profiler._policy = policy  # type: ignore[attr-defined]
    return policy


_policy_lock = threading.Lock()


class Policy:
    """Decides at entry, watches while the request runs, judges at the end.

    ``clock`` (monotonic seconds), ``rng`` (``random.Random``), ``cpu_monitor`` and
    ``governor_sources`` (``(own_cpu_ns, process_cpu_ns)`` callables) are injectable
    for deterministic tests; ``start_threads=False`` keeps the watchdog thread off
    (call :meth:`Watchdog.scan` by hand)."""

    def __init__(
        self,
        profiler: "Profiler",
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        cpu_monitor: Optional[CpuMonitor] = None,
        governor_sources: Optional[tuple[Callable[[], int], Callable[[], int]]] = None,
        start_threads: bool = True,
    ) -> None:
        self.profiler = profiler
        cfg = profiler.config
        self.config = cfg
        self.clock = clock
        self.header_name = cfg.header.lower()
        self._secret = cfg.header_secret.encode() if cfg.header_secret else None
        self._excluded = [re.compile(p) for p in cfg.excluded_urls]
        self.header_limiter = RateLimiter(cfg.max_header_profiles_per_minute, clock=clock)
        self.profile_limiter = RateLimiter(cfg.max_profiles_per_minute, clock=clock)
        self.trigger_limiters = {name: RateLimiter(n, clock=clock)
                                 for name, n in parse_trigger_limits(cfg.trigger_limits).items()}
        self._random = rng if rng is not None else random.Random()
        self._lock = threading.Lock()

        # time-boxed triggers
        self.arming = RouteArming()
        self.windows = OnDemandWindows(clock)

        # high CPU
        self.cpu_trigger: Optional[CpuTrigger] = None
        self._cpu_monitor: Optional[CpuMonitor] = None
        if cfg.cpu_trigger:
            self.cpu_trigger = CpuTrigger(cfg.cpu_threshold, cfg.cpu_window, cfg.cpu_profile_duration,
                                          cfg.cpu_cooldown)
            ref = weakref.ref(profiler)
            self.cpu_trigger.alive = lambda: (lambda p: p is not None and p.enabled)(ref())
            self._cpu_monitor = cpu_monitor
            self._cpu_injected = cpu_monitor is not None
            if cpu_monitor is not None:
                cpu_monitor.subscribe(self.cpu_trigger)
        self._cpu_started = False

        # late triggers: watchdog (in-flight promotion) and flight recorder
        self.recorder_hz = cfg.tail_sampling_hz
        self.recorder_max = RECORDER_MAX_INFLIGHT
        self._recording: set[Any] = set()  # sessions recording (not yet kept)
        self.tail = bool(cfg.slow_promotion or cfg.slow_route_arming or cfg.tail_sampling_hz
                         or (cfg.error_profile_duration > 0 and cfg.error_sample_rate > 0))
        self.watchdog = Watchdog(self, cfg.slow_threshold, clock, autostart=start_threads)

        # overhead governor
        if governor_sources is None:
            governor_sources = (self._own_cpu_ns, time.process_time_ns)
        self.governor = Governor(cfg.max_overhead, governor_sources[0], governor_sources[1], clock)
        self.governor.on_change = self._governor_changed

    # ------------------------------------------------------------------ pieces
    def excluded(self, info: RequestInfo) -> bool:
        if not self._excluded:
            return False
        target = info.url or info.path
        return any(p.search(target) for p in self._excluded)

    def header_requests(self, info: RequestInfo) -> bool:
        """True when the request carries a valid profiling header."""
        value = info.header(self.header_name)
        if value is None:
            return False
        value = value.strip()
        if self._secret is not None:
            return hmac.compare_digest(value.encode(), self._secret)
        return value.lower() in TRUTHY

    def probability_hit(self, info: RequestInfo, probability: float) -> bool:
        """Trace-id ratio when there is a trace (same trace, same answer in every
        service), random otherwise."""
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        link = info.link
        if link is not None and link.trace_id:
            return (link.trace_id & _TRACE_ID_MAX) < probability * (_TRACE_ID_MAX + 1)
        return self._chance(probability)

    def _chance(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        with self._lock:
            return self._random.random() < rate

    def _cpu_active(self, now: float) -> bool:
        trig = self.cpu_trigger
        if trig is None:
            return False
        if not self._cpu_started or (not self._cpu_injected and self._cpu_monitor is not None
                                     and self._cpu_monitor._thread is None):
            self._start_cpu_monitor()
        return now < trig.active_until

    def _start_cpu_monitor(self) -> None:
        self._cpu_started = True
        if self._cpu_injected:
            return
        try:
            mon = self._cpu_monitor
            if mon is None:
                mon = self._cpu_monitor = get_cpu_monitor()
                mon.subscribe(self.cpu_trigger)  # type: ignore[arg-type]
            mon.ensure_running()
        except Exception:
            self.profiler._fail_once("cpu-monitor", "otelprof: could not start the CPU monitor")

    # ------------------------------------------------------------------ decision
    def decide(self, info: RequestInfo) -> Decision:
        stats = self.profiler.stats_recorder
        if not self.profiler.enabled:
            return Decision.no("disabled")
        if self.excluded(info):
            stats.declined("excluded")
            return Decision.no("excluded")

        forced: Optional[bool] = None
        gate = self.config.should_profile
        if gate is not None:
            try:
                forced = gate(info)
            except Exception:
                forced = None
                stats.incr("should_profile_errors")
        if forced is False:
            stats.declined("custom")
            return Decision.no("custom")

        triggers: list[str] = []
        header = self.header_requests(info)
        if forced:
            triggers.append("custom")
        if header:
            if self.header_limiter.try_acquire():
                triggers.append("header")
            else:
                stats.declined("header_rate")
        link = info.link
        unsampled = link is not None and not link.sampled and not self.config.profile_unsampled_traces
        if not unsampled and self.probability_hit(info, self.config.probability):
            triggers.append("probability")
        now = self.clock()
        if self.windows:
            for w in self.windows.match(info.route, info.path, now):
                if self._chance(w.probability):
                    triggers.append("on_demand")
                    break
        if self.arming:
            for trig, rate in self.arming.match(info.route, info.path, now):
                if trig not in triggers and self._chance(rate):
                    triggers.append(trig)
        if self._cpu_active(now):
            triggers.append("high_cpu")
        if not triggers:
            return Decision.no("not_selected", header)
        return self.admit(triggers, header_requested=header)

    def admit(self, triggers: list[str], header_requested: bool = False) -> Decision:
        """Apply the sub-limits and global budgets to a request some trigger selected."""
        stats = self.profiler.stats_recorder
        exempt = "header" in triggers or "custom" in triggers
        if self.trigger_limiters and not exempt:
            kept = [t for t in triggers if t not in self.trigger_limiters]
            if not kept:
                for t in triggers:
                    if self.trigger_limiters[t].try_acquire():
                        kept.append(t)
                        break
            if not kept:
                stats.declined("trigger_rate")
                return Decision(False, declined="trigger_rate", header_requested=header_requested)
            triggers = [t for t in triggers if t in kept or t not in self.trigger_limiters]
        gov = self.governor
        if gov.enabled:
            gov.update()
            if gov.declining:
                stats.declined("overhead")
                if "header" in triggers:
                    self.header_limiter.refund()
                return Decision(False, declined="overhead", header_requested=header_requested)
        if self.profiler.active_sessions - len(self._recording) >= self.config.max_concurrent_profiles:
            stats.declined("concurrency")
            if "header" in triggers:
                self.header_limiter.refund()
            return Decision(False, declined="concurrency", header_requested=header_requested)
        if not exempt and not self.profile_limiter.try_acquire():
            stats.declined("rate")
            return Decision(False, declined="rate", header_requested=header_requested)
        expose = self.config.expose_profile_id
        if expose is None:
            expose = "header" in triggers
        hz = gov.hz(self.config.sample_hz) if gov.level else None
        return Decision(True, tuple(triggers), header_requested=header_requested, expose_profile_id=expose, hz=hz)

    # ------------------------------------------------------------------ on demand
    def enable_window(self, seconds: float, probability: float = 1.0, route: Optional[str] = None) -> OnDemandWindow:
        """Profile matching requests (all, or those of ``route``: a route template or a
        path) with ``probability`` for ``seconds`` (capped by ``max_window``)."""
        window = self.windows.open(seconds, probability, route, self.config.max_window)
        self.profiler.stats_recorder.incr("windows_opened")
        return window

    # ------------------------------------------------------------------ lifecycle hooks
    def request_started(self, handle: "RequestHandle") -> None:
        """After the entry decision: start the flight recorder and/or register the
        request with the watchdog.  Called for every request; cheap."""
        if not self.tail or handle.decision.declined in _NO_TAIL:
            return
        handle._t0 = self.clock()
        cfg = self.config
        if handle.session is None and self.recorder_hz:
            self._start_recording(handle)
        if cfg.slow_promotion and (handle.session is None or handle._recording):
            if handle.session is None:
                handle._target = _current_target()
            handle._tail_state = REGISTERED
            self.watchdog.register(handle)

    def request_finished(self, handle: "RequestHandle") -> bool:
        """The outcome (status, exception, duration) → route arming, flight-recorder
        keep/discard.  False when the session is finalised by the watchdog instead
        (it was being promoted at this very moment)."""
        proceed = True
        if handle._tail_state:
            if self.watchdog.unregister(handle):
                handle._tail_state = DONE
            else:  # claimed by the watchdog: hand over under its lock
                with self.watchdog.lock:
                    if handle._tail_state == PROMOTING:
                        proceed = False
                    handle._tail_state = DONE
        t0 = handle._t0
        if t0 is None:
            return proceed
        cfg = self.config
        now = self.clock()
        status = handle.status
        failed = handle.error is not None or (status is not None and status >= 500)
        slow = now - t0 >= cfg.slow_threshold
        if slow or failed:
            route = handle.info.route or handle.info.path
            if slow and cfg.slow_route_arming:
                self.arming.arm(route, "slow", cfg.slow_profile_duration, 1.0, now)
                self.profiler.stats_recorder.incr("routes_armed.slow")
            if failed and cfg.error_profile_duration > 0 and cfg.error_sample_rate > 0:
                self.arming.arm(route, "error", cfg.error_profile_duration, cfg.error_sample_rate, now)
                self.profiler.stats_recorder.incr("routes_armed.error")
        if handle._recording and proceed:
            self._finish_recording(handle, slow, failed)
        return proceed

    # ------------------------------------------------------------------ flight recorder
    def _start_recording(self, handle: "RequestHandle") -> None:
        if len(self._recording) >= self.recorder_max:
            self.profiler.stats_recorder.incr("recordings_skipped.max_inflight")
            return
        gov = self.governor
        if gov.enabled:
            gov.update()
            if gov.declining:
                self.profiler.stats_recorder.incr("recordings_skipped.overhead")
                return
        session = handle.start_profile((), hz=gov.hz(self.recorder_hz, min_hz=1))
        if session is not None:
            handle._recording = True
            self._recording.add(session)
            self.profiler.stats_recorder.incr("recordings_started")

    def _finish_recording(self, handle: "RequestHandle", slow: bool, failed: bool) -> None:
        session = handle.session
        if session is None:
            return
        self._recording.discard(session)
        promoted = "slow" in session.triggers
        keep: list[str] = []
        if slow or promoted:
            keep.append("slow")
        if failed:
            keep.append("error")
        if keep and not promoted:
            decision = self._admit_kept(keep)
            if not decision:
                keep = []
        if keep:
            for t in keep:
                session.add_trigger(t)
            session.attributes["otelprof.flight_recorder_hz"] = self.recorder_hz
            self.profiler.stats_recorder.incr("recordings_kept")
            return
        self.profiler.discard_session(session)
        handle.session = None
        token = handle._token
        if token is not None:
            handle._token = None
            try:
                from ..profiler import _CURRENT

                _CURRENT.reset(token)
            except ValueError:
                pass

    def _admit_kept(self, triggers: list[str]) -> bool:
        """Budget check for a recording kept at the end (it already ran: only rates apply)."""
        stats = self.profiler.stats_recorder
        limited = [t for t in triggers if t in self.trigger_limiters]
        if limited and len(limited) == len(triggers) and not any(
                self.trigger_limiters[t].try_acquire() for t in limited):
            stats.declined("trigger_rate")
            return False
        if not self.profile_limiter.try_acquire():
            stats.declined("rate")
            return False
        return True

    # ------------------------------------------------------------------ promotion (watchdog thread)
    def promote(self, handle: "RequestHandle", now: float) -> bool:
        """The request ran past ``slow_threshold``: sample it for the rest of its life."""
        wd = self.watchdog
        with wd.lock:
            if handle._tail_state != REGISTERED:
                return False
            handle._tail_state = PROMOTING
        head_ms = round((now - (handle._t0 or now)) * 1000.0, 3)
        ok = False
        try:
            decision = self.admit(["slow"])
            if decision.profile:
                hz = decision.hz or self.config.sample_hz
                session = handle.session
                if session is not None and handle._recording:
                    session.set_rate(hz)
                    session.add_trigger("slow")
                    session.attributes["otelprof.promoted_after_ms"] = head_ms
                    self._recording.discard(session)
                    ok = True
                elif session is None and handle._target is not None:
                    session = handle.start_profile(("slow",), hz=hz, target=handle._target)
                    if session is not None:
                        session.attributes["otelprof.unsampled_head_ms"] = head_ms
                        session.attributes["otelprof.promoted_after_ms"] = head_ms
                        ok = True
        except Exception:
            self.profiler._fail_once("promote", "otelprof: promoting a slow request failed")
        if ok:
            self.profiler.stats_recorder.incr("promotions")
        with wd.lock:
            finished = handle._tail_state == DONE
            if not finished:
                handle._tail_state = PROMOTED
        if finished and ok and not handle._recording:
            # the request ended while we were starting its profile: finish it for it
            handle._finalize()
        return ok

    # ------------------------------------------------------------------ governor
    def _own_cpu_ns(self) -> int:
        """Sampler thread + export worker(s) + this policy's watchdog thread CPU, ns."""
        from ..overhead import profiler_cpu_ns  # sampler + export workers

        return self.watchdog.cpu_ns_self + profiler_cpu_ns()

    def _governor_changed(self, level: int) -> None:
        """Apply a new rate to the running profiles of this profiler."""
        stats = self.profiler.stats_recorder
        stats.incr("governor_steps")
        base = self.config.sample_hz
        for session in list(self.profiler._active):
            if session in self._recording:
                session.set_rate(self.governor.hz(self.recorder_hz or base, min_hz=1))
            else:
                session.set_rate(self.governor.hz(base))

    def state(self) -> dict[str, Any]:
        """Trigger state for stats/debugging."""
        now = self.clock()
        trig = self.cpu_trigger
        return {
            "armed_routes": {f"{t}:{r}": round(left, 3) for (t, r), left in self.arming.armed(now).items()},
            "windows_open": len(self.windows.open_windows(now)),
            "cpu_utilisation": None if trig is None else trig.last_utilisation,
            "high_cpu_active": bool(trig is not None and trig.active(now)),
            "governor_level": self.governor.level,
            "overhead": self.governor.overhead,
            "in_flight_watched": len(self.watchdog),
            "recording": len(self._recording),
        }


def _current_target() -> tuple[int, Any, Any]:
    """(thread id, task, loop) of the caller: what promotion must attach later."""
    ident = threading.get_ident()
    loop = _get_running_loop()
    if loop is not None:
        try:
            task = _current_task(loop)
        except RuntimeError:
            task = None
        if task is not None:
            return (ident, task, loop)
    return (ident, None, None)


try:
    from asyncio import current_task as _current_task
    from asyncio.events import _get_running_loop
except ImportError:  # pragma: no cover
    def _get_running_loop() -> Any:  # type: ignore[misc]
        return None

    def _current_task(loop: Any = None) -> Any:  # type: ignore[misc]
        return None
