"""Should this request be profiled?  :class:`Policy` composes the parts, one policy
per profiler (``Profiler.policy``), shared by every integration that uses it:

* :mod:`.decide` — the entry decision and the budgets;
* :mod:`.tail` — the late triggers (promotion with the watchdog, the flight
  recorder, route arming at the end of a request);
* :mod:`.triggers` — armed routes and on-demand windows;
* :mod:`.cpu` and :mod:`.governor` — the high-CPU trigger and the overhead governor.

:meth:`Policy.state` gives a read-only snapshot of all of it (:class:`PolicyState`)
for stats pages and debugging.

Everything here depends only on :class:`~.request.PolicyHost` (what it needs of the
engine) and :class:`~.request.ProfilableRequest` (what it needs of a request); it
imports nothing from the integrations and nothing private from any module.
"""

from __future__ import annotations

import random
import time
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from .._safety import at_fork_reinit
from ..config import parse_trigger_limits
from ..overhead import profiler_cpu_ns
from .cpu import CpuMonitor, CpuTrigger
from .decide import TRIGGERS, EntryDecider
from .governor import Governor
from .request import Decision, PolicyHost, RequestInfo
from .tail import LateTriggers
from .triggers import OnDemandWindow, OnDemandWindows, RouteArming
from .watchdog import Watchdog

__all__ = ["Policy", "PolicyState", "OpenWindow", "TRIGGERS"]


class Policy:
    """Decides at entry, watches while the request runs, judges at the end.

    ``clock`` (monotonic seconds), ``rng`` (``random.Random``), ``cpu_monitor`` and
    ``governor_sources`` (``(own_cpu_ns, process_cpu_ns)`` callables) are injectable
    for deterministic tests; ``start_threads=False`` keeps the watchdog thread off
    (call ``policy.watchdog.scan()`` by hand).  A test installs its policy with
    ``profiler.policy = Policy(profiler, ...)`` before any middleware is built."""

    def __init__(
        self,
        host: PolicyHost,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        cpu_monitor: Optional[CpuMonitor] = None,
        governor_sources: Optional[tuple[Callable[[], int], Callable[[], int]]] = None,
        start_threads: bool = True,
    ) -> None:
        cfg = host.config
        self.host = host
        self.config = cfg
        self.clock = clock
        self.arming = RouteArming()
        self.windows = OnDemandWindows(clock)
        self.cpu_trigger: Optional[CpuTrigger] = None
        if cfg.cpu_trigger:
            self.cpu_trigger = CpuTrigger(cfg.cpu_threshold, cfg.cpu_window, cfg.cpu_profile_duration,
                                          cfg.cpu_cooldown)
            self.cpu_trigger.alive = _profiler_alive(host)
            if cpu_monitor is not None:
                cpu_monitor.subscribe(self.cpu_trigger)
        if governor_sources is None:
            governor_sources = (self._own_cpu_ns, time.process_time_ns)
        self.governor = Governor(cfg.max_overhead, governor_sources[0], governor_sources[1], clock)
        self.governor.on_change = self._governor_changed
        self.entry = EntryDecider(host, clock=clock, rng=rng if rng is not None else random.Random(),
                                  arming=self.arming, windows=self.windows, governor=self.governor,
                                  cpu_trigger=self.cpu_trigger, cpu_monitor=cpu_monitor,
                                  trigger_limits=parse_trigger_limits(cfg.trigger_limits),
                                  watch_unselected=False, record_all=bool(cfg.tail_sampling_hz))
        self.late = LateTriggers(host, self.entry, self.arming, clock=clock, start_threads=start_threads)
        self.entry.watch_unselected = self.late.enabled
        at_fork_reinit(self._after_fork)

    # ------------------------------------------------------------------ the parts, by name
    @property
    def profiler(self) -> PolicyHost:
        return self.host

    @property
    def watchdog(self) -> Watchdog:
        return self.late.watchdog

    @property
    def header_name(self) -> str:
        """The trigger header, lower case."""
        return self.entry.header_name

    def decide(self, info: RequestInfo) -> Decision:
        """The entry decision for ``info`` (:meth:`.decide.EntryDecider.decide`)."""
        return self.entry.decide(info)

    def admit(self, triggers: list[str], header_requested: bool = False) -> Decision:
        return self.entry.admit(triggers, header_requested=header_requested)

    # ------------------------------------------------------------------ on demand
    def enable_window(self, seconds: float, probability: float = 1.0, route: Optional[str] = None) -> OnDemandWindow:
        """Profile matching requests (all, or those of ``route``: a route template or a
        path) with ``probability`` for ``seconds`` (capped by ``max_window``)."""
        window = self.windows.open(seconds, probability, route, self.config.max_window)
        self.host.stats_recorder.incr("windows_opened")
        return window

    # ------------------------------------------------------------------ governor
    def _own_cpu_ns(self) -> int:
        """Sampler thread + export worker(s) + this policy's watchdog thread CPU, ns."""
        return self.late.watchdog.cpu_ns_self + profiler_cpu_ns()

    def _governor_changed(self, level: int) -> None:
        """Apply a new rate to the running profiles this policy started."""
        self.host.stats_recorder.incr("governor_steps")
        base = self.config.sample_hz
        for session in self.entry.slots.holders():
            session.set_rate(self.governor.hz(base), governor_level=level)
        for session in self.late.recording.holders():
            session.set_rate(self.governor.hz(self.late.recorder_hz or base, min_hz=1), governor_level=level)

    def state(self) -> "PolicyState":
        """A read-only snapshot of the trigger state, for stats pages and debugging
        (see :class:`PolicyState`)."""
        now = self.clock()
        trig = self.cpu_trigger
        entry = self.entry
        budgets = {"header": (entry.header_limiter.used(), entry.header_limiter.limit)}
        budgets.update(entry.budget.usage())
        return PolicyState(
            armed_routes=MappingProxyType({f"{t}:{r}": round(left, 3)
                                           for (t, r), left in self.arming.armed(now).items()}),
            windows=tuple(OpenWindow(w.route, w.probability, round(w.until - now, 3))
                          for w in self.windows.open_windows(now)),
            cpu_utilisation=None if trig is None else trig.last_utilisation,
            high_cpu_active=bool(trig is not None and trig.active(now)),
            governor_level=self.governor.level,
            overhead=self.governor.overhead,
            in_flight_watched=len(self.late.watchdog),
            profiling=len(entry.slots),
            recording=len(self.late.recording),
            budgets=MappingProxyType(budgets),
        )

    def close(self) -> None:
        """The profiler shut down: watch no more requests, let the watchdog thread end."""
        self.entry.watch_unselected = False
        self.late.watchdog.stop()

    def _after_fork(self) -> None:
        # locks, limiters, arming, windows, governor, watchdog and slots re-create their
        # own state through their fork hooks; these belong to the policy itself
        self.entry.after_fork()
        self.late.after_fork()


