"""One exporter's bounded queue and worker thread.

A channel takes built profiles from the pipeline's fan-out (``offer`` never blocks)
and delivers them with its own thread, so a dead backend stalls only its own
channel.  For a :class:`~.base.NetworkExporter` it batches (``batch_size``/
``batch_timeout``), splits or trims requests over ``max_request_bytes``, paces
uploads (``max_upload_rate``) and retries by the OTLP rules (:mod:`.retry`); a
plain exporter gets each profile as soon as it is built.

Under faults (``docs/delivery.md``, "Faults and recovery"):

* **Priorities.**  The queue hands out promised profiles first, then those kept for
  a reason, then sampled ones, oldest first within each (:mod:`.priority`).  When
  it is full, a newcomer evicts the newest queued profile of a lower priority.
* **Fast recovery.**  After a failed attempt the worker waits its backoff (or the
  server's ``Retry-After``/``RetryInfo``, exactly).  If the backend does not even
  accept a TCP connection, the wait is cut into ``probe_interval`` steps with a
  connect probe after each: the retry goes out as soon as the backend answers
  again.  After a success that ends a failure, the backlog drains at once: no
  batch wait, no pacing, until the queue is empty.
* **Shutdown.**  :meth:`abandon` counts what is queued and what is in flight as
  dropped ``shutdown`` and interrupts the attempt in flight; a late result of an
  abandoned batch is ignored, so each profile is counted exactly once.

What happens to each profile is counted once in ``Stats`` under the channel's
exporter name, with its priority where known.  Each cause of failure is logged
once per minute per cause (with the number of repeats since the last line), and a
summary line when delivery recovers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .._safety import LogOnce, log
from ..profile import Profile
from ..stats import Stats
from ._worker import CpuMeter, QueueWorker, Urgency, untraced
from .base import ExportResult, NetworkExporter, Prepared
from .priority import Priority, priority_of
from .retry import Attempt, ByteRateLimiter, run_with_retry
from .settings import BatchSettings

__all__ = ["ExportChannel", "PROBE_INTERVAL", "LOG_EVERY"]

#: while the backend refuses connections, it is probed this often (seconds)
PROBE_INTERVAL = 1.0
#: retries one probe step apart after a probe connected but the retry it let through
#: failed before reaching the backend: a client whose connection state lags (gRPC's
#: channel reconnects on its own schedule, more than one step behind a probe on a
#: loaded machine).  Bounded: a backend that accepts connections but never an export
#: gets the whole backoff after these.
LAG_RETRIES = 5
#: each cause of failure is logged at most once per this many seconds
LOG_EVERY = 60.0


@dataclass
class _Outage:
    since: float  # clock() when the first failed attempt of this outage started
    cause: str  # what the latest failure was ("connection refused", "HTTP 503", ...)


@dataclass
class _Drain:
    outage: float  # how long the outage lasted, in seconds
    cause: str
    delivered: int = 0


class ExportChannel(QueueWorker):
    """One exporter's bounded queue and worker thread.  Test seams: ``wait(seconds)
    -> bool`` replaces the sleeps between attempts (False: cut short); ``clock``
    drives upload pacing and outage times; ``probe_interval`` the probing step."""

    def __init__(
        self,
        exporter: Any,
        stats: Stats,
        *,
        batch: BatchSettings = BatchSettings(),
        wait: Optional[Callable[[float], bool]] = None,
        clock: Callable[[], float] = time.monotonic,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        super().__init__()
        self.exporter = exporter
        self.name = str(getattr(exporter, "name", type(exporter).__name__))
        self.destination = str(getattr(exporter, "destination", "") or self.name)
        self.stats = stats
        self.network = isinstance(exporter, NetworkExporter)
        self.queue_size = batch.queue_size
        self.max_queue_bytes = batch.max_queue_bytes
        self.batch_size = batch.batch_size if self.network else 1
        self.batch_timeout = batch.batch_timeout if self.network else 0.0
        self.max_upload_rate = batch.max_upload_rate if self.network else 0
        self.probe_interval = probe_interval
        self._custom_wait = wait
        self._clock = clock
        self._log_every = LogOnce(log, every=LOG_EVERY, clock=clock)
        self._init_state()

    def _init_state(self) -> None:
        self._init_queue()
        self._current: Optional[object] = None  # token of the batch in flight
        self._flight: dict[bytes, Profile] = {}  # its profiles not yet accounted for, by id
        self._closed = False
        self._abandoned = False
        self._wake = threading.Event()
        self._limiter = ByteRateLimiter(self.max_upload_rate, clock=self._clock) if self.max_upload_rate > 0 else None
        self._outage: Optional[_Outage] = None
        self._drain: Optional[_Drain] = None
        self._lag_retries = 0  # quick retries left since a probe connected (LAG_RETRIES)

    # ------------------------------------------------------------ producer side
    def offer(self, profile: Profile, size: int) -> bool:
        """Queue a profile; never blocks.  False (and counted) when full of profiles
        that are not cheaper than this one, or closed."""
        priority = priority_of(profile)
        with self._cond:
            if self._closed:
                self.stats.dropped("shutdown", exporter=self.name, priority=priority.label)
                return False
            if not self._fits(size) and not self._make_room(priority, size):
                self.stats.dropped("queue_full", exporter=self.name, priority=priority.label)
                self._log_full()
                return False
            self._queue.push(profile, priority, size)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"otelprof-export-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    def _fits(self, size: int, queued: Optional[int] = None, queued_bytes: Optional[int] = None) -> bool:
        n = len(self._queue) if queued is None else queued
        b = self._queue.bytes if queued_bytes is None else queued_bytes
        return n < self.queue_size and (n == 0 or b + size <= self.max_queue_bytes)

    def _make_room(self, priority: Priority, size: int) -> bool:
        """With ``_cond`` held: evict cheaper profiles until one of ``size`` bytes fits,
        if evicting all of them would be enough (else evict nothing)."""
        below = self._queue.count_below(priority)
        if not below or not self._fits(size, len(self._queue) - below, self._queue.bytes - self._queue.bytes_below(priority)):
            return False
        while not self._fits(size):
            self._evict_one(priority)
        return True

    def _evict_one(self, priority: Priority) -> bool:
        """With ``_cond`` held: drop the newest queued profile cheaper than ``priority``."""
        victim = self._queue.evict_below(priority)
        if victim is None:
            return False
        self.stats.dropped("queue_full", exporter=self.name, priority=victim[2].label)
        self._log_full()
        return True

    def make_room(self, priority: Priority) -> bool:
        """Evict one queued profile cheaper than ``priority`` (the pipeline does this
        before it accepts a session of that priority into a full queue)."""
        with self._cond:
            return self._evict_one(priority)

    def can_make_room(self, priority: Priority) -> bool:
        with self._cond:
            return self._queue.count_below(priority) > 0

    def _log_full(self) -> None:
        self._log_every("queue_full", "otelprof: %s export queue full (%d profiles, %d bytes); dropping the "
                        "cheapest profiles", self.name, len(self._queue), self._queue.bytes)

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queue.bytes

    def queued_by_priority(self) -> dict[str, int]:
        with self._cond:
            return self._queue.counts()

    def _hurried(self) -> bool:
        return self._urgency.level is not Urgency.NORMAL or self._drain is not None

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        cpu = CpuMeter()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._cond.notify_all()
                    return
                if self.batch_size > 1 and self.batch_timeout > 0:
                    deadline = time.monotonic() + self.batch_timeout
                    while len(self._queue) < self.batch_size and not self._hurried() and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if not self._queue:  # abandoned meanwhile
                        continue
                batch: list[Profile] = []
                while self._queue and len(batch) < self.batch_size:
                    batch.append(self._queue.pop()[0])  # (highest priority first)
                token = object()
                self._current = token
                self._flight = {p.profile_id: p for p in batch}
                self._in_flight = len(self._flight)
            try:
                self._export(batch, token)
            except Exception:  # never let an exporter bug kill the worker
                self._settle_rest(token, "error", "unexpected failure")
                self._log_every("crash", "otelprof: %s exporter failed unexpectedly", self.name, exc=True)
            finally:
                drained: Optional[_Drain] = None
                with self._cond:
                    if self._current is token:
                        self._current = None
                        self._flight = {}
                        self._in_flight = 0
                    if self._drain is not None and not self._queue:
                        drained, self._drain = self._drain, None
                    self._cond.notify_all()
                if drained is not None:
                    self._log_recovered(drained)
                cpu.tick()

    def _settle(self, token: object, profiles: list[Profile], result: ExportResult) -> bool:
        """Account for ``profiles`` of the batch in flight; False if the batch was
        abandoned meanwhile (then they were already counted as dropped)."""
        reason = result.reason or "export_failed"
        with self._cond:
            if self._current is not token:
                return False
            for p in profiles:
                self._flight.pop(p.profile_id, None)
            self._in_flight = len(self._flight)
            self.stats.exported(self.name, result.exported)
            if self._drain is not None:
                self._drain.delivered += result.exported
            if result.dropped:
                self._count_dropped(reason, profiles, result)
            self._cond.notify_all()
        if result.dropped:
            cause = result.cause or result.message.split(":")[0].split("(")[0]
            self._log_every(f"drop:{reason}:{cause}",
                            "otelprof: %s exporter dropped %d profile(s) (%s) for %s: %s",
                            self.name, result.dropped, reason, self.destination, result.message or "-")
        return True

    def _settle_rest(self, token: object, reason: str, message: str) -> None:
        """Count what is left of the batch in flight as dropped for ``reason``."""
        with self._cond:
            rest = list(self._flight.values()) if self._current is token else []
        if rest:
            self._settle(token, rest, ExportResult(dropped=len(rest), reason=reason, message=message))

    def _count_dropped(self, reason: str, profiles: list[Profile], result: ExportResult) -> None:
        if result.exported == 0 and result.dropped == len(profiles):  # all of them: their priorities are known
            by: dict[str, int] = {}
            for p in profiles:
                label = priority_of(p).label
                by[label] = by.get(label, 0) + 1
            for label, n in by.items():
                self.stats.dropped(reason, n, exporter=self.name, priority=label)
        else:  # some of a request (a partial rejection): the server does not say which
            self.stats.dropped(reason, result.dropped, exporter=self.name)

    def _export(self, batch: list[Profile], token: object) -> None:
        started = time.monotonic()
        with untraced():
            if not self.network:
                try:
                    result = self.exporter.export(batch)
                except Exception as exc:
                    result = ExportResult(dropped=len(batch), reason="export_failed", message=repr(exc))
                if result.exported + result.dropped < len(batch):  # an exporter that under-reports
                    result.exported = len(batch) - result.dropped
                self._settle(token, batch, result)
            else:
                self._export_network(batch, token)
        self.stats.record("export_duration", time.monotonic() - started, self.name)

    def _export_network(self, batch: list[Profile], token: object) -> None:
        exporter: NetworkExporter = self.exporter
        try:
            requests, _too_large = exporter.prepare(batch)
        except Exception as exc:
            self._settle(token, batch, ExportResult(dropped=len(batch), reason="error", message=repr(exc)))
            self._log_every("encode", "otelprof: %s exporter could not encode profiles", self.name, exc=True)
            return
        packed = {p.profile_id for req in requests for p in req.profiles}
        too_large = [p for p in batch if p.profile_id not in packed]
        if too_large:
            self._settle(token, too_large, ExportResult(dropped=len(too_large), reason="too_large",
                                                        message="profile larger than max_request_bytes"))
        for req in requests:
            if req.trimmed:
                self.stats.incr("profiles_trimmed", req.trimmed)
            if self._limiter is not None:
                delay = self._limiter.delay(len(req.body))
                if delay > 0 and not self._hurried() and not self._sleep(delay):
                    self._settle_rest(token, "shutdown", "shutdown while waiting to send")
                    return
            attempt, _ = run_with_retry(
                lambda timeout: self._send(req, timeout), exporter.retry_policy, wait=self._retry_wait,
                on_attempt=lambda i: self.stats.request(self.name, retry=i > 0),
            )
            if not attempt.ok and (attempt.reason == "shutdown" or self._abandoned):
                self._settle_rest(token, "shutdown", "shutdown while waiting to send")
                return
            if attempt.ok:
                rejected = min(req.count, max(0, attempt.rejected))
                if attempt.rejected:
                    self.stats.incr("partial_success_responses")
                result = ExportResult(exported=req.count - rejected, dropped=rejected,
                                      reason=attempt.partial_reason or "rejected", message=attempt.message,
                                      cause=attempt.status)
            else:
                result = ExportResult(dropped=req.count, reason=attempt.reason or "export_failed",
                                      message=attempt.message, cause=attempt.status)
            if not self._settle(token, req.profiles, result):
                return

    def _send(self, req: Prepared, timeout: float) -> Attempt:
        started = self._clock()
        try:
            attempt = self.exporter.send(req, timeout)
        except Exception as exc:  # an unexpected failure is final: never retry a bug
            self._log_every("send", "otelprof: %s exporter failed sending", self.name, exc=True)
            attempt = Attempt(ok=False, retryable=False, message=repr(exc), status=type(exc).__name__)
        if attempt.ok:
            self._succeeded()
        elif attempt.reason != "shutdown":
            self._failed(attempt, started)
        return attempt

    # ------------------------------------------------------------ outages and recovery
    def _failed(self, attempt: Attempt, started: float) -> None:
        drained: Optional[_Drain] = None
        with self._cond:
            if attempt.retryable:  # (a final answer such as 400 is no outage)
                if self._outage is None:
                    self._outage = _Outage(started, attempt.cause)
                self._outage.cause = attempt.cause
            if self._drain is not None:  # failing again before the backlog was sent
                drained, self._drain = self._drain, None
        if drained is not None:
            self._log_recovered(drained)
        budget = self.exporter.retry_policy.retry_timeout
        if attempt.retryable and budget > 0:
            # at once, not after the retry budget: the user learns now that nothing arrives
            self._log_every("fail:" + (attempt.status or attempt.cause),
                            "otelprof: %s exporter could not deliver to %s: %s; retrying for up to %g s",
                            self.name, self.destination, attempt.message or attempt.status, budget)

    def _succeeded(self) -> None:
        self._lag_retries = 0
        with self._cond:
            outage, self._outage = self._outage, None
            if outage is not None:
                self._drain = _Drain(outage=max(0.0, self._clock() - outage.since), cause=outage.cause)
                self._cond.notify_all()

    def _log_recovered(self, drain: _Drain) -> None:
        self._log_every("recovered", "otelprof: %s exporter delivered %s queued profile(s) to %s after %.0f s of %s",
                        self.name, f"{drain.delivered:,}", self.destination, drain.outage, drain.cause)

    def _retry_wait(self, delay: float, failed: Attempt) -> Optional[float]:
        """Wait ``delay`` before a retry; None when cut short by shutdown.  A backend
        that refuses connections is probed every ``probe_interval``: the wait ends
        (returning the time waited) as soon as a probe connects."""
        answered = failed.retry_after is not None or failed.status.startswith("HTTP ")
        if answered:
            self._lag_retries = 0
        elif self._lag_retries > 0:
            # the retry a probe let through failed before reaching the backend (a client
            # whose connection state lags, e.g. gRPC's channel): try again one step later
            self._lag_retries -= 1
            step = min(self.probe_interval, delay)
            return step if self._sleep(step) else None
        if answered or self.exporter.probe(min(self.probe_interval, delay)) is not False:
            # the server answered (and may have said when), or it accepts connections: the whole wait
            return delay if self._sleep(delay) else None
        waited = 0.0
        while waited < delay:
            step = min(self.probe_interval, delay - waited)
            if not self._sleep(step):
                return None
            waited += step
            t0 = self._clock()
            if waited < delay and self.exporter.probe(min(self.probe_interval, delay - waited)):
                self._lag_retries = LAG_RETRIES
                return waited + max(0.0, self._clock() - t0)
            waited += max(0.0, self._clock() - t0)
        return waited

    def _sleep(self, seconds: float) -> bool:
        """Sleep between attempts; False when interrupted by abandonment."""
        if self._custom_wait is not None:
            return self._custom_wait(seconds) and not self._abandoned
        return not self._wake.wait(seconds)

    # ------------------------------------------------------------ flush / shutdown
    def wait_idle(self, deadline: Optional[float]) -> bool:
        """Wait until nothing is queued or in flight (``deadline``: ``time.monotonic()``)."""
        with self._cond:
            return self._wait_drained_locked(deadline)

    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Send everything queued now; True if done within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.urgent():
            return self.wait_idle(deadline)

    def close(self) -> None:
        """Accept nothing more; send what is queued without waiting for batches."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abandon(self) -> tuple[int, int]:
        """Give up on everything queued or in flight and count it as dropped
        (``shutdown``); the attempt in flight is interrupted, and its result, if it
        still comes, is ignored.  Returns ``(queued, in_flight)`` dropped."""
        with self._cond:
            queued = self._queue.clear()
            flight = list(self._flight.values())
            self._flight = {}
            self._in_flight = 0
            self._current = None
            self._closed = True
            self._abandoned = True
            self._cond.notify_all()
        self._wake.set()
        by: dict[str, int] = {}
        for p in [item for item, _prio in queued] + flight:
            label = priority_of(p).label
            by[label] = by.get(label, 0) + 1
        for label, n in by.items():
            self.stats.dropped("shutdown", n, exporter=self.name, priority=label)
        if flight:
            try:
                self.exporter.interrupt()
            except Exception:  # pragma: no cover - an exporter without a working interrupt
                pass
        return len(queued), len(flight)

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

    def after_fork(self) -> None:
        """In a forked child: empty queue, fresh lock, no thread; the exporter forgets
        the parent's connections."""
        self._init_state()
        hook = getattr(self.exporter, "after_fork", None)
        if hook is not None:
            try:
                hook()
            except Exception:  # pragma: no cover
                pass


