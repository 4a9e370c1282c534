"""otelprof-middleware: trace-linked, per-request profiling for Python web apps.

    import otelprof_middleware as otelprof
    profiler = otelprof.Profiler(exporter="file", output_dir="profiles")
    with profiler.profile("nightly-import", tenant="a"):
        run_import()
"""

from ._version import __version__
from .config import Config, ConfigError
from .profile import Profile, SpanLink
from .profiler import Profiler, current_session, get_profiler, set_profiler
from .session import Session

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "Profile",
    "Profiler",
    "Session",
    "SpanLink",
    "current_session",
    "get_profiler",
    "set_profiler",
]
