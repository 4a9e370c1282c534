"""One exporter's bounded queue and worker thread.

A channel takes built profiles from the pipeline's fan-out (``offer`` never blocks)
and delivers them with its own thread, so a dead backend stalls only its own
channel.  For a :class:`~.base.NetworkExporter` it batches (``batch_size``/
``batch_timeout``), splits or trims requests over ``max_request_bytes``, paces
uploads (``max_upload_rate``) and retries by the OTLP rules (:mod:`.retry`); a
plain exporter gets each profile as soon as it is built.

What happens to each profile is counted once in ``Stats`` under the channel's
exporter name.  The first failed attempt is logged at once with the reason and
the destination (retries are still to come); each drop reason is logged once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..profile import Profile
from ..stats import Stats
from ._worker import CpuMeter, QueueWorker, Urgency, untraced
from .base import ExportResult, NetworkExporter, Prepared
from .retry import Attempt, ByteRateLimiter, run_with_retry
from .settings import BatchSettings

__all__ = ["ExportChannel"]


class ExportChannel(QueueWorker):
    """One exporter's bounded queue and worker thread.  ``wait(seconds) -> bool``
    replaces the sleep between attempts (tests); ``clock`` drives upload pacing."""

    def __init__(
        self,
        exporter: Any,
        stats: Stats,
        *,
        batch: BatchSettings = BatchSettings(),
        wait: Optional[Callable[[float], bool]] = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._custom_wait = wait
        self._clock = clock
        self._init_state()

    def _init_state(self) -> None:
        self._init_queue()
        self._bytes = 0
        self._current: Optional[object] = None
        self._closed = False
        self._abandoned = False
        self._wake = threading.Event()
        self._limiter = ByteRateLimiter(self.max_upload_rate, clock=self._clock) if self.max_upload_rate > 0 else None

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

    def _hurried(self) -> bool:
        return self._urgency.level is not Urgency.NORMAL

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
            reason = result.reason or "export_failed"
            self._log_once("drop-" + reason, "otelprof: %s exporter dropped %d profile(s) (%s) for %s: %s",
                           self.name, result.dropped, reason, self.destination, result.message or "-")
        return True

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
                self._settle(token, len(batch), result)
            else:
                self._export_network(batch, token)
        self.stats.record("export_duration", time.monotonic() - started, self.name)

    def _export_network(self, batch: list[Profile], token: object) -> None:
        exporter: NetworkExporter = self.exporter
        try:
            requests, too_large = exporter.prepare(batch)
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
                if delay > 0 and not self._hurried() and not self._wait(delay):
                    self._drop_rest(token)
                    return
            attempt, _ = run_with_retry(
                lambda timeout: self._send(req, timeout), exporter.retry_policy, wait=self._wait,
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

    def _send(self, req: Prepared, timeout: float) -> Attempt:
        try:
            attempt = self.exporter.send(req, timeout)
        except Exception as exc:  # an unexpected failure is final: never retry a bug
            self._log_once("send", "otelprof: %s exporter failed sending", self.name, exc=True)
            return Attempt(ok=False, retryable=False, message=repr(exc), status=type(exc).__name__)
        budget = self.exporter.retry_policy.retry_timeout
        if not attempt.ok and attempt.retryable and budget > 0:
            # at once, not after the retry budget: the user learns now that nothing arrives
            self._log_once("attempt-failed", "otelprof: %s exporter could not deliver to %s: %s; retrying for up "
                           "to %g s", self.name, self.destination, attempt.message or attempt.status, budget)
        return attempt

    def _wait(self, seconds: float) -> bool:
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
