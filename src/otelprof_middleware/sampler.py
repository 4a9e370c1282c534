"""The process-wide stack sampler.

One daemon thread per process, started lazily when the first session registers
and blocked (no periodic wake-ups) while no session is active.  On each tick it
reads ``sys._current_frames()`` once and samples only what the active sessions
ask for:

* a **thread target**: the thread's current stack, with the CPU time that thread
  used since the session last looked at it (``time.pthread_getcpuclockid``);
* a **task target** (asyncio): when the task is the one running on its loop, the
  loop thread's stack cut at the task's outermost coroutine, with CPU; when it is
  suspended, its chain of awaiting coroutines, as wall time only.

Samples are aggregated in a :class:`StackTable` per session, keyed by code
object identity and line numbers, so a tick allocates little.  Turning raw
stacks into the :class:`~otelprof_middleware.profile.Profile` model (names,
files) happens later, on the export worker.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Optional

from .profile import Profile, ProfileBuilder

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Sampler", "StackTable", "get_sampler", "thread_cpu_ns"]

log = logging.getLogger("otelprof_middleware")

_GAP = object()  # marks frames dropped from the middle of a too-deep stack

try:  # per-thread CPU clocks (Linux, most Unixes)
    _getcpuclockid = time.pthread_getcpuclockid
    _clock_gettime_ns = time.clock_gettime_ns
    HAVE_THREAD_CPU = True
except AttributeError:  # pragma: no cover - Windows/macOS without it
    HAVE_THREAD_CPU = False


def thread_cpu_ns(ident: int) -> Optional[int]:
    """CPU time of another thread of this process in ns, or None if unavailable."""
    if not HAVE_THREAD_CPU:
        return None
    try:
        return _clock_gettime_ns(_getcpuclockid(ident))
    except (OSError, OverflowError, ValueError):
        return None


class StackTable:
    """Raw aggregated samples of one session: (thread name, code ids, instruction
    offsets) → values.  Offsets (``f_lasti``) are turned into line numbers by
    :meth:`fill`, on the export worker: reading ``f_lasti`` costs a third of
    ``f_lineno`` (a line-table search) in the sampler's per-frame loop."""

    __slots__ = ("entries", "ticks")

    def __init__(self) -> None:
        # key -> [count, cpu_ns, wall_ns, codes tuple]; the codes keep the code objects
        # alive, so the ids in the key can never be reused by another code object.
        self.entries: dict[tuple[Any, ...], list[Any]] = {}
        self.ticks = 0

    def add(self, thread_name: str, codes: list[Any], lastis: list[int], cpu_ns: int, wall_ns: int) -> None:
        key = (thread_name, tuple(map(id, codes)), tuple(lastis))
        rec = self.entries.get(key)
        if rec is None:
            self.entries[key] = [1, cpu_ns, wall_ns, tuple(codes)]
        else:
            rec[0] += 1
            rec[1] += cpu_ns
            rec[2] += wall_ns

    def fill(self, profile: Profile) -> Profile:
        """Intern everything into ``profile`` (runs on the export worker)."""
        b = ProfileBuilder(profile)
        fn_cache: dict[int, int] = {}
        line_cache: dict[tuple[int, int], int] = {}
        # a snapshot: a tick that was under way when the session finished may still add
        for (thread_name, _ids, lastis), (count, cpu, wall, codes) in list(self.entries.items()):
            locs = []
            for code, lasti in zip(codes, lastis):
                if code is _GAP:
                    f = b.function(f"<{lasti} frames omitted>")  # the gap's slot holds the count
                    locs.append(b.location(f, 0))
                    continue
                cached = fn_cache.get(id(code))
                if cached is None:
                    cached = fn_cache[id(code)] = b.function(_qualname(code), code.co_filename, code.co_firstlineno)
                line = line_cache.get((id(code), lasti))
                if line is None:
                    line = line_cache[(id(code), lasti)] = _line_of(code, lasti)
                locs.append(b.location(cached, line))
            b.add(b.stack(locs), thread_name, count, cpu, wall)
        return profile


def _qualname(code: CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)


def _line_of(code: CodeType, lasti: int) -> int:
    """The line ``frame.f_lineno`` reports for a frame of ``code`` at byte offset
    ``lasti`` (``frame.f_lasti``): ``co_firstlineno`` before the first instruction,
    0 where the line table has no line."""
    if lasti < 0:
        return code.co_firstlineno
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line or 0
    return 0


def _walk_thread(frame: Optional[FrameType], stop: Any, max_depth: int) -> tuple[list[Any], list[int]]:
    """Leaf-first code objects and instruction offsets from ``frame`` down to the
    root (or to ``stop``, a frame included as the last one)."""
    codes: list[Any] = []
    lines: list[int] = []
    append_c = codes.append
    append_l = lines.append
    while frame is not None:
        append_c(frame.f_code)
        append_l(frame.f_lasti)  # a line number only on the export worker (StackTable.fill)
        if frame is stop:
            break
        frame = frame.f_back
    if len(codes) > max_depth:
        _truncate(codes, lines, max_depth)
    return codes, lines


def _truncate(codes: list[Any], lines: list[int], max_depth: int) -> None:
    """Keep the leaf frames and the root, with a marker for the gap."""
    keep_leaf = max_depth - 2
    omitted = len(codes) - keep_leaf - 1
    codes[keep_leaf:-1] = [_GAP]
    lines[keep_leaf:-1] = [omitted]


