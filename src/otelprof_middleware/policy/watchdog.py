"""In-flight slow promotion: a watchdog thread notices requests still running past
``slow_threshold`` and starts sampling them for the rest of their life.

Every request the policy may promote is registered at entry with one dict
insert (``id(handle) -> handle``) and removed at the end with one ``dict.pop``;
both are atomic in CPython, so the request path takes no lock.  The watchdog
*claims* a request by popping it; if the request's own ``pop`` then finds nothing
it knows the watchdog has it and hands over under :attr:`Watchdog.lock` (states
below), so a profile is never started for a request that already ended nor left
running after it.

The thread is started lazily by the first registration (and again in a child after
``fork``).  It sleeps until the oldest watched request can become slow (at most
``max_sleep`` seconds), so it costs a few wake-ups per second while requests run.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ..integrations.lifecycle import RequestHandle
    from .policy import Policy

_REFCOUNTS = sys.implementation.name == "cpython" and hasattr(sys, "getrefcount")


def _calibrate() -> int:
    """getrefcount() of an object only a local variable holds (interpreter dependent)."""
    class _Probe:
        pass

    d = {1: _Probe()}
    probe = d.pop(1)
    return sys.getrefcount(probe) if _REFCOUNTS else -1


_ALONE = _calibrate()

__all__ = ["Watchdog", "REGISTERED", "PROMOTING", "PROMOTED", "DONE"]

log = logging.getLogger("otelprof_middleware")

# RequestHandle._tail_state
REGISTERED = 1  # watched
PROMOTING = 2  # the watchdog is starting its profile
PROMOTED = 3  # profile started (or promotion declined): no longer watched
DONE = 4  # the request finished


class Watchdog:
    def __init__(self, policy: "Policy", threshold: float, clock: Callable[[], float], *,
                 autostart: bool = True, min_sleep: float = 0.005, max_sleep: float = 0.25) -> None:
        self._policy_ref = weakref.ref(policy)
        self.threshold = threshold
        self.clock = clock
        self.autostart = autostart
        self.min_sleep = min_sleep
        self.max_sleep = max_sleep
        self.lock = threading.Lock()
        self._inflight: dict[int, Any] = {}
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._promoted: dict[int, Any] = {}
        self.cpu_ns_self = 0
        self.scans = 0
        self.abandoned = 0
        self.reaped = 0
        _watchdogs.add(self)

    def __len__(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------ request side (hot path)
    def register(self, handle: "RequestHandle") -> None:
        self._inflight[id(handle)] = handle
        if self._thread is None and self.autostart:
            self._start()

    def unregister(self, handle: "RequestHandle") -> bool:
        """True if the request was still ours; False if the watchdog claimed it."""
        return self._inflight.pop(id(handle), None) is not None

    # ------------------------------------------------------------ watchdog side
    def scan(self, now: Optional[float] = None) -> float:
        """Promote the requests that became slow; the seconds until the next one can."""
        policy = self._policy_ref()
        if policy is None:
            return self.max_sleep
        if now is None:
            now = self.clock()
        self.scans += 1
        wait = self.max_sleep
        threshold = self.threshold
        inflight = self._inflight
        for key in list(inflight):
            handle = inflight.get(key)
            if handle is None:
                continue
            t0 = handle._t0
            if t0 is None:
                continue
            due = t0 + threshold
            if due > now:
                wait = min(wait, due - now)
                continue
            if inflight.pop(key, None) is None:
                continue  # finished meanwhile
            if _REFCOUNTS and sys.getrefcount(handle) <= _ALONE:
                # only we hold it (here + the call's argument): the integration dropped the
                # request without finish(); never profile a thread that serves other work now
                self.abandoned += 1
                continue
            try:
                if policy.promote(handle, now):
                    self._promoted[key] = handle
            except Exception:  # pragma: no cover - promote never raises
                pass
        if self._promoted:
            self._reap(policy, now)
        return max(wait, self.min_sleep)

    def _reap(self, policy: "Policy", now: float) -> None:
        """Safety net: a promoted request whose finish() never comes (a lost end of
        request in an integration) is finished once its profile hit
        ``max_profile_duration``, so it cannot hold a profiling slot forever."""
        for key, handle in list(self._promoted.items()):
            if handle._done:
                del self._promoted[key]
                continue
            session = handle.session
            if session is None or session.finished or session.duration_ns > session.max_duration_ns:
                del self._promoted[key]
                if session is not None and not session.finished:
                    self.reaped += 1
                    policy.profiler.stats_recorder.incr("promotions_reaped")
                    handle.finish()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            t = threading.Thread(target=self._run, name="otelprof-watchdog", daemon=True)
            self._thread = t
            t.start()

    def _run(self) -> None:
        errors = 0
        while True:
            if self._policy_ref() is None:
                return
            try:
                wait = self.scan()
            except Exception:
                errors += 1
                if errors == 1:
                    log.exception("otelprof: watchdog scan failed")
                wait = self.max_sleep
            try:
                self.cpu_ns_self = time.thread_time_ns()
            except Exception:  # pragma: no cover
                pass
            time.sleep(wait)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._inflight = {}  # the parent's requests are not ours
        self._promoted = {}
        self.cpu_ns_self = 0


_watchdogs: "weakref.WeakSet[Watchdog]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for wd in list(_watchdogs):
        wd._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
