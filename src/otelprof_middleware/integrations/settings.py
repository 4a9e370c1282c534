"""Building a profiler from framework settings (Django ``settings.OTELPROF``, Flask
``app.config["OTELPROF_*"]``).  No framework imports: every extra installs alone."""

from __future__ import annotations

import os
from typing import Any

from ..config import Config
from ..profiler import Profiler, get_profiler, shared_profiler

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
                           settings_name: str) -> Profiler:
    """The profiler for keyword ``options`` and framework ``settings`` (named
    ``settings_name`` in errors and warnings): the process's profiler, configured
    by them if it is the first (:func:`~otelprof_middleware.profiler.shared_profiler`);
    with neither, the process's profiler as it is (configured from the environment).
    A bad option raises ``ConfigError``."""
    options = framework_excluded_urls(framework, options, settings)
    if not options and not settings:
        return get_profiler()
    return shared_profiler(Config.load(options, settings=settings, settings_name=settings_name), by=settings_name)
