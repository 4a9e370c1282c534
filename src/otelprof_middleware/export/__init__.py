"""Export: where finished profiles go.

* :mod:`.base` -- the interfaces (``Exporter``, ``NetworkExporter``, ``ExportResult``);
* :mod:`.registry` -- which exporter each ``exporter=`` name stands for;
* :mod:`.settings` -- the typed settings each component takes, built from ``Config``;
* :mod:`.pipeline` and :mod:`.channel` -- the bounded queues and worker threads;
  :mod:`.priority` -- which profiles go first and which make room when they are full;
* the exporters: :mod:`.file` (local folder), :mod:`.otlp_http`, :mod:`.otlp_grpc`,
  :mod:`.pyroscope` and :mod:`.console`; the in-memory one for tests is
  :mod:`otelprof_middleware.testing`;
* helpers: :mod:`.retry` (OTLP retry rules, upload pacing), :mod:`.resource`,
  :mod:`.sizing` (size estimate, trimming), :mod:`.metrics` (self-metrics),
  ``_http`` (the HTTP transport: one deadline per attempt, a cap on the answer) and
  ``_otlp`` (what the network exporters share).
"""

from .base import Exporter, ExportResult, NetworkExporter
from .pipeline import ExportPipeline
from .registry import create_exporters

__all__ = ["Exporter", "ExportResult", "ExportPipeline", "NetworkExporter", "create_exporters"]
