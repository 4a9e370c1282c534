"""Which exporter each name stands for: the name -> factory table.

The ``exporter`` option names exporters (``file``, ``otlp``, ``pyroscope``,
``console``, ``none``); :func:`create_exporters` builds them, each from the typed
settings it needs (:mod:`.settings`).  An optional dependency is imported inside its
factory (grpcio for ``protocol="grpc"``; httpx and the encoders too, so importing
the package stays cheap): a missing extra fails when that exporter is asked for,
with a message that says what to install.

To add an exporter, write a class (:class:`~.base.Exporter` or
:class:`~.base.NetworkExporter`) and an entry in :data:`EXPORTERS`; or hand the
object to ``Profiler(exporters=[...])`` without registering anything.

:func:`describe_destination` writes the start-up line that says where profiles go
and where each deciding value came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .base import Exporter
from .settings import otlp_target, pyroscope_target, resource, retry_policy

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["EXPORTERS", "Registered", "create_exporter", "create_exporters", "describe_destination"]


@dataclass(frozen=True)
class Registered:
    """One named exporter: how to build it from a ``Config``, where it sends profiles
    (for the start-up line) and the options that decide that."""

    factory: Callable[["Config"], Exporter]
    destination: Callable[["Config", Any], str]
    options: tuple[str, ...] = ()


def _file(config: "Config") -> Exporter:
    from .file import FileExporter

    return FileExporter(config)


def _otlp(config: "Config") -> Exporter:
    target = otlp_target(config)
    common: dict[str, Any] = dict(resource=resource(config), max_request_bytes=config.max_request_bytes,
                                  retry_policy=retry_policy(config))
    if target.protocol == "grpc":
        from .otlp_grpc import OTLPGRPCExporter  # needs grpcio, an optional extra

        return OTLPGRPCExporter(target, **common)
    from .otlp_http import OTLPHTTPExporter

    return OTLPHTTPExporter(target, **common)


def _pyroscope(config: "Config") -> Exporter:
    from .pyroscope import PyroscopeExporter

    return PyroscopeExporter(pyroscope_target(config), max_request_bytes=config.max_request_bytes,
                             retry_policy=retry_policy(config), resource=resource(config))


def _console(config: "Config") -> Exporter:
    from .console import ConsoleExporter

    return ConsoleExporter()


def _display_path(path: str) -> str:
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return full if rel.startswith("..") else os.path.join(".", rel)


def _own_destination(config: "Config", exporter: Any) -> str:
    return str(getattr(exporter, "destination", "") or type(exporter).__name__)


EXPORTERS: dict[str, Registered] = {
    "file": Registered(_file, lambda config, _e: _display_path(config.output_dir), ("output_dir",)),
    "otlp": Registered(_otlp, _own_destination, ("endpoint", "protocol")),
    "pyroscope": Registered(_pyroscope, _own_destination, ("pyroscope_endpoint",)),
    "console": Registered(_console, _own_destination),
}


def create_exporter(name: str, config: "Config") -> Exporter:
    """The exporter registered as ``name``, built from ``config``."""
    try:
        entry = EXPORTERS[name]
    except KeyError:
        raise ValueError(f"no exporter is registered as {name!r}; known: {', '.join(sorted(EXPORTERS))}") from None
    return entry.factory(config)


def create_exporters(config: "Config") -> list[Exporter]:
    """The exporters named by ``config.exporter`` (``none`` names nothing)."""
    return [create_exporter(name, config) for name in config.exporter if name != "none"]


def describe_destination(config: "Config", exporter: Any, *, chosen_by: str = "option") -> str:
    """Where ``exporter`` sends profiles and where the deciding values came from, e.g.
    ``./profiles (file exporter; exporter: default; output_dir: default)``.
    ``chosen_by``: ``"option"`` (named by the ``exporter`` option), ``"name"`` (named
    in ``Profiler(exporters=[...])``) or ``"object"`` (an object given there)."""
    name = str(getattr(exporter, "name", type(exporter).__name__))
    entry = EXPORTERS.get(name)
    if chosen_by == "object" or entry is None:
        return f"{_own_destination(config, exporter)} ({name} exporter, given in exporters=)"
    label = f"{name} exporter" + (" over " + config.protocol if name == "otlp" else "")
    origin = [f"exporter: {config.source_of('exporter')}"] if chosen_by == "option" else ["named in exporters="]
    origin += [f"{option}: {config.source_of(option)}" for option in entry.options]
    return f"{entry.destination(config, exporter)} ({label}; {'; '.join(origin)})"
