"""OpenTelemetry auto-instrumentation: ``opentelemetry-instrument`` loads these
through the ``opentelemetry_instrumentor`` entry points ``otelprof_django``,
``otelprof_flask`` and ``otelprof_starlette``; each can also be used by hand::

    OtelProfDjangoInstrumentor().instrument()
    OtelProfFlaskInstrumentor().instrument()
    OtelProfStarletteInstrumentor().instrument()

``instrument()`` takes no arguments: configuration comes from the environment
(``OTELPROF_*``, ``OTEL_*``), or from framework settings (Django
``settings.OTELPROF``, Flask ``app.config["OTELPROF_*"]``).  ``uninstrument()``
removes everything ``instrument()`` added.

* Django: ``ProfilingMiddleware`` goes into ``settings.MIDDLEWARE`` right after
  OpenTelemetry's middleware if it is there, else first.  The insert is done
  again at ``load_middleware`` time, so the result is the same whichever
  instrumentor runs first, and settings that are configured only later
  (``manage.py``) are covered.
* Flask: every ``Flask`` app created afterwards gets :class:`OtelProf`.
* Starlette (and FastAPI): when an app builds its middleware stack, the ASGI
  ``ProfilingMiddleware`` is inserted right inside OpenTelemetry's middleware if
  present, else outermost among the user middleware.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Any, Collection

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

__all__ = ["OtelProfDjangoInstrumentor", "OtelProfFlaskInstrumentor", "OtelProfStarletteInstrumentor"]

log = logging.getLogger("otelprof_middleware")

OTEL_DJANGO_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
_WRAPPED = "_otelprof_wrapped"


def _framework_missing(module: str) -> bool:
    try:
        __import__(module)
        return False
    except ImportError:
        log.debug("otelprof: %s is not installed; instrumentation skipped", module)
        return True


# ====================================================================== Django


def insert_django_middleware(middleware: list[str]) -> tuple[list[str], bool]:
    """``middleware`` with ours right after OpenTelemetry's (else first); True if changed."""
    from .django import MIDDLEWARE_PATH, MIDDLEWARE_PATHS

    mw = list(middleware)
    if any(m in MIDDLEWARE_PATHS for m in mw):
        return mw, False
    pos = mw.index(OTEL_DJANGO_MIDDLEWARE) + 1 if OTEL_DJANGO_MIDDLEWARE in mw else 0
    mw.insert(pos, MIDDLEWARE_PATH)
    return mw, True


class OtelProfDjangoInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds the profiling middleware to Django's ``MIDDLEWARE``."""

    _inserted = False
    _original_load: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("django >= 4.2",)

    def _instrument(self, **kwargs: Any) -> None:
        if _framework_missing("django"):
            return
        from django.core.handlers.base import BaseHandler

        self._try_insert()
        original = BaseHandler.load_middleware
        if getattr(original, _WRAPPED, False):
            return
        instrumentor = self

        @functools.wraps(original)
        def load_middleware(handler: Any, *args: Any, **kw: Any) -> Any:
            instrumentor._try_insert()
            return original(handler, *args, **kw)

        setattr(load_middleware, _WRAPPED, True)
        self._original_load = original
        BaseHandler.load_middleware = load_middleware  # type: ignore[method-assign]

    def _try_insert(self) -> None:
        """Insert into settings.MIDDLEWARE if the settings can be read (never raises)."""
        try:
            from django.conf import settings

            if not settings.configured:
                import os

                if not os.environ.get("DJANGO_SETTINGS_MODULE"):
                    return  # not yet: load_middleware will do it
            current = getattr(settings, "MIDDLEWARE", None)
            if current is None:
                return
            new, changed = insert_django_middleware(current)
            if changed:
                settings.MIDDLEWARE = new if isinstance(current, list) else type(current)(new)
                self._inserted = True
        except Exception:
            log.debug("otelprof: Django settings not readable yet", exc_info=True)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._original_load is not None:
            from django.core.handlers.base import BaseHandler

            BaseHandler.load_middleware = self._original_load  # type: ignore[method-assign]
            self._original_load = None
        if self._inserted:
            try:
                from django.conf import settings

                from .django import MIDDLEWARE_PATH

                current = settings.MIDDLEWARE
                if MIDDLEWARE_PATH in current:
                    new = [m for m in current if m != MIDDLEWARE_PATH]
                    settings.MIDDLEWARE = new if isinstance(current, list) else type(current)(new)
            except Exception:
                log.debug("otelprof: could not remove the Django middleware", exc_info=True)
            self._inserted = False


