"""The exporter interfaces, the resource description, request sizing and the exporter factory.

Two kinds of exporters plug into the pipeline:

* a plain :class:`Exporter` (file, console, your own): ``export(profiles) -> ExportResult``
  is called with each profile as soon as it is built;
* a :class:`NetworkExporter` (OTLP/HTTP, OTLP/gRPC, Pyroscope): the pipeline batches
  profiles (``batch_size``/``batch_timeout``), asks it to :meth:`~NetworkExporter.prepare`
  requests no larger than ``max_request_bytes`` and sends each with
  :meth:`~NetworkExporter.send`, retrying by the OTLP rules
  (:mod:`~otelprof_middleware.export.retry`) and pacing uploads to ``max_upload_rate``.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, Union

from .._version import __version__
from ..profile import Profile, ProfileBuilder, clean_text
from .retry import Attempt, RetryPolicy, run_with_retry

if TYPE_CHECKING:
    from ..config import Config
    from ..stats import Stats

__all__ = [
    "Exporter",
    "ExportResult",
    "NetworkExporter",
    "Prepared",
    "create_exporters",
    "resource_attributes",
    "estimate_size",
    "trim_profile",
]

log = logging.getLogger("otelprof_middleware")

SCOPE_NAME = "otelprof_middleware"
SCOPE_VERSION = __version__


@dataclass
class ExportResult:
    """What happened to a batch: ``exported`` profiles arrived; ``dropped`` did not,
    for ``reason`` (a ``Stats`` drop reason)."""

    exported: int = 0
    dropped: int = 0
    reason: str = ""
    message: str = ""


class Exporter(Protocol):
    name: str

    def export(self, profiles: Sequence["Profile"]) -> ExportResult: ...

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
    ``wrap(profiles, state) -> Prepared`` and ``send(prepared, timeout) -> Attempt``."""

    name = "network"
    batching = True

    def __init__(self, config: "Config") -> None:
        self.max_request_bytes = config.max_request_bytes
        self.retry_policy = RetryPolicy.from_config(config)
        self.export_timeout = config.export_timeout

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


def estimate_size(profile: Profile) -> int:
    """A cheap estimate of a profile's size in bytes (for ``max_queue_bytes``)."""
    size = 256 + 24 * len(profile.samples) + 12 * len(profile.locations)
    for fn in profile.functions:
        size += 24 + len(fn.name) + len(fn.filename)
    for st in profile.stacks:
        size += 8 + 2 * len(st)
    for s in profile.samples:
        size += len(s.thread_name) // 4  # names are interned; a little per sample
    return size


def trim_profile(profile: Profile, keep_ratio: float) -> Optional[Profile]:
    """A copy of ``profile`` with only its heaviest samples (about ``keep_ratio`` of
    them) and the functions/locations/stacks they use.  None if nothing can go."""
    n = len(profile.samples)
    keep = int(n * keep_ratio)
    if keep >= n:
        keep = n - 1
    if keep < 1:
        return None
    ranked = sorted(profile.samples, key=lambda s: (s.cpu_ns, s.count, s.wall_ns), reverse=True)[:keep]
    attrs = dict(profile.attributes)
    attrs["otelprof.truncated"] = "max_request_bytes"
    out = dataclasses.replace(profile, functions=[], locations=[], stacks=[], samples=[],
                              attributes=attrs, truncated="max_request_bytes")
    b = ProfileBuilder(out)
    fn_map: dict[int, int] = {}
    loc_map: dict[int, int] = {}
    for s in ranked:
        locs = []
        for li in profile.stacks[s.stack_index]:
            nl = loc_map.get(li)
            if nl is None:
                loc = profile.locations[li]
                nf = fn_map.get(loc.function_index)
                if nf is None:
                    fn = profile.functions[loc.function_index]
                    nf = fn_map[loc.function_index] = b.function(fn.name, fn.filename, fn.start_line)
                nl = loc_map[li] = b.location(nf, loc.line)
            locs.append(nl)
        b.add(b.stack(locs), s.thread_name, s.count, s.cpu_ns, s.wall_ns)
    return out


