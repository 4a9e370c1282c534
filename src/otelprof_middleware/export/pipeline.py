"""Delivery: finished sessions go in on the request path (never blocking, never
encoding); a build worker turns each into a :class:`Profile` once and fans it out
to one :class:`~.channel.ExportChannel` per exporter.  Each channel has its own
bounded queue and worker thread, so a dead backend never stalls the others.

Network exporters get batching (``batch_size``/``batch_timeout``), request size
limits (``max_request_bytes``), upload pacing (``max_upload_rate``) and retries by
the OTLP rules (:mod:`.retry`); plain exporters (file, console, your own) get each
profile as soon as it is built.

Memory is bounded: the session queue and every channel queue hold at most
``queue_size`` items, channels also at most ``max_queue_bytes`` (estimated);
anything over is dropped and counted (``queue_full``).  ``force_flush`` sends what
is queued now, skipping batch waits and pacing; ``shutdown`` does the same within a
timeout and counts what is still unsent as dropped (``shutdown``).

Counting: a profile dropped before it is built (session queue full, build error,
too few samples, shutdown) counts once; after the fan-out, each exporter counts its
own copy (``stats()["exporters"][name]``).

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
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from .._safety import at_fork_reinit
from ..profile import Profile
from ..stats import Stats
from ._worker import CpuMeter, QueueWorker, Urgency
from .channel import ExportChannel
from .settings import BatchSettings
from .sizing import estimate_size

if TYPE_CHECKING:
    from ..session import Session

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
    ) -> None:
        super().__init__()
        self.stats = stats
        self.batch = batch
        self.queue_size = batch.queue_size
        self.min_samples = min_samples
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
    def submit(self, session: "Session") -> bool:
        """Queue a finished session for export; never blocks.  False (and counted)
        when full or shut down."""
        if self._pid != os.getpid():  # fork without the hooks: never take a lock copied mid-use
            self._after_fork()
        with self._cond:
            self._started = True
            if self._closed:
                self.stats.dropped("shutdown")
                return False
            # bounded like one queue: sessions waiting + building + what the least busy
            # channel has queued (a full channel alone drops only its own copy)
            waiting = len(self._queue) + self._in_flight
            if self._channels:
                waiting += min(ch.queued for ch in self._channels)
            if waiting >= self.queue_size:
                self.stats.dropped("queue_full")
                self._log_once("queue_full", "otelprof: export queue full (%d); dropping profiles", self.queue_size)
                return False
            was_empty = not self._queue
            self._queue.append(session)
            if session.keep_if_empty:
                # a profile whose id went to a client (header-triggered, rate-limited):
                # build and write it now, so a server killed right after still has it
                self._urgency.ask(Urgency.PROMPT)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otelprof-export", daemon=True)
                self._thread.start()
            if was_empty or session.keep_if_empty or len(self._queue) >= BUILD_WAKE_AT:
                # the worker lingers after a wake-up, so a busy server wakes it a few
                # times per second, not once per request (each wake-up costs the
                # request threads a GIL hand-over)
                self._cond.notify()
            return True

    @property
    def pending(self) -> int:
        """Items not yet delivered or dropped: queued sessions, builds, and every channel's queue."""
        return len(self._queue) + self._in_flight + sum(ch.pending for ch in self._channels)

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
                session = self._queue.popleft()
                if session.keep_if_empty:
                    self._urgency.withdraw(Urgency.PROMPT)
                self._in_flight += 1
            built: Optional[tuple[Profile, int]] = None
            try:
                built = self._build(session)
            finally:
                with self._cond:
                    # handed over and released in one step: ``pending`` and the queue
                    # bound never count a profile twice, or not at all
                    if built is not None:
                        for ch in self._channels:  # never blocks: offer() drops when full or closed
                            ch.offer(*built)
                        self.stats.collected()
                    self._in_flight -= 1
                    self._cond.notify_all()
                cpu.tick()

    def _build(self, session: "Session") -> Optional[tuple[Profile, int]]:
        """One session's profile and its estimated size; None if it is not exported."""
        started = time.perf_counter()
        try:
            profile = session.to_profile()
        except Exception:
            self.stats.dropped("error")
            self._log_once("build", "otelprof: building a profile failed; it is skipped", exc=True)
            return None
        self.stats.record("collection_duration", time.perf_counter() - started)
        if profile.sample_count < self.min_samples and not profile.keep_if_empty:
            self.stats.dropped("too_short")
            return None
        size = estimate_size(profile)
        self.stats.record("profile_size", size)
        return profile, size

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
        """Deliver within ``timeout``, then stop; what is still unsent is dropped (reason ``shutdown``)."""
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
            left = len(self._queue) + self._in_flight
            for session in self._queue:
                if session.keep_if_empty:
                    self._urgency.withdraw(Urgency.PROMPT)
            self._queue.clear()
            self._in_flight = 0
            self._cond.notify_all()
        if left:
            self.stats.dropped("shutdown", left)
            self._log_once("shutdown", "otelprof: %d profile(s) not built at shutdown; dropped", left)
        lost = left
        for ch in self._channels:
            clean = idle.get(id(ch), False)
            lost += ch.abandon()
            ch.shutdown_exporter(wait=clean)
        return built and not lost and all(idle.get(id(ch), False) for ch in self._channels)

    def _after_fork(self) -> None:
        self._init_state()
        for ch in self._channels:
            ch.after_fork()
