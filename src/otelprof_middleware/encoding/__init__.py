"""Wire formats for :class:`~otelprof_middleware.profile.Profile`: pprof and OTLP Profiles."""

from .otlp import encode_otlp_request
from .pprof import encode_pprof

__all__ = ["encode_pprof", "encode_otlp_request"]
