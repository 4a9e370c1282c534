"""The process-wide sampler: one background thread that decides when to sample.

It is started lazily when the first session registers and blocks (no periodic
wake-ups) while no session is active.  For each registered session it keeps a
:class:`Schedule` (due time, the rate in force, rate history, missed ticks); the
session only states its rate plan (:class:`~otelprof_middleware.session.Session`).

Two kinds of samples:

* **CPU samples** come, where the native extension is available, from per-thread
  CPU timers (:mod:`~otelprof_middleware.native_sampler`): the interrupted thread
  records its own stack, so CPU is billed where it was spent.  The sampler thread
  drains those buffers at each tick.  Without the extension (or with
  ``native_sampler=False``) CPU is sampled here instead: at each tick, the CPU a
  thread used since the previous tick (``time.pthread_getcpuclockid``) is billed
  to the stack the thread shows now.  That is the **pure-Python mode's known
  bias**: this thread needs the GIL to look, so it sees a busy thread only where
  that thread releases the GIL, and the CPU burnt in between lands there (I/O
  calls, logging).  Totals stay right; shares between functions do not.
* **Wall samples** are taken here, at each session's rate, with
  ``sys._current_frames()``: a thread target's current stack; a task target's
  stack cut at its outermost coroutine when it is running, its chain of awaiting
  coroutines when it is suspended.  For a thread or task whose CPU comes from a
  timer, the wall sample holds only the wall time *not* spent on CPU since the
  last tick (the on-CPU part rides with the CPU samples, where the CPU went).

Raw samples go into each session's :class:`~otelprof_middleware.stacks.StackTable`;
turning them into a profile happens later, on the export worker.

**Continuous mode** (``continuous_hz``, :meth:`Sampler.set_continuous`): the same
thread also samples every thread of the process at that rate, in the same ticks
as the sessions (a thread due for both is walked once per tick, ``_Frames``), and
hands the samples to a :class:`~otelprof_middleware.windows.ContinuousRecorder`.
Its CPU is billed like the pure-Python mode's (the CPU a thread used since the
previous continuous tick, to the stack it shows now), its wall is the interval.
Each sample carries the span of the request the thread was working for: a
session's span for its targets, else the span registry's.
"""

from __future__ import annotations

import functools
import gc
import random
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol

from . import native_sampler, profiletypes
from ._safety import Firewall, LogOnce
from .stacks import UNKNOWN, UNSAMPLED, SamplingReport, cap_depth, thread_cpu_ns
from .stacks import walk_frames as _walk_thread

if TYPE_CHECKING:  # the sampler only reads sessions; session.py knows nothing of the sampler
    from .profile import SpanLink
    from .session import LightTicket, Session, Target


class ContinuousSink(Protocol):
    """Where continuous samples go (``windows.ContinuousRecorder``)."""

    hz: int
    max_depth: int
    native: bool

    def roll(self, now_ns: int) -> None: ...

    def links(self) -> "dict[int, SpanLink]": ...

    def record(self, thread_name: str, codes: Any, lastis: Any, cpu_ns: int, wall_ns: int,
               link: "Optional[SpanLink]") -> None: ...

    def link_at(self, thread_id: int, mono_ns: int, addrs: Any) -> "Optional[SpanLink]": ...

    def sampled_by(self, sampler: str, cpu_timer: str) -> None: ...

__all__ = ["Sampler", "Schedule", "get_sampler"]

#: After its last session ends, the sampler thread keeps looking at the last rate for
#: this long (seconds) before it sleeps until woken: requests that follow each other
#: then start their sessions without waking it.
LINGER_SECONDS = 1.0
#: The most often the sampler thread ticks for work whose CPU samples come from the
#: threads' CPU timers, which run at their own rate all the same: requests profiled by
#: chance (light tickets and sessions, aggregated per route) and the continuous mode
#: with the native sampler.  Their ticks only add wall time where threads wait (each
#: stands for the time since the previous one, so the totals do not change; they vary
#: more per request and per stack), mark new threads for the continuous mode and collect
#: the timers' samples of long requests.  Every tick takes the GIL from the serving
#: thread: at 100 Hz they cost a trivial endpoint under uvicorn ~2-3 % of its throughput
#: (bench/README.md).  Regular sessions (and the continuous mode without the native
#: sampler, whose ticks are its CPU samples) tick at their rate.
WALL_TICK_HZ = 25
_WATCH_MAX = 32  # threads the watcher reads per light tick (native/thread_state.c: OTP_WATCH_MAX)
_WATCH_FORGET_NS = 2_000_000_000  # a thread no light tick found a request on for this long is not watched
_WALL_TICK_NS = 1_000_000_000 // WALL_TICK_HZ
#: the most wall one light tick stands for (a tick held back by a thread that kept
#: the GIL stands for the time since the previous one, up to this)
MAX_LIGHT_WALL_NS = 1_000_000_000


@functools.lru_cache(maxsize=None)  # (looked up once, at the first light tick that needs it)
def _gil_keeping_yield() -> Optional[Callable[[], Any]]:
    """``sched_yield()`` called with the GIL kept (ctypes' PyDLL does not let it go):
    a thread that this one's wake-up pushed off its core right after it let the GIL go
    gets that core back and goes on into the call it was making."""
    try:
        import ctypes

        return ctypes.PyDLL(None).sched_yield  # type: ignore[no-any-return]
    except Exception:  # (no libc symbols to look up: the first read stands)
        return None


