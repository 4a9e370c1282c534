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

Memory is bounded: at most ``aggregate_max_routes`` aggregates per window,
``window_max_stacks`` (stack, thread, span) entries in all aggregates of a window
together, and as many in the continuous profile; what
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

import collections
import threading
import time
from typing import Any, Callable, Optional

from ._safety import Firewall, at_fork_reinit
from .export.priority import Priority, priority_of
from .profile import AttributeValue, Profile, ProfileBuilder, SpanLink, clean_text, new_profile_id
from .stacks import StackInterner, StackTable

__all__ = ["WindowProfile", "ShortRequestAggregator", "WindowTimer", "ContinuousRecorder", "SpanRegistry"]


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
        self.profile_id = new_profile_id()
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
        # one interner for every part: the requests of a window mostly share their
        # stacks, and each frame's function and line are worked out once, not per request
        interner = StackInterner(ProfileBuilder(profile))
        for link, table in list(self.parts):
            table.fill(profile, interner=interner, link=link)
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


class _Shipper:
    """Hands finished window profiles to the export pipeline, counted, never raising."""

    def __init__(self, submit: Submit, stats: Any, firewall: Firewall) -> None:
        self._submit = submit
        self._stats = stats
        self._firewall = firewall

    def _ship(self, wp: WindowProfile) -> None:
        self._stats.incr("window_profiles")
        try:
            self._submit(wp)
        except Exception:  # the pipeline counts what it takes; nothing here may raise
            self._firewall.report("window-submit", "otelprof: could not queue a window profile")

#: requests in flight the span registry follows at most (memory bound)
MAX_OPEN_SPANS = 100_000
#: how long an ended span stays known to the continuous profile's CPU samples (their
#: timers' samples are drained at the next tick, at the latest a few ticks later)
SPAN_HISTORY_NS = 2_000_000_000
#: ended spans kept per thread (a thread serving requests of 1 ms: two seconds' worth)
SPAN_HISTORY_PER_THREAD = 4096


class ShortRequestAggregator(_Shipper):
    """Per-route aggregates of short requests profiled by chance, one set per window."""

    def __init__(self, *, window: float, min_samples: int, max_routes: int, max_stacks: int,
                 submit: Submit, stats: Any, firewall: Firewall) -> None:
        super().__init__(submit, stats, firewall)
        self.window_ns = int(window * 1e9)
        self.min_samples = min_samples
        self.max_routes = max_routes
        self.max_stacks = max_stacks
        self._timer = WindowTimer(self._timer_due)
        self._init()
        at_fork_reinit(self._init)

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, WindowProfile] = {}
        self._end_ns = 0  # monotonic end of the current window (0: none open)
        self._window_stacks = 0  # entries held by all aggregates of the window (window_max_stacks)
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
                n = len(session.stacks.entries)
                if agg is None or self._window_stacks + n > self.max_stacks or not agg.add_table(
                        session.link, session.stacks):
                    dropped = True
                else:
                    self._window_stacks += n
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
        self._window_stacks = 0
        return ended

    def _hand_over(self, ended: list[WindowProfile]) -> None:
        for agg in ended:
            self._ship(agg)

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


