"""Flask integration: ``OtelProf(app)`` or ``prof = OtelProf(); prof.init_app(app)``.

    app.config["OTELPROF_PROBABILITY"] = 0.01
    OtelProf(app)

Options come from keyword arguments, then ``app.config["OTELPROF_<OPTION>"]``
keys, then the environment (``OTELPROF_*``, standard ``OTEL_*``).  The app's
``wsgi_app`` is wrapped by the WSGI :class:`~.wsgi.ProfilingMiddleware` (the
profile ends with the response body, not at ``teardown_request``); nothing is
added to Flask's per-request hooks.  For a profiled request the Flask span
(OpenTelemetry) and the route template (``url_rule``) are read at
``start_response``, still inside the request context; the template of a watched
request is matched with the app's URL map only when the policy needs it (an armed
route).  An exception Flask turns into its 500 page is recorded through the
``got_request_exception`` signal.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import got_request_exception
from flask import request as _request

from ..profiler import Profiler
from .lifecycle import RequestProfiling, specialise
from .settings import profiler_from_settings, settings_from_prefixed
from .wsgi import ENVIRON_KEY, ProfilingMiddleware, WSGIRequest

__all__ = ["OtelProf"]

CONFIG_PREFIX = "OTELPROF_"
_EXTENSION_KEY = "otelprof"


def url_rule_of(app: Any) -> Any:
    """``route_of(environ)`` for a Flask app: the rule its URL map matches (no request
    context needed)."""

    def route_of(environ: dict[str, Any]) -> Optional[str]:
        try:
            rule, _args = app.url_map.bind_to_environ(environ).match(return_rule=True)
        except Exception:  # no match (404, 405, redirect): no template
            return None
        return getattr(rule, "rule", None)

    return route_of


class FlaskRequest(WSGIRequest):
    """A WSGI request served by a Flask app."""

    def profiled_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        rule = _request.url_rule if _request else None  # start_response runs inside the request context
        if rule is not None:
            self.set_route(rule.rule)
        return super().profiled_headers(headers)


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
        profiler = self._profiler or profiler_from_settings("FLASK", self._options,
                                                            settings_from_prefixed(app.config, CONFIG_PREFIX),
                                                            "app.config")
        state = _AppState(app, RequestProfiling(profiler))
        app.extensions[_EXTENSION_KEY] = state
        self._apps.append(app)

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
        self.middleware = _FlaskMiddleware(app.wsgi_app, rp, app)
        app.wsgi_app = self.middleware
        got_request_exception.connect(self.on_exception, app)

    def on_exception(self, sender: Any, exception: BaseException, **extra: Any) -> None:
        """Flask turned an unhandled exception into its 500 page: record it."""
        try:
            handle = _request.environ.get(ENVIRON_KEY)
            if handle is not None:
                handle.set_error(exception)
        except Exception:
            self.request_profiling.report_failure("flask-exception", "otelprof: could not record a Flask error")

    def remove(self) -> bool:
        ok = True
        app = self.app
        got_request_exception.disconnect(self.on_exception, app)
        if app.wsgi_app is self.middleware:
            app.wsgi_app = self.original_wsgi_app
        else:
            ok = False  # someone wrapped it after us: leave a pass-through (a profiler that is off)
            self.middleware.request_profiling = RequestProfiling(Profiler(enabled=False, exporter="none"))
        return ok


class _FlaskMiddleware(ProfilingMiddleware):
    """The WSGI middleware with Flask's request description."""

    request_class = FlaskRequest

    def __init__(self, wsgi_app: Any, rp: RequestProfiling, app: Any) -> None:
        super().__init__(wsgi_app, request_profiling=rp, route_of=url_rule_of(app))
        # the header without a secret is honoured while the app runs in debug mode
        # (read per request: ``flask run --debug`` sets it after the app was made)
        self.request_class = specialise(self.request_class, debug_of=lambda: bool(app.debug),
                                        debug_flag="Flask app.debug")
