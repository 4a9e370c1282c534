"""Delivery: finished sessions go in on the request path (never blocking, never
encoding); a build worker turns each into a :class:`Profile` once and fans it out
to one :class:`ExportChannel` per exporter.  Each channel has its own bounded queue
and worker thread, so a dead backend never stalls the others.

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

Fork safety: every lock, queue and thread is recreated empty in a child process
(``os.register_at_fork``, and a pid check as a fallback); threads start lazily; the
parent keeps exporting what it queued, so nothing is sent twice.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ..profile import Profile
from ..stats import add_worker_cpu
from ..tracecontext import suppressed_instrumentation
from .base import ExportResult, estimate_size
from .retry import Attempt, RateLimiter, RetryPolicy, run_with_retry

if TYPE_CHECKING:
    from ..config import Config
    from ..stats import Stats
    from .base import Exporter

__all__ = ["ExportPipeline", "ExportChannel"]

log = logging.getLogger("otelprof_middleware")

_pipelines: "weakref.WeakSet[ExportPipeline]" = weakref.WeakSet()


def _is_network(exporter: Any) -> bool:
    return bool(getattr(exporter, "batching", False)) and hasattr(exporter, "prepare") and hasattr(exporter, "send")


#: a wake-up of the build worker lingers this long for more sessions ...
BUILD_LINGER = 0.1
#: ... unless this many are already waiting
BUILD_WAKE_AT = 64


class _Worker:
    """What the build worker and the export channels share: a queue drained by one
    thread under ``_cond``, and logging each kind of problem once (the counters keep
    the totals)."""

    _logged: set[str]
    _cond: threading.Condition
    _queue: "collections.deque[Any]"
    _in_flight: int
    _thread: Optional[threading.Thread]

    def _wait_drained_locked(self, deadline: Optional[float]) -> bool:
        """With ``_cond`` held: wait until the queue is empty and nothing is in flight."""
        while self._queue or self._in_flight:
            if self._thread is None or not self._thread.is_alive():
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._cond.wait(remaining)
        return not self._queue and not self._in_flight

    def _log_once(self, key: str, msg: str, *args: Any, exc: bool = False) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        (log.exception if exc else log.warning)(msg, *args)


def _exporter_after_fork(exporter: Any) -> None:
    hook = getattr(exporter, "after_fork", None)
    if hook is not None:
        try:
            hook()
        except Exception:  # pragma: no cover
            pass


class _CpuMeter:
    """Reports the CPU time a worker thread used since the last call."""

    def __init__(self) -> None:
        self.last = time.thread_time_ns()

    def tick(self) -> None:
        now = time.thread_time_ns()
        add_worker_cpu(now - self.last)
        self.last = now


class ExportChannel(_Worker):
    """One exporter's bounded queue and worker thread."""

    def __init__(
        self,
        exporter: Any,
        stats: "Stats",
        *,
        queue_size: int = 1000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 10,
        batch_timeout: float = 5.0,
        max_upload_rate: int = 0,
        retry_policy: Optional[RetryPolicy] = None,
        wait: Optional[Callable[[float], bool]] = None,
    ) -> None:
        self.exporter = exporter
        self.name = str(getattr(exporter, "name", type(exporter).__name__))
        self.stats = stats
        self.network = _is_network(exporter)
        self.queue_size = queue_size
        self.max_queue_bytes = max_queue_bytes
        self.batch_size = batch_size if self.network else 1
        self.batch_timeout = batch_timeout if self.network else 0.0
        self.max_upload_rate = max_upload_rate
        self.retry_policy = retry_policy or getattr(exporter, "retry_policy", None) or RetryPolicy()
        self._custom_wait = wait
        self._logged: set[str] = set()
        self._init_state()

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[Profile, int]] = collections.deque()
        self._bytes = 0
        self._in_flight = 0
        self._current: Optional[object] = None
        self._thread: Optional[threading.Thread] = None
        self._urgent = 0
        self._closed = False
        self._abandoned = False
        self._wake = threading.Event()
        self._limiter = RateLimiter(self.max_upload_rate) if self.max_upload_rate > 0 else None

    # ------------------------------------------------------------ producer side
    def offer(self, profile: Profile, size: int) -> bool:
        """Queue a profile; never blocks.  False (and counted) when full or closed."""
        with self._cond:
            if self._closed:
                self.stats.dropped("shutdown", exporter=self.name)
                return False
            if len(self._queue) >= self.queue_size or (self._queue and self._bytes + size > self.max_queue_bytes):
                self.stats.dropped("queue_full", exporter=self.name)
                self._log_once("queue_full", "otelprof: %s export queue full (%d profiles, %d bytes); dropping profiles",
                               self.name, len(self._queue), self._bytes)
                return False
            self._queue.append((profile, size))
            self._bytes += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"otelprof-export-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        cpu = _CpuMeter()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._cond.notify_all()
                    return
                if self.batch_size > 1 and self.batch_timeout > 0:
                    deadline = time.monotonic() + self.batch_timeout
                    while len(self._queue) < self.batch_size and not self._urgent and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if not self._queue:  # abandoned meanwhile
                        continue
                batch: list[Profile] = []
                while self._queue and len(batch) < self.batch_size:
                    p, size = self._queue.popleft()
                    self._bytes -= size
                    batch.append(p)
                token = object()
                self._current = token
                self._in_flight = len(batch)
            try:
                self._export(batch, token)
            except Exception:  # never let an exporter bug kill the worker
                left = self._in_flight
                self._settle(token, left, ExportResult(dropped=left, reason="error"))
                self._log_once("crash", "otelprof: %s exporter failed unexpectedly", self.name, exc=True)
            finally:
                with self._cond:
                    if self._current is token:
                        self._current = None
                        self._in_flight = 0
                    self._cond.notify_all()
                cpu.tick()

    def _settle(self, token: object, n: int, result: ExportResult) -> bool:
        """Account for ``n`` profiles of the current batch; False if the batch was
        abandoned meanwhile (then it was already counted as dropped)."""
        with self._cond:
            if self._current is not token:
                return False
            self._in_flight = max(0, self._in_flight - n)
            self.stats.exported(self.name, result.exported)
            if result.dropped:
                self.stats.dropped(result.reason or "export_failed", result.dropped, exporter=self.name)
            self._cond.notify_all()
        if result.dropped:
            self._log_once("drop-" + (result.reason or "export_failed"),
                           "otelprof: %s exporter dropped %d profile(s) (%s): %s", self.name, result.dropped,
                           result.reason or "export_failed", result.message or "-")
        return True

    def _export(self, batch: list[Profile], token: object) -> None:
        started = time.monotonic()
        with suppressed_instrumentation():
            if not self.network:
                try:
                    result = self.exporter.export(batch)
                except Exception as exc:
                    result = ExportResult(dropped=len(batch), reason="export_failed", message=repr(exc))
                if result.exported + result.dropped < len(batch):  # an exporter that under-reports
                    result.exported = len(batch) - result.dropped
                self._settle(token, len(batch), result)
            else:
                self._export_network(batch, token)
        self.stats.record("export_duration", time.monotonic() - started, self.name)

    def _export_network(self, batch: list[Profile], token: object) -> None:
        try:
            requests, too_large = self.exporter.prepare(batch)
        except Exception as exc:
            self._settle(token, len(batch), ExportResult(dropped=len(batch), reason="error", message=repr(exc)))
            self._log_once("encode", "otelprof: %s exporter could not encode profiles", self.name, exc=True)
            return
        if too_large:
            self._settle(token, too_large, ExportResult(dropped=too_large, reason="too_large",
                                                        message="profile larger than max_request_bytes"))
        for req in requests:
            if req.trimmed:
                self.stats.incr("profiles_trimmed", req.trimmed)
            if self._limiter is not None:
                delay = self._limiter.delay(len(req.body))
                if delay > 0 and not self._urgent and not self._wait(delay):
                    self._drop_rest(token)
                    return
            attempt, _ = run_with_retry(
                lambda timeout: self._send(req, timeout), self.retry_policy, wait=self._wait,
                on_attempt=lambda i: self.stats.request(self.name, retry=i > 0),
            )
            if not attempt.ok and self._abandoned:  # a retry wait cut short by shutdown
                self._drop_rest(token)
                return
            if attempt.ok:
                rejected = min(req.count, max(0, attempt.rejected))
                if attempt.rejected:
                    self.stats.incr("partial_success_responses")
                result = ExportResult(exported=req.count - rejected, dropped=rejected,
                                      reason=attempt.partial_reason or "rejected", message=attempt.message)
            else:
                result = ExportResult(dropped=req.count, reason=attempt.reason or "export_failed",
                                      message=attempt.message)
            if not self._settle(token, req.count, result):
                return

    def _drop_rest(self, token: object) -> None:
        left = self._in_flight
        self._settle(token, left, ExportResult(dropped=left, reason="shutdown",
                                               message="shutdown while waiting to send"))

    def _send(self, req: Any, timeout: float) -> Attempt:
        try:
            return self.exporter.send(req, timeout)
        except Exception as exc:  # an unexpected failure is final: never retry a bug
            self._log_once("send", "otelprof: %s exporter failed sending", self.name, exc=True)
            return Attempt(ok=False, retryable=False, message=repr(exc), status=type(exc).__name__)

    def _wait(self, seconds: float) -> bool:
        """Sleep between attempts; False when interrupted by abandonment."""
        if self._custom_wait is not None:
            return self._custom_wait(seconds) and not self._abandoned
        return not self._wake.wait(seconds)

    # ------------------------------------------------------------ flush / shutdown
    def hurry(self, on: bool) -> None:
        """While hurried (flush or shutdown in progress) batches go out at once, unpaced."""
        with self._cond:
            self._urgent += 1 if on else -1
            self._cond.notify_all()

    def close(self) -> None:
        """Accept nothing more; send what is queued without waiting for batches."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_idle(self, deadline: Optional[float]) -> bool:
        with self._cond:
            return self._wait_drained_locked(deadline)

    def abandon(self) -> int:
        """Give up on everything queued and count it as dropped (``shutdown``).  A batch
        in flight is not waited for: if it completes later it is counted then; if it
        was waiting to retry, it stops and counts as ``shutdown``."""
        with self._cond:
            n = len(self._queue)
            self._queue.clear()
            self._bytes = 0
            self._closed = True
            self._abandoned = True
            self._cond.notify_all()
        self._wake.set()
        if n:
            self.stats.dropped("shutdown", n, exporter=self.name)
            self._log_once("shutdown", "otelprof: %d profile(s) for %s still unsent at shutdown; dropped", n, self.name)
        return n

    def shutdown_exporter(self, wait: bool) -> None:
        def run() -> None:
            try:
                self.exporter.shutdown()
            except Exception:
                pass

        if wait:
            run()
        else:  # the exporter may be stuck in a call: don't wait for it
            threading.Thread(target=run, name="otelprof-export-close", daemon=True).start()

    def _after_fork(self) -> None:
        self._init_state()
        _exporter_after_fork(self.exporter)


class ExportPipeline(_Worker):
    """Session queue + build worker + one :class:`ExportChannel` per exporter.

    ``exporters`` is a plain list: an exporter appended later gets its channel when
    the next profile is fanned out."""

    def __init__(
        self,
        exporters: Sequence["Exporter"],
        stats: "Stats",
        *,
        queue_size: int = 1000,
        build: Callable[[Any], Optional[Profile]] = lambda item: item,
        min_samples: int = 0,
        config: Optional["Config"] = None,
        max_queue_bytes: Optional[int] = None,
        batch_size: Optional[int] = None,
        batch_timeout: Optional[float] = None,
        max_upload_rate: Optional[int] = None,
    ) -> None:
        self.exporters = list(exporters)
        self.stats = stats
        self.queue_size = queue_size
        self._build = build
        self.min_samples = min_samples

        def opt(value: Any, name: str, default: Any) -> Any:
            if value is not None:
                return value
            return getattr(config, name) if config is not None else default

        self.max_queue_bytes = opt(max_queue_bytes, "max_queue_bytes", 64 * 1024 * 1024)
        self.batch_size = opt(batch_size, "batch_size", 10)
        self.batch_timeout = opt(batch_timeout, "batch_timeout", 5.0)
        self.max_upload_rate = opt(max_upload_rate, "max_upload_rate", 0)
        self._channels: dict[int, ExportChannel] = {}
        self._closed = False
        self._logged: set[str] = set()
        self._init_state()
        _pipelines.add(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Any] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._in_flight = 0
        self._abandoned = False

    # ------------------------------------------------------------ producer side
    def submit(self, item: Any) -> bool:
        """Queue an item for export; never blocks.  False (and counted) when full or shut down."""
        if self._pid != os.getpid():  # fork without register_at_fork: never take a lock copied mid-use
            self._after_fork()
        with self._cond:
            if self._closed:
                self.stats.dropped("shutdown")
                return False
            # bounded like one queue: sessions waiting + building + what the least busy
            # channel has queued (a full channel alone drops only its own copy)
            waiting = len(self._queue) + self._in_flight
            if self._channels:
                waiting += min(ch.queued for ch in list(self._channels.values()))
            if waiting >= self.queue_size:
                self.stats.dropped("queue_full")
                self._log_once("queue_full", "otelprof: export queue full (%d); dropping profiles", self.queue_size)
                return False
            was_empty = not self._queue
            self._queue.append(item)
            if getattr(item, "keep_if_empty", False):
                # a profile whose id went to a client (header-triggered, rate-limited):
                # build and write it now, so a server killed right after still has it
                self._prompt = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otelprof-export", daemon=True)
                self._thread.start()
            if was_empty or self._prompt or len(self._queue) >= BUILD_WAKE_AT:
                # the worker lingers after a wake-up, so a busy server wakes it a few
                # times per second, not once per request (each wake-up costs the
                # request threads a GIL hand-over)
                self._cond.notify()
            return True

    @property
    def pending(self) -> int:
        """Items not yet delivered or dropped: queued sessions, builds, and every channel's queue."""
        return len(self._queue) + self._in_flight + sum(ch.pending for ch in list(self._channels.values()))

    @property
    def channels(self) -> list[ExportChannel]:
        return list(self._channels.values())

    def channel(self, name: str) -> Optional[ExportChannel]:
        for ch in self._channels.values():
            if ch.name == name:
                return ch
        return None

    def _sync_channels(self) -> list[ExportChannel]:
        exporters = list(self.exporters)
        if len(exporters) != len(self._channels) or any(id(e) not in self._channels for e in exporters):
            keep = {}
            for e in exporters:
                ch = self._channels.get(id(e))
                if ch is None:
                    ch = ExportChannel(
                        e, self.stats, queue_size=self.queue_size, max_queue_bytes=self.max_queue_bytes,
                        batch_size=self.batch_size, batch_timeout=self.batch_timeout,
                        max_upload_rate=self.max_upload_rate,
                    )
                    if self._urgent_level:
                        for _ in range(self._urgent_level):
                            ch.hurry(True)
                keep[id(e)] = ch
            self._channels = keep
        return [self._channels[id(e)] for e in exporters]

    _urgent_level = 0

    # ------------------------------------------------------------ build worker
    def _run(self) -> None:
        cpu = _CpuMeter()
        while True:
            with self._cond:
                woken = False
                while not self._queue and not self._closed:
                    self._cond.wait()
                    woken = True
                if not self._queue:
                    self._cond.notify_all()
                    return
                if woken and not self._must_hurry():
                    self._cond.wait_for(self._must_hurry, timeout=BUILD_LINGER)
                self._prompt = False
                item = self._queue.popleft()
                self._in_flight += 1
            released = False
            try:
                released = self._process(item)
            finally:
                with self._cond:
                    if not released:
                        self._in_flight -= 1
                    self._cond.notify_all()
                cpu.tick()

    def _process(self, item: Any) -> bool:
        """Build and fan out one item.  True when it released its ``_in_flight`` slot
        itself (atomically with handing the profile to the channels)."""
        started = time.perf_counter()
        try:
            profile = self._build(item)
        except Exception:
            self.stats.dropped("error")
            self._log_once("build", "otelprof: building a profile failed; it is skipped", exc=True)
            return False
        if profile is None:
            return False
        self.stats.record("collection_duration", time.perf_counter() - started)
        if profile.sample_count < self.min_samples and not profile.keep_if_empty:
            self.stats.dropped("too_short")
            return False
        size = estimate_size(profile)
        self.stats.incr("profiles_collected")
        self.stats.record("profile_size", size)
        with self._cond:
            for ch in self._sync_channels():  # never blocks: offer() drops when full or closed
                ch.offer(profile, size)
            self._in_flight -= 1
            return True

    # ------------------------------------------------------------ flush / shutdown
    def _hurry(self, on: bool) -> None:
        with self._cond:
            self._urgent_level += 1 if on else -1
            channels = list(self._channels.values())
        for ch in channels:
            ch.hurry(on)

    def _must_hurry(self) -> bool:
        """No lingering for more sessions when closing, flushing, asked to hurry, or behind."""
        return bool(self._closed or self._flush_waiters or self._urgent_level or self._prompt
                    or len(self._queue) >= BUILD_WAKE_AT)

    _flush_waiters = 0
    _prompt = False  # an item that must not wait for the linger

    def _wait_built(self, deadline: Optional[float]) -> bool:
        with self._cond:
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._wait_drained_locked(deadline)
            finally:
                self._flush_waiters -= 1

    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is delivered (or dropped).  True if done in time."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        built = self._wait_built(deadline)  # first: so that the flushed batches are as full as can be
        self._hurry(True)
        try:
            if not built:
                return False
            for ch in self.channels:
                if not ch.wait_idle(deadline):
                    return False
            return True
        finally:
            self._hurry(False)

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver within ``timeout``, then stop; what is still unsent is dropped (reason ``shutdown``)."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        built = self._wait_built(deadline)
        self._hurry(True)
        idle: dict[int, bool] = {}
        if built:
            for ch in self.channels:
                ch.close()
            for ch in self.channels:
                idle[id(ch)] = ch.wait_idle(deadline)
        with self._cond:
            left = len(self._queue) + self._in_flight
            self._queue.clear()
            self._in_flight = 0
            self._abandoned = True
            self._cond.notify_all()
        if left:
            self.stats.dropped("shutdown", left)
            self._log_once("shutdown", "otelprof: %d profile(s) not built at shutdown; dropped", left)
        lost = left
        for ch in self.channels:
            clean = idle.get(id(ch), False)
            lost += ch.abandon()
            ch.shutdown_exporter(wait=clean)
        for e in self.exporters:  # exporters that never got a channel
            if id(e) not in self._channels:
                try:
                    e.shutdown()
                except Exception:
                    pass
        return built and not lost and all(idle.get(id(ch), False) for ch in self.channels)

    def _after_fork(self) -> None:
        self._init_state()
        self._urgent_level = 0
        for ch in list(self._channels.values()):
            ch._init_state()
        for e in list(self.exporters):  # with or without a channel yet
            _exporter_after_fork(e)


def _after_fork_in_child() -> None:
    for p in list(_pipelines):
        try:
            p._after_fork()
        except Exception:  # pragma: no cover
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
