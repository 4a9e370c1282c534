"""Export: a bounded queue and a worker thread per profiler, and the exporters
(file, OTLP/HTTP, console) that turn finished profiles into bytes somewhere."""

from .base import Exporter, ExportResult, create_exporters
from .pipeline import ExportPipeline

__all__ = ["Exporter", "ExportResult", "ExportPipeline", "create_exporters"]
