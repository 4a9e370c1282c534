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

__all__ = ["SCOPE_NAME", "SCOPE_VERSION", "DEFAULT_SERVICE_NAME", "resource_attributes", "refresh_pid"]

#: the instrumentation scope of every profile we send (also the OTLP encoder's default)
SCOPE_NAME = "otelprof_middleware"
SCOPE_VERSION = __version__
#: what the OpenTelemetry SDKs call a service that set no name
DEFAULT_SERVICE_NAME = "unknown_service:python"

ResourceValue = Union[str, int]


def resource_attributes(service_name: str = DEFAULT_SERVICE_NAME,
                        extra: Optional[Mapping[str, str]] = None) -> dict[str, ResourceValue]:
    """The resource of this process: SDK, runtime, process and host facts, then
    ``extra`` (``OTEL_RESOURCE_ATTRIBUTES``), then ``service.name``."""
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
    attrs.update(extra or {})
    attrs["service.name"] = service_name
    return attrs


def refresh_pid(resource: MutableMapping[str, ResourceValue]) -> None:
    """After ``fork``: a resource built in the parent names this process instead."""
    if "process.pid" in resource:
        resource["process.pid"] = os.getpid()
