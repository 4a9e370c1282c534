"""Building a profiler from framework settings (Django ``settings.OTELPROF``, Flask
``app.config["OTELPROF_*"]``).  No framework imports: every extra installs alone."""

from __future__ import annotations

import os
from typing import Any, Optional

from ..config import Config
from ..profiler import Profiler

__all__ = ["settings_from_prefixed", "framework_excluded_urls", "profiler_from_settings"]


def settings_from_prefixed(config: Any, prefix: str = "OTELPROF_") -> dict[str, Any]:
    """``{"probability": 0.5}`` from ``{"OTELPROF_PROBABILITY": 0.5}`` (other keys ignored)."""
    return {k[len(prefix):].lower(): v for k, v in dict(config).items()
            if isinstance(k, str) and k.startswith(prefix)}


def framework_excluded_urls(framework: str, options: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Honour ``OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS`` (before ``OTEL_PYTHON_EXCLUDED_URLS``)
    when no ``excluded_urls`` was given explicitly."""
    var = f"OTEL_PYTHON_{framework}_EXCLUDED_URLS"
    if ("excluded_urls" not in options and "excluded_urls" not in settings
            and not os.environ.get("OTELPROF_EXCLUDED_URLS") and os.environ.get(var, "").strip()):
        options = dict(options)
        options["excluded_urls"] = os.environ[var]
    return options


def profiler_from_settings(framework: str, options: dict[str, Any], settings: dict[str, Any],
                           settings_name: str) -> Optional[Profiler]:
    """A profiler for keyword ``options`` and framework ``settings`` (named
    ``settings_name`` in errors); None when both are empty: then the process-wide
    default profiler, configured from the environment, is used."""
    options = framework_excluded_urls(framework, options, settings)
    if not options and not settings:
        return None
    return Profiler(Config.load(options, settings=settings, settings_name=settings_name))
