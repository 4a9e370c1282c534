"""The entry decision: should this request be profiled from its start, and may it?

Order of evaluation (:meth:`EntryDecider.decide`):

1. exclusions (``excluded_urls``) — never profiled, never recorded, never arm a route;
2. the custom gate ``should_profile(info)`` — True forces (trigger ``custom``),
   False vetoes, None defers;
3. candidate triggers, all evaluated (a profile may carry several):
   ``header`` (authenticated with ``header_secret`` when set, rate-limited by
   ``max_header_profiles_per_minute``), ``probability`` (from the trace id when
   there is one), ``on_demand`` (an open window), ``slow`` / ``error`` (the route
   was armed by a slow / failing request), ``high_cpu`` (the process CPU trigger
   is active);
4. per-trigger sub-limits (``trigger_limits``), then the global budgets:
   the overhead governor (``max_overhead``), ``max_concurrent_profiles`` and
   ``max_profiles_per_minute`` (header and custom profiles are exempt from the
   per-minute budget; the header has its own).  The concurrency slot itself is
   taken atomically when the profile starts (:meth:`EntryDecider.claim`), so
   requests deciding at the same moment can never overshoot the cap.

Most requests carry no header and meet no open window, armed route or CPU alarm:
:meth:`EntryDecider.screen` answers for them from the header value and the trace
id alone, without allocating anything.  The full URL is built only when an
exclusion pattern exists and the request would otherwise be profiled (the late
triggers check exclusions again before they act).

Declines are counted per reason in ``Profiler.stats()["declined"]``.
"""

from __future__ import annotations

import enum
import hmac
import random
import re
from typing import Callable, Optional

from .cpu import CpuMonitor, CpuTrigger, get_cpu_monitor
from .governor import Governor
from .limits import ConcurrencySlots, PerMinuteLimiter
from .request import Decision, PolicyHost, RequestInfo
from .triggers import OnDemandWindows, RouteArming

__all__ = ["EntryDecider", "Screen", "TRIGGERS"]

TRIGGERS = ("header", "probability", "slow", "error", "high_cpu", "on_demand", "custom")
#: header values that ask for a profile when no ``header_secret`` is set
HEADER_YES = frozenset({"1", "true", "yes", "on"})
_TRACE_ID_MAX = (1 << 64) - 1


class Screen(enum.IntEnum):
    """The cheap first answer for a request (:meth:`EntryDecider.screen`)."""

    SKIP = 0  #: not profiled and nothing watches it
    WATCH = 1  #: not profiled from its start; the late triggers watch it
    DECIDE = 2  #: some trigger may select it: make the full decision
    DECIDE_SAMPLED = 3  #: the probability trigger selected it: make the full decision


_SKIP, _WATCH, _DECIDE, _DECIDE_SAMPLED = Screen.SKIP, Screen.WATCH, Screen.DECIDE, Screen.DECIDE_SAMPLED


