"""Retry and throttling rules of the OTLP specification, and upload-rate smoothing.

* HTTP: retry only 429, 502, 503, 504 and transport errors (connection refused or
  reset, timeouts); honour ``Retry-After`` (delta-seconds or an HTTP-date); every
  other status is final (``400`` = bad data: never retried).
* gRPC: retry CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
  DATA_LOSS, and RESOURCE_EXHAUSTED only when the status carries ``RetryInfo``;
  ``RetryInfo.retry_delay`` is honoured.
* Without a server-given delay: exponential backoff with jitter, from
  ``retry_initial_backoff`` doubling up to ``retry_max_backoff``.
* Each attempt is bounded by ``export_timeout`` as a whole (connect, send and every
  read of the answer: the exporters enforce one deadline per attempt); all attempts
  and waits of one batch by ``retry_timeout``, the attempt in flight included (a
  retry gets only what is left of the budget; the first attempt always gets
  ``export_timeout``).  A server delay that ends after the budget gives up at once
  (there is no point in waiting for it).
* After an attempt that timed out, the time it waited counts towards the backoff
  (a backend that hangs is tried about once per ``export_timeout``, not less often).
* A response carrying ``partial_success`` is final: never retried.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

__all__ = [
    "Attempt",
    "RetryPolicy",
    "ByteRateLimiter",
    "RETRYABLE_HTTP_STATUSES",
    "classify_http_status",
    "interrupted",
    "parse_retry_after",
    "run_with_retry",
]

RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Attempt:
    """The outcome of one request.

    ``ok``: the server took it (``rejected`` items may still have been refused,
    a partial success).  Otherwise ``retryable`` tells whether to try again
    (after ``retry_after`` seconds if the server said so) and ``reason`` is the
    drop reason if not."""

    ok: bool
    retryable: bool = False
    retry_after: Optional[float] = None
    rejected: int = 0
    message: str = ""
    reason: str = "export_failed"
    status: str = ""  # "HTTP 503", "UNAVAILABLE", "ConnectError" ... for logs
    partial_reason: str = "rejected"  # drop reason of the ``rejected`` items of a success
    timed_out: bool = False  # no complete answer before the attempt's deadline

    @property
    def cause(self) -> str:
        """A short description of a failure for log lines ("connection refused", "HTTP 503")."""
        text = self.message.lower()
        if "refused" in text:
            return "connection refused"
        if self.timed_out:
            return "no answer in time"
        if self.status.startswith("HTTP ") or self.status.startswith("gRPC "):
            return self.status
        return self.status or "failure"


def interrupted() -> Attempt:
    """The outcome of an attempt cut short by shutdown (never retried; dropped ``shutdown``)."""
    return Attempt(ok=False, retryable=False, reason="shutdown", status="Interrupted",
                   message="interrupted by shutdown")


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.
    None when absent or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        seconds = float(value)
        if seconds >= 0:
            return seconds
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        import datetime

        when = when.replace(tzinfo=datetime.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def classify_http_status(status: int, headers: Mapping[str, str], where: str = "") -> Attempt:
    """An :class:`Attempt` for a non-2xx HTTP answer."""
    text = f"HTTP {status}" + (f" from {where}" if where else "")
    if status in RETRYABLE_HTTP_STATUSES:
        ra = None
        for k, v in headers.items():
            if k.lower() == "retry-after":
                ra = parse_retry_after(v)
                break
        return Attempt(ok=False, retryable=True, retry_after=ra, message=text, status=f"HTTP {status}")
    return Attempt(ok=False, retryable=False, message=text, status=f"HTTP {status}")


class RetryPolicy:
    """Timing of retries for one exporter (built from ``Config`` by
    :func:`otelprof_middleware.export.settings.retry_policy`)."""

    def __init__(
        self,
        *,
        export_timeout: float = 10.0,
        retry_timeout: float = 60.0,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        multiplier: float = 2.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.export_timeout = export_timeout
        self.retry_timeout = retry_timeout
        self.initial_backoff = initial_backoff
        self.max_backoff = max(max_backoff, initial_backoff)
        self.multiplier = multiplier
        self._rng = rng or random.Random()

    def backoff(self, retry_number: int) -> float:
        """Delay before retry ``retry_number`` (0 = the first retry): exponential with
        "equal jitter" (between half and all of the exponential value)."""
        base = min(self.max_backoff, self.initial_backoff * (self.multiplier ** retry_number))
        return base / 2 + self._rng.uniform(0, base / 2)


#: a retry is not started with less than this left of the budget
MIN_ATTEMPT = 0.05


def run_with_retry(
    send: Callable[[float], Attempt],
    policy: RetryPolicy,
    *,
    wait: Callable[[float, Attempt], Optional[float]],
    on_attempt: Optional[Callable[[int], None]] = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Attempt, int]:
    """Call ``send(timeout)`` until it succeeds, fails for good, or the budget is spent.

    ``timeout`` is the attempt's whole time: ``export_timeout``, or less for a retry
    when less is left of ``retry_timeout``.  ``wait(seconds, failed_attempt)`` waits
    before a retry and returns the seconds it waited: fewer when it ended early
    because the backend answers again, None when it was cut short (shutdown; then
    the last attempt is returned as is).  Returns the final attempt and the number
    of attempts made."""
    spent = 0.0  # time in attempts + time waited (== elapsed time when ``wait`` really sleeps)
    attempts = 0
    retries = 0
    while True:
        timeout = policy.export_timeout if not attempts else min(policy.export_timeout, policy.retry_timeout - spent)
        if on_attempt is not None:
            on_attempt(attempts)
        attempts += 1
        t0 = clock()
        result = send(timeout)
        took = clock() - t0
        spent += took
        if result.ok or not result.retryable:
            return result, attempts
        if result.retry_after is not None:
            delay = result.retry_after
        else:
            delay = policy.backoff(retries)
            if result.timed_out:  # the attempt itself was a wait
                delay = max(0.0, delay - took)
        retries += 1
        remaining = policy.retry_timeout - spent
        if delay + MIN_ATTEMPT >= remaining:
            result.retryable = False
            result.message = (result.message + "; " if result.message else "") + (
                f"retry budget ({policy.retry_timeout:g} s) exhausted after {attempts} attempt(s)")
            return result, attempts
        waited = wait(delay, result)
        if waited is None:
            return result, attempts
        spent += waited


class ByteRateLimiter:
    """Upload pacing: a token bucket of ``rate`` bytes/s holding at most one second of bytes.

    ``delay(n)`` takes ``n`` bytes and returns how long to wait before sending them;
    a request larger than the bucket goes into debt, so later ones wait for it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = float(rate)
        self._tokens = float(rate)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def delay(self, nbytes: int) -> float:
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.rate