@dataclass(frozen=True)
class OpenWindow:
    """An open on-demand window, as :meth:`Policy.state` shows it."""

    route: Optional[str]  #: the route template or path it matches (None: every request)
    probability: float
    seconds_left: float


@dataclass(frozen=True)
class PolicyState:
    """What the request policy is doing right now (``profiler.policy.state()``).
    Read-only: a snapshot, changing it changes nothing.  :meth:`as_dict` gives
    plain data (JSON-ready) for a stats page."""

    #: ``{"trigger:route template or path": seconds left}`` (e.g. ``"error:/items/{id}"``)
    armed_routes: Mapping[str, float]
    #: the open on-demand windows (``profiler.enable_window``)
    windows: tuple[OpenWindow, ...]
    #: the process CPU utilisation last read (0-1 of the cores available), None
    #: with the high-CPU trigger off or before the first reading
    cpu_utilisation: Optional[float]
    #: the high-CPU trigger is profiling requests right now
    high_cpu_active: bool
    #: the overhead governor's level: 0 = full rate, 1-4 = rate halved that many
    #: times, 5 = new profiles declined
    governor_level: int
    #: the profiler's own CPU share of the process CPU the governor last measured
    overhead: Optional[float]
    #: requests the late triggers watch (slow promotion) right now
    in_flight_watched: int
    #: request profiles running (``max_concurrent_profiles`` counts these)
    profiling: int
    #: flight recordings running (``tail_sampling_hz``)
    recording: int
    #: ``{"header" | "total" | trigger: (profiles started in the last 60 s, limit)}``:
    #: the header's budget, the automatic triggers' total and each trigger's share
    budgets: Mapping[str, tuple[int, int]]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain dicts, lists and numbers."""
        return {
            "armed_routes": dict(self.armed_routes),
            "windows": [{"route": w.route, "probability": w.probability, "seconds_left": w.seconds_left}
                        for w in self.windows],
            "cpu_utilisation": self.cpu_utilisation,
            "high_cpu_active": self.high_cpu_active,
            "governor_level": self.governor_level,
            "overhead": self.overhead,
            "in_flight_watched": self.in_flight_watched,
            "profiling": self.profiling,
            "recording": self.recording,
            "budgets": {k: {"used": used, "limit": limit} for k, (used, limit) in self.budgets.items()},
        }


def _profiler_alive(host: PolicyHost) -> Callable[[], bool]:
    """False once the profiler is gone or shut down (the CPU monitor then drops the trigger)."""
    ref = weakref.ref(host)

    def alive() -> bool:
        h = ref()
        return h is not None and h.enabled

    return alive