class Schedule:
    """When one session is sampled: owned by the sampler."""

    __slots__ = ("session", "hz", "level", "interval_ns", "due_ns", "last_tick_ns", "ticks", "missed",
                 "history", "kinds", "sources")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.hz = session.hz
        self.level = session.governor_level
        self.interval_ns = int(1e9 / self.hz)
        start = session.start_mono_ns
        self.due_ns = start + self.interval_ns  # first sample one interval after the start, like a timer
        self.last_tick_ns = start
        self.ticks = 0
        self.missed = 0
        self.history: list[tuple[int, int, int]] = [(self.hz, self.level, start)]  # (hz, level, since)
        self.kinds: set[str] = set()  # where CPU samples came from: "native", "python"
        self.sources: set[str] = set()  # what interrupted native-sampled threads

    def follow_plan(self, now_ns: int) -> None:
        """Apply the session's rate plan: end a boost that is over, take up a new rate."""
        session = self.session
        if session.boost_over(now_ns):
            session.end_boost()
        hz, level = session.hz, session.governor_level
        if hz != self.hz or level != self.level:
            self.hz, self.level = hz, level
            self.interval_ns = int(1e9 / hz)
            self.history.append((hz, level, now_ns))
            self.due_ns = min(self.due_ns, self.last_tick_ns + self.interval_ns)

    def take(self, now_ns: int) -> Optional[int]:
        """The wall time since the previous tick if the session is due, else None."""
        if now_ns < self.due_ns:
            return None
        interval = self.interval_ns
        self.due_ns = max(self.due_ns + interval, now_ns - interval)
        wall = now_ns - self.last_tick_ns
        self.last_tick_ns = now_ns
        self.ticks += 1
        if wall > interval + interval // 2:  # late: count the intervals lost
            self.missed += (wall - interval // 2) // interval
        return wall

    def report(self, end_ns: int) -> SamplingReport:
        start = self.session.start_mono_ns
        rates = []
        for i, (hz, level, since) in enumerate(self.history):
            until = self.history[i + 1][2] if i + 1 < len(self.history) else end_ns
            if until > since or i == len(self.history) - 1:
                rates.append((hz, level, since - start, max(since, until) - start))
        kinds = self.kinds
        sampler = "+".join(k for k in ("native", "python") if k in kinds) or (
            "native" if self.session.native and native_sampler.load()[0] is not None else "python")
        return SamplingReport(sampler=sampler, rates=rates, ticks=self.ticks, ticks_missed=self.missed,
                              period_ns=self.interval_ns, cpu_timer=",".join(sorted(self.sources)))


class _LightState:
    __slots__ = ("ticks", "source")

    def __init__(self) -> None:
        self.ticks = 0  # light ticks that sampled the session
        self.source = ""  # what interrupts its threads (SOURCE_NAMES), "" if sampled in Python


class LightSessions:
    """The sampler's *light* sessions (``Session.light``): requests profiled by chance
    whose samples most likely end in their route's aggregate (windows.py).

    Starting and finishing an ordinary session (a schedule, timer bookkeeping, clock
    reads at each end, remainders) cost a short request more than serving it; a light
    session only registers its thread or task.  Its CPU samples come from the thread's
    timer, billed by sample (:meth:`CpuTimers.light_add`), carry its running time; its
    off-CPU time comes from the sampler's shared light tick: a light session whose
    request is off CPU at a tick gets a wall sample worth the time since the previous
    tick (a thread without a CPU timer: one at every tick, with its CPU read from its
    clock).  A request shorter than the interval is sampled
    with a probability proportional to its length, so totals over many requests are
    right (statistical, like pprof), and a session's own totals are within about one
    interval.  This is the session's target observer."""

    def __init__(self, sampler: "Sampler") -> None:
        self._sampler = sampler
        self.sessions: dict[Session, _LightState] = {}
        #: requests registered before they have a session (:class:`LightTicket`), alive
        #: now, whose thread has no CPU timer (the others are with their thread's timer:
        #: CpuTimers.ticket_enter)
        self.tickets: set[LightTicket] = set()
        self.last_tick_ns = 0
        self.due_ns = 0
        # native thread id -> its CPU clock, and its time on and waiting for a CPU, at the
        # last light tick (_WhereNow)
        self.cpu_marks: dict[int, tuple[int, int, int]] = {}

    def any_tickets(self) -> bool:
        """Requests registered by a ticket alive now (with a CPU timer or not)."""
        if self.tickets:
            return True
        timers = self._sampler._timers
        return timers is not None and timers.ticket_count > 0

    def all_tickets(self) -> list[LightTicket]:
        """The tickets alive now."""
        timers = self._sampler._timers
        return list(self.tickets) + (timers.live_tickets() if timers is not None else [])

    def target_added(self, session: Session, target: Target) -> None:
        source = self.add(session, target, session.interval_ns, session.max_depth)
        state = self.sessions.get(session)
        if state is not None and source:
            state.source = source

    def add(self, session: Session, target: Target, interval_ns: int, max_depth: int) -> str:
        """Bill ``target`` by sample from its thread's CPU timer; "" when the thread
        has none (its CPU is then sampled at the light ticks)."""
        timers = self._sampler._cpu_timers()
        source = timers.light_add(session, target, interval_ns, max_depth) if timers is not None else None
        if source is None:
            target.cpu_mark = thread_cpu_ns(target.thread_id, target.native_id)
            return ""
        return source

    def target_removed(self, session: Session, target: Target) -> None:
        timers = self._sampler._timers
        if target.native and timers is not None:
            timers.light_remove(session, target)


class Sampler:
    """Samples the targets of registered sessions at up to the highest rate they ask for."""

    def __init__(self, *, background: bool = True) -> None:
        """``background=False``: no thread of its own; the owner calls :meth:`tick`
        (tests, benchmarks)."""
        self._background = background
        self._cond = threading.Condition(threading.Lock())
        self._schedules: dict[Session, Schedule] = {}
        self._sessions: tuple[Session, ...] = ()  # copy-on-write: ticks iterate a snapshot
        self._thread: Optional[threading.Thread] = None
        self._hz = 0  # the highest rate of the active sessions and tickets
        self._tick_hz = 0  # the rate of the current loop (WALL_TICK_HZ at most without regular sessions)
        self._asleep = False  # the thread waits for a session with no timeout (or the parked timers' one)
        self._wanted_hz = 0  # the rate of the session or ticket that woke the idle thread (_woken)
        self._stopping = False
        self._timers: Optional[native_sampler.CpuTimers] = None
        self._timers_checked = False
        self.ticks = 0
        self.errors = 0
        #: stack reads so far: a thread due for several sessions (and the continuous
        #: profile) in one tick is read once (native: per thread; pure Python: per tick)
        self.stack_reads = 0
        self._log_once = LogOnce()
        self._firewall = Firewall(self._count_error, self._log_once)
        self._cpu_ns_thread = 0
        self._continuous: Optional[ContinuousSink] = None  # continuous mode (one per process)
        self._cont_due_ns = 0
        self._cont_last_ns = 0
        self._cont_cpu: dict[int, int] = {}  # thread id -> its CPU clock at the last continuous tick
        self._light = LightSessions(self)
        # the threads whose states the watcher reads at the next light tick's moment
        # (native id -> when a light tick last found a request on it; see _watch_next)
        self._watch_ids: dict[int, int] = {}
        self._watch_deadline = 0  # the moment asked of the watcher (monotonic ns; 0: none)

    # ---------------------------------------------------------------- sessions
    def register(self, session: Session) -> None:
        with self._cond:
            self._schedules[session] = Schedule(session)
            self._sessions = self._sessions + (session,)
            if self._background and (self._thread is None or not self._thread.is_alive()):
                self._start_locked()
            if self._asleep or session.hz > self._tick_hz:
                self._wanted_hz = max(self._wanted_hz, session.hz)
                # wake the thread only when it sleeps or must now tick faster: waking it
                # for every request would cost every request a GIL hand-over and a tick (a
                # ticking or lingering thread looks again within one interval, before the
                # first sample is due).  Measured: waking it whenever the first session of
                # a busy loop arrived cost 2.8 context switches and ~50 µs of sampler CPU
                # per short request under uvicorn.
                self._cond.notify()
        session.bind(self)  # from now on the session tells us about its targets

    def register_light(self, session: Session, ticket: Optional[LightTicket] = None) -> None:
        """Sample ``session`` as a light session (:class:`LightSessions`) and attach the
        calling asyncio task, or else the calling thread; or, for the session of a
        ``ticket`` (made at its first sample, maybe on this thread), the ticket's own
        target, already registered: the session starts when the request did."""
        light = self._light
        state = _LightState()
        with self._cond:
            light.sessions[session] = state
            # (a ticket's thread started the sampler thread when it registered)
            if self._background and (self._thread is None or (ticket is None and not self._thread.is_alive())):
                self._start_locked()
            if self._asleep or session.hz > self._hz:  # (see register)
                self._wanted_hz = max(self._wanted_hz, session.hz)
                self._cond.notify()
        if ticket is None:
            session.bind(light)
            session.attach_current()
            return
        now = time.monotonic_ns()
        session.start_time_ns -= now - ticket.start_mono_ns
        session.start_mono_ns = ticket.start_mono_ns
        state.source = ticket.timer.source if ticket.timer is not None else ""
        session.bind(light)  # (before the target: the ticket's timer is registered already)
        session.targets = (ticket.make_target(),)

    def light_enter(self, ticket: LightTicket) -> None:
        """Register the request of ``ticket`` (its task, or else its thread) for
        sampling by chance, before it has a session (the ticket's owner makes one at
        its first sample).  Called by the request's own thread; end with
        :meth:`light_exit`."""
        timers = self._timers if self._timers_checked else self._cpu_timers()
        if timers is None or timers.ticket_enter(ticket) is None:
            # no CPU timer for this thread: its CPU is sampled at the light ticks
            ticket.cpu_mark = thread_cpu_ns(ticket.thread_id, ticket.native_id or ticket.learn_native_id())
            self._light.tickets.add(ticket)
        # No lock for the common case (the thread ticks or lingers at this rate): the
        # thread sets _asleep *before* its last look at the tickets (_run), so a
        # ticket it missed finds _asleep set here and wakes it
        if self._asleep or ticket.hz > self._hz or self._thread is None:
            with self._cond:
                if self._thread is None and self._background:
                    self._start_locked()
                if self._asleep or ticket.hz > self._hz:  # (see register)
                    self._wanted_hz = max(self._wanted_hz, ticket.hz)
                    self._cond.notify()

    def light_exit(self, ticket: LightTicket) -> Optional[Session]:
        """The request of ``ticket`` ended: its thread's buffered samples are billed,
        it is unregistered, and its session (made by a sample) returned, if any."""
        try:
            if ticket.native:
                timers = self._timers
                if timers is not None:
                    timers.ticket_exit(ticket)
            else:
                self._light.tickets.discard(ticket)
        finally:
            session = ticket.close()
        return session

    def unregister(self, session: Session) -> None:
        """Stop sampling ``session``: bill what its CPU timers still hold and the
        remainders, and leave it a :class:`SamplingReport`.  The lock is never held
        during a tick, so a request never waits for one; a tick already under way
        may still add a sample (readers snapshot the table)."""
        if session.light:
            self._unregister_light(session)
            return
        with self._cond:
            self._sessions = tuple(s for s in self._sessions if s is not session)
            schedule = self._schedules.pop(session, None)
        session.bind(None)
        for target in session.targets:
            try:
                self._release(session, target, schedule)
            except Exception:  # the other targets' timers must still stop
                self._firewall.report("release", "otelprof: a sampled thread could not be released cleanly")
        session.stacks.close()  # a tick still under way adds nothing now: the numbers are final
        if session.extras is not None:
            session.extras.close()
        if schedule is not None:
            session.report = schedule.report(time.monotonic_ns())

    def _unregister_light(self, session: Session) -> None:
        light = self._light
        with self._cond:
            state = light.sessions.pop(session, None)
        for target in session.targets:
            try:
                light.target_removed(session, target)
            except Exception:
                self._firewall.report("release", "otelprof: a sampled thread could not be released cleanly")
        session.bind(None)
        session.stacks.close()
        if not session.stacks.ticks:
            return  # (nothing sampled: no profile will be made, no report needed)
        end = time.monotonic_ns()
        source = state.source if state is not None else ""
        session.report = SamplingReport(
            sampler="native" if source else "python", rates=[(session.hz, 0, 0, max(0, end - session.start_mono_ns))],
            ticks=state.ticks if state is not None else 0, period_ns=session.interval_ns, cpu_timer=source)

    def release_idle_timers(self) -> None:
        """Stop the CPU timers kept for threads' next profiles (profiler shutdown)."""
        timers = self._timers
        if timers is not None and not self._sessions:
            timers.expire_parked(everything=True)

    def set_continuous(self, sink: Optional[ContinuousSink], *, only: Any = None) -> bool:
        """Sample the whole process for ``sink`` at ``sink.hz`` (None: stop; with
        ``only``, stop only if that sink is the one running).  One sink per process:
        False if another one runs already."""
        with self._cond:
            if sink is None:
                if only is None or self._continuous is only:
                    self._continuous = None
                    timers = self._timers
                    if timers is not None:
                        timers.continuous = None
                        timers.continuous_done()
                return True
            if self._continuous is not None and self._continuous is not sink:
                return False
            self._continuous = sink
            now = time.monotonic_ns()
            self._cont_last_ns = now
            self._cont_due_ns = now + int(1e9 / sink.hz)
            self._cont_cpu = {}
            if self._background and (self._thread is None or not self._thread.is_alive()):
                self._start_locked()
            self._cond.notify()
        timers = self._cpu_timers() if sink.native else None
        if timers is not None:  # (CPU samples of every thread go to the continuous profile too)
            timers.continuous = self._continuous_cpu
        return True

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def light_targets(self) -> int:
        """Threads and tasks of light sessions the CPU timers still bill (0 when none run)."""
        timers = self._timers
        return len(self._light.sessions) + len(self._light.tickets) + (
            timers.light_targets if timers is not None else 0)

    @property
    def running(self) -> bool:
        """True while the sampler's background thread exists (it parks, without
        waking, while no session is registered)."""
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def cpu_ns_self(self) -> int:
        """CPU used by sampling: this thread, plus the CPU timers' signal handlers
        (they run on the sampled threads) -- for the overhead governor."""
        timers = self._timers
        return self._cpu_ns_thread + (timers.handler_cpu_ns() if timers is not None else 0)

    # ---------------------------------------------------------------- TargetObserver
    def target_added(self, session: Session, target: Target) -> None:
        timers = self._cpu_timers() if session.native else None
        schedule = self._schedules.get(session)
        source = None
        if timers is not None:
            source = timers.add(session, target, schedule.interval_ns if schedule else session.interval_ns)
        if source is not None:
            if schedule is not None:
                schedule.kinds.add("native")
                schedule.sources.add(source)
            if target.task is None:
                target.wall_cpu_mark = thread_cpu_ns(target.thread_id, target.native_id)
            return
        target.cpu_mark = thread_cpu_ns(target.thread_id, target.native_id)
        if schedule is not None:
            schedule.kinds.add("python")

    def target_removed(self, session: Session, target: Target) -> None:
        self._release(session, target, self._schedules.get(session))

    def _release(self, session: Session, target: Target, schedule: Optional[Schedule]) -> None:
        now_ns = time.monotonic_ns()
        now_cpu = thread_cpu_ns(target.thread_id, target.native_id) if target.task is None else None
        if target.native:
            mark = target.wall_cpu_mark
            timers = self._timers
            if timers is not None:
                timers.remove(session, target)
        else:
            mark = target.cpu_mark
            if target.task is None and mark is not None:
                # the CPU used since the last tick goes to the last stack: totals match the clock
                if now_cpu is not None and now_cpu > mark:
                    bill_remainder(session, target, now_cpu - mark)
                    target.cpu_mark = now_cpu
        # the off-CPU wall after the last tick (its CPU went with the remainder and the
        # drained CPU samples): without it a request's wall falls short by up to one
        # interval -- all of it for a request shorter than one
        key = target.last_wall_key if target.last_wall_key is not None else target.last_key
        if schedule is None or key is None:
            return
        if target.task is not None:
            on_cpu = target.cpu_since_wall  # CPU samples of the task since the last tick
        elif now_cpu is not None and mark is not None:
            on_cpu = max(0, now_cpu - mark)
        else:
            return
        off_cpu = (now_ns - max(schedule.last_tick_ns, session.start_mono_ns)) - on_cpu
        if off_cpu > 0:
            session.stacks.add_to(key, wall_ns=off_cpu)

    def _cpu_timers(self) -> Optional[native_sampler.CpuTimers]:
        if not self._timers_checked:
            with self._cond:
                if not self._timers_checked:
                    lib, _reason = native_sampler.load()
                    self._timers = native_sampler.CpuTimers(lib, bill_remainder) if lib is not None else None
                    self._timers_checked = True
        return self._timers

    # ---------------------------------------------------------------- thread
    def _start_locked(self) -> None:
        self._stopping = False
        t = threading.Thread(target=self._run, name="otelprof-sampler", daemon=True)
        self._thread = t
        t.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=1.0)

    def _count_error(self, key: str) -> None:
        self.errors += 1

    def _run(self) -> None:
        me = threading.get_ident()
        next_tick = time.monotonic()
        cond = self._cond
        idle_since: Optional[float] = None
        while True:
            with cond:
                while not self._sessions and not self._light.sessions and not self._light.any_tickets() \
                        and self._continuous is None and not self._stopping:
                    self._light.last_tick_ns = 0  # (no light tick meanwhile: see _sample_light)
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    if self._tick_hz and now - idle_since < LINGER_SECONDS:
                        # between requests: look again at the last rate for a while, so the
                        # next request's session needs no wake-up (a GIL hand-over, ~10-20 µs
                        # of that request's time)
                        cond.wait(1.0 / self._tick_hz)
                        idle_since = self._woken(idle_since)
                        timers = self._timers
                        if timers is not None:
                            cond.release()
                            try:
                                timers.pause_idle(time.monotonic())
                            finally:
                                cond.acquire()
                        continue
                    self._hz = self._tick_hz = 0
                    timers = self._timers
                    if timers is not None and timers.running:
                        # idle CPU timers kept for the next request: paused, and stopped once stale
                        # (one left by tickets only is parked here: they do not park it)
                        cond.release()
                        try:
                            left = timers.expire_parked()
                        finally:
                            cond.acquire()
                        if left and not self._sessions and not self._light.sessions and not self._light.any_tickets() \
                                and self._continuous is None and not self._stopping:
                            self._asleep = True
                            if not self._light.any_tickets():  # (a ticket registered without the lock)
                                cond.wait(native_sampler.PAUSE_AFTER if timers.pausing else native_sampler.PARK_SECONDS)
                            self._asleep = False
                            idle_since = self._woken(idle_since)
                            continue
                    self._asleep = True
                    if not self._light.any_tickets():
                        cond.wait()  # idle: blocked, no periodic wake-ups
                    self._asleep = False
                    idle_since = self._woken(idle_since)
                    next_tick = time.monotonic()
                if idle_since is not None:
                    idle_since = None
                    next_tick = time.monotonic()
                if self._stopping:
                    return
                sessions = self._sessions
                continuous = self._continuous
            try:
                self._tick(time.monotonic_ns(), sessions)
            except Exception:  # never let a sampler bug kill the thread
                self._firewall.report("tick", "otelprof: sampler tick failed; the affected samples are skipped")
            cpu = thread_cpu_ns(me)
            if cpu is not None:
                self._cpu_ns_thread = cpu
            # (nothing registered at this moment: the rate that woke it, or the last one, at
            # which it lingers; a loop whose requests start and end between two of its GIL
            # releases is never seen with a ticket here, and falling to 1 Hz made every
            # next ticket wake it: see _woken)
            wanted, self._wanted_hz = self._wanted_hz, 0
            hz = max([s.hz for s in sessions] + [s.hz for s in list(self._light.sessions)]
                     + [t.hz for t in self._light.all_tickets()]
                     + ([continuous.hz] if continuous is not None else []), default=0) or wanted or self._hz or 1
            # (after the tick: it may have ended a boost)
            tick_hz = hz if sessions or (continuous is not None and not self._continuous_timed(continuous)) \
                else min(hz, WALL_TICK_HZ)
            interval = 1.0 / tick_hz
            next_tick += interval
            now = time.monotonic()
            delay = next_tick - now
            if delay <= 0:  # fell behind (GIL contention): don't try to catch up
                next_tick = now
                delay = interval * 0.1
            if self._watch_ids:
                self._watch_next(next_tick)
            with cond:
                self._hz, self._tick_hz = hz, tick_hz
                if not self._stopping:
                    cond.wait(delay)  # cut short when a session needs a faster rate
            next_tick = min(next_tick, time.monotonic())

    def _woken(self, idle_since: Optional[float]) -> Optional[float]:
        """After a wait of the idle thread (the lock held): if a session or ticket woke
        it, linger at its rate again from now, even if it has ended by the time this
        thread got the GIL.

        A trivial endpoint's request starts and ends within one step of its loop, and
        this thread gets the GIL when the loop lets it go, in its selector, between
        steps: it never sees a ticket there.  It used to go back to sleep at once, so
        that the next request woke it again: a wake-up and a GIL hand-over per request
        (with 100 Hz tickets: 22,000 wake-ups for 22,000 requests in process, the
        loop's selector call at 12 µs instead of 1).  Lingering, it looks again at the
        tick rate and is woken again only once the linger has run out."""
        wanted, self._wanted_hz = self._wanted_hz, 0
        if not wanted:
            return idle_since
        self._hz = max(self._hz, wanted)
        self._tick_hz = max(self._tick_hz, min(wanted, WALL_TICK_HZ))
        return time.monotonic()

    # ---------------------------------------------------------------- one tick
    def tick(self, now_ns: Optional[int] = None) -> None:
        """Take one tick now, on the calling thread: drain the CPU timers and sample
        every registered session that is due at ``now_ns`` (default: now)."""
        self._tick(time.monotonic_ns() if now_ns is None else now_ns)

    def _tick(self, now_ns: int, sessions: Optional[Iterable[Session]] = None) -> None:
        self.ticks += 1
        timers = self._timers
        light = self._light
        where: Optional[_WhereNow] = None
        light_now = now_ns
        if light.sessions or light.any_tickets():
            where = _WhereNow(timers.lib if timers is not None else None, light.cpu_marks)
            if self._watch_deadline:
                # the states the watcher read at the moment this tick was due, before this
                # thread waited for the GIL: the light tick is taken at that moment
                light_now = where.watched(self._watch_deadline, now_ns)
                self._watch_deadline = 0
            if light_now >= light.due_ns:  # (a light tick is due: see _sample_light)
                # where light requests' threads are, read first (those the watcher did
                # not): by the end of the drains below a thread that was blocked when the
                # tick began may have woken up
                where.read(light)
                self._note_watched(where, now_ns)
        elif self._watch_deadline:
            self._watch_deadline = 0
        if timers is not None:
            timers.drain_all()  # CPU samples first: the wall samples below subtract them
        profiletypes.drain()  # allocation samples, if a profile type asks for them
        frames = _Frames(timers.lib if timers is not None else None)
        cpu_now: dict[int, Optional[int]] = {}
        schedules = self._schedules
        for session in self._sessions if sessions is None else sessions:
            if session.finished:
                continue
            schedule = schedules.get(session)
            if schedule is None:
                continue
            schedule.follow_plan(now_ns)
            wall = schedule.take(now_ns)
            if wall is None or session.sample_budget_exhausted(now_ns):
                continue
            self._sample(session, schedule.interval_ns, frames, wall, cpu_now)
        if where is not None:
            self._sample_light(now_ns, frames, cpu_now, where, light_now)
        else:
            light.last_tick_ns = 0  # (the next light tick is the first after a pause)
        if self._continuous is not None:
            self._sample_continuous(now_ns, frames, cpu_now)
        self.stack_reads += frames.reads
        if timers is not None:
            timers.retune(lambda s: schedules[s].interval_ns if s in schedules else s.interval_ns)

    def _watch_next(self, at: float) -> None:
        """Ask the watcher (native ``watch_at``) to read the states of the threads
        light requests were found on lately at ``at``, this thread's next wake, when a
        light tick is due then.  This thread takes its tick once it holds the GIL,
        which it gets when a loop lets it go: often just as a blocked request wakes up
        and waits for the GIL, where /proc would read it running (see
        native/thread_state.c)."""
        self._watch_deadline = 0
        timers = self._timers
        lib = timers.lib if timers is not None else None
        if lib is None or not hasattr(lib, "watch_at"):
            self._watch_ids.clear()
            return
        at_ns = int(at * 1e9)
        if at_ns < self._light.due_ns:
            return
        try:
            if lib.watch_at(at_ns, list(self._watch_ids)[-_WATCH_MAX:]):
                self._watch_deadline = at_ns
        except Exception:  # (the tick then reads the states itself)
            self._watch_ids.clear()

    def _note_watched(self, where: "_WhereNow", now_ns: int) -> None:
        """Remember the threads this light tick found requests on (for the watcher),
        forgetting those not seen for WATCH_FORGET_NS."""
        ids = self._watch_ids
        for native_id in where.read_ids():
            ids.pop(native_id, None)
            ids[native_id] = now_ns  # (most recent last)
        if ids:
            oldest = next(iter(ids))
            if now_ns - ids[oldest] > _WATCH_FORGET_NS:
                for native_id, seen in list(ids.items()):
                    if now_ns - seen > _WATCH_FORGET_NS:
                        del ids[native_id]

    def _continuous_timed(self, sink: "ContinuousSink") -> bool:
        """True when the continuous mode's CPU comes from the threads' CPU timers (its
        ticks then only add wall time: at most WALL_TICK_HZ)."""
        timers = self._timers
        return sink.native and timers is not None and not timers.broken

    def _sample_continuous(self, now_ns: int, frames: "_Frames", cpu_now: dict[int, Optional[int]]) -> None:
        """One continuous tick, if due: every thread but this one, its stack read once
        this tick (shared with the sessions sampled in it).

        With the native sampler every thread has a CPU timer (started here), whose
        samples put each thread's CPU where it was spent (:meth:`_continuous_cpu`); the
        tick adds what the thread did *not* spend on CPU since the previous one (from
        its CPU clock), where it is now: where it waits.  Without one, the tick bills
        the CPU the thread used since the previous tick to the stack it shows now, which
        leans towards where threads let go of the GIL (docs/sampling.md)."""
        sink = self._continuous
        if sink is None or now_ns < self._cont_due_ns:
            return
        # (the threads' timers run at this rate; the loop may tick slower, at WALL_TICK_HZ:
        # each tick's wall is then the time since the previous one)
        interval = int(1e9 / sink.hz)
        self._cont_due_ns = max(self._cont_due_ns + interval, now_ns - interval)
        wall = now_ns - self._cont_last_ns
        self._cont_last_ns = now_ns
        sink.roll(now_ns)
        links = sink.links()
        for session in (*self._sessions, *self._light.sessions):  # a profiled request's span, where it runs
            link = session.link
            if link is None or session.finished:
                continue
            for target in session.targets:
                task = target.task
                if task is None or _current_task(target.loop) is task:
                    links[target.thread_id] = link
        me = threading.get_ident()
        marks = self._cont_cpu
        seen: dict[int, int] = {}
        timers = self._timers if self._continuous_timed(sink) else None
        timed: set[int] = set()
        source = ""
        for th in threading.enumerate():
            tid = th.ident
            if tid is None or tid == me:
                continue
            native_id = th.native_id or 0
            timer = None
            if timers is not None and native_id:
                timer = timers.continuous_thread(tid, native_id, interval, sink.max_depth)
                if timer is not None:
                    timed.add(tid)
                    source = source or timer.source
            stack = frames.stack(tid, None, sink.max_depth, sink.native)
            if tid not in cpu_now:
                cpu_now[tid] = thread_cpu_ns(tid, native_id)
            now_cpu = cpu_now[tid]
            cpu = 0
            last = marks.get(tid)
            if now_cpu is not None:
                if last is not None:
                    cpu = max(0, now_cpu - last)
                seen[tid] = now_cpu
            if stack is None:
                continue
            codes, lastis = stack
            if timer is not None:
                # its CPU samples carry the time it ran; this is the rest of the interval
                off_cpu = wall - cpu if last is not None else wall
                if off_cpu > 0:
                    sink.record(th.name, codes, lastis, 0, off_cpu, links.get(tid))
            else:
                sink.record(th.name, codes, lastis, cpu, wall, links.get(tid))
        self._cont_cpu = seen
        if timers is not None:
            # (threads that ended; every thread if the mode stopped during this tick, which
            # may have marked some after set_continuous(None) cleared them)
            timers.continuous_done(keep=timed if self._continuous is sink else None)
            sink.sampled_by("native" if timed else "python", source)

    def _continuous_cpu(self, th: Any, cpu_ns: int, mono: int, codes: Any, lastis: Any, addrs: Any,
                        link: Optional["SpanLink"]) -> None:
        """A CPU sample of a thread in the continuous profile (from its timer's drain,
        on whichever thread drains it): the CPU since its previous sample, at its stack."""
        sink = self._continuous
        if sink is None or cpu_ns <= 0:
            return
        if link is None:
            link = sink.link_at(th.ident, mono, addrs)
        codes, lastis = cap_depth(codes, lastis, sink.max_depth)
        sink.record(_thread_name(th.ident), codes, lastis, cpu_ns, cpu_ns, link)

    def _sample_light(self, now_ns: int, frames: "_Frames", cpu_now: dict[int, Optional[int]],
                      where: "_WhereNow", at_ns: int) -> None:
        """The shared light tick, if due: a wall sample for every light session whose
        request is off CPU now, worth the time since the previous light tick (see
        :class:`LightSessions`, and :meth:`_sample_light_session` for what counts).

        ``at_ns``: when the threads' states were read (by the watcher, at the moment
        the tick was due; else ``now_ns``); the tick stands for that moment.  The
        requests it finds are those of ``now_ns``: one that blocked its loop at that
        moment may have ended since, and the one the loop runs now is billed in its
        place (the totals per route stay right; a loop found idle bills nobody)."""
        light = self._light
        tickets = light.all_tickets()
        intervals = [s.interval_ns for s in list(light.sessions)] + [t.interval_ns for t in tickets]
        if not intervals:
            light.last_tick_ns = 0
            return
        interval = max(min(intervals), _WALL_TICK_NS)  # (at most WALL_TICK_HZ, whatever ticks faster)
        if at_ns < light.due_ns:
            return
        last = light.last_tick_ns
        # the time since the previous light tick (a late tick, e.g. after the loop thread
        # kept the GIL, stands for all of it); one interval for the first after a pause
        wall = at_ns - last if last and 0 < at_ns - last <= MAX_LIGHT_WALL_NS else interval
        light.last_tick_ns = at_ns
        light.due_ns = max(light.due_ns + interval, at_ns - interval // 2)
        where.wall = wall
        for ticket in tickets:  # a request off CPU at this tick and not sampled yet: its session now
            if ticket.session is None and now_ns >= ticket.start_mono_ns and where.off_cpu(ticket):
                ticket.session_for_sample()
        for session, state in list(light.sessions.items()):
            if session.finished or now_ns < session.start_mono_ns or session.sample_budget_exhausted(now_ns):
                continue
            state.ticks += 1
            self._sample_light_session(session, frames, wall, where, cpu_now)
        light.cpu_marks = where.marks

    def _sample_light_session(self, session: Session, frames: "_Frames", wall: int, where: "_WhereNow",
                              cpu_now: dict[int, Optional[int]]) -> None:
        """One light tick of ``session``: statistical wall time.  A request off CPU at
        this tick gets ``wall`` (the time since the previous light tick) at the stack
        where it waits; one that runs gets none, since the CPU samples of its thread's
        timer carry its running time as wall time too.  Over many requests and ticks
        that adds up to their real duration, short requests included (a request of
        2 ms is off CPU at a tick with the probability of its share of the interval).
        Threads without a CPU timer are sampled as in :meth:`_sample` (CPU from their
        clock, and the tick's wall while they are attached)."""
        native = [t for t in session.targets if t.native]
        if len(native) != len(session.targets):
            self._sample(session, session.interval_ns, frames, wall, cpu_now,
                         [t for t in session.targets if not t.native])
            if not native:
                return
        table = session.stacks
        max_depth = session.max_depth
        waiting: list[Target] = []
        busy = False  # the request is where one of its threads is (running or blocked)
        for target in native:
            tid = target.thread_id
            task = target.task
            if task is not None:
                if task.done():
                    continue
                if _current_task(target.loop) is not task:
                    waiting.append(target)
                    continue
                stop = getattr(task.get_coro(), "cr_frame", None)
                if stop is None:
                    continue
            else:
                stop = None
            busy = True
            off = int(wall * where.share(tid, target.native_id, task is not None))
            if off <= 0:
                continue  # running: its CPU samples carry this time
            stack = frames.stack(tid, stop, max_depth, session.native)
            if stack is not None:
                codes, lastis = stack
                table.add(target.thread_name or _thread_name(tid), codes, lastis, 0, off)
        if busy:
            return  # the waiting tasks await what its threads do: their wall is counted there
        for target in waiting[:1]:  # (a request waits once, whatever number of its tasks wait)
            codes, lastis = _walk_coroutine(target.task.get_coro(), max_depth)
            if codes:
                table.add(target.thread_name or _thread_name(target.thread_id), codes, lastis, 0, wall)

    def _sample(self, session: Session, interval: int, frames: "_Frames", wall: int,
                cpu_now: dict[int, Optional[int]], targets: Optional[Iterable[Target]] = None) -> None:
        table = session.stacks
        max_depth = session.max_depth
        native = session.native
        waiting: list[Target] = []  # suspended tasks, sampled unless a helper thread works for them
        busy_thread = False
        for target in session.targets if targets is None else targets:
            tid = target.thread_id
            task = target.task
            if task is not None:
                if task.done():
                    continue
                running = _current_task(target.loop) is task
                if not running:
                    waiting.append(target)
                    continue
                stop = getattr(task.get_coro(), "cr_frame", None)
                stack = frames.stack(tid, stop, max_depth, native) if stop is not None else None
                if stack is None:
                    # the loop switched tasks after the frames were read: this stack
                    # belongs to another task, never to this one
                    waiting.append(target)
                    continue
                busy_thread = True  # this tick's wall is in the running task's sample
            else:
                stack = frames.stack(tid, None, max_depth, native)
                busy_thread = True
            if stack is None:
                continue
            codes, lastis = stack
            name = target.thread_name or _thread_name(tid)
            if target.native:
                off_cpu = _off_cpu(target, wall, cpu_now)
                if off_cpu <= 0:
                    continue
                if off_cpu < interval // 2 and target.last_key is not None:
                    # a sliver between CPU samples (e.g. waiting for the GIL): this stack
                    # is where the thread let go of the GIL, a biased place; keep the
                    # time with the last CPU sample instead of a sample of its own
                    table.add_to(target.last_key, wall_ns=off_cpu)
                    target.last_wall_key = target.last_key
                    continue
                # not a place for CPU remainders: where a running thread is seen by this
                # thread is where it let go of the GIL, not where its CPU went
                target.last_wall_key = table.add(name, codes, lastis, 0, off_cpu)
                continue
            if tid not in cpu_now:
                cpu_now[tid] = thread_cpu_ns(tid, target.native_id)
            now_cpu = cpu_now[tid]
            cpu = 0
            if now_cpu is not None:
                if target.cpu_mark is not None:
                    cpu = max(0, now_cpu - target.cpu_mark)
                target.cpu_mark = now_cpu
            target.last_key = target.last_wall_key = table.add(name, codes, lastis, cpu, wall)
        for target in waiting:
            if not target.native:
                tid = target.thread_id
                if tid not in cpu_now:
                    cpu_now[tid] = thread_cpu_ns(tid, target.native_id)
                # move the CPU mark on: what other tasks burn meanwhile is not ours
                target.cpu_mark = cpu_now[tid]
            off_cpu = _off_cpu(target, wall, cpu_now)
            if busy_thread or off_cpu <= 0:
                continue  # the task awaits work we sample in its thread; don't count wall twice
            codes, lastis = _walk_coroutine(target.task.get_coro(), max_depth)
            if codes:
                table.add(target.thread_name or _thread_name(target.thread_id), codes, lastis, 0, off_cpu)


def _off_cpu(target: Target, wall: int, cpu_now: dict[int, Optional[int]]) -> int:
    """The part of this tick's ``wall`` a timer-sampled target spent off CPU (its CPU
    samples carry the on-CPU part as wall time).

    A thread's CPU timer fires after its CPU is spent, so the CPU samples drained at a
    tick lag the tick: subtracting them from the tick's wall would count the CPU since
    the last timer as off-CPU wall now and again as a CPU sample later (wall totals
    10-15 % above the real duration on CPU-bound requests).  A thread target therefore
    reads its CPU clock at each tick; a task (its thread's clock also counts other
    tasks) subtracts the CPU billed to it and carries any excess to the next tick."""
    mark = target.wall_cpu_mark
    if target.task is None and mark is not None:
        tid = target.thread_id
        if tid not in cpu_now:
            cpu_now[tid] = thread_cpu_ns(tid, target.native_id)
        now_cpu = cpu_now[tid]
        if now_cpu is not None:
            target.wall_cpu_mark = now_cpu
            target.cpu_since_wall = 0
            return wall - max(0, now_cpu - mark)
    off_cpu = wall - target.cpu_since_wall
    target.cpu_since_wall = max(0, -off_cpu)  # CPU billed ahead of the ticks: the next ticks owe it
    return off_cpu


# ---------------------------------------------------------------------- stack walking


class _WhereNow:
    """How much of a light tick's wall a request spent off CPU, from its threads'
    states at the tick's moment (``thread_state``: a few /proc reads each).

    The moment is the one the tick was due at: the watcher (native/thread_state.c), a
    thread that never takes the GIL, reads the states then (:meth:`watched`).  This
    thread only ticks once it holds the GIL, which it gets when a loop lets it go: read
    then, a request that had blocked its loop for 2 ms had often woken and was waiting
    for the GIL, so its wait was lost (0.52-0.91 of the truth in
    ``test_asgi_requests_wall_adds_up_to_their_durations``, with the machine's load;
    0.84-1.03 with the watcher, also with two busy processes on the 2 cores).  Threads
    the watcher was not asked about are read at the start of the tick (:meth:`read`).

    A thread blocked in the kernel (I/O, a sleep, a lock, an event) is off CPU: 1.  A
    loop in ``epoll_wait`` has nothing to run: 0 for the task it runs by the time of the
    tick (it was not waiting then), 1 for a thread target.  One the watcher finds
    waiting for the GIL is kept off CPU by another thread (this one did not hold the GIL
    then): 1, for the task its loop runs too.  One found waiting for the GIL at the
    start of the tick is most often one the tick just stopped, but may be one your
    other threads keep from running: a thread target gets the share of the interval
    since the previous light tick it did not run (its CPU clock); the task a loop
    thread is running gets 0 (the loop was running it).  One that runs or is runnable
    gets the whole interval with the probability of the share of it the thread spent
    waiting for a CPU (its schedstat): its CPU samples carry only the time it ran, so
    on a machine whose cores other processes keep busy a CPU-bound request showed ~0.6
    of its wall without it.  A thread whose state cannot be read counts as running: its
    wall time is then only what its CPU samples carry, never invented."""

    __slots__ = ("_lib", "_states", "_before", "_asked", "_drawn", "_watched", "marks", "wall")

    def __init__(self, lib: Any, marks_before: dict[int, tuple[int, int, int]]) -> None:
        self._lib = lib if lib is not None and hasattr(lib, "thread_state") else None
        if self._lib is not None and hasattr(self._lib, "learn_gil") and not _GIL_LEARNT:
            _learn_gil(self._lib)
        self._states: dict[int, tuple[int, int, int]] = {}  # native id -> (state, run ns, wait ns)
        self._asked: list[int] = []
        self._drawn: dict[int, float] = {}  # native id -> a runnable thread's share, drawn (share)
        self._watched: Any = ()  # the native ids the watcher read (at the tick's moment)
        # native id -> (CPU clock, schedstat run, schedstat wait) at the previous light tick
        self._before = marks_before
        self.marks: dict[int, tuple[int, int, int]] = {}  # the same, now (for the next tick)
        self.wall = 0  # the light tick's wall (set when it is due)

    def watched(self, deadline_ns: int, now_ns: int) -> int:
        """Take the watcher's reading asked for ``deadline_ns``: the states it read
        then become this tick's, and the moment it read them is returned (``now_ns``
        when there is no such reading: the tick came early, or the watcher is late;
        the tick then reads the states itself)."""
        lib = self._lib
        reading = lib.watched(deadline_ns) if lib is not None else None  # (watch_at came with it)
        if reading is None:
            return now_ns
        at, states = reading
        self._states.update(states)
        self._watched = states.keys()
        return min(at, now_ns)

    def read_ids(self) -> Iterable[int]:
        """The native ids of the threads :meth:`read` found light requests on."""
        return self._asked

    def read(self, light: "LightSessions") -> None:
        """Read the state (and clocks) of every thread a light request occupies now,
        at the start of the tick (the watcher's reading, where there is one)."""
        asked = self._asked
        for ticket in light.all_tickets():
            if ticket.native and ticket.native_id:  # (only those whose share is asked: off_cpu)
                self._read(ticket.thread_id, ticket.native_id)
                asked.append(ticket.native_id)
        for session in list(light.sessions):
            for target in session.targets:
                if target.native and target.native_id:  # (see _sample_light_session)
                    self._read(target.thread_id, target.native_id)
                    asked.append(target.native_id)

    def _read(self, ident: int, native_id: int) -> tuple[int, int, int]:
        reading = self._states.get(native_id)
        if reading is None:
            reading = self._states[native_id] = self._state(native_id)
        if native_id not in self.marks:
            cpu = thread_cpu_ns(ident, native_id)
            if cpu is not None:
                self.marks[native_id] = (cpu, reading[1], reading[2])
        return reading

    def share(self, ident: int, native_id: int, of_task: bool) -> float:
        """The share of this tick's wall the thread (``of_task``: the task its loop is
        running) spent off CPU."""
        state, run, wait = self._read(ident, native_id)
        if state == 1:
            return 1.0
        if state == 3:  # in epoll_wait: a loop with nothing to run (no task of it waits there)
            return 0.0 if of_task else 1.0
        if state == 2 and native_id in self._watched:
            # waiting for the GIL at the tick's moment, which this thread did not hold then
            # (it waited for its tick without it): another thread keeps it off CPU
            return 1.0
        before = self._before.get(native_id)
        if before is None:
            return 0.0
        if state == 0:
            # runs, or waits for a CPU: the whole tick with the probability of the share of
            # the interval it waited for one (a share of it each time would make a session
            # for nearly every running request on a busy server: 2.5 points of throughput)
            # (drawn once per thread and tick: the ticket and its session ask alike)
            drawn = self._drawn.get(native_id)
            if drawn is None:
                ran, waited = run - before[1], wait - before[2]
                drawn = self._drawn[native_id] = 1.0 if run >= 0 and before[1] >= 0 and ran >= 0 and waited > 0 \
                    and _random() * (ran + waited) < waited else 0.0
            return drawn
        if state != 2 or of_task:
            return 0.0
        now = self.marks.get(native_id)
        if now is None or self.wall <= 0:
            return 0.0
        return max(0.0, 1.0 - (now[0] - before[0]) / self.wall)

    def _state(self, native_id: int) -> tuple[int, int, int]:
        """``thread_state``, read again after giving up the core for a moment when the
        first read finds the thread between states (running, or in no wait yet): a tick
        tends to start just as a thread lets the GIL go to block, and this thread's
        wake-up may have pushed it off its core right there, where /proc reads it
        running.  The GIL is kept meanwhile, so the thread can only go on into its
        blocking call (1), come back for the GIL after a short one (2: it was running),
        or go on running C code (0)."""
        lib = self._lib
        if lib is None:
            return (-1, -1, -1)
        reading = lib.thread_state(native_id)
        if reading[0] == 0 or reading[0] == -1:
            settle = _gil_keeping_yield()
            if settle is not None:
                settle()
                reading = lib.thread_state(native_id)
        return reading

    def off_cpu(self, ticket: LightTicket) -> bool:
        """The ticket's request is off CPU now, at least in part: its task waits (not
        the one its loop runs), or its thread is off CPU.  A ticket without a CPU timer
        is sampled at every tick it lives (its CPU is read from its clock)."""
        if not ticket.native:
            return True
        task = ticket.task
        if task is not None and not task.done() and _current_task(task.get_loop()) is not task:
            return True
        return self.share(ticket.thread_id, ticket.native_id, task is not None) > 0.0


_GIL_LEARNT = False
_random = random.Random().random


def _learn_gil(lib: Any) -> None:
    """Once per process: where a thread waiting for the GIL sleeps (``learn_gil``,
    called with the GIL held), so that ``thread_state`` tells a GIL wait from a wait
    for a lock or an event."""
    global _GIL_LEARNT
    _GIL_LEARNT = True
    try:
        lib.learn_gil()
    except Exception:  # (without it a futex wait reads as a GIL wait: less wall, never invented)
        pass


class _Frames:
    """The stacks of other threads during one tick, read once per thread.

    With the native extension, ``walk`` reads a thread's frames directly (under the
    GIL, with fault-free reads, no frame objects made); without it, or for sessions
    that opted out of native code, ``sys._current_frames()`` and ``f_back``, which
    create frame objects for the other thread's frames and have crashed CPython
    3.11 under thread churn (see docs/sampling.md)."""

    __slots__ = ("lib", "_native", "_py", "reads")

    def __init__(self, lib: Any) -> None:
        self.lib = lib  # the native extension, or None
        self._native: dict[int, Any] = {}
        self._py: Optional[dict[int, FrameType]] = None
        self.reads = 0  # stacks read: one per thread (native), one for all threads (sys._current_frames)

    def stack(self, tid: int, stop: Any, max_depth: int, native: bool) -> Optional[tuple[Any, Any]]:
        """Leaf-first (codes, offsets) of thread ``tid``, cut at frame ``stop`` (included);
        None if the thread has no stack or ``stop`` is not on it."""
        lib = self.lib
        if native and lib is not None:
            if tid not in self._native:
                self._native[tid] = lib.walk(tid, min(max_depth + 1, 512))
                self.reads += 1
            got = self._native[tid]
            if got is None:
                return None
            codes, lastis, addrs, omitted = got
            if stop is not None:
                addr = lib.frame_address(stop)
                if addr not in addrs:
                    return None
                i = addrs.index(addr)
                omitted = omitted if i == len(addrs) - 1 else 0
                codes, lastis = codes[:i + 1], lastis[:i + 1]
            if None in codes:
                codes = tuple(UNKNOWN if c is None else c for c in codes)
            return cap_depth(codes, lastis, max_depth, omitted)
        if self._py is None:
            self._py = _current_frames()
            self.reads += 1
        frame = self._py.get(tid)
        if frame is None or (stop is not None and not _on_stack(frame, stop)):
            return None
        return _walk_thread(frame, stop, max_depth)


def _current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()`` with the garbage collector off meanwhile: a collection
    started inside it (it allocates while holding the runtime's thread-list lock) can
    deadlock the process on CPython before 3.11.9 / 3.12.3 (python/cpython#106883, the
    fix there does the same)."""
    was = gc.isenabled()
    if was:
        gc.disable()
    try:
        return sys._current_frames()
    finally:
        if was:
            gc.enable()


def bill_remainder(session: Session, target: Target, cpu_ns: int) -> None:
    """Bill CPU the samples did not cover (used after the last sample, less than one
    interval) to the target's last stack, so totals match the thread's clock.  When
    no sample located any of it (a block shorter than one interval) it is shown as
    ``<unsampled CPU>``: billing it to the stack of the moment (our own detach code)
    would put it where it was not spent."""
    if target.last_key is not None and session.stacks.add_to(target.last_key, cpu_ns=cpu_ns, wall_ns=cpu_ns):
        return
    name = target.thread_name or _thread_name(target.thread_id)
    target.last_key = session.stacks.add(name, (UNSAMPLED,), (0,), cpu_ns, cpu_ns)



def _walk_coroutine(coro: Any, max_depth: int) -> tuple[Any, Any]:
    """Leaf-first frames of a suspended coroutine chain (``cr_await`` links)."""
    codes: list[Any] = []
    lines: list[int] = []
    seen = 0
    while coro is not None and seen < 10000:
        seen += 1
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            frame = getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        codes.append(frame.f_code)
        lines.append(frame.f_lasti)
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        coro = nxt
    codes.reverse()
    lines.reverse()
    if len(codes) > max_depth:
        return cap_depth(codes, lines, max_depth)
    return codes, lines


def _on_stack(frame: Optional[FrameType], stop: Any) -> bool:
    while frame is not None:
        if frame is stop:
            return True
        frame = frame.f_back
    return False


def _current_task(loop: Any) -> Any:
    try:
        import asyncio

        return asyncio.current_task(loop)
    except Exception:
        return None


def _thread_name(ident: int) -> str:
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    return t.name if t is not None else f"thread-{ident}"


_sampler: Optional[Sampler] = None
_sampler_lock = threading.Lock()


def get_sampler() -> Sampler:
    """The process-wide sampler (a new one after ``fork``)."""
    global _sampler
    s = _sampler
    if s is None:
        with _sampler_lock:
            if _sampler is None:
                _sampler = Sampler()
            s = _sampler
    return s


class _ForkReset:
    """The parent's sampler thread does not exist in a child: start afresh lazily."""

    def after_fork(self) -> None:
        global _sampler, _sampler_lock
        _sampler_lock = threading.Lock()
        _sampler = None


_fork_reset = _ForkReset()
from ._safety import at_fork_reinit  # noqa: E402

at_fork_reinit(_fork_reset.after_fork)
