"""Django middleware (public path): add ``"otelprof_middleware.django.ProfilingMiddleware"``
to ``MIDDLEWARE`` and configure it with ``OTELPROF = {...}`` in settings."""

from .integrations.django import ProfilingMiddleware

__all__ = ["ProfilingMiddleware"]
