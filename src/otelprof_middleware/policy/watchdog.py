"""The watchdog thread: notices requests still running past ``slow_threshold`` and
hands each one, once, to a callback (in-flight slow promotion).

Every request that may be promoted is registered at entry with one dict insert
(keyed by a weak reference to it) and removed at the end with one ``dict.pop``;
both are atomic in CPython, so the request path takes no lock.  The watchdog
*claims* a request by popping it; what happens next (the hand-over with the
request, should it end at that very moment) is the callback's business
(:mod:`.tail`).  Only a weak reference is kept: a request that an integration
dropped without ending it is freed, and the watchdog sees a dead reference
instead of promoting a thread that now serves other work.

A request the callback promoted is checked again on every scan (``on_check``),
so a promoted request whose end never comes can be finished by the late triggers
(a safety net against a lost end of request in an integration).

The thread is started lazily by the first registration (and again in a child after
``fork``).  It sleeps until the oldest watched request can become slow (at most
``max_sleep`` seconds), so it costs a few wake-ups per second while requests run.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, Optional

from .._safety import LogOnce, at_fork_reinit

__all__ = ["Watchdog"]


class Watchdog:
    """``on_due(ticket, now) -> bool`` is called on the watchdog thread for a request
    that became slow (True: keep it for ``on_check``); ``on_check(ticket) -> bool``
    for a promoted one on later scans (True: done with it).  ``t0_of(ticket)`` is its
    start time on ``clock``."""

    def __init__(self, on_due: Callable[[Any, float], bool], threshold: float, clock: Callable[[], float], *,
                 t0_of: Callable[[Any], Optional[float]],
                 on_check: Callable[[Any], bool] = lambda ticket: True,
                 autostart: bool = True, min_sleep: float = 0.005, max_sleep: float = 0.25) -> None:
        # weak: the watchdog thread must not keep the owner of the callbacks alive
        self._on_due = _weak_callable(on_due)
        self._on_check = _weak_callable(on_check)
        self._t0_of = t0_of
        self.threshold = threshold
        self.clock = clock
        self.autostart = autostart
        self.min_sleep = min_sleep
        self.max_sleep = max_sleep
        #: the registry: ``weakref.ref(ticket) -> True``; the request side inserts and pops
        #: (:meth:`register`, :meth:`unregister`, or directly: both are atomic).  Keyed by
        #: the weak reference, so a request freed without an end stays visible as one
        #: (a new request at the same address gets a different key)
        self.inflight: dict["weakref.ref[Any]", bool] = {}
        self._promoted: dict[int, Any] = {}
        self._thread: Optional[threading.Thread] = None
        #: True once the thread was started (False again in a child after ``fork``)
        self.running = False
        self._start_lock = threading.Lock()
        self._stop = False
        self._log = LogOnce(every=300.0)
        self.cpu_ns_self = 0
        self.scans = 0
        self.abandoned = 0
        at_fork_reinit(self._after_fork)

    def __len__(self) -> int:
        return len(self.inflight)


    # ------------------------------------------------------------ request side (hot path)
    def register(self, ticket: Any) -> None:
        self.inflight[weakref.ref(ticket)] = True
        if self._thread is None:
            self.start()

    def unregister(self, ticket: Any) -> bool:
        """True if the request was still ours; False if the watchdog claimed it."""
        return self.inflight.pop(weakref.ref(ticket), None) is not None

    # ------------------------------------------------------------ watchdog side
    def scan(self, now: Optional[float] = None) -> float:
        """Hand the requests that became slow to ``on_due``; the seconds until the next one can."""
        on_due, on_check = self._on_due(), self._on_check()
        if on_due is None or on_check is None:  # the owner is gone
            self._stop = True
            return self.max_sleep
        if now is None:
            now = self.clock()
        self.scans += 1
        wait = self.max_sleep
        threshold = self.threshold
        inflight = self.inflight
        for key in list(inflight):
            ticket = key()
            if ticket is None:  # dropped by its integration without an end
                if inflight.pop(key, None) is not None:
                    self.abandoned += 1
                continue
            t0 = self._t0_of(ticket)
            if t0 is None:
                continue
            due = t0 + threshold
            if due > now:
                wait = min(wait, due - now)
                continue
            if inflight.pop(key, None) is None:
                continue  # finished meanwhile
            if on_due(ticket, now):
                self._promoted[id(ticket)] = ticket
        for ident, promoted in list(self._promoted.items()):
            if on_check(promoted):
                del self._promoted[ident]
        return max(wait, self.min_sleep)

    def start(self) -> None:
        """Start the thread (no-op when running, or with ``autostart=False``)."""
        if not self.autostart:
            return
        with self._start_lock:
            if self._thread is not None:
                return
            t = threading.Thread(target=self._run, name="otelprof-watchdog", daemon=True)
            self._thread = t
            self.running = True
            t.start()

    def stop(self) -> None:
        """Let the thread end (used when the owning policy goes away)."""
        self._stop = True

    def _run(self) -> None:
        while not self._stop:
            try:
                wait = self.scan()
            except Exception:  # the worker loop's firewall: never let the watchdog die
                self._log("watchdog", "otelprof: watchdog scan failed", exc=True)
                wait = self.max_sleep
            self.cpu_ns_self = time.thread_time_ns()
            time.sleep(wait)

    def _after_fork(self) -> None:
        self._start_lock = threading.Lock()
        self._thread = None
        self.running = False
        self.inflight.clear()  # the parent's requests are not ours (cleared in place: shared with the late triggers)
        self._promoted = {}
        self.cpu_ns_self = 0


def _weak_callable(fn: Callable[..., Any]) -> Callable[[], Optional[Callable[..., Any]]]:
    """A getter for ``fn`` that holds a bound method's object weakly."""
    if getattr(fn, "__self__", None) is not None:
        ref = weakref.WeakMethod(fn)  # type: ignore[arg-type]
        return ref
    return lambda: fn
