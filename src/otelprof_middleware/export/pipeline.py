"""Delivery: finished sessions go in on the request path (never blocking, never
encoding); a build worker turns each into a :class:`Profile` once and fans it out
to one :class:`~.channel.ExportChannel` per exporter.  Each channel has its own
bounded queue and worker thread, so a dead backend never stalls the others.

Network exporters get batching (``batch_size``/``batch_timeout``), request size
limits (``max_request_bytes``), upload pacing (``max_upload_rate``) and retries by
the OTLP rules (:mod:`.retry`); plain exporters (file, console, your own) get each
profile as soon as it is built.

Memory is bounded: the session queue and every channel queue hold at most
``queue_size`` items, channels also at most ``max_queue_bytes`` (estimated).  When
full, a session or profile of a higher priority (:mod:`.priority`: promised, then
kept for a reason, then sampled) takes the place of the newest cheaper one; what
cannot be queued is dropped and counted (``queue_full``).  A session with fewer
than ``min_samples`` samples is dropped (``too_short``) when it is submitted, so it
never takes a place in a queue (window profiles, :mod:`..windows`, are exempt: they
are made of short requests).  ``force_flush`` sends what is queued now,
skipping batch waits and pacing; ``shutdown`` does the same within a timeout and
counts everything still undelivered, in flight included, as dropped
(``shutdown``), logged with the numbers.

Counting, in profiles: a profile dropped before it is collected (too few samples,
session queue full, build error, shutdown) counts once in ``stats()["dropped"]``;
after the fan-out, each exporter counts its own copy
(``stats()["exporters"][name]["dropped"]``).  A build under way when shutdown
gives up is counted then, and its result ignored, so nothing counts twice.

The exporters are fixed once the pipeline runs: ``add_exporter`` is for setting up,
before the first session is submitted.

Fork safety: every lock, queue and thread is recreated empty in a child process
(``_safety.at_fork_reinit``, and a pid check as a fallback); threads start lazily;
the parent keeps exporting what it queued, so nothing is sent twice.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from .._safety import at_fork_reinit
from ..profile import Profile
from ..stats import Stats
from ._worker import CpuMeter, QueueWorker, Urgency
from .channel import ExportChannel
from .priority import Priority, priority_of
from .settings import BatchSettings
from .sizing import estimate_size

if TYPE_CHECKING:
    from ..session import Session
    from ..windows import WindowProfile

__all__ = ["ExportPipeline"]

#: a wake-up of the build worker lingers this long for more sessions ...
BUILD_LINGER = 0.1
#: ... unless this many are already waiting
BUILD_WAKE_AT = 64


class ExportPipeline(QueueWorker):
    """Session queue + build worker + one :class:`ExportChannel` per exporter."""

    def __init__(
        self,
        exporters: Sequence[Any],
        stats: Stats,
        *,
        batch: BatchSettings = BatchSettings(),
        min_samples: int = 0,
        prepare: Optional[Callable[[Profile], Profile]] = None,
    ) -> None:
        super().__init__()
        self.stats = stats
        self.batch = batch
        self.queue_size = batch.queue_size
        self.min_samples = min_samples
        #: applied to each built profile before any exporter sees it (privacy: masking, redaction)
        self.prepare = prepare
        self._channels: tuple[ExportChannel, ...] = ()
        self._started = False
        self._closed = False
        self._init_state()
        for exporter in exporters:
            self.add_exporter(exporter)
        at_fork_reinit(self._after_fork)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._init_queue()
        self._building: Optional[tuple[object, Priority]] = None  # (token, priority) of the build under way

    @property
    def channels(self) -> tuple[ExportChannel, ...]:
        return self._channels

    @property
    def exporters(self) -> tuple[Any, ...]:
        return tuple(ch.exporter for ch in self._channels)

    def add_exporter(self, exporter: Any) -> None:
        """Deliver to ``exporter`` too.  Only before the first session is submitted:
        raises ``RuntimeError`` once the pipeline runs."""
        with self._cond:
            if self._started or self._closed:
                raise RuntimeError("exporters can only be added before the first profile is finished")
            self._channels = self._channels + (ExportChannel(exporter, self.stats, batch=self.batch),)

    # ------------------------------------------------------------ producer side
    def submit(self, session: "Session | WindowProfile") -> bool:
        """Queue a finished session for export; never blocks.  False (and counted)
        when too short, full of sessions that are not cheaper, or shut down."""
        if self._pid != os.getpid():  # fork without the hooks: never take a lock copied mid-use
            self._after_fork()
        priority = priority_of(session)
        if self._too_short(session):
            self.stats.dropped("too_short", priority=priority.label)
            return False
        with self._cond:
            self._started = True
            if self._closed:
                self.stats.dropped("shutdown", priority=priority.label)
                return False
            if self._waiting_locked() >= self.queue_size and not self._make_room_locked(priority):
                self.stats.dropped("queue_full", priority=priority.label)
                self._log_once("queue_full", "otelprof: export queue full (%d); dropping the cheapest profiles",
                               self.queue_size)
                return False
            was_empty = not self._queue
            self._queue.push(session, priority)
            if priority is Priority.PROMISED:
                # its id went to a client: build and write it now, so a server killed
                # right after still has it
                self._urgency.ask(Urgency.PROMPT)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otelprof-export", daemon=True)
                self._thread.start()
            if was_empty or priority is Priority.PROMISED or len(self._queue) >= BUILD_WAKE_AT:
                # the worker lingers after a wake-up, so a busy server wakes it a few
                # times per second, not once per request (each wake-up costs the
                # request threads a GIL hand-over)
                self._cond.notify()
            return True

    def _too_short(self, session: "Session | WindowProfile") -> bool:
        """Fewer than ``min_samples`` samples (and no promise to keep it)?  Read from
        the session's raw samples without building anything; if they cannot be read
        now, the answer is False and the build decides."""
        stacks = getattr(session, "stacks", None)  # a window profile has none: min_samples is per request
        if self.min_samples <= 0 or session.keep_if_empty or stacks is None:
            return False
        try:
            n = 0
            for record in stacks.entries.values():  # [samples, cpu, wall, codes]
                n += record[0]
                if n >= self.min_samples:
                    return False
            return True
        except Exception:  # a tick still adding a sample (the dict changed size), or another layout
            return False

    def _waiting_locked(self) -> int:
        # bounded like one queue: sessions waiting + building + what the least busy
        # channel has queued (a full channel alone drops only its own copy)
        waiting = len(self._queue) + self._in_flight
        if self._channels:
            waiting += min(ch.queued for ch in self._channels)
        return waiting

    def _make_room_locked(self, priority: Priority) -> bool:
        """With ``_cond`` held: make room for a session of ``priority`` by dropping a
        cheaper one, queued here or in the least busy channel(s)."""
        victim = self._queue.evict_below(priority)
        if victim is not None:
            self.stats.dropped("queue_full", priority=victim[2].label)
            return True
        if not self._channels:
            return False
        least = min(ch.queued for ch in self._channels)
        bound = [ch for ch in self._channels if ch.queued == least]
        if not all(ch.can_make_room(priority) for ch in bound):
            return False
        for ch in bound:
            ch.make_room(priority)
        return True

    @property
    def pending(self) -> int:
        """Items not yet delivered or dropped: queued sessions, builds, and every channel's queue."""
        return self.sessions_pending + sum(ch.pending for ch in self._channels)

    @property
    def sessions_pending(self) -> int:
        """Finished sessions not yet collected: queued or being built."""
        return len(self._queue) + self._in_flight

    # ------------------------------------------------------------ build worker
    def _must_not_linger(self) -> bool:
        return self._urgency.level is not Urgency.NORMAL or len(self._queue) >= BUILD_WAKE_AT

    def _run(self) -> None:
        cpu = CpuMeter()
        while True:
            with self._cond:
                woken = False
                while not self._queue and not self._closed:
                    self._cond.wait()
                    woken = True
                if not self._queue:
                    self._cond.notify_all()
                    return
                if woken and not self._must_not_linger():
                    self._cond.wait_for(self._must_not_linger, timeout=BUILD_LINGER)
                if not self._queue:  # abandoned by shutdown meanwhile
                    continue
                session, _size, priority = self._queue.pop()
                if priority is Priority.PROMISED:
                    self._urgency.withdraw(Urgency.PROMPT)
                token = object()
                self._building = (token, priority)
                self._in_flight += 1
            built: Optional[tuple[Profile, int]] = None
            dropped = "error"
            try:
                built, dropped = self._build(session)
            finally:
                with self._cond:
                    # handed over and released in one step: ``pending`` and the queue
                    # bound never count a profile twice, or not at all; a build that
                    # shutdown gave up on was counted then, and is ignored here
                    if self._building is not None and self._building[0] is token:
                        if built is not None:
                            for ch in self._channels:  # never blocks: offer() drops when full or closed
                                ch.offer(*built)
                            self.stats.collected()
                        else:
                            self.stats.dropped(dropped, priority=priority.label)
                        self._building = None
                        self._in_flight -= 1
                    self._cond.notify_all()
                cpu.tick()

    def _build(self, session: "Session | WindowProfile") -> tuple[Optional[tuple[Profile, int]], str]:
        """One session's profile and its estimated size, or None and the drop reason."""
        started = time.perf_counter()
        try:
            profile = session.to_profile()
            if self.prepare is not None:  # a failure here drops the profile: never exported unredacted
                profile = self.prepare(profile)
        except Exception:
            self._log_once("build", "otelprof: building a profile failed; it is skipped", exc=True)
            return None, "error"
        self.stats.record("collection_duration", time.perf_counter() - started)
        if profile.sample_count < self.min_samples and not profile.keep_if_empty and not getattr(
                session, "window", False):
            return None, "too_short"
        size = estimate_size(profile)
        self.stats.record("profile_size", size)
        return (profile, size), ""

    # ------------------------------------------------------------ flush / shutdown
    def _wait_built(self, deadline: Optional[float]) -> bool:
        with self._cond:
            return self._wait_drained_locked(deadline)

    @contextlib.contextmanager
    def _channels_urgent(self, level: Urgency) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for ch in self._channels:
                stack.enter_context(ch.urgent(level))
            yield

    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is delivered (or dropped).  True if done in time."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.urgent(Urgency.FLUSH):
            # builds first, so that the flushed batches are as full as can be
            if not self._wait_built(deadline):
                return False
            with self._channels_urgent(Urgency.FLUSH):
                return all([ch.wait_idle(deadline) for ch in self._channels])

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver within ``timeout``, then stop.  Everything still undelivered (not
        built, queued, or in flight) is dropped, counted ``shutdown`` and logged with
        the numbers.  True if everything was delivered."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        idle: dict[int, bool] = {}
        with self.urgent(Urgency.FLUSH):
            built = self._wait_built(deadline)
            with self._channels_urgent(Urgency.FLUSH):
                if built:
                    for ch in self._channels:
                        ch.close()
                    for ch in self._channels:
                        idle[id(ch)] = ch.wait_idle(deadline)
        with self._cond:
            left = [p for _session, p in self._queue.clear()]
            if self._building is not None:  # a build under way: given up on, counted now
                left.append(self._building[1])
                self._building = None
            for p in left:
                if p is Priority.PROMISED:
                    self._urgency.withdraw(Urgency.PROMPT)
            self._in_flight = 0
            self._cond.notify_all()
        for p in Priority:
            self.stats.dropped("shutdown", left.count(p), priority=p.label)
        lost = {ch.name: ch.abandon() for ch in self._channels}
        for ch in self._channels:
            ch.shutdown_exporter(wait=idle.get(id(ch), False))
        self._log_shutdown(timeout, len(left), lost)
        return built and not left and not any(q or f for q, f in lost.values()) and all(
            idle.get(id(ch), False) for ch in self._channels)

    def _log_shutdown(self, timeout: Optional[float], not_built: int, lost: dict[str, tuple[int, int]]) -> None:
        parts = [f"{not_built:,} not yet built"] if not_built else []
        parts += [f"{name}: {q:,} queued, {f:,} in flight" for name, (q, f) in lost.items() if q or f]
        if parts:
            total = not_built + sum(q + f for q, f in lost.values())
            within = f" within {round(timeout, 1):g} s" if timeout is not None else ""
            self._log_once("shutdown", "otelprof: shutdown: %s profile(s) not delivered%s are dropped (counted as "
                           "dropped.shutdown): %s", f"{total:,}", within, "; ".join(parts))

    def _after_fork(self) -> None:
        self._init_state()
        for ch in self._channels:
            ch.after_fork()
