"""One profiling session: a unit of work (request, job, block) being sampled.

A session says *what* to sample and how densely: its targets (the request's own
thread, thread-pool threads while they work for it, asyncio tasks) and its rate
plan (``hz``, a boost that ends at a given time, the governor's rate).  The
sampler (:mod:`~otelprof_middleware.sampler`) decides *when*: it keeps each
session's schedule, writes samples into ``session.stacks`` and, when the session
ends, hands back a :class:`SamplingReport` (rates actually used, missed ticks,
which sampler ran).  The session learns about the sampler only through the
:class:`TargetObserver` it is given at registration, so this module imports
nothing of the sampler.

Finished sessions are turned into a :class:`~otelprof_middleware.profile.Profile`
on the export worker, never on the request path.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Optional, Protocol

from ._safety import at_fork_reinit
from .profile import AttributeValue, Profile, SpanLink, clean_text, clean_value, new_profile_id
from .stacks import SamplingReport, StackTable, native_id_of

_monotonic_ns = time.monotonic_ns

__all__ = ["Session", "Target", "LightTicket", "TicketTarget", "LightOwner", "TargetObserver", "ExtrasRecorder",
           "SamplingReport", "session_summary"]

MAX_HZ = 1000
#: summary keys of the extra profile types, shown as ``otelprof.<key>`` span attributes
EXTRA_SPAN_KEYS = ("alloc_bytes", "lock_wait_ms", "gc_ms")


class Target:
    """Something the sampler looks at for a session: a thread, or a task on a loop thread.

    The fields after ``refs`` are the sampler's accounting for this target (how
    much CPU it billed, where the last sample went); nothing else writes them."""

    __slots__ = ("thread_id", "native_id", "thread_name", "task", "loop", "refs",
                 "native", "cpu_mark", "wall_cpu_mark", "attach_cpu", "cpu_billed", "cpu_since_wall", "last_key", "last_wall_key",
                 "frame_addr", "coro", "handler_mark")

    def __init__(self, thread_id: int, thread_name: str = "", task: Any = None, loop: Any = None) -> None:
        self.thread_id = thread_id
        self.native_id = native_id_of(thread_id)  # the kernel's id: its CPU clock stays safe to read
        self.thread_name = thread_name
        self.task = task
        self.loop = loop
        self.refs = 1
        self.native = False  # CPU samples come from the thread's CPU timer (else from ticks)
        self.cpu_mark: Optional[int] = None  # thread CPU at the last tick (pure-Python sampling)
        self.wall_cpu_mark: Optional[int] = None  # thread CPU at the last wall tick (native thread targets)
        self.attach_cpu = 0  # thread CPU when attached (native sampling)
        self.cpu_billed = 0  # CPU billed to this target so far (ns)
        self.cpu_since_wall = 0  # CPU billed since the last wall tick (ns)
        self.last_key: Any = None  # StackTable key of the last sample (remainders go there)
        self.last_wall_key: Any = None  # key of the last wall sample (the wall after the last tick goes there)
        self.frame_addr = 0  # the task's outermost coroutine frame (native task cut)
        self.coro: Any = None  # keeps that frame's memory alive while attached
        self.handler_mark = 0  # the timer's own handler CPU when attached


class TicketTarget(Target):
    """The target of a :class:`LightTicket`'s session: the ticket's thread or task,
    registered with the sampler by the ticket (which stays the registration's owner)."""

    __slots__ = ("ticket",)
    ticket: "LightTicket"


class LightOwner(Protocol):
    """What a :class:`LightTicket` asks for its session (a request handle)."""

    def light_session(self, ticket: "LightTicket") -> Optional["Session"]: ...


class LightTicket:
    """A request profiled by chance, registered for sampling *before* it has a session.

    With short-request aggregates on, most such requests end without a single sample
    (a request of 2 ms at 100 Hz is sampled once in five).  A ticket is all they
    cost: their thread or task is registered with the sampler
    (:meth:`~otelprof_middleware.sampler.Sampler.light_enter`), and the session, with
    its profile id, budgets and stack table, is made by the first sample that falls
    in the request (:meth:`session_for_sample`, asking the ``owner``), with its target
    (a :class:`TicketTarget`).  The ticket itself is kept small: one is made for
    every such request, a session and its target only for those a sample fell in."""

    # What a ticket starts with, as class attributes: a ticket is made for every such
    # request, and its constructor sets only what differs (no __slots__ for that reason).
    native_id = 0  # the thread's kernel id, set when it is registered (learn_native_id)
    coro: Any = None  # the task's coroutine while registered (keeps its frame's memory ours)
    timer: Any = None  # its thread's CPU timer (the sampler's record of the thread)
    cpu_mark: Optional[int] = None  # the thread's CPU when registered, if it has no timer
    session: Optional["Session"] = None  # its session, made at its first sample ...
    target: Optional["TicketTarget"] = None  # ... with its target
    frame_addr = 0  # the task's outermost coroutine frame (its samples hold it)
    attach_cpu = 0  # a thread ticket's thread CPU when registered
    native = False  # registered with its thread's CPU timer
    closed = False  # the request ended (no session is made any more)
    denied = False  # the budgets said no at its first sample (its samples are skipped)
    asked = False  # a sample asked for its session (close takes the lock then)
    owner: Optional[LightOwner] = None

    def __init__(self, thread_id: int, task: Any, hz: int, max_depth: int, owner: LightOwner) -> None:
        """``hz`` within 1..MAX_HZ (the validated config's).  (Positional arguments: one
        ticket is made per request, and keywords cost more.)"""
        self.thread_id = thread_id
        self.task = task
        self.start_mono_ns = _monotonic_ns()
        self.hz = hz
        self.interval_ns = 1_000_000_000 // hz
        self.max_depth = max_depth
        self.owner = owner

    def learn_native_id(self) -> int:
        """The kernel's id of the ticket's thread (asked once, by the registration when
        no timer record of the thread tells it; the request's own thread registers it)."""
        ident = self.thread_id
        nid = self.native_id = threading.get_native_id() if ident == threading.get_ident() else native_id_of(ident)
        return nid

    def make_target(self) -> "TicketTarget":
        """The target of the ticket's session (made with it, at its first sample)."""
        task = self.task
        target = TicketTarget(self.thread_id, "", task, task.get_loop() if task is not None else None)
        target.ticket = self
        target.native_id = self.native_id
        target.native = self.native
        target.frame_addr = self.frame_addr
        target.coro = self.coro
        target.cpu_mark = self.cpu_mark
        if task is None and self.native:
            target.attach_cpu = target.wall_cpu_mark = self.attach_cpu
        self.target = target
        return target

    def session_for_sample(self) -> Optional["Session"]:
        """The ticket's session, made now if this is its first sample (None: the
        request has ended, or the budgets declined it)."""
        session = self.session
        if session is not None or self.denied or self.closed:
            return session
        with _TICKETS.lock:  # the sampler thread and the request's own thread may both get here
            self.asked = True  # (before looking at closed: see close)
            if self.session is None and not self.denied and not self.closed and self.owner is not None:
                try:
                    self.session = self.owner.light_session(self)
                finally:  # (a failure is the owner's to report; it is not asked again)
                    self.denied = self.session is None
            return self.session

    def close(self) -> Optional["Session"]:
        """The request ended: no session is made after this; returns the one made, if any.

        Without the lock unless a sample asked for the session: ``closed`` is set before
        ``asked`` is read here, and :meth:`session_for_sample` sets ``asked`` before it
        reads ``closed`` (both under the GIL, in that order), so either it sees the
        request closed and makes no session, or this sees it asked and waits for it."""
        self.closed = True
        if self.asked:
            with _TICKETS.lock:
                pass
        self.owner = None
        return self.session


class _TicketLock:
    """The lock of the tickets' first-sample decisions (a new one in a forked child)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


_TICKETS = _TicketLock()


class TargetObserver(Protocol):
    """What a session tells the sampler about its targets (set at registration)."""

    def target_added(self, session: "Session", target: Target) -> None: ...

    def target_removed(self, session: "Session", target: Target) -> None: ...


class ExtrasRecorder(Protocol):
    """What a session records beyond CPU and wall time (allocations, lock waits, GC:
    :mod:`~otelprof_middleware.profiletypes`); told about targets like the sampler."""

    def target_added(self, session: "Session", target: Target) -> None: ...

    def target_removed(self, session: "Session", target: Target) -> None: ...

    def close(self) -> None: ...

    def attributes(self) -> dict[str, AttributeValue]: ...

    def summary(self) -> dict[str, object]: ...

    def fill(self, profile: Profile) -> Profile: ...


class Session:
    """State of one profile while it runs.  Create through ``Profiler.start_session``."""

    def __init__(
        self,
        name: str,
        *,
        hz: int,
        max_depth: int,
        max_duration: float,
        max_samples: int,
        link: Optional[SpanLink] = None,
        attributes: Optional[dict[str, AttributeValue]] = None,
        triggers: tuple[str, ...] = (),
        native: bool = True,
    ) -> None:
        self.name = name
        self.profile_id = new_profile_id()
        self.link = link
        self.attributes: dict[str, AttributeValue] = dict(attributes or {})
        self.triggers: tuple[str, ...] = triggers
        self.error: Optional[str] = None
        self.start_time_ns = time.time_ns()
        self.start_mono_ns = time.monotonic_ns()
        self.end_mono_ns: Optional[int] = None
        self.max_depth = max_depth
        self.max_duration_ns = int(max_duration * 1e9)
        self.max_samples = max_samples
        self.truncated = ""
        self.finished = False
        self.stacks = StackTable()
        self.targets: tuple[Target, ...] = ()
        self.native = native  # use the native CPU sampler where it is available
        self.keep_if_empty = False  # export even with fewer than min_samples (its id was promised)
        self.aggregate_id: Optional[bytes] = None  # its samples went into this aggregate profile (windows.py)
        self.light = False  # sampled as a light session (sampler.LightSessions): a request profiled by chance
        self.report: Optional[SamplingReport] = None
        self._observer: Optional[TargetObserver] = None
        self.extras: Optional[ExtrasRecorder] = None  # set before the first target, if the config asks
        self._lock = threading.Lock()
        # the rate plan: the sampler reads it and decides when it takes effect
        self._hz = self._base_hz = _clamp_hz(hz)
        self.boost_until_ns = 0  # while > 0: sampled at ``hz`` until then (monotonic ns), then at the base rate
        self.governor_level = 0  # the overhead governor's level behind the current rate

    # ------------------------------------------------------------ identity
    @property
    def profile_id_hex(self) -> str:
        return self.profile_id.hex()

    def add_trigger(self, trigger: str) -> None:
        if trigger not in self.triggers:
            self.triggers = self.triggers + (trigger,)

    # ------------------------------------------------------------ rate plan
    @property
    def hz(self) -> int:
        """The rate asked for right now (a boost included)."""
        return self._hz

    @property
    def interval_ns(self) -> int:
        return int(1e9 / self._hz)

    def set_rate(self, hz: int, *, governor_level: Optional[int] = None) -> None:
        """Sample at ``hz`` from now on (ends a boost).  ``governor_level``: the overhead
        governor's level that chose this rate, recorded in the profile."""
        hz = _clamp_hz(hz)
        self._hz = self._base_hz = hz
        self.boost_until_ns = 0
        if governor_level is not None:
            self.governor_level = max(0, int(governor_level))

    def return_to(self, hz: int, after: float) -> None:
        """The current rate is a boost (so that a request of a few ms still gets samples):
        go back to ``hz`` once ``after`` seconds have passed since the start.  The sampler
        ends the boost at its first tick past that time (:meth:`end_boost`)."""
        self._base_hz = _clamp_hz(hz)
        self.boost_until_ns = self.start_mono_ns + int(after * 1e9)

    def boost_over(self, now_ns: int) -> bool:
        return bool(self.boost_until_ns) and now_ns >= self.boost_until_ns

    def end_boost(self) -> None:
        if self.boost_until_ns:
            self._hz = self._base_hz
            self.boost_until_ns = 0

    # ------------------------------------------------------------ targets
    def attach_thread(self, ident: Optional[int] = None, name: Optional[str] = None) -> int:
        """Sample thread ``ident`` (default: the calling thread) for this session.
        Attachments nest: each call needs one :meth:`detach_thread`."""
        if ident is None:
            ident = threading.get_ident()
            if name is None:
                name = threading.current_thread().name
        with self._lock:
            for t in self.targets:
                if t.thread_id == ident and t.task is None:
                    t.refs += 1
                    return ident
            target = Target(ident, name or "")
            self.targets = self.targets + (target,)
        self._added(target)
        return ident

    def detach_thread(self, ident: Optional[int] = None) -> None:
        if ident is None:
            ident = threading.get_ident()
        removed = None
        with self._lock:
            for t in self.targets:
                if t.thread_id == ident and t.task is None:
                    t.refs -= 1
                    if t.refs <= 0:
                        self.targets = tuple(x for x in self.targets if x is not t)
                        removed = t
                    break
        if removed is not None:
            self._removed(removed)

    def attach_task(self, task: Any, loop: Any, thread_id: Optional[int] = None) -> None:
        """Sample asyncio ``task`` (running on ``loop``, in ``thread_id``, default the calling thread)."""
        if thread_id is None:
            thread_id = threading.get_ident()
        name = threading.current_thread().name if thread_id == threading.get_ident() else ""
        with self._lock:
            if any(t.task is task for t in self.targets):
                return
            target = Target(thread_id, name, task=task, loop=loop)
            self.targets = self.targets + (target,)
        self._added(target)

    def attach_current(self) -> str:
        """Attach the current asyncio task if called from one, else the current thread.
        Returns ``"task"`` or ``"thread"``."""
        try:
            import asyncio

            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        except RuntimeError:
            task = None
        if task is not None:
            self.attach_task(task, loop)
            return "task"
        self.attach_thread()
        return "thread"

    def detach_all(self) -> None:
        with self._lock:
            targets, self.targets = self.targets, ()
        for t in targets:
            self._removed(t)

    def bind(self, observer: Optional[TargetObserver]) -> None:
        """Set (or clear) the observer told about targets; a new one hears of the
        targets attached so far."""
        self._observer = observer
        if observer is not None:
            for t in self.targets:
                observer.target_added(self, t)

    def _added(self, target: Target) -> None:
        obs = self._observer
        if obs is not None:
            obs.target_added(self, target)
        if self.extras is not None:
            self.extras.target_added(self, target)

    def _removed(self, target: Target) -> None:
        obs = self._observer
        if obs is not None:
            obs.target_removed(self, target)
        if self.extras is not None:  # after the sampler: its last CPU samples may need GC markers
            self.extras.target_removed(self, target)

    # ------------------------------------------------------------ sampler side
    def sample_budget_exhausted(self, now_ns: int) -> bool:
        if self.truncated:
            return True
        if now_ns - self.start_mono_ns > self.max_duration_ns:
            self.truncated = "max_duration"
            return True
        if self.stacks.ticks >= self.max_samples:
            self.truncated = "max_samples"
            return True
        return False

    # ------------------------------------------------------------ results
    @property
    def duration_ns(self) -> int:
        end = self.end_mono_ns if self.end_mono_ns is not None else time.monotonic_ns()
        return end - self.start_mono_ns

    @property
    def period_ns(self) -> int:
        report = self.report
        return report.period_ns if report is not None and report.period_ns else self.interval_ns

    def to_profile(self) -> Profile:
        """Build the profile model from the raw samples (on the export worker)."""
        attrs = {clean_text(k): clean_value(v) for k, v in self.attributes.items()}
        duration = self.duration_ns
        if self.report is not None:
            attrs.update(self.report.attributes(duration))
        if self.extras is not None:
            attrs.update(self.extras.attributes())
        if self.error:
            attrs.setdefault("otelprof.error", self.error)
        if self.truncated:
            attrs["otelprof.truncated"] = self.truncated
        link = self.link
        if link is not None and link.span_name:
            link = dataclasses.replace(link, span_name=clean_text(link.span_name))
        profile = Profile(
            name=clean_text(self.name),
            start_time_ns=self.start_time_ns,
            duration_ns=duration,
            period_ns=self.period_ns,
            link=link,
            attributes=attrs,
            triggers=self.triggers,
            profile_id=self.profile_id,
            truncated=self.truncated,
            keep_if_empty=self.keep_if_empty,
        )
        self.stacks.fill(profile)
        return self.extras.fill(profile) if self.extras is not None else profile


def _clamp_hz(hz: int) -> int:
    return max(1, min(MAX_HZ, int(hz)))


def session_summary(session: Session) -> dict[str, object]:
    """Cheap facts for span attributes at the end of a request: sample count, CPU and
    wall ms, the hottest self-time function (our own frames folded, as in the
    profile).  The same numbers the profile's encoders will show."""
    s = session.stacks.summary()
    out: dict[str, object] = {"samples": s.samples, "cpu_ms": round(s.cpu_ns / 1e6, 3),
                              "wall_ms": round(s.wall_ns / 1e6, 3), "top_frame": s.top_frame}
    if session.extras is not None:  # alloc_bytes, lock_wait_ms, gc_ms: the types asked for
        out.update(session.extras.summary())
    return out
