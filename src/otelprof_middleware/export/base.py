"""The exporter interfaces: what the export pipeline calls.

Two kinds of exporters plug into the pipeline:

* a plain :class:`Exporter` (file, console, in-memory, your own): ``export(profiles)
  -> ExportResult`` is called with each profile as soon as it is built;
* a :class:`NetworkExporter` (OTLP/HTTP, OTLP/gRPC, Pyroscope): the pipeline batches
  profiles (``batch_size``/``batch_timeout``), asks it to :meth:`~NetworkExporter.prepare`
  requests no larger than ``max_request_bytes`` and sends each with
  :meth:`~NetworkExporter.send`, retrying by the OTLP rules
  (:mod:`~otelprof_middleware.export.retry`) and pacing uploads to ``max_upload_rate``.

Which exporter a name stands for is in :mod:`.registry`; this module knows no
implementation.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from ..profile import Profile
from .retry import Attempt, RetryPolicy, run_with_retry
from .sizing import trim_profile

__all__ = ["Exporter", "ExportResult", "NetworkExporter", "Prepared"]


@dataclass
class ExportResult:
    """What happened to a batch: ``exported`` profiles arrived; ``dropped`` did not,
    for ``reason`` (a ``Stats`` drop reason)."""

    exported: int = 0
    dropped: int = 0
    reason: str = ""
    message: str = ""
    cause: str = ""  # a short, stable name of what failed ("HTTP 400", "ConnectError"), for log keys


class Exporter(Protocol):
    """A plain exporter.  ``name`` keys its counters in ``Profiler.stats()["exporters"]``.
    Optional: ``destination`` (where profiles go, for the start-up log line) and
    ``after_fork()`` (forget what belongs to the parent process)."""

    name: str

    def export(self, profiles: Sequence[Profile]) -> ExportResult: ...

    def shutdown(self) -> None: ...


@dataclass
class Prepared:
    """One wire request of a network exporter."""

    profiles: list[Profile]
    body: bytes  # what goes on the wire (compressed if the exporter compresses)
    size: int  # uncompressed size, the one ``max_request_bytes`` limits
    parts: list[Any] = field(default_factory=list)  # exporter-specific (e.g. one per profile)
    sent_parts: int = 0  # parts already delivered (a retry resumes after them)
    trimmed: int = 0  # profiles cut down to fit

    @property
    def count(self) -> int:
        return len(self.profiles)


class NetworkExporter:
    """Base of the exporters that send requests over the network.

    Subclasses implement ``encode(profiles) -> (uncompressed_size, state)``,
    ``wrap(profiles, state) -> Prepared`` and ``send(prepared, timeout) -> Attempt``
    (``timeout``: the attempt's whole time, connect to last byte of the answer), and
    set ``destination`` (the endpoint, without credentials, for log lines).
    Optional: ``probe_address()`` (where a TCP connect tells whether the backend is
    reachable again, for fast recovery) and ``interrupt()`` (shutdown: end the
    attempt in flight now)."""

    name = "network"
    destination = ""

    def __init__(self, *, max_request_bytes: int = 4 * 1024 * 1024,
                 retry_policy: Optional[RetryPolicy] = None) -> None:
        self.max_request_bytes = max_request_bytes
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()

    # ---------------------------------------------------------------- subclass API
    def encode(self, profiles: Sequence[Profile]) -> tuple[int, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, prepared: Prepared, timeout: float) -> Attempt:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_fork(self) -> None:
        """Forget connections inherited from the parent process (never close them: the
        parent still uses the sockets)."""

    def shutdown(self) -> None:
        pass

    def interrupt(self) -> None:
        """Shutdown: end the attempt in flight as soon as possible (it then returns a
        ``shutdown`` :class:`Attempt`), and fail later ones at once."""

    def probe_address(self) -> Optional[tuple[str, int]]:
        """``(host, port)`` a request connects to first; None: cannot be probed."""
        return None

    def probe(self, timeout: float) -> Optional[bool]:
        """Does the backend accept a TCP connection (within ``timeout``)?  None when
        this exporter cannot be probed."""
        address = self.probe_address()
        if address is None:
            return None
        try:
            socket.create_connection(address, timeout=timeout).close()
            return True
        except OSError:
            return False

    # ---------------------------------------------------------------- sizing
    def prepare(self, profiles: Sequence[Profile]) -> tuple[list[Prepared], int]:
        """Requests for ``profiles``, each at most ``max_request_bytes`` uncompressed.
        A batch that is too big is split; a single profile that is too big is trimmed
        (its lightest samples removed) and, if that fails, dropped.  Returns the
        requests and the number of profiles dropped as ``too_large``."""
        out: list[Prepared] = []
        too_large = 0
        cap = self.max_request_bytes
        pending: list[list[Profile]] = [list(profiles)]
        while pending:
            group = pending.pop(0)
            if not group:
                continue
            size, state = self.encode(group)
            if size <= cap:
                out.append(self.wrap(group, state))
                continue
            if len(group) > 1:
                mid = len(group) // 2
                pending[0:0] = [group[:mid], group[mid:]]
                continue
            fitted = self._trim_to_fit(group[0], size, cap)
            if fitted is None:
                too_large += 1
            else:
                out.append(fitted)
        return out, too_large

    def _trim_to_fit(self, profile: Profile, size: int, cap: int) -> Optional[Prepared]:
        current = profile
        for _ in range(6):
            smaller = trim_profile(current, max(0.01, 0.85 * cap / max(size, 1)))
            if smaller is None:
                return None
            current = smaller
            size, state = self.encode([current])
            if size <= cap:
                prepared = self.wrap([current], state)
                prepared.trimmed = 1
                return prepared
        return None

    # ---------------------------------------------------------------- standalone use
    def export(self, profiles: Sequence[Profile]) -> ExportResult:
        """Export synchronously (with retries, blocking): for use outside the pipeline."""
        prepared, too_large = self.prepare(profiles)
        result = ExportResult(dropped=too_large, reason="too_large" if too_large else "")
        for req in prepared:
            attempt, _n = run_with_retry(lambda t: self.send(req, t), self.retry_policy,
                                         wait=_sleep_then_go_on)
            if attempt.ok:
                rejected = min(req.count, attempt.rejected)
                result.exported += req.count - rejected
                if rejected:
                    result.dropped += rejected
                    result.reason = "rejected"
            else:
                result.dropped += req.count
                result.reason = attempt.reason
                result.message = attempt.message
        return result


def _sleep_then_go_on(seconds: float, _failed: Attempt) -> float:
    """The blocking wait of a synchronous export: sleep, then go on retrying."""
    time.sleep(seconds)
    return seconds