class SpanRegistry:
    """The local root span (the request's server span) each thread or asyncio task
    is working for, kept by an OpenTelemetry span processor, so that continuous
    samples of requests that have no profile of their own carry their span.

    Duck-typed ``SpanProcessor`` (the SDK is optional); added to the global SDK
    ``TracerProvider`` by :meth:`install`.  ``on_start`` runs in the thread (and
    task) that starts the span: what is recorded is where the request runs."""

    def __init__(self, frame_address: Optional[Callable[[Any], int]] = None) -> None:
        self.threads: dict[int, SpanLink] = {}  # thread id -> span (synchronous requests)
        self.tasks: dict[Any, tuple[Any, int, SpanLink]] = {}  # task -> (its loop, thread id, span)
        self._by_span: dict[int, tuple[str, Any]] = {}  # span id -> where it was recorded
        #: ``frame_address(frame)``: the interpreter frame's address (native sampler), to
        #: know a task's CPU samples by its outermost coroutine frame (see link_at)
        self._frame_address = frame_address
        self._began: dict[int, int] = {}  # span id -> when it began (monotonic ns)
        self._frames: dict[Any, int] = {}  # task -> its outermost coroutine frame's address
        self._frame_tasks: dict[int, Any] = {}  # the same, the other way round (link_at: one look per frame)
        #: spans that ended in the last SPAN_HISTORY_NS: a CPU sample is drained after it
        #: was taken, often once its request is over, and keeps the span of its moment
        self._ended_threads: dict[int, collections.deque[tuple[int, int, SpanLink]]] = {}
        self._ended_frames: dict[int, collections.deque[tuple[int, int, SpanLink]]] = {}  # (addresses are reused)
        self._ended_order: collections.deque[tuple[int, str, int]] = collections.deque()
        self._history_lock = threading.Lock()
        self._provider: Any = None
        self._lock = threading.Lock()

    def install(self) -> bool:
        """Add this processor to the global SDK tracer provider, if there is one now
        (a provider set later is picked up at a later call).  True once installed."""
        try:
            from opentelemetry import trace
        except Exception:  # pragma: no cover - the API is a dependency
            return False
        with self._lock:
            provider = trace.get_tracer_provider()
            if provider is self._provider:
                return True
            add = getattr(provider, "add_span_processor", None)
            if add is None:
                return False
            add(self)
            self._provider = provider
            return True

    # --- SpanProcessor
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        parent = getattr(span, "parent", None)
        if parent is not None and not parent.is_remote:
            return  # a child span: the request's root span stays the link
        ctx = span.get_span_context()
        link = SpanLink(trace_id=ctx.trace_id, span_id=ctx.span_id, sampled=bool(ctx.trace_flags.sampled),
                        span_name=getattr(span, "name", "") or "")
        if len(self._by_span) >= MAX_OPEN_SPANS:  # spans that never ended (a leak elsewhere): start afresh
            self.after_fork()
        tid = threading.get_ident()
        task = None
        try:
            import asyncio

            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        except RuntimeError:
            pass
        self._began[ctx.span_id] = time.monotonic_ns()
        if task is not None and self._frame_address is not None:
            frame = getattr(task.get_coro(), "cr_frame", None)
            if frame is not None:
                addr = self._frames[task] = self._frame_address(frame)
                self._frame_tasks[addr] = task
        if task is not None:
            self.tasks[task] = (loop, tid, link)
            self._by_span[ctx.span_id] = ("task", task)
        else:
            self.threads[tid] = link
            self._by_span[ctx.span_id] = ("thread", tid)

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        ctx = span.get_span_context()
        where = self._by_span.pop(ctx.span_id, None)
        if where is None:
            return
        kind, key = where
        began = self._began.pop(ctx.span_id, 0)
        now = time.monotonic_ns()
        with self._history_lock:  # (spans end on many threads at once)
            self._forget_ended(now)
            self._ended(kind, key, ctx.span_id, began, now)

    def _ended(self, kind: str, key: Any, span_id: int, began: int, now: int) -> None:
        if kind == "task":
            got = self.tasks.get(key)
            if got is not None and got[2].span_id == span_id:
                self.tasks.pop(key, None)
                addr = self._frames.pop(key, None)
                if addr is not None:
                    if self._frame_tasks.get(addr) is key:
                        del self._frame_tasks[addr]
                    self._remember(self._ended_frames, addr, (began, now, got[2]))
                    self._ended_order.append((now, "frame", addr))
        else:
            link = self.threads.get(key)
            if link is not None and link.span_id == span_id:
                self.threads.pop(key, None)
                self._remember(self._ended_threads, key, (began, now, link))
                self._ended_order.append((now, "thread", key))

    @staticmethod
    def _remember(history: dict[int, "collections.deque[tuple[int, int, SpanLink]]"], key: int,
                  span: tuple[int, int, SpanLink]) -> None:
        ended = history.get(key)
        if ended is None:
            ended = history[key] = collections.deque(maxlen=SPAN_HISTORY_PER_THREAD)
        ended.append(span)

    def _forget_ended(self, now: int) -> None:
        """Drop the ended spans older than SPAN_HISTORY_NS (and beyond MAX_OPEN_SPANS)."""
        order = self._ended_order
        while order and (now - order[0][0] > SPAN_HISTORY_NS or len(order) > MAX_OPEN_SPANS):
            ended, kind, key = order.popleft()
            spans = self._ended_frames if kind == "frame" else self._ended_threads
            history = spans.get(key)
            while history and history[0][1] <= ended:
                history.popleft()
            if history is not None and not history:
                del spans[key]

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def links(self) -> dict[int, SpanLink]:
        """thread id -> the span its running work belongs to, now (sampler thread)."""
        out = dict(self.threads)
        if self.tasks:
            import asyncio

            for task, (loop, tid, link) in list(self.tasks.items()):
                try:
                    if asyncio.current_task(loop) is task:
                        out[tid] = link
                except Exception:
                    continue
        return out

    def link_at(self, thread_id: int, mono_ns: int, addrs: Any) -> Optional[SpanLink]:
        """The span that a CPU sample of ``thread_id`` taken at ``mono_ns`` (its stack's
        frame addresses ``addrs``) was working for: a task's, running or ended since, if
        the stack holds the task's outermost coroutine frame; else the thread's span of
        that moment (running, or one that ended since); None if none is known."""
        began = self._began
        if addrs and (self._frame_tasks or self._ended_frames):
            frame_tasks, ended_frames = self._frame_tasks, self._ended_frames
            for a in addrs:
                task = frame_tasks.get(a)
                got = self.tasks.get(task) if task is not None else None
                if got is not None and got[1] == thread_id and mono_ns >= began.get(got[2].span_id, 0):
                    return got[2]
                history = ended_frames.get(a)
                if history is not None:
                    for b, e, link in reversed(tuple(history)):  # (a copy: spans end meanwhile)
                        if b <= mono_ns <= e:
                            return link
        current = self.threads.get(thread_id)
        if current is not None and mono_ns >= began.get(current.span_id, 0):
            return current
        for b, e, link in reversed(tuple(self._ended_threads.get(thread_id, ()))):  # (a copy: spans end meanwhile)
            if b <= mono_ns <= e:
                return link
        return None

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.threads = {}
        self.tasks = {}
        self._by_span = {}
        self._began = {}
        self._frames = {}
        self._frame_tasks = {}
        self._ended_threads = {}
        self._ended_frames = {}
        self._ended_order = collections.deque()
        self._history_lock = threading.Lock()


