"""Retry and throttling rules of the OTLP specification, and upload-rate smoothing.

* HTTP: retry only 429, 502, 503, 504 and transport errors (connection refused or
  reset, timeouts); honour ``Retry-After`` (delta-seconds or an HTTP-date); every
  other status is final (``400`` = bad data: never retried).
* gRPC: retry CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
  DATA_LOSS, and RESOURCE_EXHAUSTED only when the status carries ``RetryInfo``;
  ``RetryInfo.retry_delay`` is honoured.
* Without a server-given delay: exponential backoff with jitter, from
  ``retry_initial_backoff`` doubling up to ``retry_max_backoff``.
* Each attempt is bounded by ``export_timeout``; all attempts and waits of one
  batch by ``retry_timeout``.  A server delay that ends after the budget gives up
  at once (there is no point in waiting for it).
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


def run_with_retry(
    send: Callable[[float], Attempt],
    policy: RetryPolicy,
    *,
    wait: Callable[[float], bool],
    on_attempt: Optional[Callable[[int], None]] = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Attempt, int]:
    """Call ``send(timeout)`` until it succeeds, fails for good, or the budget is spent.

    ``wait(seconds)`` sleeps between attempts and returns False when the wait was
    cut short (shutdown): then the last attempt is returned as is.  Returns the
    final attempt and the number of attempts made."""
    spent = 0.0  # time in attempts + time waited (== elapsed time when ``wait`` really sleeps)
    attempts = 0
    retries = 0
    while True:
        if on_attempt is not None:
            on_attempt(attempts)
        attempts += 1
        t0 = clock()
        result = send(policy.export_timeout)
        spent += clock() - t0
        if result.ok or not result.retryable:
            return result, attempts
        if result.retry_after is not None:
            delay = result.retry_after
        else:
            delay = policy.backoff(retries)
        retries += 1
        remaining = policy.retry_timeout - spent
        if delay >= remaining:
            result.retryable = False
            result.message = (result.message + "; " if result.message else "") + (
                f"retry budget ({policy.retry_timeout:g} s) exhausted after {attempts} attempt(s)")
            return result, attempts
        if not wait(delay):
            return result, attempts
        spent += delay


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
