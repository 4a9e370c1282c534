"""Flask extension (public path): ``from otelprof_middleware.flask import OtelProf``."""

from .integrations.flask import OtelProf

__all__ = ["OtelProf"]
