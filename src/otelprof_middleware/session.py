"""One profiling session: a unit of work (request, job, block) being sampled.

A session knows its trace link, its attributes and what the sampler should look
at: threads (the request's own thread, thread-pool threads while they work for
it) and asyncio tasks.  The sampler thread writes samples into
``session.stacks``; everything else belongs to the code that owns the session.
Finished sessions are turned into a :class:`~otelprof_middleware.profile.Profile`
on the export worker, never on the request path.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

from .profile import AttributeValue, Profile, SpanLink
from .sampler import StackTable, thread_cpu_ns

__all__ = ["Session", "Target"]


class Target:
    """Something the sampler looks at for a session: a thread, or a task on a loop thread."""

    __slots__ = ("thread_id", "thread_name", "task", "loop", "cpu_mark", "refs")

    def __init__(self, thread_id: int, thread_name: str = "", task: Any = None, loop: Any = None) -> None:
        self.thread_id = thread_id
        self.thread_name = thread_name
        self.task = task
        self.loop = loop
        self.cpu_mark: Optional[int] = thread_cpu_ns(thread_id)
        self.refs = 1


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
    ) -> None:
        self.name = name
        self.profile_id = os.urandom(16)
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
        self._lock = threading.Lock()
        self.hz = hz
        self.interval_ns = int(1e9 / hz)
        self.period_ns = self.interval_ns
        self.boost_until_ns = 0  # while > 0: sampled at a boosted rate until then (monotonic ns)
        self._base_hz = hz
        self.keep_if_empty = False  # export even with fewer than min_samples (its id was promised)
        # first sample one interval after start, like a timer would
        self.next_due_ns = self.start_mono_ns + self.interval_ns
        self.last_tick_ns = self.start_mono_ns

    # ------------------------------------------------------------ identity
    @property
    def profile_id_hex(self) -> str:
        return self.profile_id.hex()

    def add_trigger(self, trigger: str) -> None:
        if trigger not in self.triggers:
            self.triggers = self.triggers + (trigger,)

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
            self.targets = self.targets + (Target(ident, name or ""),)
        return ident

    def detach_thread(self, ident: Optional[int] = None) -> None:
        if ident is None:
            ident = threading.get_ident()
        with self._lock:
            for t in self.targets:
                if t.thread_id == ident and t.task is None:
                    t.refs -= 1
                    if t.refs <= 0:
                        self.targets = tuple(x for x in self.targets if x is not t)
                    return

    def attach_task(self, task: Any, loop: Any, thread_id: Optional[int] = None) -> None:
        """Sample asyncio ``task`` (running on ``loop``, in ``thread_id``, default the calling thread)."""
        if thread_id is None:
            thread_id = threading.get_ident()
        name = threading.current_thread().name if thread_id == threading.get_ident() else ""
        with self._lock:
            if any(t.task is task for t in self.targets):
                return
            self.targets = self.targets + (Target(thread_id, name, task=task, loop=loop),)

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
            self.targets = ()

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

    def set_rate(self, hz: int) -> None:
        """Change this session's sampling rate."""
        hz = max(1, min(1000, int(hz)))
        self.hz = hz
        self.interval_ns = int(1e9 / hz)
        self.period_ns = self.interval_ns
        self._base_hz = hz
        self.boost_until_ns = 0

    def return_to(self, hz: int, after: float) -> None:
        """The current rate is a boost (so that a request of a few ms still gets samples):
        go back to ``hz`` once ``after`` seconds have passed since the start.  The sampler
        ends the boost at its first tick past that time."""
        self._base_hz = hz
        self.boost_until_ns = self.start_mono_ns + int(after * 1e9)

    def end_boost(self) -> None:
        if self.boost_until_ns:
            self.set_rate(self._base_hz)

    # ------------------------------------------------------------ results
    @property
    def duration_ns(self) -> int:
        end = self.end_mono_ns if self.end_mono_ns is not None else time.monotonic_ns()
        return end - self.start_mono_ns

    def to_profile(self) -> Profile:
        """Build the profile model from the raw samples (on the export worker)."""
        attrs = dict(self.attributes)
        if self.error:
            attrs.setdefault("otelprof.error", self.error)
        if self.truncated:
            attrs["otelprof.truncated"] = self.truncated
        profile = Profile(
            name=self.name,
            start_time_ns=self.start_time_ns,
            duration_ns=self.duration_ns,
            period_ns=self.period_ns,
            link=self.link,
            attributes=attrs,
            triggers=self.triggers,
            profile_id=self.profile_id,
            truncated=self.truncated,
            keep_if_empty=self.keep_if_empty,
        )
        return self.stacks.fill(profile)


def session_summary(session: Session) -> dict[str, object]:
    """Cheap facts for span attributes at the end of a request: sample count, CPU ms,
    the hottest self-time function.  Call only after sampling stopped."""
    cpu = 0
    count = 0
    by_leaf: dict[str, int] = {}
    for (_thread, _ids, _lines), (n, c, _w, codes) in list(session.stacks.entries.items()):
        count += n
        cpu += c
        if codes:
            leaf = codes[0]
            name = getattr(leaf, "co_qualname", None) or getattr(leaf, "co_name", None) or "<frames omitted>"
            by_leaf[name] = by_leaf.get(name, 0) + (c or n)
    top = max(by_leaf.items(), key=lambda kv: kv[1])[0] if by_leaf else ""
    return {"samples": count, "cpu_ms": round(cpu / 1e6, 3), "top_frame": top}
