"""Flask integration: ``OtelProf(app)`` or ``prof = OtelProf(); prof.init_app(app)``.

    app.config["OTELPROF_PROBABILITY"] = 0.01
    OtelProf(app)

Options come from keyword arguments, then ``app.config["OTELPROF_<OPTION>"]``
keys, then the environment (``OTELPROF_*``, standard ``OTEL_*``).  The app's
``wsgi_app`` is wrapped by the WSGI :class:`ProfilingMiddleware` (the profile
ends with the response body, not at ``teardown_request``), and a
``before_request`` hook, kept after OpenTelemetry's own, picks up the Flask span
and the route template (``url_rule``) for ``http.route``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from flask import request as _request

from ..config import Config
from ..profiler import Profiler
from .lifecycle import RequestProfiling
from .wsgi import ENVIRON_KEY, ProfilingMiddleware

__all__ = ["OtelProf", "settings_from_flask_config"]

CONFIG_PREFIX = "OTELPROF_"
_EXTENSION_KEY = "otelprof"


def settings_from_flask_config(config: Any) -> dict[str, Any]:
    """``{"probability": 0.5}`` from ``{"OTELPROF_PROBABILITY": 0.5}`` (other keys ignored)."""
    return {k[len(CONFIG_PREFIX):].lower(): v for k, v in dict(config).items()
            if isinstance(k, str) and k.startswith(CONFIG_PREFIX)}


def framework_excluded_urls(framework: str, options: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Honour ``OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS`` (before ``OTEL_PYTHON_EXCLUDED_URLS``)
    when no ``excluded_urls`` was given explicitly."""
    var = f"OTEL_PYTHON_{framework}_EXCLUDED_URLS"
    if ("excluded_urls" not in options and "excluded_urls" not in settings
            and not os.environ.get("OTELPROF_EXCLUDED_URLS") and os.environ.get(var, "").strip()):
        options = dict(options)
        options["excluded_urls"] = os.environ[var]
    return options


class OtelProf:
    """The Flask extension."""

    def __init__(self, app: Any = None, *, profiler: Optional[Profiler] = None, **options: Any) -> None:
        if profiler is not None and options:
            raise TypeError("pass either profiler= or options, not both (the profiler carries its own config)")
        self._profiler = profiler
        self._options = options
        self._apps: list[Any] = []
        if app is not None:
            self.init_app(app)

    # ------------------------------------------------------------------ set-up
    def init_app(self, app: Any) -> None:
        """Install profiling on ``app`` (idempotent per app)."""
        if getattr(app, "extensions", {}).get(_EXTENSION_KEY) is not None:
            return
        rp = RequestProfiling(profiler=self._make_profiler(app))
        state = _AppState(app, rp)
        app.wsgi_app = state.middleware
        app.before_request(state.before_request)
        app.teardown_request(state.teardown_request)
        app.extensions[_EXTENSION_KEY] = state
        self._apps.append(app)

    def _make_profiler(self, app: Any) -> Optional[Profiler]:
        if self._profiler is not None:
            return self._profiler
        settings = settings_from_flask_config(app.config)
        options = framework_excluded_urls("FLASK", self._options, settings)
        if not options and not settings:
            return None  # the process-wide default profiler, configured from the environment
        return Profiler(Config.load(options, settings=settings, settings_name="app.config"))

    def teardown_app(self, app: Any) -> bool:
        """Undo :meth:`init_app` (used by the auto-instrumentor's ``uninstrument``).
        True if everything could be removed."""
        state = getattr(app, "extensions", {}).pop(_EXTENSION_KEY, None)
        if state is None:
            return True
        return state.remove()

    @staticmethod
    def state(app: Any) -> Optional["_AppState"]:
        return getattr(app, "extensions", {}).get(_EXTENSION_KEY)

    @property
    def profiler(self) -> Optional[Profiler]:
        if self._profiler is not None:
            return self._profiler
        for app in self._apps:
            st = self.state(app)
            if st is not None:
                return st.request_profiling.profiler
        return None


class _AppState:
    """What :meth:`OtelProf.init_app` installed on one app."""

    def __init__(self, app: Any, rp: RequestProfiling) -> None:
        self.app = app
        self.request_profiling = rp
        self.original_wsgi_app = app.wsgi_app
        self.middleware = _FlaskMiddleware(app.wsgi_app, self)
        self._ordered = False
        self._order_lock = threading.Lock()

    # hooks --------------------------------------------------------------
    def before_request(self) -> None:
        try:
            request = _request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
            handle = request.environ.get(ENVIRON_KEY)
            if handle is None:
                return None
            if handle.session is not None:
                handle.pick_up_span()
            rule = request.url_rule
            if rule is not None:
                handle.set_route(rule.rule)
        except Exception:
            pass
        return None

    def teardown_request(self, exc: Optional[BaseException]) -> None:
        # Flask turned an unhandled exception into its 500 page: mark the profile
        if exc is None:
            return
        try:
            handle = _request.environ.get(ENVIRON_KEY)
            if handle is not None and handle.error is None:
                handle.error = exc
        except Exception:
            pass

    def ensure_hook_last(self) -> None:
        """Keep our ``before_request`` hook after the others (OpenTelemetry's may have
        been registered after ours), so the Flask span is current when it runs."""
        if self._ordered:
            return
        with self._order_lock:
            if self._ordered:
                return
            try:
                funcs = self.app.before_request_funcs.get(None)
                if funcs and funcs[-1] != self.before_request and self.before_request in funcs:
                    reordered = [f for f in funcs if f != self.before_request] + [self.before_request]
                    self.app.before_request_funcs[None] = reordered  # one atomic assignment
            except Exception:
                pass
            self._ordered = True

    def remove(self) -> bool:
        ok = True
        app = self.app
        try:
            if app.wsgi_app is self.middleware:
                app.wsgi_app = self.original_wsgi_app
            else:
                ok = False  # someone wrapped it after us; leave a pass-through
                self.middleware.disabled = True
            for registry, fn in ((app.before_request_funcs, self.before_request),
                                 (app.teardown_request_funcs, self.teardown_request)):
                funcs = registry.get(None)
                if funcs and fn in funcs:
                    registry[None] = [f for f in funcs if f != fn]
        except Exception:
            ok = False
        return ok


class _FlaskMiddleware(ProfilingMiddleware):
    """The WSGI middleware, plus the one-time hook ordering check."""

    def __init__(self, app: Any, state: _AppState) -> None:
        super().__init__(app, request_profiling=state.request_profiling)
        self._state = state
        self.disabled = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.disabled:
            return self.app(environ, start_response)
        if not self._state._ordered:
            self._state.ensure_hook_last()
        return super().__call__(environ, start_response)
