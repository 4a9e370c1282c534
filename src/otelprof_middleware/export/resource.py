"""The OpenTelemetry resource of this process and the instrumentation scope of our profiles.

OTLP requests carry the resource; Pyroscope reads the same attributes as labels.
``process.pid`` is refreshed after ``fork`` by the exporters that keep a resource.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Mapping, MutableMapping, Optional, Union

from .._version import __version__
from ..profile import clean_text

__all__ = ["SCOPE_NAME", "SCOPE_VERSION", "DEFAULT_SERVICE_NAME", "resource_attributes", "refresh_pid"]

#: the instrumentation scope of every profile we send (also the OTLP encoder's default)
SCOPE_NAME = "otelprof_middleware"
SCOPE_VERSION = __version__
#: what the OpenTelemetry SDKs call a service that set no name
DEFAULT_SERVICE_NAME = "unknown_service:python"

ResourceValue = Union[str, int]


def resource_attributes(service_name: str = DEFAULT_SERVICE_NAME,
                        extra: Optional[Mapping[str, str]] = None) -> dict[str, ResourceValue]:
    """The resource of this process, lowest precedence first: what we detect
    (semantic-convention names: ``telemetry.sdk.*`` describe this library, which
    produces the profiles; ``process.*``, ``host.name``), the resource of the
    OpenTelemetry SDK's tracer provider when the application set one up (so profiles
    carry the ``service.version``, ``deployment.environment.name`` ... of its traces),
    then ``extra`` (``OTEL_RESOURCE_ATTRIBUTES``), then ``service.name`` (the SDK's,
    when ours is only the default).  ``deployment.environment`` (deprecated by the
    semantic conventions) also fills ``deployment.environment.name``.  Strings are
    cleaned of lone surrogates: one bad environment variable must not fail every export."""
    attrs: dict[str, ResourceValue] = {
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
    attrs.update(extra or {})
    sdk_service = str(sdk.get("service.name", ""))
    if service_name.startswith("unknown_service") and sdk_service and not sdk_service.startswith("unknown_service"):
        service_name = sdk_service  # the application named itself only in its SDK setup
    attrs["service.name"] = service_name
    if "deployment.environment" in attrs and "deployment.environment.name" not in attrs:
        attrs["deployment.environment.name"] = attrs["deployment.environment"]
    return {clean_text(k): clean_text(v) if isinstance(v, str) else v for k, v in attrs.items()}


def _tracer_provider_resource() -> dict[str, ResourceValue]:
    """Scalar attributes of the global OpenTelemetry SDK tracer provider's resource, if any."""
    try:
        from opentelemetry import trace

        resource = getattr(trace.get_tracer_provider(), "resource", None)
        items = dict(getattr(resource, "attributes", None) or {})
    except Exception:  # no SDK, or an unusual provider: nothing to add
        return {}
    out: dict[str, ResourceValue] = {}
    for k, v in items.items():
        if isinstance(v, bool):
            out[str(k)] = str(v).lower()
        elif isinstance(v, (str, int)):
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = repr(v)
    return out


def refresh_pid(resource: MutableMapping[str, ResourceValue]) -> None:
    """After ``fork``: a resource built in the parent names this process instead."""
    if "process.pid" in resource:
        resource["process.pid"] = os.getpid()