# ====================================================================== Flask


class OtelProfFlaskInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Every Flask app created after ``instrument()`` gets :class:`OtelProf`."""

    _original_init: Any = None
    _apps: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("flask >= 2.3",)

    def _instrument(self, **kwargs: Any) -> None:
        if _framework_missing("flask"):
            return
        import flask

        from .flask import OtelProf

        # Patch the base class itself: OpenTelemetry replaces ``flask.Flask`` by a
        # subclass whose __init__ calls this one, whichever instrumentor runs first.
        base = flask.app.Flask
        original = base.__init__
        if getattr(original, _WRAPPED, False):
            return
        apps = self._apps

        @functools.wraps(original)
        def __init__(app: Any, *args: Any, **kw: Any) -> None:
            original(app, *args, **kw)
            try:
                OtelProf(app)
                apps.add(app)
            except Exception:
                log.exception("otelprof: could not add profiling to Flask app %r", getattr(app, "name", app))

        setattr(__init__, _WRAPPED, True)
        self._original_init = original
        base.__init__ = __init__  # type: ignore[method-assign, assignment]

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._original_init is not None:
            import flask

            flask.app.Flask.__init__ = self._original_init  # type: ignore[method-assign]
            self._original_init = None
        from .flask import OtelProf

        for app in list(self._apps):
            OtelProf().teardown_app(app)
        self._apps = weakref.WeakSet()


# ====================================================================== Starlette / FastAPI


class OtelProfStarletteInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Starlette and FastAPI apps get the ASGI profiling middleware."""

    _patched: list[tuple[Any, Any]] = []
    _lock = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.37",)

    def _instrument(self, **kwargs: Any) -> None:
        if _framework_missing("starlette"):
            return
        from starlette.applications import Starlette  # the module attribute, not a replaced alias

        classes: list[Any] = [Starlette]
        try:
            # the real class: OpenTelemetry may have replaced ``fastapi.FastAPI`` by a subclass
            from fastapi.applications import FastAPI

            if "build_middleware_stack" in FastAPI.__dict__:
                classes.append(FastAPI)
        except ImportError:
            pass
        # patch the class that defines the method (an instrumentation may have replaced
        # the module attribute by a subclass)
        classes = [next(k for k in c.__mro__ if "build_middleware_stack" in k.__dict__) for c in classes]
        with self._lock:
            for cls in dict.fromkeys(classes):
                original = cls.__dict__["build_middleware_stack"]
                if getattr(original, _WRAPPED, False):
                    continue
                wrapper = _wrap_build_middleware_stack(original)
                cls.build_middleware_stack = wrapper
                self._patched.append((cls, original))

    def _uninstrument(self, **kwargs: Any) -> None:
        with self._lock:
            for cls, original in self._patched:
                cls.build_middleware_stack = original
            self._patched = []


def _is_otel_asgi_middleware(entry: Any) -> bool:
    cls = getattr(entry, "cls", None)
    return getattr(cls, "__module__", "").startswith("opentelemetry.instrumentation.")


def _wrap_build_middleware_stack(original: Any) -> Any:
    @functools.wraps(original)
    def build_middleware_stack(app: Any) -> Any:
        user = getattr(app, "user_middleware", None)
        try:
            from starlette.middleware import Middleware

            from .asgi import ProfilingMiddleware

            if user is None or any(getattr(m, "cls", None) is ProfilingMiddleware for m in user):
                return original(app)
            # user_middleware[0] is the outermost; go right inside OpenTelemetry's
            pos = 0
            for i, entry in enumerate(user):
                if _is_otel_asgi_middleware(entry):
                    pos = i + 1
            ours = Middleware(ProfilingMiddleware)  # type: ignore[arg-type]
            app.user_middleware = list(user[:pos]) + [ours] + list(user[pos:])
        except Exception:
            log.exception("otelprof: could not add profiling to the Starlette app; it runs unprofiled")
            return original(app)
        try:
            return original(app)
        finally:
            app.user_middleware = user  # the app's own list is left as it was

    setattr(build_middleware_stack, _WRAPPED, True)
    return build_middleware_stack
