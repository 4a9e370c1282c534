"""Shared fixtures for the whole test suite.

* ``profiler_factory`` -- build :class:`otelprof_middleware.Profiler` objects whose
  files go under ``tmp_path``; every profiler made is shut down after the test.
* ``profile_collector`` -- add an in-memory exporter
  (``otelprof_middleware.testing.InMemoryProfileExporter``) to a profiler and wait
  for the profiles it receives (no encoding, no files).
* ``otel_tracing`` -- an OpenTelemetry SDK ``TracerProvider`` with an
  ``InMemorySpanExporter``.  OpenTelemetry's global provider can be set only once
  per process, so the provider is a module-level singleton; the exporter is
  cleared before and after each test.  Yields ``(tracer, exporter)``.

The ``tests`` folder itself is on ``sys.path`` (pytest's rootdir-less
``prepend`` import mode), so helpers import as ``from helpers.otlp_receiver import
OTLPReceiver``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # make ``import helpers...`` work whatever the import mode
    sys.path.insert(0, _TESTS_DIR)

# Variables that would change the defaults a test expects (exporter choice, endpoint,
# service name).  Tests that want them pass ``env=`` to ``Config.load`` or use monkeypatch.
_ISOLATED_ENV_PREFIXES = ("OTELPROF_", "OTEL_EXPORTER_OTLP_", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                          "OTEL_SDK_DISABLED")


@pytest.fixture(autouse=True)
def _isolate_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_ISOLATED_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _fresh_process_profiler() -> Iterator[None]:
    """Each test starts without a process profiler (``get_profiler()``): a middleware
    given options makes it, and must not hand it to the next test."""
    from otelprof_middleware import set_profiler

    set_profiler(None)
    yield
    set_profiler(None)


# --------------------------------------------------------------------------- profilers


@pytest.fixture
def profiler_factory(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``make(**options) -> Profiler``.  Defaults: ``exporter="file"`` and
    ``output_dir=tmp_path/"profiles"`` unless given (or ``exporters=``).  All
    profilers made are shut down (timeout 5 s) after the test, and the process
    default is reset."""
    from otelprof_middleware import Profiler, set_profiler

    made: list[Any] = []

    def make(config: Any = None, **options: Any) -> Any:
        if config is None and "exporters" not in options:
            options.setdefault("exporter", "file")
            options.setdefault("output_dir", str(tmp_path / "profiles"))
        p = Profiler(config, **options)
        made.append(p)
        return p

    yield make

    for p in made:
        try:
            p.shutdown(timeout=5)
        except Exception:  # pragma: no cover - a broken shutdown must not hide the test result
            pass
    if made:
        set_profiler(None)


@pytest.fixture
def profile_collector() -> Callable[[Any], Any]:
    """``install(profiler) -> InMemoryProfileExporter``: adds an in-memory exporter to
    the profiler (next to the configured ones), before its first profile."""
    from otelprof_middleware.testing import InMemoryProfileExporter

    def install(profiler: Any) -> InMemoryProfileExporter:
        exp = InMemoryProfileExporter()
        profiler.add_exporter(exp)
        return exp

    return install


# --------------------------------------------------------------------------- OpenTelemetry

_OTEL: Optional[tuple[Any, Any, Any]] = None  # (provider, tracer, exporter)
_OTEL_LOCK = threading.Lock()


def _otel_singleton() -> tuple[Any, Any, Any]:
    global _OTEL
    with _OTEL_LOCK:
        if _OTEL is None:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            exporter = InMemorySpanExporter()
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                provider = current  # someone set an SDK provider already: add to it
            else:
                provider = TracerProvider()
                trace.set_tracer_provider(provider)
                if trace.get_tracer_provider() is not provider:
                    raise RuntimeError("a non-SDK global TracerProvider was set before the otel_tracing fixture")
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            tracer = trace.get_tracer("otelprof-tests")
            _OTEL = (provider, tracer, exporter)
        return _OTEL


@pytest.fixture
def otel_tracing() -> Iterator[tuple[Any, Any]]:
    """``(tracer, exporter)``: the process-wide SDK tracer and an InMemorySpanExporter
    cleared before and after the test (``exporter.get_finished_spans()``)."""
    _provider, tracer, exporter = _otel_singleton()
    exporter.clear()
    yield tracer, exporter
    exporter.clear()
