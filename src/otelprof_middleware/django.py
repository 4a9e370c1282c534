"""Django middleware (public path): add ``"otelprof_middleware.django.ProfilingMiddleware"``
to ``MIDDLEWARE`` and configure it with ``OTELPROF = {...}`` in settings;
``get_profiler()`` returns the profiler it uses."""

from .integrations.django import ProfilingMiddleware, get_profiler

__all__ = ["ProfilingMiddleware", "get_profiler"]
