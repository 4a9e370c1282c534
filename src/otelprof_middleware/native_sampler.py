"""CPU samples from per-thread CPU timers (the optional C extension ``_native``).

Why: a sampler thread inside the process needs the GIL to look at another
thread, so it only ever sees a busy thread where that thread *releases* the GIL
(a socket send, a log write), and the CPU burnt in between is billed there.  The
extension instead arms, for each sampled thread, a POSIX timer on that thread's
own CPU clock; the kernel interrupts the thread itself each ``interval`` of its
CPU time, wherever it is, and a signal handler records its Python stack into a
ring buffer (see ``native/cpu_sampler.c``).  This module is the Python side:

* :func:`load` imports and installs the extension once, or says why it cannot
  (no extension built, not Linux, SIGPROF already taken, ...); the reason is
  logged once and profiles record ``otelprof.sampler=python``;
* :class:`CpuTimers` keeps one timer per sampled thread (shared by every session
  with a target on it, at the highest rate among them), drains the ring buffers
  (the sampler thread each tick; a detaching thread for itself) and bills each
  sample to the targets it belongs to: a thread target gets its thread's samples
  while attached, a task target the loop thread's samples whose stack holds the
  task's outermost coroutine frame, cut there.  Each sample carries the CPU the
  thread used since its previous sample (read from the thread's clock), so rate
  changes never distort totals; at detach the rest of the measured CPU (less than
  one interval) goes to the target's last stack, so totals match the clock.

What interrupts the thread (``native/cpu_sampler.c``): a perf_event task-clock
counter of the thread where perf events are allowed (the kernel counts the
thread's CPU time with a high-resolution timer while it runs; it overflows every
millisecond of CPU or so, and the handler records the first overflow after a
randomly drawn interval -- longer periods were measured to favour code that
switches threads often), else a POSIX timer on the thread's CPU clock.  Linux checks those timers only at its scheduler tick
(``CONFIG_HZ``, often 250 Hz): rates above that give fewer, heavier samples, and
on a busy machine code that gives up the CPU very often (``time.sleep(0)``) is
rarely the one running at a tick, so it gets fewer samples than its CPU share.
Each next interval is drawn uniformly in [interval/2, 3*interval/2), so work that
repeats with the sampling period is not always caught at the same point.
"""

from __future__ import annotations

import atexit
import importlib
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from ._safety import LogOnce, at_fork_reinit
from .profiletypes import gcwatch
from .session import LightTicket, TicketTarget
from .stacks import UNKNOWN, UNSAMPLED, cap_depth, thread_cpu_ns

if TYPE_CHECKING:
    from .profile import SpanLink
    from .session import Session, Target

__all__ = ["load", "CpuTimers"]

#: Use perf_event task-clock counters where allowed (False: POSIX CPU timers only).
PERF_EVENTS = True
#: What each source is called in profiles (``otelprof.cpu_timer``).
SOURCE_NAMES = {"perf": "perf_event", "perf-user": "perf_event_user", "timer": "posix_timer"}

_log_once = LogOnce()
_lib: Any = None
_reason: Optional[str] = None
_load_lock = threading.Lock()


