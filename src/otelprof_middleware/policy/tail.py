"""Late triggers: what happens to a request after the entry decision.

* **In-flight slow promotion**: a request still running past ``slow_threshold``
  is promoted by the watchdog thread (:mod:`.watchdog`) and sampled for the rest
  of its life (thread-pool work it hands off included, see the integrations).
* **The flight recorder** (``tail_sampling_hz``): every request is sampled at a low
  rate from its start; at the end only slow or failed ones are kept.
* **Route arming**: a slow or failing request arms its route template (or, with
  no template, its literal path) for ``slow_profile_duration`` /
  ``error_profile_duration`` (see :mod:`.triggers`).

The hand-over between a request and the watchdog is one small state machine
(:class:`TailState`), changed only here, under :attr:`LateTriggers.lock`:

=============  =========================================  ===========================
state          meaning                                    next
=============  =========================================  ===========================
``IDLE``       not registered with the watchdog           ``REGISTERED``
``REGISTERED`` the watchdog may promote it                ``PROMOTING`` (watchdog),
                                                          ``DONE`` (request ended)
``PROMOTING``  the watchdog is starting its profile       ``PROMOTED``, ``DONE``
``PROMOTED``   the watchdog is done with it               ``DONE``
``DONE``       the request ended                          —
=============  =========================================  ===========================

The request side registers with one dict insert and unregisters with one
``dict.pop`` (no lock).  Only when that pop finds nothing (the watchdog claimed
the request) does it take the lock: if the watchdog is still ``PROMOTING``, the
request leaves its end to the watchdog, which finishes the profile it just
started, so a profile is never started for a request that already ended nor left
running after it.
"""

from __future__ import annotations

import enum
import threading
import weakref
from typing import Callable, Optional

from .decide import EntryDecider
from .limits import ConcurrencySlots
from .request import PolicyHost, ProfilableRequest
from .triggers import RouteArming
from .watchdog import Watchdog

__all__ = ["TailState", "TailTicket", "LateTriggers", "RECORDER_MAX_INFLIGHT"]

# Flight recorder: at most this many requests recorded at once (more in-flight
# requests simply run unrecorded), so its cost is bounded whatever the concurrency.
RECORDER_MAX_INFLIGHT = 256

# declines after which nothing watches the request
_NO_TAIL = frozenset({"excluded", "custom", "disabled"})


class TailState(enum.IntEnum):
    IDLE = 0
    REGISTERED = 1
    PROMOTING = 2
    PROMOTED = 3
    DONE = 4


_ref = weakref.ref
_REGISTERED, _PROMOTING, _PROMOTED, _DONE = (TailState.REGISTERED, TailState.PROMOTING, TailState.PROMOTED,
                                             TailState.DONE)


class TailTicket:
    """The late triggers' record of one request.  The integrations' request handle
    inherits it, so a watched request costs one allocation; only this module changes
    these fields (class attributes are the defaults, so nothing is set for a request
    the late triggers never see).

    ``tail_t0``: when the late triggers started watching (policy clock; None: not
    watched); ``tail_state``: see the module docstring; ``recording``: the profile
    is a flight recording (kept only if the request turns out slow or failed)."""

    tail_state: TailState = TailState.IDLE
    tail_t0: Optional[float] = None
    recording: bool = False


