"""Public home of the ASGI middleware: ``from otelprof_middleware.asgi import ProfilingMiddleware``."""

from .integrations.asgi import ProfilingMiddleware

__all__ = ["ProfilingMiddleware"]