def load() -> tuple[Any, str]:
    """The installed extension module and "", or None and why it is unavailable."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib, _reason or ""
    with _load_lock:
        if _lib is None and _reason is None:
            lib, reason = _try_load()
            if lib is None:
                _reason = reason
                _log_once("native-unavailable",
                          "otelprof: native CPU sampler unavailable (%s): using the pure-Python sampler, "
                          "whose CPU attribution leans towards code that releases the GIL "
                          "(see docs/sampling.md)", reason)
            else:
                _lib = lib
                atexit.register(_stop_all_at_exit)
    return _lib, _reason or ""


def _try_load() -> tuple[Any, str]:
    if not sys.platform.startswith("linux"):
        return None, f"not available on {sys.platform}"
    try:
        _native = importlib.import_module(__package__ + "._native")
    except ImportError as e:
        return None, f"extension not built ({e})"
    if "cpu_sampler" not in getattr(_native, "features", ()):
        return None, "extension built without the CPU sampler (unsupported Python version?)"
    try:
        _native.install()
    except (OSError, RuntimeError) as e:
        return None, str(e)
    return _native, ""


def _stop_all_at_exit() -> None:
    lib = _lib
    if lib is not None:
        try:
            lib.stop_all()
        except Exception:  # pragma: no cover - never fail the interpreter's exit
            pass


#: A thread's timer outlives its last target by this long (seconds), so that the next
#: profiled request on the same thread (a server's worker, a pool thread) reuses it:
#: creating and deleting a timer per request cost ~40 µs of a profiled request's ~80.
PARK_SECONDS = 2.0
#: A parked timer is paused once it has waited this long (seconds) for the next profile.
PAUSE_AFTER = 0.05
#: At most this many idle timers are kept (the oldest is stopped first).
MAX_PARKED = 64


class _Thread:
    """One sampled thread: its timer and the (session, target) pairs it serves."""

    __slots__ = ("ident", "native_id", "handle", "interval_ns", "entries", "lock", "name", "parked_at", "light",
                 "paused", "source", "fresh", "tickets", "thread", "continuous")

    def __init__(self, ident: int, native_id: int, handle: int, interval_ns: int) -> None:
        self.ident = ident
        self.native_id = native_id
        self.handle = handle
        self.interval_ns = interval_ns
        self.entries: list[tuple["Session", "Target"]] = []
        self.lock = threading.Lock()  # one drain+dispatch at a time (single consumer)
        self.parked_at = 0.0  # when its last target left (monotonic s); 0 while in use
        self.light = 0  # light-session targets on this thread (billed by sample, see light_add)
        self.paused = False  # parked and paused (see CpuTimers.pause_idle)
        self.source = ""  # what interrupts the thread (SOURCE_NAMES), read once when started
        self.fresh = True  # no sample drained yet (the first one is billed one interval to light targets)
        #: light tickets on this thread (CpuTimers.ticket_enter): by their task's frame
        #: address, a ticket of the thread itself under 0.  Tickets neither lock nor park:
        #: pause_idle sees whether any is left
        self.tickets: dict[int, "LightTicket"] = {}
        self.thread = threading._active.get(ident)  # type: ignore[attr-defined]  # (its identity: see ticket_enter)
        #: the continuous profile's interval (ns) while the thread is sampled for it
        #: (CpuTimers.continuous_thread): never parked, never slower than that; 0 = not
        self.continuous = 0

    def idle(self) -> bool:
        """Nothing uses the timer any more (it may be parked)."""
        return not self.tickets and not self.entries and self.light <= 0 and not self.continuous


_NO_ENTRY = (None, None)


def _ticket_entry(ticket: Optional["LightTicket"]) -> Optional[tuple[None, "LightTicket"]]:
    return (None, ticket) if ticket is not None else None


def _coro_frame_offset(lib: Any) -> int:
    """Where a coroutine's frame lies in the coroutine object (CPython embeds it),
    so a task's frame address is ``id(coro) + offset`` without making a frame
    object; -1 when this interpreter does not do that."""
    async def probe() -> None:
        pass
    offsets = set()
    for _ in range(2):
        coro: Any = probe()
        try:
            offsets.add(lib.frame_address(coro.cr_frame) - id(coro))
        except Exception:
            offsets.add(-1)
        finally:
            coro.close()
    offset = offsets.pop() if len(offsets) == 1 else -1
    return offset if 0 <= offset < 4096 else -1


class _ThreadRef:
    """A thread to start a timer for, without a session (the continuous profile)."""

    __slots__ = ("thread_id", "native_id")

    def __init__(self, thread_id: int, native_id: int) -> None:
        self.thread_id = thread_id
        self.native_id = native_id


class CpuTimers:
    """The per-thread CPU timers of one sampler (see the module docstring)."""

    def __init__(self, lib: Any, bill_remainder: Callable[["Session", "Target", int], None]) -> None:
        self.lib = lib
        self._bill_rest = bill_remainder  # (session, target, cpu_ns): the sampler's rule for remainders
        self._threads: dict[int, _Thread] = {}
        self._lock = threading.Lock()
        self._max_frames = 0
        self.samples = 0  # samples drained
        self.unknown_frames = 0
        self.broken = False  # our signal handler was replaced: no more timers
        self._next_expiry = 0.0  # when retune next stops stale parked timers
        self._light_threads: dict[int, tuple["Session", "Target"]] = {}  # thread -> its light session
        self._light_frames: dict[int, tuple["Session", "Target"]] = {}  # task's coroutine frame -> light session
        self._coro_frame_offset: Optional[int] = None  # id(coroutine) -> its frame's address (-1: unknown)
        #: ``(th, cpu_ns, mono, codes, lastis, addrs, link)`` for every CPU sample of a
        #: thread marked ``continuous`` (the continuous profile; ``link``: the span of the
        #: session the sample was billed to, if any); None while the mode is off
        self.continuous: Optional[Callable[..., None]] = None
        at_fork_reinit(self._after_fork)

    # ------------------------------------------------------------------ targets
    def add(self, session: "Session", target: "Target", interval_ns: int) -> Optional[str]:
        """Bill ``target`` from its thread's CPU timer (started if needed); returns the
        timer's kind (:data:`SOURCE_NAMES`), or None if the thread cannot have one
        (then the caller samples it in Python)."""
        th = self._thread_for(target, interval_ns, session.max_depth)
        if th is None:
            return None
        cpu = thread_cpu_ns(th.ident, th.native_id)
        with th.lock:
            target.attach_cpu = cpu if cpu is not None else 0
            target.cpu_billed = target.cpu_since_wall = 0
            target.handler_mark = self._handler_cpu(th)
            self._note_task_frame(target)
            target.native = True
            th.entries.append((session, target))
            return th.source

    def _thread_for(self, target: "Target | LightTicket | _ThreadRef", interval_ns: int, max_depth: int, *,
                    light: bool = False) -> Optional[_Thread]:
        """The timer of ``target``'s thread, taken up again if parked, started if there
        is none (None if it cannot have one); a faster ``interval_ns`` speeds it up."""
        ident = target.thread_id
        if self.broken:
            return None
        with self._lock:
            th = self._threads.get(ident)
            if th is not None and th.native_id != target.native_id:  # another thread now has this identifier
                self._stop_locked(th)
                th = None
            if th is not None and (th.parked_at or th.paused):
                # an idle timer of this thread: take it up again (samples it took
                # meanwhile fall before this target's attach: never billed).  (Paused
                # without a park mark: a ticket cleared the mark just as pause_idle
                # paused it, see ticket_enter)
                th.parked_at = 0.0
                if th.paused:
                    self._pause(th, False)
            if th is None:
                depth = min(max_depth, 512)
                if depth > self._max_frames:
                    self._max_frames = self.lib.set_max_frames(depth)
                try:
                    handle = self.lib.start(ident, target.native_id, interval_ns, PERF_EVENTS)
                except (OSError, RuntimeError, LookupError, ValueError) as e:
                    _log_once("native-start", "otelprof: no CPU timer for thread %s (%s): sampled in Python",
                              ident, e)
                    return None
                th = self._threads[ident] = _Thread(ident, target.native_id, handle, interval_ns)
                th.source = self._source(th)
            elif interval_ns != th.interval_ns and (interval_ns < th.interval_ns or not th.entries):
                # faster for a new target; any rate while no ordinary session shares the
                # timer (a parked one, or one left faster by a boosted profile), but never
                # slower than the continuous profile's
                want = min(interval_ns, th.continuous) if th.continuous else interval_ns
                if want != th.interval_ns:
                    self._set_interval(th, want)
            if light:
                th.light += 1
            return th

    # ------------------------------------------------------------------ continuous profile
    def continuous_thread(self, ident: int, native_id: int, interval_ns: int, max_depth: int) -> Optional[_Thread]:
        """Sample thread ``ident`` for the continuous profile (its timer started, taken
        up again or sped up to ``interval_ns``, and never parked while marked); None
        if it cannot have a timer.  Called by the sampler thread at its continuous ticks."""
        th = self._threads.get(ident)
        if th is not None and th.continuous == interval_ns and not th.paused and th.native_id == native_id \
                and th.interval_ns <= interval_ns:
            return th
        th = self._thread_for(_ThreadRef(ident, native_id), interval_ns, max_depth)
        if th is not None:
            th.continuous = interval_ns
        return th

    def continuous_done(self, keep: Optional[set[int]] = None) -> None:
        """Threads no longer sampled for the continuous profile (all but ``keep``;
        every one when the mode stops): their timers are parked once nothing else uses
        them."""
        for th in list(self._threads.values()):
            if th.continuous and (keep is None or th.ident not in keep):
                th.continuous = 0

    # ------------------------------------------------------------------ light sessions
    def light_add(self, session: "Session", target: "Target", interval_ns: int,
                  max_depth: int) -> Optional[str]:
        """Bill a *light* session's ``target`` (``Session.light``: a request profiled by
        chance that will most likely end in an aggregate) by sample: a CPU sample of
        its thread taken while it is attached (a thread target), or whose stack holds
        its task's outermost coroutine frame (a task target), is billed to it with the
        whole CPU since the thread's previous sample, as in pprof: unbiased, without the
        per-target bookkeeping (clock reads, remainders) that :meth:`add` does.  A new
        timer's first sample falls uniformly within one interval of CPU (see the
        extension) and stands for one interval: so a thread that lives for less than
        an interval (a worker started per request) is counted as often as it should be.  Called by the attaching thread
        (``target`` runs on it); None if the thread cannot have a timer."""
        th = self._thread_for(target, interval_ns, max_depth, light=True)
        if th is None:
            return None
        target.cpu_billed = target.cpu_since_wall = 0
        target.native = True
        entry = (session, target)
        if target.task is not None:  # (its samples are told by their frames, not by a CPU mark)
            self._note_task_frame(target)
            if target.frame_addr:
                self._light_frames[target.frame_addr] = entry
        else:
            # (the calling thread is the target's; the light ticks' wall starts here too)
            target.attach_cpu = target.wall_cpu_mark = time.thread_time_ns()
            self._light_threads[th.ident] = entry
        return th.source

    def ticket_enter(self, ticket: "LightTicket") -> Optional[str]:
        """Register a light ticket (a request profiled by chance, before it has a
        session: :class:`~otelprof_middleware.session.LightTicket`) with its thread's
        timer: its samples are found as a light target's are (:meth:`light_add`), and
        its first one makes its session.  Called by the request's own thread, once per
        request; returns the timer's kind, None if the thread cannot have a timer.

        The common case (the thread's timer runs at this rate: a server's loop or
        worker thread) is a dictionary insert: no lock, no count.  A ticket does not
        park the timer when it leaves either: :meth:`pause_idle` parks a timer whose
        thread has no ticket and no other target left, and pauses it only after
        marking it paused and looking at its tickets again, while a ticket looks at
        that mark after its insert (so either the pause sees the ticket, or the ticket
        sees the pause and takes the locked way, which resumes the timer)."""
        ident = ticket.thread_id
        th = self._threads.get(ident)
        if th is None or th.paused or (th.interval_ns != ticket.interval_ns and not (
                th.continuous and th.interval_ns < ticket.interval_ns)) or self.broken \
                or th.thread is None or th.thread is not threading._active.get(ident):  # type: ignore[attr-defined]
            th = None  # (another thread now has this identifier, or no Thread object tells)
        if ticket.task is not None:
            self._note_task_frame(ticket)
            key = ticket.frame_addr
            if not key:
                return None
        else:
            key = 0
            ticket.attach_cpu = time.thread_time_ns()  # (its wall ticks start here too: make_target)
        if th is not None:
            ticket.native_id = th.native_id  # (the same thread: checked above)
            th.parked_at = 0.0
            th.tickets[key] = ticket
            if th.paused:  # (paused meanwhile: resumed the locked way below)
                th.tickets.pop(key, None)
                th = None
        if th is None:
            ticket.learn_native_id()
            th = self._thread_for(ticket, ticket.interval_ns, ticket.max_depth)
            if th is None:
                ticket.coro = None
                return None
            th.tickets[key] = ticket
        ticket.timer = th
        ticket.native = True
        return th.source

    def ticket_exit(self, ticket: "LightTicket") -> None:
        """The ticket's request ended (or its session did): bill what its thread's
        buffer holds, then forget the ticket."""
        th = ticket.timer
        if th is None or not ticket.native:
            return
        self._drain_pending(th)
        key = ticket.frame_addr  # (0 for a thread's own ticket: its key)
        if th.tickets.get(key) is ticket:
            del th.tickets[key]
        ticket.native = False
        ticket.coro = None
        target = ticket.target
        if target is not None:
            target.native = False
            target.coro = None

    def _note_task_frame(self, target: "Target | LightTicket") -> None:
        """A task target's outermost coroutine frame: its samples are those whose stack
        holds it (the coroutine is kept so that the frame's memory stays its own).  The
        address is ``id(coroutine)`` plus the interpreter's fixed offset when it has one
        (no frame object is made: a light ticket does this once per request)."""
        if target.task is not None:
            coro = target.coro = target.task.get_coro()
            offset = self._coro_frame_offset
            if offset is None:
                offset = self._coro_frame_offset = _coro_frame_offset(self.lib)
            if offset >= 0:
                target.frame_addr = id(coro) + offset
            else:
                frame = getattr(coro, "cr_frame", None)
                target.frame_addr = self.lib.frame_address(frame) if frame is not None else 0

    def light_remove(self, session: "Session", target: "Target") -> None:
        """Bill what the thread's buffer holds (its samples so far), then forget ``target``
        (the target of a ticket's session: the ticket, if it is still registered)."""
        if type(target) is TicketTarget:
            target.native = False
            target.coro = None
            self.ticket_exit(target.ticket)
            return
        th = self._threads.get(target.thread_id)
        if th is not None:
            self._drain_pending(th)
        if target.task is not None:
            if self._light_frames.get(target.frame_addr, _NO_ENTRY)[1] is target:
                del self._light_frames[target.frame_addr]
        elif self._light_threads.get(target.thread_id, _NO_ENTRY)[1] is target:
            del self._light_threads[target.thread_id]
        target.native = False
        target.coro = None
        if th is not None:
            with self._lock:
                th.light -= 1
                if th.idle() and self._threads.get(th.ident) is th:
                    self._park(th)

    @property
    def light_targets(self) -> int:
        """Threads and tasks registered for light sessions and tickets now."""
        return len(self._light_threads) + len(self._light_frames) + self.ticket_count

    @property
    def ticket_count(self) -> int:
        """Light tickets registered now."""
        return sum(len(th.tickets) for th in list(self._threads.values()))

    def live_tickets(self) -> list["LightTicket"]:
        """The light tickets registered now (the sampler thread's light ticks)."""
        return [t for th in list(self._threads.values()) if th.tickets for t in list(th.tickets.values())]

    def _park(self, th: _Thread) -> None:
        """Keep ``th``'s timer for the thread's next profile (paused by
        :meth:`pause_idle` if none comes soon)."""
        th.parked_at = time.monotonic()

    def pause_idle(self, now: float) -> None:
        """Pause the timers parked for :data:`PAUSE_AFTER` seconds or more (the sampler
        thread, at its ticks and while it lingers).  A parked timer left running
        interrupts every request its thread serves unprofiled (a perf counter on a
        uvicorn loop thread: 9 % of a trivial endpoint's throughput, a POSIX timer 3 %);
        pausing at once instead cost each profile two ~12 µs system calls when the
        next one followed within milliseconds."""
        for th in list(self._threads.values()):
            if th.paused:
                continue
            if not th.parked_at:
                if th.idle():
                    th.parked_at = now  # used by tickets only, and none is left (they do not park it)
                continue
            if now - th.parked_at >= PAUSE_AFTER:
                with self._lock:
                    if th.parked_at and not th.paused and self._threads.get(th.ident) is th:
                        th.paused = True  # (first: a ticket registering from now on sees it)
                        if not th.idle():  # (in use again)
                            th.paused = False
                            th.parked_at = 0.0
                        else:
                            self._pause(th, True)

    def _pause(self, th: _Thread, paused: bool) -> None:
        th.paused = paused
        try:
            self.lib.pause(th.handle, paused)
        except (OSError, ValueError, AttributeError):  # (stopped meanwhile; an extension built before pause())
            pass

    def remove(self, session: "Session", target: "Target") -> None:
        """Bill what the thread's buffer still holds, then the measured remainder,
        and stop its timer if no one else needs it."""
        th = self._threads.get(target.thread_id)
        if th is None:
            return
        with th.lock:
            try:
                self._drain(th)
                if target.task is None:
                    self._bill_remainder(th, target)
            finally:  # whatever happened, the target leaves and an unused timer stops
                th.entries = [(s, t) for s, t in th.entries if t is not target]
                target.native = False
                target.coro = None
                last = not th.entries
        if last:
            with self._lock:
                if self._threads.get(th.ident) is th and th.idle():
                    if thread_cpu_ns(th.ident, th.native_id) is None:
                        self._stop_locked(th)  # the thread is gone
                    else:
                        self._park(th)
                    # (stale parked timers are stopped by the sampler thread: retune, idle wait)

    @property
    def parked(self) -> int:
        """Idle timers kept for reuse."""
        return sum(1 for th in list(self._threads.values()) if th.parked_at)

    @property
    def running(self) -> bool:
        """Some thread has a timer (in use, parked or paused)."""
        return bool(self._threads)

    @property
    def pausing(self) -> bool:
        """Some parked timer is not paused yet (:meth:`pause_idle` pauses it soon)."""
        return any(th.parked_at and not th.paused for th in list(self._threads.values()))

    def expire_parked(self, everything: bool = False) -> int:
        """Stop idle timers older than :data:`PARK_SECONDS` (all of them with
        ``everything``); returns how many are still parked."""
        now = time.monotonic()
        if everything:
            self.pause_idle(now)  # (parks the timers nothing uses any more: tickets leave without parking)
        with self._lock:
            self._expire_locked(float("inf") if everything else now)
        self.pause_idle(now)
        with self._lock:
            return sum(1 for th in self._threads.values() if th.parked_at)

    def _expire_locked(self, now: float) -> None:
        parked = [th for th in self._threads.values() if th.parked_at]
        excess = len(parked) - MAX_PARKED
        if excess > 0:
            parked.sort(key=lambda th: th.parked_at)
        for i, th in enumerate(parked):
            if (i < excess or now - th.parked_at >= PARK_SECONDS) and th.idle():
                self._stop_locked(th)

    def _stop_locked(self, th: _Thread) -> None:
        if self._threads.get(th.ident) is th:
            del self._threads[th.ident]
        with th.lock:
            try:
                self.lib.stop(th.handle)  # the rest belongs to nobody now
            except ValueError:  # already stopped (interpreter exit)
                pass

    def _bill_remainder(self, th: _Thread, target: "Target") -> None:
        now = thread_cpu_ns(th.ident, th.native_id)
        if now is None:
            return
        own = self._handler_cpu(th) - target.handler_mark  # our signal handler's CPU on that thread
        rest = (now - target.attach_cpu) - own - target.cpu_billed
        if rest > 0:
            for session, t in th.entries:
                if t is target:
                    self._bill_rest(session, target, rest)
                    target.cpu_billed += rest
                    break

    # ------------------------------------------------------------------ ticks
    def drain_all(self) -> None:
        if not self._threads:
            return
        if not self.lib.handler_ok():
            # someone replaced our SIGPROF handler: our timers would fire into theirs
            _log_once("native-handler-replaced", "otelprof: another SIGPROF handler was installed; native CPU "
                      "sampling stops in this process (the pure-Python sampler takes over for new profiles)")
            self.broken = True
            self.stop_all()
            return
        for th in list(self._threads.values()):
            with th.lock:
                self._drain(th)

    def retune(self, interval_of: Any) -> None:
        """Run each thread's timer at the fastest rate among its sessions:
        ``interval_of(session)`` gives a session's current interval in ns."""
        now = time.monotonic()
        self.pause_idle(now)
        if now >= self._next_expiry:  # parked timers, about once a second, on the sampler thread
            self._next_expiry = now + 1.0
            with self._lock:
                self._expire_locked(now)
        for th in list(self._threads.values()):
            entries = th.entries
            if not entries:
                continue
            want = min(interval_of(s) for s, _ in entries)
            if th.continuous:
                want = min(want, th.continuous)
            if want != th.interval_ns:
                self._set_interval(th, want)

    def handler_cpu_ns(self) -> int:
        try:
            return int(self.lib.stats()["handler_cpu_ns"])
        except Exception:
            return 0

    def stop_all(self) -> None:
        """Stop every timer; targets still attached go on in pure-Python mode."""
        with self._lock:
            threads, self._threads = self._threads, {}
        for th in threads.values():
            with th.lock:
                try:
                    self.lib.stop(th.handle)
                except ValueError:
                    pass
                for _session, target in th.entries:
                    target.native = False
                    target.cpu_mark = thread_cpu_ns(th.ident, th.native_id)
                th.entries = []

    # ------------------------------------------------------------------ internals
    def _set_interval(self, th: _Thread, interval_ns: int) -> None:
        try:
            self.lib.set_interval(th.handle, interval_ns)
            th.interval_ns = interval_ns
        except (OSError, ValueError):
            pass

    def _handler_cpu(self, th: _Thread) -> int:
        try:
            return int(self.lib.slot_stats(th.handle)[0])
        except ValueError:
            return 0

    def _source(self, th: _Thread) -> str:
        try:
            return SOURCE_NAMES.get(self.lib.slot_stats(th.handle)[3], "posix_timer")
        except ValueError:
            return "posix_timer"

    def _drain_pending(self, th: _Thread) -> None:
        """Bill what ``th``'s buffer holds, if anything (most requests have no sample:
        no drain, no lock)."""
        try:
            pending = self.lib.pending(th.handle)
        except ValueError:  # stopped under us (interpreter exit)
            return
        if pending:
            with th.lock:
                self._drain(th)

    def _drain(self, th: _Thread) -> None:
        try:
            samples = self.lib.drain(th.handle)
        except ValueError:  # stopped under us (interpreter exit)
            return
        if samples:
            self.samples += len(samples)
            self._dispatch(th, samples)

    def _dispatch(self, th: _Thread, samples: list[Any]) -> None:
        entries = th.entries
        tickets = th.tickets
        # (session, target) of a light session, (None, ticket) of a ticket
        light_thread: Optional[tuple[Optional["Session"], "Target | LightTicket"]] = \
            self._light_threads.get(th.ident) if th.light else None
        if light_thread is None and tickets:
            light_thread = _ticket_entry(tickets.get(0))
        light_frames = self._light_frames if th.light else None
        sink = self.continuous if th.continuous else None
        if not entries and not th.light and not tickets and sink is None:
            th.fresh = False
            return
        for c0, c1, mono, _overruns, omitted, codes, lastis, addrs, lost in samples:
            fresh, th.fresh = th.fresh, False
            if lost:
                self._bill_lost(th, c0 - lost, c0)
            link: Optional["SpanLink"] = None  # the span of the first profile the sample went to
            if codes:  # (CPU outside any Python frame is left to the remainder)
                if None in codes:
                    self.unknown_frames += codes.count(None)
                    codes = tuple(UNKNOWN if c is None else c for c in codes)
                if gcwatch.watching():
                    marker = gcwatch.leaf(th.ident, mono)
                    if marker is not None:  # taken during a garbage collection: say so as the leaf
                        codes, lastis, addrs = (marker, *codes), (0, *lastis), (0, *addrs)
                for session, target in entries:
                    w = c1 - max(c0, target.attach_cpu)
                    # a finishing session still takes what its buffers hold (the release drains
                    # them): only a closed table is final.  Checking ``finished`` here lost every
                    # sample of a request the sampler thread had not drained before it ended
                    # (a 3 ms request under load: no CPU at all for a task)
                    if w <= 0 or session.stacks.closed:
                        continue
                    try:
                        if self._bill(th, session, target, w, mono, omitted, codes, lastis, addrs) and link is None:
                            link = session.link
                    except Exception:  # one broken session never stops the others' samples
                        _log_once("native-dispatch", "otelprof: a CPU sample could not be recorded", exc=True)
                hit = self._light_hit(tickets, light_thread, light_frames, c1, mono, addrs) \
                    if th.light or tickets else None
                if hit is not None:
                    owner, target = hit
                    # the CPU since the thread's previous sample; for a new timer's first
                    # sample, one interval (see light_add)
                    w = c1 - c0 if not fresh else th.interval_ns
                    try:
                        if self._bill(th, owner, target, w, mono, omitted, codes, lastis, addrs) and link is None:
                            link = owner.link
                    except Exception:
                        _log_once("native-dispatch", "otelprof: a CPU sample could not be recorded", exc=True)
            if sink is not None:
                self._to_continuous(sink, th, c0, c1, mono, lost, codes, lastis, addrs, link)

    def _light_hit(self, tickets: dict[int, "LightTicket"],
                   light_thread: Optional[tuple[Optional["Session"], "Target | LightTicket"]],
                   light_frames: Optional[dict[int, tuple["Session", "Target"]]], c1: int, mono: int,
                   addrs: Any) -> Optional[tuple["Session", "Target"]]:
        """The light session (and its target) a sample of this thread goes to: the one
        whose task's frame is on its stack, else a ticket's (its first sample makes its
        session), else the thread's own; None if none (or the sample is older)."""
        hit: Optional[tuple[Optional["Session"], "Target | LightTicket"]] = None
        if light_frames:
            for a in addrs:
                hit = light_frames.get(a)
                if hit is not None:
                    break
        if hit is None and tickets:
            for a in addrs:
                ticket = tickets.get(a)
                if ticket is not None:
                    hit = (None, ticket)
                    break
        if hit is None and light_thread is not None and c1 > light_thread[1].attach_cpu:
            hit = light_thread
        if hit is None:
            return None
        owner, who = hit
        if owner is None:  # a ticket: its first sample makes its session (and target)
            ticket = cast("LightTicket", who)
            if mono < ticket.start_mono_ns:  # (older than the request: a frame address reused)
                return None
            owner = ticket.session_for_sample()
            if owner is None or ticket.target is None:
                return None
            target: "Target" = ticket.target
        else:
            target = cast("Target", who)
        if owner.stacks.closed or mono < owner.start_mono_ns:
            return None  # (a sample older than the session: a frame address reused)
        return owner, target

    def _to_continuous(self, sink: Callable[..., None], th: _Thread, c0: int, c1: int, mono: int, lost: int,
                       codes: Any, lastis: Any, addrs: Any, link: Optional["SpanLink"]) -> None:
        """A CPU sample of a thread in the continuous profile: the CPU since the
        thread's previous sample, where it is now (CPU of samples dropped while the
        buffer was full, and outside any Python frame, as ``<unsampled CPU>``), with
        the span of the profile it was billed to, if any."""
        try:
            if lost:
                sink(th, lost, mono, (UNSAMPLED,), (0,), (), link)
            if codes:
                sink(th, c1 - c0, mono, codes, lastis, addrs, link)
            elif c1 > c0:
                sink(th, c1 - c0, mono, (UNSAMPLED,), (0,), (), link)
        except Exception:
            _log_once("native-continuous", "otelprof: a CPU sample could not go into the continuous profile", exc=True)

    def _bill_lost(self, th: _Thread, start: int, end: int) -> None:
        """CPU of samples dropped while the buffer was full: measured, not located.
        A thread target shows it as ``<unsampled CPU>``; a task cannot tell whether it
        was running then, so it gets none of it."""
        for session, target in th.entries:
            w = end - max(start, target.attach_cpu)
            if w > 0 and target.task is None and not session.stacks.closed:
                try:
                    session.stacks.add(target.thread_name or _thread_name(th.ident), (UNSAMPLED,), (0,), w, w)
                    target.cpu_billed += w
                    target.cpu_since_wall += w
                except Exception:
                    _log_once("native-dispatch", "otelprof: a CPU sample could not be recorded", exc=True)

    def _bill(self, th: _Thread, session: "Session", target: "Target", w: int, mono: int, omitted: int,
              codes: Any, lastis: Any, addrs: Any) -> bool:
        """Bill a sample to ``target`` of ``session``; False when it is not the
        target's (another task was running) or the session takes no more."""
        if target.task is None:
            cut_codes, cut_lastis, cut_omitted = codes, lastis, omitted
        else:
            fa = target.frame_addr
            if not fa or fa not in addrs:
                return False  # another task (or the loop itself) was running
            i = addrs.index(fa)
            # the task's outermost frame ends its stack (a gap can only precede the root)
            cut_omitted = omitted if i == len(addrs) - 1 else 0
            cut_codes, cut_lastis = codes[:i + 1], lastis[:i + 1]
        if session.sample_budget_exhausted(mono):
            return False
        cut_codes, cut_lastis = cap_depth(cut_codes, cut_lastis, session.max_depth, cut_omitted)
        target.last_key = session.stacks.add(target.thread_name or _thread_name(th.ident), cut_codes, cut_lastis,
                                             w, w)
        target.cpu_billed += w
        target.cpu_since_wall += w
        return True

    def _after_fork(self) -> None:
        # the parent's threads and timers do not exist in the child (the C side
        # resets its slots itself)
        self._threads = {}
        self._lock = threading.Lock()
        self._light_threads = {}
        self._light_frames = {}


def _thread_name(ident: int) -> str:
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    return t.name if t is not None else f"thread-{ident}"