def _walk_coroutine(coro: Any, max_depth: int) -> tuple[list[Any], list[int]]:
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
        _truncate(codes, lines, max_depth)
    return codes, lines


class Sampler:
    """Samples the targets of registered sessions at up to the highest rate they ask for."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._sessions: tuple[Session, ...] = ()  # copy-on-write: ticks iterate a snapshot
        self._thread: Optional[threading.Thread] = None
        self._hz = 0  # the rate of the current loop (highest rate of the active sessions)
        self._stopping = False
        self.ticks = 0
        self.errors = 0
        self._logged_error = False
        self.cpu_ns_self = 0  # CPU used by the sampler thread itself (for the overhead governor)

    # ---------------------------------------------------------------- sessions
    def register(self, session: "Session") -> None:
        with self._cond:
            self._sessions = self._sessions + (session,)
            if self._thread is None or not self._thread.is_alive():
                self._start_locked()
            if len(self._sessions) == 1 or session.hz > self._hz:
                # wake the thread only when it is idle or must now tick faster: waking it
                # for every request would cost every request a GIL hand-over
                self._cond.notify()

    def unregister(self, session: "Session") -> None:
        # Brief: the lock is never held during a tick, so a request never waits for
        # one.  A tick already under way may still add a sample to this session;
        # readers snapshot the table (``StackTable.fill``), so that sample is just lost.
        with self._cond:
            self._sessions = tuple(s for s in self._sessions if s is not session)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

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

    # ---------------------------------------------------------------- loop
    def _run(self) -> None:
        me = threading.get_ident()
        next_tick = time.monotonic()
        cond = self._cond
        while True:
            with cond:
                while not self._sessions and not self._stopping:
                    self._hz = 0
                    cond.wait()  # idle: blocked, no periodic wake-ups
                    next_tick = time.monotonic()
                if self._stopping:
                    return
                sessions = self._sessions
            try:
                self._tick(time.monotonic_ns(), sessions)
            except Exception:  # never let a sampler bug kill the thread
                self.errors += 1
                if not self._logged_error:
                    self._logged_error = True
                    log.exception("otelprof: sampler tick failed; the affected samples are skipped")
            cpu = thread_cpu_ns(me)
            if cpu is not None:
                self.cpu_ns_self = cpu
            hz = max(s.hz for s in sessions)  # after the tick: it may have ended a boost
            interval = 1.0 / hz
            next_tick += interval
            now = time.monotonic()
            delay = next_tick - now
            if delay <= 0:  # fell behind (GIL contention): don't try to catch up
                next_tick = now
                delay = interval * 0.1
            with cond:
                self._hz = hz
                if not self._stopping:
                    cond.wait(delay)  # cut short when a session needs a faster rate
            next_tick = min(next_tick, time.monotonic())

    def _tick(self, now_ns: int, sessions: "Optional[tuple[Session, ...]]" = None) -> None:
        self.ticks += 1
        frames = sys._current_frames()
        cpu_now: dict[int, Optional[int]] = {}
        for session in self._sessions if sessions is None else sessions:
            if session.finished:
                continue
            if session.boost_until_ns and now_ns >= session.boost_until_ns:
                session.end_boost()
            if now_ns < session.next_due_ns:
                continue
            session.next_due_ns = max(session.next_due_ns + session.interval_ns, now_ns - session.interval_ns)
            if session.sample_budget_exhausted(now_ns):
                continue
            wall = now_ns - session.last_tick_ns
            session.last_tick_ns = now_ns
            table = session.stacks
            table.ticks += 1
            max_depth = session.max_depth
            waiting: list[Any] = []  # suspended tasks, sampled unless a helper thread works for them
            busy_thread = False
            for target in session.targets:
                tid = target.thread_id
                task = target.task
                if task is not None:
                    if task.done():
                        continue
                    running = _current_task(target.loop) is task
                    if not running:
                        waiting.append(target)
                        continue
                    frame = frames.get(tid)
                    stop = getattr(task.get_coro(), "cr_frame", None)
                    if stop is None or not _on_stack(frame, stop):
                        # the loop switched tasks after the frames were read: this stack
                        # belongs to another task, never to this one
                        waiting.append(target)
                        continue
                    busy_thread = True  # this tick's wall is in the running task's sample
                else:
                    frame = frames.get(tid)
                    stop = None
                    busy_thread = True
                if frame is None:
                    continue
                codes, lines = _walk_thread(frame, stop, max_depth)
                if tid not in cpu_now:
                    cpu_now[tid] = thread_cpu_ns(tid)
                now_cpu = cpu_now[tid]
                cpu = 0
                if now_cpu is not None:
                    if target.cpu_mark is not None:
                        cpu = max(0, now_cpu - target.cpu_mark)
                    target.cpu_mark = now_cpu
                table.add(target.thread_name or _thread_name(tid), codes, lines, cpu, wall)
            for target in waiting:
                tid = target.thread_id
                if tid not in cpu_now:
                    cpu_now[tid] = thread_cpu_ns(tid)
                # move the CPU mark on: what other tasks burn meanwhile is not ours
                target.cpu_mark = cpu_now[tid]
                if busy_thread:
                    continue  # the task awaits work we sample in its thread; don't count wall twice
                codes, lines = _walk_coroutine(target.task.get_coro(), max_depth)
                if codes:
                    table.add(target.thread_name, codes, lines, 0, wall)


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


def _after_fork_in_child() -> None:
    global _sampler, _sampler_lock
    _sampler_lock = threading.Lock()
    _sampler = None  # the parent's thread does not exist here; start afresh lazily


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
