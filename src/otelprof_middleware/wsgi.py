"""WSGI middleware (public path): ``from otelprof_middleware.wsgi import ProfilingMiddleware``."""

from .integrations.wsgi import ProfilingMiddleware

__all__ = ["ProfilingMiddleware"]