def resource_attributes(config: "Config") -> dict[str, Union[str, int]]:
    """The OpenTelemetry resource of this process (plain key/value, as Pyroscope reads it).

    Lowest precedence first: what we detect (semantic-convention names:
    ``telemetry.sdk.*`` describe this library, which produces the profiles;
    ``process.*``, ``host.name``), the resource of the OpenTelemetry SDK's tracer
    provider when the application set one up (so profiles carry the
    ``service.version``, ``deployment.environment.name`` ... of its traces), then
    ``resource_attributes`` / ``OTEL_RESOURCE_ATTRIBUTES``, then ``service.name``.
    ``deployment.environment`` (deprecated by semantic conventions) also fills
    ``deployment.environment.name`` when that is missing.  Strings are cleaned of
    lone surrogates (one bad environment variable must not fail every export)."""
    attrs: dict[str, Union[str, int]] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": SCOPE_NAME,
        "telemetry.sdk.version": __version__,
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.pid": os.getpid(),
        "process.executable.name": os.path.basename(sys.executable or "python"),
    }
    try:
        attrs["host.name"] = socket.gethostname()
    except OSError:
        pass
    sdk = _tracer_provider_resource()
    attrs.update((k, v) for k, v in sdk.items() if not k.startswith("telemetry.sdk.") and k != "service.name")
    attrs.update(config.resource_attributes)
    service = config.service_name
    sdk_service = str(sdk.get("service.name", ""))
    if service.startswith("unknown_service") and sdk_service and not sdk_service.startswith("unknown_service"):
        service = sdk_service  # the application named itself only in its SDK setup
    attrs["service.name"] = service
    if "deployment.environment" in attrs and "deployment.environment.name" not in attrs:
        attrs["deployment.environment.name"] = attrs["deployment.environment"]
    return {clean_text(k): clean_text(v) if isinstance(v, str) else v for k, v in attrs.items()}


def _tracer_provider_resource() -> dict[str, Union[str, int]]:
    """Scalar attributes of the global OpenTelemetry SDK tracer provider's resource, if any."""
    try:
        from opentelemetry import trace

        resource = getattr(trace.get_tracer_provider(), "resource", None)
        items = dict(getattr(resource, "attributes", None) or {})
    except Exception:  # no SDK, or an unusual provider: nothing to add
        return {}
    out: dict[str, Union[str, int]] = {}
    for k, v in items.items():
        if isinstance(v, bool):
            out[str(k)] = str(v).lower()
        elif isinstance(v, (str, int)):
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = repr(v)
    return out


def create_exporters(config: "Config", stats: Optional["Stats"] = None) -> list[Any]:
    """The exporters named by ``config.exporter`` (``otlp`` honours ``protocol``)."""
    from .console import ConsoleExporter
    from .file import FileExporter

    out: list[Any] = []
    for name in config.exporter:
        if name == "file":
            out.append(FileExporter(config))
        elif name == "otlp":
            if config.protocol == "grpc":
                from .otlp_grpc import OTLPGRPCExporter

                out.append(OTLPGRPCExporter(config))
            else:
                from .otlp_http import OTLPHTTPExporter

                out.append(OTLPHTTPExporter(config))
        elif name == "pyroscope":
            from .pyroscope import PyroscopeExporter

            out.append(PyroscopeExporter(config))
        elif name == "console":
            out.append(ConsoleExporter())
        elif name == "none":
            continue
        else:
            raise NotImplementedError(f"exporter {name!r} is not available in this version")
    return out


def _sleep_then_go_on(seconds: float) -> bool:
    """The blocking wait of a synchronous export: sleep, then go on retrying."""
    time.sleep(seconds)
    return True
