"""What the build worker (:mod:`.pipeline`) and the export channels (:mod:`.channel`) share.

* :class:`QueueWorker`: a queue (a :class:`~.priority.TieredQueue`: highest
  priority first) drained by one lazily started thread, under one condition, and
  waiting until it is drained;
* :class:`Urgency`: how soon queued work must go out, one named state per worker;
* :class:`CpuMeter`: each worker thread reports its CPU to :mod:`~otelprof_middleware.overhead`;
* :class:`untraced`: exports run with OpenTelemetry instrumentation suppressed, so
  an instrumented httpx or gRPC client creates no spans for them.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from typing import Any, Iterator, Optional

from .._safety import LogOnce, log
from ..overhead import add_worker_cpu
from .priority import TieredQueue

__all__ = ["QueueWorker", "Urgency", "UrgencyState", "CpuMeter", "untraced"]


class Urgency(enum.IntEnum):
    """How soon a worker must send what it has queued (the highest level asked for wins)."""

    #: wait to fill a batch (``batch_timeout``) or linger for more sessions; pace uploads
    NORMAL = 0
    #: a profile whose id was promised to a client is waiting: no lingering
    PROMPT = 1
    #: ``force_flush`` or ``shutdown`` is in progress: everything goes now, unpaced
    FLUSH = 2


class UrgencyState:
    """Who asks for which :class:`Urgency` right now.  Asks are counted (two flushes
    may overlap) and guarded by the owning worker's lock."""

    __slots__ = ("_asks",)

    def __init__(self) -> None:
        self._asks = [0] * len(Urgency)

    def ask(self, level: Urgency) -> None:
        self._asks[level] += 1

    def withdraw(self, level: Urgency) -> None:
        self._asks[level] = max(0, self._asks[level] - 1)

    @property
    def level(self) -> Urgency:
        for level in reversed(Urgency):
            if self._asks[level]:
                return level
        return Urgency.NORMAL


class QueueWorker:
    """A queue drained by one thread under ``_cond``; problems are logged once per
    kind (the counters keep the totals)."""

    _cond: threading.Condition
    _queue: TieredQueue
    _in_flight: int
    _thread: Optional[threading.Thread]
    _urgency: UrgencyState

    def __init__(self) -> None:
        self._log_once = LogOnce(log)

    def _init_queue(self) -> None:
        """Fresh lock, queue and urgency, no thread: at start and in a forked child."""
        self._cond = threading.Condition(threading.Lock())
        self._queue = TieredQueue()
        self._in_flight = 0
        self._thread = None
        self._urgency = UrgencyState()

    @contextlib.contextmanager
    def urgent(self, level: Urgency = Urgency.FLUSH) -> Iterator[None]:
        """While inside, queued work goes out at ``level`` (``FLUSH``: no batch wait,
        no lingering, no pacing)."""
        with self._cond:
            self._urgency.ask(level)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._urgency.withdraw(level)

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


class CpuMeter:
    """Reports the CPU time a worker thread used since the last call."""

    def __init__(self) -> None:
        self.last = time.thread_time_ns()

    def tick(self) -> None:
        now = time.thread_time_ns()
        add_worker_cpu(now - self.last)
        self.last = now


class untraced:
    """Context manager: OpenTelemetry instrumentations (httpx, grpc ...) create no
    spans inside.  Our own exports must never be traced."""

    def __enter__(self) -> "untraced":
        self._token = None
        try:
            from opentelemetry import context

            try:
                from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as key
            except ImportError:  # pragma: no cover - very old API
                key = "suppress_instrumentation"
            self._token = context.attach(context.set_value(key, True))
        except Exception:
            self._token = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            try:
                from opentelemetry import context

                context.detach(self._token)
            except Exception:
                pass