class LateTriggers:
    """Promotion, the flight recorder and route arming for one policy.

    ``entry`` supplies the budgets (a promoted or kept request is admitted like any
    other); ``start_threads=False`` keeps the watchdog thread off (tests call
    ``watchdog.scan()`` by hand)."""

    def __init__(self, host: PolicyHost, entry: EntryDecider, arming: RouteArming, *,
                 clock: Callable[[], float], start_threads: bool = True) -> None:
        cfg = host.config
        self.host = host
        self.stats = host.stats_recorder
        self.config = cfg
        self.entry = entry
        self.arming = arming
        self.clock = clock
        self.lock = threading.Lock()
        self.promotes = cfg.slow_promotion
        self.arms_slow = cfg.slow_route_arming
        self.arms_error = cfg.error_profile_duration > 0 and cfg.error_sample_rate > 0
        self.recorder_hz = cfg.tail_sampling_hz
        self.recording = ConcurrencySlots(RECORDER_MAX_INFLIGHT)
        #: some late trigger is on: requests are watched
        self.enabled = bool(self.promotes or self.arms_slow or self.arms_error or self.recorder_hz)
        self.threshold = cfg.slow_threshold
        self.watchdog = Watchdog(self._due, cfg.slow_threshold, clock, t0_of=_t0_of, on_check=self._check,
                                 autostart=start_threads)
        self._inflight = self.watchdog.inflight
        self.reaped = 0

    # ------------------------------------------------------------------ request side
    def watch(self, request: ProfilableRequest) -> bool:
        """Watch a request that is not profiled (the fast path: no entry decision was
        needed).  One clock read and one dict insert.  True when the watchdog may
        promote it."""
        request.tail_t0 = self.clock()
        if self.promotes:
            request.tail_state = _REGISTERED
            self._inflight[_ref(request)] = True  # Watchdog.register, inlined
            if not self.watchdog.running:
                self.watchdog.start()
            return True
        return False

    def started_sampled(self, request: ProfilableRequest) -> None:
        """``started(request, profiled=True)`` for a request chosen by chance alone (the
        light path, once per such request): only its outcome is looked at, to arm routes."""
        if self.enabled:
            request.tail_t0 = self.clock()

    def started(self, request: ProfilableRequest, profiled: Optional[bool] = None) -> None:
        """After a full entry decision: start the flight recorder and/or watch.
        ``profiled``: the request is being sampled (default: it has a session), so it
        is neither recorded nor promoted; its outcome still arms routes."""
        if not self.enabled or request.decision.declined in _NO_TAIL:
            return
        request.tail_t0 = self.clock()
        if profiled is None:
            profiled = request.session is not None
        if not profiled and self.recorder_hz:
            self._start_recording(request)
        if self.promotes and (not profiled or request.recording):
            request.tail_state = _REGISTERED
            self.watchdog.register(request)

    def finished(self, request: ProfilableRequest) -> bool:
        """The outcome (status, exception, duration) → route arming, flight-recorder
        keep/discard.  False when the watchdog finishes the profile instead (it was
        promoting the request at this very moment)."""
        proceed = True
        if request.tail_state:
            if request.tail_state == _REGISTERED and self._inflight.pop(_ref(request), None) is not None:
                request.tail_state = _DONE  # still ours (Watchdog.unregister, inlined)
            else:  # claimed by the watchdog: hand over under the lock
                with self.lock:
                    if request.tail_state == _PROMOTING:
                        proceed = False
                    request.tail_state = _DONE
        t0 = request.tail_t0
        if t0 is None:
            return proceed
        now = self.clock()
        slow = now - t0 >= self.threshold
        status = request.status
        failed = request.error is not None or (status is not None and status >= 500)
        if (slow and self.arms_slow) or (failed and self.arms_error):
            self._arm(request, slow, failed, now)
        if request.recording and proceed:
            self._finish_recording(request, slow, failed)
        return proceed

    def _arm(self, request: ProfilableRequest, slow: bool, failed: bool, now: float) -> None:
        info = request.info
        if self.entry.excluded(info):
            return
        # the framework's template when there is one, else the literal path
        route = info.resolve_route()
        arm = self.arming.arm_route if route else self.arming.arm_path
        key = route or info.path
        cfg = self.config
        if slow and self.arms_slow:
            arm(key, "slow", cfg.slow_profile_duration, 1.0, now)
            self.stats.incr("routes_armed.slow")
        if failed and self.arms_error:
            arm(key, "error", cfg.error_profile_duration, cfg.error_sample_rate, now)
            self.stats.incr("routes_armed.error")

    # ------------------------------------------------------------------ flight recorder
    def _start_recording(self, request: ProfilableRequest) -> None:
        if not self.recording.take():
            self.stats.incr("recordings_skipped.max_inflight")
            return
        gov = self.entry.governor
        if gov.enabled:
            gov.update()
            if gov.declining:
                self.recording.give_back()
                self.stats.incr("recordings_skipped.overhead")
                return
        session = request.start_profile((), hz=gov.hz(self.recorder_hz, min_hz=1))
        if session is None:
            self.recording.give_back()
            return
        self.recording.hold(session)
        request.recording = True
        self.stats.incr("recordings_started")

    def _finish_recording(self, request: ProfilableRequest, slow: bool, failed: bool) -> None:
        session = request.session
        if session is None:
            return
        self.recording.release(session)
        promoted = "slow" in session.triggers
        keep: list[str] = []
        if slow or promoted:
            keep.append("slow")
        if failed:
            keep.append("error")
        if keep and not promoted and not self.entry.admit_kept(keep):
            keep = []
        if keep:
            for t in keep:
                session.add_trigger(t)
            session.attributes["otelprof.flight_recorder_hz"] = self.recorder_hz
            self.stats.incr("recordings_kept")
            return
        request.drop_profile()

    # ------------------------------------------------------------------ promotion (watchdog thread)
    def _due(self, request: ProfilableRequest, now: float) -> bool:
        """The request ran past ``slow_threshold``: sample it for the rest of its life.
        True when it was promoted (the watchdog then checks it on later scans)."""
        with self.lock:
            if request.tail_state != _REGISTERED:
                return False
            request.tail_state = _PROMOTING
        ok = False
        try:
            ok = self._promote(request, now)
        except Exception:
            self.host.report_failure("promote", "otelprof: promoting a slow request failed")
        if ok:
            self.stats.incr("promotions")
        with self.lock:
            finished = request.tail_state == _DONE
            if not finished:
                request.tail_state = _PROMOTED
        if finished:
            # the request ended while we were promoting it and left its end to us
            if request.recording:
                self._finish_recording(request, True, request.error is not None or (request.status or 0) >= 500)
            request.finalize()
        return ok and not finished

    def _promote(self, request: ProfilableRequest, now: float) -> bool:
        if self.entry.excluded(request.info):
            return False
        decision = self.entry.admit(["slow"])
        if not decision.profile or not self.entry.claim(decision):
            return False
        head_ms = round((now - (request.tail_t0 or now)) * 1000.0, 3)
        hz = decision.hz or self.config.sample_hz
        session = request.session
        if session is not None and request.recording:
            # a flight recording becomes a real profile: it now counts as one
            self.recording.release(session)
            self.entry.bind(session)
            session.set_rate(hz)
            session.add_trigger("slow")
            session.attributes["otelprof.promoted_after_ms"] = head_ms
            return True
        if session is not None:
            self.entry.bind(None)
            return False
        session = request.start_profile(("slow",), hz=hz, remote=True)
        self.entry.bind(session)
        if session is None:
            return False
        session.attributes["otelprof.unsampled_head_ms"] = head_ms
        session.attributes["otelprof.promoted_after_ms"] = head_ms
        return True

    def _check(self, request: ProfilableRequest) -> bool:
        """A promoted request whose end never comes (a lost end of request in an
        integration) is finished once its profile hit ``max_profile_duration``, so
        it cannot hold a profiling slot forever.  True when done with it."""
        if request.tail_state == _DONE:
            return True
        session = request.session
        if session is None or session.finished:
            return True
        if session.duration_ns > session.max_duration_ns:
            self.reaped += 1
            self.stats.incr("promotions_reaped")
            request.finish()
            return True
        return False

    def after_fork(self) -> None:
        self.lock = threading.Lock()


def _t0_of(request: ProfilableRequest) -> Optional[float]:
    return request.tail_t0
