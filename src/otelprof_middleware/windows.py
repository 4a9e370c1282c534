"""Window profiles: profiles that cover a span of time instead of one unit of work.

Two kinds, both exported like any profile (through the export pipeline, as a
``WindowProfile`` in place of a session), with no span link of their own and a
span link **per sample** (OTLP ``link_index``, pprof ``span_id``/``trace_id``
labels) for every sample taken for a request:

* **Aggregates of short requests** (:class:`ShortRequestAggregator`): a request
  profiled by chance (``probability``, an on-demand window) that ends with 1 to
  ``min_samples - 1`` samples is not worth a profile of its own, and dropping it
  hides short endpoints.  Its samples join the aggregate of its route for the
  current window (``aggregate_window``); at the end of the window each route's
  aggregate is exported as one profile.  The request's span says where its samples
  went (``otelprof.aggregate_profile_id``, set by the integration from
  ``Session.aggregate_id``).
* **The continuous profile** (:class:`ContinuousProfile`): with ``continuous_hz``
  the sampler thread samples every thread of the process at that rate and writes
  here; one profile per ``continuous_window``.

Memory is bounded: at most ``aggregate_max_routes`` aggregates per window, and
``window_max_stacks`` (stack, thread, span) entries in each window profile; what
does not fit is counted (``dropped["window_full"]`` for a request that could not
join, ``window_samples_dropped`` for continuous samples).

Counting: a request whose samples joined an aggregate counts as
``profiles_aggregated`` (its fate is decided there); each window profile handed to
the pipeline counts as ``window_profiles`` and from then on like any profile
(collected, exported, dropped).

Windows end on a small timer thread (``otelprof-windows``, started with the first
window, parked while there is none), on ``force_flush`` and at ``shutdown``.  After
``fork`` the child starts with no windows: the parent's belong to the parent.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from ._safety import Firewall, at_fork_reinit
from .export.priority import Priority, priority_of
from .profile import AttributeValue, Profile, ProfileBuilder, SpanLink, clean_text
from .stacks import StackTable

__all__ = ["WindowProfile", "ShortRequestAggregator", "WindowTimer"]


class WindowProfile:
    """One window's samples, from many sources; built into a :class:`Profile` on the
    export worker (:meth:`to_profile`), like a session."""

    window = True  # the pipeline exports it whatever its sample count (min_samples is per request)
    keep_if_empty = False

    def __init__(self, name: str, kind: str, *, period_ns: int, max_stacks: int,
                 attributes: Optional[dict[str, AttributeValue]] = None,
                 triggers: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind  # "aggregate" or "continuous"
        self.profile_id = os.urandom(16)
        self.start_time_ns = time.time_ns()
        self.start_mono_ns = time.monotonic_ns()
        self.end_mono_ns: Optional[int] = None
        self.period_ns = period_ns
        self.max_stacks = max_stacks
        self.attributes: dict[str, AttributeValue] = dict(attributes or {})
        self.triggers = triggers
        self.truncated = ""
        self.requests = 0  # requests whose samples are here
        self.stack_count = 0  # entries held, over all parts
        self.parts: list[tuple[Optional[SpanLink], StackTable]] = []  # (span, its samples)
        self._by_link: dict[Optional[SpanLink], StackTable] = {}

    @property
    def profile_id_hex(self) -> str:
        return self.profile_id.hex()

    @property
    def sample_count(self) -> int:
        return sum(t.ticks for _link, t in self.parts)

    def add_table(self, link: Optional[SpanLink], table: StackTable) -> bool:
        """Take a finished request's samples (kept as they are: its table is closed).
        False if they would not fit."""
        n = len(table.entries)
        if self.stack_count + n > self.max_stacks:
            return False
        self.stack_count += n
        self.parts.append((link, table))
        self.requests += 1
        return True

    def table_for(self, link: Optional[SpanLink]) -> Optional[StackTable]:
        """The table continuous samples of ``link`` (None: no request) go to; None
        when the window is full (a new span needs a new table)."""
        table = self._by_link.get(link)
        if table is None:
            if self.stack_count >= self.max_stacks:
                return None
            table = self._by_link[link] = StackTable()
            self.parts.append((link, table))
        return table

    def to_profile(self) -> Profile:
        end = self.end_mono_ns if self.end_mono_ns is not None else time.monotonic_ns()
        attrs = {clean_text(k): v for k, v in self.attributes.items()}
        attrs["otelprof.window"] = self.kind
        if self.kind == "aggregate":
            attrs["otelprof.requests"] = self.requests
        if self.truncated:
            attrs["otelprof.truncated"] = self.truncated
        profile = Profile(name=clean_text(self.name), start_time_ns=self.start_time_ns,
                          duration_ns=max(0, end - self.start_mono_ns), period_ns=self.period_ns,
                          attributes=attrs, triggers=self.triggers, profile_id=self.profile_id,
                          truncated=self.truncated)
        builder = ProfileBuilder(profile)
        for link, table in list(self.parts):
            table.fill(profile, builder=builder, link=link)
        return profile


class WindowTimer:
    """Calls ``due()`` at the times it is told (:meth:`wake_at`); one daemon thread,
    started lazily, parked while nothing is due."""

    def __init__(self, due: Callable[[], Optional[float]], name: str = "otelprof-windows") -> None:
        self._due = due  # ends what is due; returns the next monotonic time to be called, or None
        self._name = name
        self._init()
        at_fork_reinit(self._init)

    def _init(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def wake_at(self, when: float) -> None:
        with self._cond:
            if self._stopped:
                return
            if self._next is None or when < self._next:
                self._next = when
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._next is None or self._next > time.monotonic()):
                    self._cond.wait(None if self._next is None else max(0.0, self._next - time.monotonic()))
                if self._stopped:
                    return
                self._next = None
            nxt = self._due()
            if nxt is not None:
                self.wake_at(nxt)


Submit = Callable[[WindowProfile], Any]


class ShortRequestAggregator:
    """Per-route aggregates of short requests profiled by chance, one set per window."""

    def __init__(self, *, window: float, min_samples: int, max_routes: int, max_stacks: int,
                 submit: Submit, stats: Any, firewall: Firewall) -> None:
        self.window_ns = int(window * 1e9)
        self.min_samples = min_samples
        self.max_routes = max_routes
        self.max_stacks = max_stacks
        self._submit = submit
        self._stats = stats
        self._firewall = firewall
        self._timer = WindowTimer(self._timer_due)
        self._init()
        at_fork_reinit(self._init)

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, WindowProfile] = {}
        self._end_ns = 0  # monotonic end of the current window (0: none open)
        self._closed = False

    def eligible(self, session: Any) -> bool:
        """Would ``session`` go into an aggregate rather than a profile of its own?
        A request profiled by chance, with at least one sample and fewer than
        ``min_samples`` (a request with no sample has nothing to keep)."""
        if self.min_samples <= 1 or session.keep_if_empty or not session.triggers:
            return False
        if priority_of(session) is not Priority.SAMPLED:
            return False
        n = session.stacks.ticks
        return 0 < n < self.min_samples

    def offer(self, session: Any) -> Optional[str]:
        """Put a finished session's samples into its route's aggregate.  None: not
        for an aggregate (it goes its own way); ``"aggregated"`` (``session.aggregate_id``
        is set); ``"dropped"`` (counted: the window is full or closed)."""
        if not self.eligible(session):
            return None
        route = session.attributes.get("http.route")
        key = session.name  # "GET /items/{id}" (method and route template), or the name given
        now = time.monotonic_ns()
        ended: list[WindowProfile] = []
        dropped = False
        start_timer = 0
        with self._lock:
            if self._closed:
                dropped = True
            else:
                if self._end_ns and now >= self._end_ns:
                    ended = self._take_locked(now)
                if not self._end_ns:
                    self._end_ns = now + self.window_ns
                    start_timer = self._end_ns
                agg = self._routes.get(key)
                if agg is None and len(self._routes) < self.max_routes:
                    attrs: dict[str, AttributeValue] = {"otelprof.window_s": self.window_ns / 1e9}
                    if isinstance(route, str) and route:
                        attrs["http.route"] = route
                    method = session.attributes.get("http.request.method")
                    if isinstance(method, str) and method:
                        attrs["http.request.method"] = method
                    agg = self._routes[key] = WindowProfile(key, "aggregate", period_ns=session.period_ns,
                                                            max_stacks=self.max_stacks, attributes=attrs,
                                                            triggers=tuple(session.triggers))
                if agg is None or not agg.add_table(session.link, session.stacks):
                    dropped = True
                else:
                    for t in session.triggers:
                        if t not in agg.triggers:
                            agg.triggers = agg.triggers + (t,)
                    session.aggregate_id = agg.profile_id
        if start_timer:
            self._timer.wake_at(start_timer / 1e9)
        self._hand_over(ended)
        if dropped:
            self._stats.dropped("window_full", priority=Priority.SAMPLED.label)
            return "dropped"
        self._stats.incr("profiles_aggregated")
        return "aggregated"

    def _take_locked(self, now_ns: int) -> list[WindowProfile]:
        ended = list(self._routes.values())
        for agg in ended:
            agg.end_mono_ns = now_ns
        self._routes = {}
        self._end_ns = 0
        return ended

    def _hand_over(self, ended: list[WindowProfile]) -> None:
        for agg in ended:
            self._stats.incr("window_profiles")
            try:
                self._submit(agg)
            except Exception:  # the pipeline counts what it takes; nothing here may raise
                self._firewall.report("window-submit", "otelprof: could not queue a window profile")

    def _timer_due(self) -> Optional[float]:
        now = time.monotonic_ns()
        with self._lock:
            if not self._end_ns:
                return None
            if now < self._end_ns:
                return self._end_ns / 1e9
            ended = self._take_locked(now)
        self._hand_over(ended)
        return None

    def flush(self, *, close: bool = False) -> None:
        """End the current window now (``force_flush``, ``shutdown``).  ``close``: and
        take no more requests (shutdown, after finishing the sessions still running);
        a late one is counted as dropped ``window_full``."""
        with self._lock:
            ended = self._take_locked(time.monotonic_ns())
            if close:
                self._closed = True
        if close:
            self._timer.stop()
        self._hand_over(ended)