class EntryDecider:
    """Decides at entry and keeps the budgets.  ``clock`` (monotonic seconds) and
    ``rng`` are injectable for deterministic tests."""

    def __init__(self, host: PolicyHost, *, clock: Callable[[], float], rng: random.Random,
                 arming: RouteArming, windows: OnDemandWindows, governor: Governor,
                 cpu_trigger: Optional[CpuTrigger], cpu_monitor: Optional[CpuMonitor],
                 trigger_limits: dict[str, int], watch_unselected: bool, record_all: bool) -> None:
        cfg = host.config
        self.host = host
        self.config = cfg
        self.stats = host.stats_recorder
        self.clock = clock
        self.header_name = cfg.header.lower()
        self._secret = cfg.header_secret.encode("utf-8", "surrogatepass") if cfg.header_secret else None
        self._excluded = [re.compile(p) for p in cfg.excluded_urls]
        self.header_limiter = PerMinuteLimiter(cfg.max_header_profiles_per_minute, clock=clock)
        self.profile_limiter = PerMinuteLimiter(cfg.max_profiles_per_minute, clock=clock)
        self.trigger_limiters = {name: PerMinuteLimiter(n, clock=clock) for name, n in trigger_limits.items()}
        self.slots = ConcurrencySlots(cfg.max_concurrent_profiles)
        self._random = rng
        self.arming = arming
        self.windows = windows
        self.governor = governor
        self.cpu_trigger = cpu_trigger
        self._cpu_monitor = cpu_monitor
        self._cpu_injected = cpu_monitor is not None
        self._cpu_started = cpu_trigger is None
        self.probability = cfg.probability
        # a trace id's low 64 bits under this bound: selected (a trace-id-ratio sampler's rule)
        self._ratio_bound = cfg.probability * (_TRACE_ID_MAX + 1)
        #: the probability trigger needs the request's trace id (0 < probability < 1)
        self.needs_trace = 0.0 < cfg.probability < 1.0
        self._unsampled_ok = cfg.profile_unsampled_traces
        self._gate = cfg.should_profile
        # requests that every time need the full decision (a gate to ask, a recording to start)
        # a disabled profiler decides for nobody (the header is ignored too)
        self._record_all = record_all
        self._always_decide = cfg.enabled and (self._gate is not None or record_all)
        self._unselected = _SKIP
        self.watch_unselected = watch_unselected

    # ------------------------------------------------------------------ the cheap first answer
    def screen(self, header_value: Optional[str], trace_id: Optional[int], sampled: bool) -> Screen:
        """SKIP / WATCH / DECIDE / DECIDE_SAMPLED from what every integration has at
        hand (the trigger header's value, the trace id and flag); allocates nothing.
        ``trace_id`` is only looked at when :attr:`needs_trace`."""
        if header_value is not None or self._always_decide or self.windows.windows or self.arming.count:
            return _DECIDE
        trig = self.cpu_trigger
        if trig is not None and (trig.firing or not self._cpu_started):
            return _DECIDE
        p = self.probability
        if p > 0.0 and (sampled or self._unsampled_ok or trace_id is None):
            if p >= 1.0:
                return _DECIDE_SAMPLED
            if trace_id is not None:
                if (trace_id & _TRACE_ID_MAX) < self._ratio_bound:
                    return _DECIDE_SAMPLED
            elif self._random.random() < p:
                return _DECIDE_SAMPLED
        return self._unselected

    @property
    def watch_unselected(self) -> bool:
        """True when a request no trigger selects is still watched (late triggers on)."""
        return self._unselected is _WATCH

    @watch_unselected.setter
    def watch_unselected(self, value: bool) -> None:
        self._unselected = _WATCH if value and self.config.enabled else _SKIP

    # ------------------------------------------------------------------ pieces
    def excluded(self, info: RequestInfo) -> bool:
        if not self._excluded:
            return False
        target = info.url or info.path
        return any(p.search(target) for p in self._excluded)

    def header_valid(self, value: Optional[str]) -> bool:
        """True when ``value`` (the trigger header's value, or None) asks for a profile."""
        if value is None:
            return False
        value = value.strip()
        if self._secret is not None:
            # any text compares, even one with lone surrogates (never raises)
            return hmac.compare_digest(value.encode("utf-8", "surrogatepass"), self._secret)
        return value.lower() in HEADER_YES

    def probability_hit(self, info: RequestInfo) -> bool:
        """Trace-id ratio when there is a trace (same trace, same answer in every
        service), random otherwise."""
        p = self.probability
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        link = info.link
        if link is not None and link.trace_id:
            return (link.trace_id & _TRACE_ID_MAX) < self._ratio_bound
        return self._random.random() < p

    def chance(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        return self._random.random() < rate

    def _cpu_firing(self) -> bool:
        if not self._cpu_started:
            self._start_cpu_monitor()
        trig = self.cpu_trigger
        return trig is not None and trig.firing

    def _start_cpu_monitor(self) -> None:
        self._cpu_started = True
        if self._cpu_injected or self.cpu_trigger is None:
            return
        try:
            mon = self._cpu_monitor
            if mon is None:
                mon = self._cpu_monitor = get_cpu_monitor()
                mon.subscribe(self.cpu_trigger)
            mon.ensure_running()
        except Exception:
            self.host.report_failure("cpu-monitor", "otelprof: could not start the CPU monitor")

    def after_fork(self) -> None:
        """In a child process the CPU monitor thread is started again on first use."""
        self._cpu_started = self.cpu_trigger is None

    # ------------------------------------------------------------------ decision
    def decide(self, info: RequestInfo, probability_hit: Optional[bool] = None) -> Decision:
        """The entry decision (see the module docstring).  ``probability_hit`` is the
        answer :meth:`screen` already drew for the probability trigger, if any."""
        stats = self.stats
        if not self.host.enabled:
            return Decision.no("disabled")
        forced: Optional[bool] = None
        gate = self._gate
        if gate is not None:
            if self.excluded(info):  # excluded requests never reach the gate
                stats.declined("excluded")
                return Decision.no("excluded")
            try:
                forced = gate(info)
            except Exception:
                forced = None
                stats.incr("should_profile_errors")
            if forced is False:
                stats.declined("custom")
                return Decision.no("custom")

        triggers: list[str] = []
        header = self.header_valid(info.header(self.header_name))
        if forced:
            triggers.append("custom")
        if probability_hit is None:
            link = info.link
            unsampled = link is not None and not link.sampled and not self._unsampled_ok
            probability_hit = not unsampled and self.probability_hit(info)
        if probability_hit:
            triggers.append("probability")
        now = self.clock()
        if self.windows:
            for w in self.windows.match(info.route, info.path, now):
                if self.chance(w.probability):
                    triggers.append("on_demand")
                    break
        if self.arming:
            for trig, rate in self.arming.match(info, now):
                if trig not in triggers and self.chance(rate):
                    triggers.append(trig)
        if self.cpu_trigger is not None and self._cpu_firing() and now < self.cpu_trigger.active_until:
            triggers.append("high_cpu")
        if not triggers and not header:
            if self._record_all and gate is None and self.excluded(info):  # the recorder records every other one
                stats.declined("excluded")
                return Decision.no("excluded")
            return Decision.no("not_selected")
        # the URL is built only now, when some trigger wants the request
        if gate is None and self.excluded(info):
            stats.declined("excluded")
            return Decision.no("excluded")
        if header:
            if self.header_limiter.try_acquire():
                triggers.insert(1 if forced else 0, "header")
            else:
                stats.declined("header_rate")
        if not triggers:
            return Decision.no("not_selected", header)
        return self.admit(triggers, header_requested=header)

    def admit(self, triggers: list[str], header_requested: bool = False) -> Decision:
        """Apply the sub-limits and global budgets to a request some trigger selected.
        Before starting the profile of a yes, take its slot with :meth:`claim`."""
        stats = self.stats
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
        if not self.slots.available():
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

    def claim(self, decision: Decision) -> bool:
        """Take the concurrency slot for the profile of ``decision`` (a yes), atomically;
        False (counted as a ``concurrency`` decline) when another request took the
        last one since the decision.  Then pass the profile's session to :meth:`bind`."""
        if self.slots.take():
            return True
        self.stats.declined("concurrency")
        if "header" in decision.triggers:
            self.header_limiter.refund()
        return False

    def bind(self, session: object) -> None:
        """The profile a :meth:`claim` was for started (``session``) or not (None)."""
        if session is None:
            self.slots.give_back()
        else:
            self.slots.hold(session)

    def admit_kept(self, triggers: list[str]) -> bool:
        """Budget check for a recording kept at the end (it already ran: only rates apply)."""
        stats = self.stats
        limited = [t for t in triggers if t in self.trigger_limiters]
        if limited and len(limited) == len(triggers) and not any(
                self.trigger_limiters[t].try_acquire() for t in limited):
            stats.declined("trigger_rate")
            return False
        if not self.profile_limiter.try_acquire():
            stats.declined("rate")
            return False
        return True