def _native_lib() -> Any:
    from . import native_sampler

    return native_sampler.load()[0]


class ContinuousRecorder(_Shipper):
    """The continuous profile: what the sampler thread records, when
    ``continuous_hz`` is on, about every thread of the process, one
    :class:`WindowProfile` per ``continuous_window``.

    The sampler reads ``hz``, ``max_depth`` and ``native``, calls :meth:`links` for
    the spans of requests running now, :meth:`record` for each thread's sample,
    and :meth:`roll` at each of its ticks (a window that is over is handed over)."""

    def __init__(self, *, hz: int, window: float, max_depth: int, max_stacks: int, native: bool,
                 submit: Submit, stats: Any, firewall: Firewall) -> None:
        super().__init__(submit, stats, firewall)
        self.hz = hz
        self.window_ns = int(window * 1e9)
        self.max_depth = max_depth
        self.max_stacks = max_stacks
        self.native = native
        lib = _native_lib() if native else None
        self.spans = SpanRegistry(lib.frame_address if lib is not None else None)
        self._closed = False
        self._sampler = ("python", "")  # how CPU is sampled (sampled_by): (sampler, cpu timer)
        self._init()
        at_fork_reinit(self._after_fork)

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._current = self._new_window()

    def _new_window(self) -> WindowProfile:
        sampler, cpu_timer = self._sampler
        attrs: dict[str, Any] = {"otelprof.window_s": self.window_ns / 1e9, "otelprof.sampler": sampler,
                                 "otelprof.rates": f"{self.hz}Hz"}
        if cpu_timer:
            attrs["otelprof.cpu_timer"] = cpu_timer
        return WindowProfile("continuous", "continuous", period_ns=int(1e9 / self.hz), max_stacks=self.max_stacks,
                             attributes=attrs)

    def links(self) -> dict[int, SpanLink]:
        if self.spans._provider is None:
            self.spans.install()  # a tracer provider set after the profiler was made
        return self.spans.links()

    def record(self, thread_name: str, codes: Any, lastis: Any, cpu_ns: int, wall_ns: int,
               link: Optional[SpanLink]) -> None:
        """One sample (the sampler thread's ticks, and CPU samples drained on any thread)."""
        with self._lock:
            wp = self._current
            if wp.end_mono_ns is not None:
                return  # (handed over: the mode stopped while this sample was on its way)
            table = wp.table_for(link) if wp.stack_count < wp.max_stacks else None
            if table is None:
                if not wp.truncated:
                    wp.truncated = "window_max_stacks"
                self._stats.incr("window_samples_dropped")
                return
            before = len(table.entries)
            table.add(thread_name, codes, lastis, cpu_ns, wall_ns)
            wp.stack_count += len(table.entries) - before

    def link_at(self, thread_id: int, mono_ns: int, addrs: Any) -> Optional[SpanLink]:
        """The span a CPU sample was working for (see :meth:`SpanRegistry.link_at`)."""
        return self.spans.link_at(thread_id, mono_ns, addrs)

    def sampled_by(self, sampler: str, cpu_timer: str) -> None:
        """How the CPU in the profile was sampled: ``native`` (threads' CPU timers, of kind
        ``cpu_timer``) or ``python`` (billed at the ticks), shown on the profile."""
        with self._lock:
            self._sampler = (sampler, cpu_timer)
            wp = self._current
            if wp.end_mono_ns is None:
                wp.attributes["otelprof.sampler"] = sampler
                if cpu_timer:
                    wp.attributes["otelprof.cpu_timer"] = cpu_timer

    def roll(self, now_ns: int) -> None:
        """Hand the window over if it is over (sampler thread)."""
        if now_ns - self._current.start_mono_ns >= self.window_ns:
            self._hand_over(now_ns, reopen=True)

    def _hand_over(self, now_ns: int, *, reopen: bool) -> None:
        with self._lock:
            ended = self._current
            if ended.end_mono_ns is not None:
                return  # handed over already (shutdown)
            ended.end_mono_ns = now_ns
            if reopen:
                self._current = self._new_window()
        if ended.parts:  # (nothing sampled, e.g. right after a flush: nothing to send)
            self._ship(ended)

    def flush(self, *, close: bool = False, sampler: Any = None) -> None:
        """End the current window now (``force_flush``); ``close``: and stop (shutdown)."""
        if close and not self._closed:
            self._closed = True
            if sampler is not None:
                sampler.set_continuous(None, only=self)
        self._hand_over(time.monotonic_ns(), reopen=not close)

    def _after_fork(self) -> None:
        # the parent's window is the parent's; the child samples itself from now on
        self.spans.after_fork()
        self._init()
        if not self._closed:
            from .sampler import get_sampler

            get_sampler().set_continuous(self)
