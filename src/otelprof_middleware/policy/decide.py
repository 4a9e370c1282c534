"""The entry decision: should this request be profiled from its start, and may it?

Order of evaluation (:meth:`EntryDecider.decide`):

1. exclusions (``excluded_urls``) — never profiled, never recorded, never arm a route;
2. the custom gate ``should_profile(info)`` — True forces (trigger ``custom``),
   False vetoes, None defers;
3. candidate triggers, all evaluated (a profile may carry several):
   ``header`` (the header may ask: with ``header_secret`` its value must be the
   secret; without one, ``header_trust`` decides: by default only while the
   framework runs in debug mode), ``probability`` (from the trace id when there
   is one and ``trace_id_ratio`` is on), ``on_demand`` (an open
   window), ``slow`` / ``error`` (the route was armed by a slow / failing
   request), ``high_cpu`` (the process CPU trigger is active);
4. the budgets: the overhead governor (``max_overhead``), a free slot of
   ``max_concurrent_profiles``, then the per-minute budgets, each a sliding
   window (at most N in any 60 s, :mod:`.limits`): header profiles have their own
   (``max_header_profiles_per_minute``) and custom ones none; the automatic
   triggers share ``max_profiles_per_minute``, each within its share
   (``trigger_limits``; by default probability and high CPU at most half, so the
   other half is kept for slow, error and high-CPU profiles, whatever trace ids
   clients choose).  The concurrency slot itself is taken atomically when the
   profile starts (:meth:`EntryDecider.claim`), so requests deciding at the same
   moment can never overshoot the cap.

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

from .._safety import LogOnce
from ..config import PROFILE_TYPES
from .cpu import CpuMonitor, CpuTrigger, get_cpu_monitor
from .governor import Governor
from .limits import ConcurrencySlots, ProfileBudget, Stamp, WindowLimiter, default_shares, give_back
from .request import Decision, PolicyHost, RequestInfo
from .triggers import OnDemandWindows, RouteArming

__all__ = ["EntryDecider", "Screen", "TRIGGERS"]

TRIGGERS = ("header", "probability", "slow", "error", "high_cpu", "on_demand", "custom")
#: header values that ask for a profile when no ``header_secret`` is set
HEADER_YES = frozenset({"1", "true", "yes", "on"})
#: header values that say "no profile" (never logged as ignored)
HEADER_NO = frozenset({"", "0", "false", "no", "off"})
#: ``header_trust`` values: without a ``header_secret``, is the header honoured?
#: ``debug``: only while the framework runs in debug mode; ``any``: from anyone;
#: ``off``: never (with a secret too)
HEADER_TRUST = ("debug", "any", "off")
#: the header's way to ask for profile types: ``<value>; types=alloc,lock``
TYPES_PARAM = "types="


def split_header_types(value: str) -> tuple[str, Optional[str]]:
    """``("s3cret", "alloc,lock")`` from ``"s3cret; types=alloc,lock"``; ``(value,
    None)`` when the value names no types.  The last ``;`` splits, so a secret may
    itself contain one."""
    head, sep, tail = value.rpartition(";")
    if sep:
        tail = tail.strip()
        if tail[:len(TYPES_PARAM)].lower() == TYPES_PARAM:
            return head.strip(), tail[len(TYPES_PARAM):]
    return value, None
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
        self.header_trust = cfg.header_trust
        self._header_log = LogOnce()
        self._excluded = [re.compile(p) for p in cfg.excluded_urls]
        self.header_limiter = WindowLimiter(cfg.max_header_profiles_per_minute, clock=clock)
        shares = default_shares(cfg.max_profiles_per_minute)
        shares.update(trigger_limits)
        self.budget = ProfileBudget(cfg.max_profiles_per_minute, shares, clock=clock)
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
        #: the probability coin is the trace id (else a random draw per request)
        self.by_trace_id = cfg.trace_id_ratio
        self._unsampled_ok = cfg.profile_unsampled_traces
        #: the probability trigger needs the request's trace id or its sampled flag
        self.needs_trace = 0.0 < cfg.probability < 1.0 and (self.by_trace_id or not self._unsampled_ok)
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
            if trace_id is None or not self.by_trace_id:
                if self._random.random() < p:
                    return _DECIDE_SAMPLED
            elif (trace_id & _TRACE_ID_MAX) < self._ratio_bound:
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
    @property
    def has_exclusions(self) -> bool:
        """True when ``excluded_urls`` lists patterns (a decision then needs the URL)."""
        return bool(self._excluded)

    def excluded(self, info: RequestInfo) -> bool:
        if not self._excluded:
            return False
        target = info.url or info.path
        return any(p.search(target) for p in self._excluded)

    def header_asks(self, info: RequestInfo) -> Optional[tuple[str, ...]]:
        """The extra profile types (maybe none: ``()``) when the request's trigger
        header asks for a profile and may (see :data:`HEADER_TRUST`), else None.  An
        ignored header is logged once per reason, with the option that would open
        it, and counted as ``header_ignored``.  The value may name types:
        ``<secret or 1>; types=alloc,lock``, or without a secret just
        ``alloc,lock`` (:meth:`header_types` keeps the allowed ones)."""
        value = info.header(self.header_name)
        if value is None:
            return None
        value = value.strip()
        trust = self.header_trust
        if trust == "off":
            return self._ignore_header("off", "header_trust='off'", "set header_trust to 'debug' or 'any'")
        if self._secret is not None:
            # any text compares, even one with lone surrogates (never raises)
            if hmac.compare_digest(value.encode("utf-8", "surrogatepass"), self._secret):
                return ()
            head, types = split_header_types(value)
            if types is not None and hmac.compare_digest(head.encode("utf-8", "surrogatepass"), self._secret):
                return self.header_types(types)
            return self._ignore_header("secret", "its value is not the header_secret (the value is not shown)",
                                       "send the header_secret as the header's value")
        value, types = split_header_types(value.lower())
        if value in HEADER_NO and types is None:
            return None  # it says no
        if trust != "any":
            debug = info.debug_mode()
            if not debug:
                why = ("this app has no debug mode (a plain WSGI/ASGI app)" if debug is None
                       else f"the app is not in debug mode ({info.debug_flag} is False)")
                key = "debug:" + (info.debug_flag if debug is not None else "")
                return self._ignore_header(key, "no header_secret is set and " + why,
                                           "set header_secret (OTELPROF_HEADER_SECRET) and send it as the "
                                           "header's value, or header_trust='any' (OTELPROF_HEADER_TRUST=any) to "
                                           "honour the header from anyone")
        if value in HEADER_YES:
            return self.header_types(types) if types is not None else ()
        if types is None and any(t.strip() in PROFILE_TYPES for t in value.split(",")):
            return self.header_types(value)  # the short form: the types alone ask
        return self._ignore_header("value", "its value is not one of 1, true, yes, on (no header_secret is set)",
                                   "send 1, or set header_secret and send that")

    def header_types(self, text: str) -> tuple[str, ...]:
        """The types of a header's list that ``header_profile_types`` (or
        ``profile_types``) allows; unknown and refused ones are logged once and left
        out (the profile still starts).  ``cpu``/``wall`` are always measured."""
        allowed = self.config.header_profile_types
        out = []
        for item in text.split(","):
            name = item.strip().lower()
            if not name or name in ("cpu", "wall"):
                continue
            if name not in PROFILE_TYPES:
                # one key for all unknown names: client text never grows the log-once table
                self._header_log("type-unknown", "otelprof: the %s header asked for unknown profile types "
                                 "(first: %.40r); they are ignored (types: %s)", self.config.header, name,
                                 ", ".join(PROFILE_TYPES))
            elif name in allowed or name in self.config.profile_types:
                out.append(name)
            else:
                self._header_log("type-refused:" + name, "otelprof: the %s header asked for the %r profile type, "
                                 "which header_profile_types does not allow; ignored (add it to "
                                 "header_profile_types, OTELPROF_HEADER_PROFILE_TYPES, to allow it)",
                                 self.config.header, name)
        if "heap" in out:
            out.append("alloc")
        return tuple(t for t in PROFILE_TYPES if t in out)

    def _ignore_header(self, key: str, why: str, opens: str) -> Optional[tuple[str, ...]]:
        """Count and log (once per ``key``) an ignored header; None (it asks nothing)."""
        self.stats.declined("header_ignored")
        self._header_log(key, "otelprof: ignored the %s header: %s; to profile such requests, %s",
                         self.config.header, why, opens)
        return None

    def probability_hit(self, info: RequestInfo) -> bool:
        """Trace-id ratio when there is a trace (same trace, same answer in every
        service) and ``trace_id_ratio`` is on, random otherwise."""
        p = self.probability
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        link = info.link
        if self.by_trace_id and link is not None and link.trace_id:
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
        header_types = self.header_asks(info)
        header = header_types is not None
        if forced:
            triggers.append("custom")
        if probability_hit is None:
            link = info.link
            unsampled = link is not None and not link.sampled and not self._unsampled_ok
            probability_hit = not unsampled and self.probability_hit(info)
        if probability_hit:
            triggers.append("probability")
        now = self.clock()
        windows = self.windows
        if windows:
            # a window for a route template: ask the framework's router (as route arming does)
            route = info.resolve_route() if windows.for_routes else info.route
            for w in windows.match(route, info.path, now):
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
            triggers.insert(1 if forced else 0, "header")
        return self.admit(triggers, header_requested=header, header_types=header_types or ())

    def admit(self, triggers: list[str], header_requested: bool = False,
              header_types: tuple[str, ...] = ()) -> Decision:
        """Apply the budgets to a request some trigger selected: the overhead
        governor, a free concurrency slot (a hint), then the per-minute budgets (the
        header's own, or the automatic triggers' shares and total).  Before starting
        the profile of a yes, take its slot with :meth:`claim`."""
        stats = self.stats
        gov = self.governor
        if gov.enabled:
            gov.update()
            if gov.declining:
                stats.declined("overhead")
                return Decision(False, declined="overhead", header_requested=header_requested)
        if not self.slots.available():
            stats.declined("concurrency")
            return Decision(False, declined="concurrency", header_requested=header_requested)
        stamps: tuple[Stamp, ...] = ()
        if "header" in triggers:
            stamp = self.header_limiter.take()
            if stamp is not None:
                stamps = (stamp,)
            else:
                stats.declined("header_rate")
                triggers = [t for t in triggers if t != "header"]
                if not triggers:
                    return Decision.no("not_selected", header_requested)
        if not stamps and "custom" not in triggers:
            # automatic triggers: the exhausted shares drop out, one share and the total pay
            # (one trigger, the common case: its share is checked by take() itself)
            within = triggers if len(triggers) == 1 else self.budget.within_shares(triggers)
            taken = self.budget.take(within) if within else None
            if taken is None:
                # "rate": the whole budget is used up; "trigger_rate": the triggers' shares are
                reason = "trigger_rate" if self.budget.total.has_room() else "rate"
                stats.declined(reason)
                return Decision(False, declined=reason, header_requested=header_requested)
            triggers, stamps = within, taken
        expose = self.config.expose_profile_id
        if expose is None:
            expose = "header" in triggers
        hz = gov.hz(self.config.sample_hz) if gov.level else None
        # the types the header asked for come with its profile only (not with another trigger's)
        return Decision(True, tuple(triggers), header_requested=header_requested, expose_profile_id=expose, hz=hz,
                        stamps=stamps, profile_types=header_types if "header" in triggers else ())

    def claim(self, decision: Decision) -> bool:
        """Take the concurrency slot for the profile of ``decision`` (a yes), atomically;
        False (counted as a ``concurrency`` decline, its budget given back) when
        another request took the last one since the decision.  Then pass the
        profile's session to :meth:`bind`."""
        if self.slots.take():
            return True
        self.stats.declined("concurrency")
        give_back(decision.stamps)
        return False

    def bind(self, session: object) -> None:
        """The profile a :meth:`claim` was for started (``session``) or not (None)."""
        if session is None:
            self.slots.give_back()
        else:
            self.slots.hold(session)

    def admit_kept(self, triggers: list[str]) -> bool:
        """Budget check for a recording kept at the end (it already ran: only the
        per-minute budgets apply)."""
        within = self.budget.within_shares(triggers)
        if not within or self.budget.take(within) is None:
            self.stats.declined("trigger_rate" if self.budget.total.has_room() else "rate")
            return False
        return True
