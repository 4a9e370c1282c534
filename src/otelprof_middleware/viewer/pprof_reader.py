"""The viewer's pprof reader, kept as an import path: the reader lives in
:mod:`otelprof_middleware.store.pprof` (bounded by :class:`~otelprof_middleware.store.pprof.Limits`)."""

from __future__ import annotations

from ..store.pprof import (
    DEFAULT_LIMITS,
    Limits,
    PprofError,
    PprofFunction,
    PprofLimitError,
    PprofProfile,
    PprofSample,
    read_pprof,
)

__all__ = ["PprofError", "PprofLimitError", "PprofProfile", "PprofFunction", "PprofSample", "read_pprof",
           "Limits", "DEFAULT_LIMITS"]
