"""The exporter interface, the resource description, and the exporter factory."""

from __future__ import annotations

import os
import platform
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence, Union

from .._version import __version__

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile
    from ..stats import Stats

__all__ = ["Exporter", "ExportResult", "create_exporters", "resource_attributes"]

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


def resource_attributes(config: "Config") -> dict[str, Union[str, int]]:
    """The OpenTelemetry resource of this process (plain key/value, as Pyroscope reads it)."""
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
    attrs.update(config.resource_attributes)
    attrs["service.name"] = config.service_name
    return attrs


def create_exporters(config: "Config", stats: "Stats") -> list[Exporter]:
    """The exporters named by ``config.exporter``."""
    from .console import ConsoleExporter
    from .file import FileExporter
    from .otlp_http import OTLPHTTPExporter

    out: list[Exporter] = []
    for name in config.exporter:
        if name == "file":
            out.append(FileExporter(config))
        elif name == "otlp":
            out.append(OTLPHTTPExporter(config))
        elif name == "console":
            out.append(ConsoleExporter())
        elif name == "none":
            continue
        else:
            raise NotImplementedError(f"exporter {name!r} is not available in this version")
    return out
