"""Django integration: add ``"otelprof_middleware.django.ProfilingMiddleware"`` to
``MIDDLEWARE`` (right after OpenTelemetry's middleware if you list it, else first)
and configure it with one settings dict::

    OTELPROF = {"probability": 0.01, "header_secret": "s3cret", "exporter": "otlp"}

Option names are the same as everywhere else; ``should_profile`` may be a dotted
path.  Without ``OTELPROF`` the process-wide profiler configured from the
environment is used.  Only Django is imported here (a ``[django]``-only install
works).

The middleware is sync- and async-capable: Django runs it in the handler's own
mode, with no adapter thread hop.  ``StreamingHttpResponse`` bodies (sync and
async iterators) are covered until they end; ``FileResponse`` until the server
closes it.  Under ASGI, sync views that Django runs through ``sync_to_async``
are attributed to the request; under WSGI, ``async def`` views (run by
``async_to_sync`` in a helper thread's event loop) too, as a task (see
:mod:`otelprof_middleware.integrations.threads`).  ``http.route`` comes from the
resolver's route pattern, as in the OpenTelemetry Django instrumentation.  An
exception Django turns into its 500 page is recorded by ``process_exception``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional

from ..config import ConfigError
from ..policy import RequestInfo
from ..profiler import Profiler
from ._http import environ_key, full_url
from .lifecycle import RequestHandle, RequestProfiling
from .settings import profiler_from_settings

__all__ = ["ProfilingMiddleware", "MIDDLEWARE_PATH", "get_profiler", "request_profiling_from_settings"]

MIDDLEWARE_PATH = "otelprof_middleware.django.ProfilingMiddleware"
#: every spelling of our middleware in MIDDLEWARE
MIDDLEWARE_PATHS = (MIDDLEWARE_PATH, "otelprof_middleware.integrations.django.ProfilingMiddleware")
_REQUEST_ATTR = "_otelprof_handle"

try:  # asgiref >= 3.8 / Django >= 5.0
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
except ImportError:  # pragma: no cover - older asgiref
    from asyncio import iscoroutinefunction  # type: ignore[assignment]

    def markcoroutinefunction(func: Any) -> Any:  # type: ignore[misc]
        # what asgiref does: the marker asyncio.iscoroutinefunction() looks for
        func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
        return func


# ---------------------------------------------------------------------- configuration

_cache_lock = threading.Lock()
_cache: Optional[tuple[Any, RequestProfiling]] = None  # (settings value it was built from, rp)


def request_profiling_from_settings() -> RequestProfiling:
    """The :class:`RequestProfiling` for ``settings.OTELPROF`` (one per settings value)."""
    global _cache
    from django.conf import settings

    raw = getattr(settings, "OTELPROF", None)
    with _cache_lock:
        if _cache is not None and _cache[0] is raw:
            return _cache[1]
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError("OTELPROF", raw, "must be a dict of options, e.g. {'probability': 0.01}", "settings")
        rp = RequestProfiling(profiler_from_settings("DJANGO", {}, dict(raw or {}), "settings.OTELPROF"))
        _cache = (raw, rp)
        return rp


def get_profiler() -> Profiler:
    """The profiler the Django middleware uses (the process's profiler, configured by
    ``settings.OTELPROF`` if it is the first configuration): for ``stats()``,
    ``enable_window()`` and ``policy.state()`` in your views.  Raises ``ConfigError``
    for an invalid ``OTELPROF``."""
    return request_profiling_from_settings().profiler


def _django_debug() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "DEBUG", False))


def _route(request: Any) -> Optional[str]:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    return route or None


def _otel_middleware_inside() -> bool:
    """True when OpenTelemetry's Django middleware is listed after ours (it runs inside
    ours, so its span appears only after our entry); True when unsure."""
    try:
        from django.conf import settings

        listed = list(getattr(settings, "MIDDLEWARE", None) or ())
        ours = [i for i, m in enumerate(listed) if m in MIDDLEWARE_PATHS]
        if not ours:
            return True
        return any(str(m).startswith("opentelemetry.") for m in listed[ours[0] + 1:])
    except Exception:
        return True


class DjangoRequest(RequestHandle):
    """One Django request, described from ``request.META`` on demand."""

    def __init__(self, rp: RequestProfiling, request: Any) -> None:
        self.rp = rp
        self.source = request
        self.thread_id = threading.get_ident()

    @property
    def request(self) -> Any:
        """The Django request (None once the request ended)."""
        return self.source

    def describe(self) -> RequestInfo:
        request = self.request
        get = request.META.get
        path = request.path or "/"

        def url() -> str:  # not request.build_absolute_uri(): it validates ALLOWED_HOSTS and may raise
            scheme = "https" if get("wsgi.url_scheme") == "https" or request.is_secure() else "http"
            return full_url(scheme, get("HTTP_HOST"), get("SERVER_NAME"), get("SERVER_PORT"), path,
                            get("QUERY_STRING"))

        return RequestInfo(method=request.method or "GET", path=path, header=lambda name: get(environ_key(name)),
                           url_builder=url, route_resolver=self.resolve_route, debug=_django_debug,
                           debug_flag="Django settings.DEBUG")

    def resolve_route(self) -> Optional[str]:
        route = _route(self.request)
        if route is None:
            from django.urls import Resolver404, resolve

            try:
                route = resolve(self.request.path_info, getattr(self.request, "urlconf", None)).route
            except Resolver404:
                return None
        return route or None

    def respond(self, response: Any) -> Any:
        """The response is there: status, route, ``X-Profile-Id``; the request ends now,
        or with its streamed body."""
        try:
            self.status = int(response.status_code)
            if self.session is not None:
                self.set_route(_route(self.request))
                for name, value in self.response_headers(response.has_header):
                    response[name] = value
            if getattr(response, "streaming", False):
                _cover_streaming(self, response)
            else:
                self.finish()
        except Exception:
            self.rp.report_failure("django-response", "otelprof: could not read a Django response")
            self.finish()
        return response


class AsyncDjangoRequest(DjangoRequest):
    """A request Django handles in async mode (ASGI): its task is what a promotion attaches."""

    def __init__(self, rp: RequestProfiling, request: Any) -> None:
        super().__init__(rp, request)
        self.task = asyncio.current_task()


# ---------------------------------------------------------------------- middleware


class ProfilingMiddleware:
    """Django middleware (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.request_profiling = request_profiling_from_settings()
        self._header_key = environ_key(self.request_profiling.config.header)
        self.async_mode = iscoroutinefunction(get_response)
        self.request_class = AsyncDjangoRequest if self.async_mode else DjangoRequest
        if self.async_mode:
            markcoroutinefunction(self)
        if _otel_middleware_inside():
            # the span appears inside us: pick it up when the view is about to run
            # (process_view must match the handler's mode, or Django wraps it in sync_to_async)
            self.process_view = self._pick_up_span_async if self.async_mode else self._pick_up_span

    # ---------------------------------------------------------- request
    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        handle = self._begin(request)
        if handle is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            handle.finish(error=exc)
            raise
        return handle.respond(response)

    async def __acall__(self, request: Any) -> Any:
        handle = self._begin(request)
        if handle is None:
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            handle.finish(error=exc)
            raise
        return handle.respond(response)

    def _begin(self, request: Any) -> Optional[DjangoRequest]:
        """The request's handle if it is profiled or watched, else None (never raises)."""
        rp = self.request_profiling
        try:
            meta = request.META
            traceparent = meta.get("HTTP_TRACEPARENT")
            verdict, span = rp.screen(meta.get(self._header_key), traceparent)
            if not verdict:
                return None
            handle = self.request_class(rp, request)
            if not handle.open(verdict, span, traceparent):
                return None
            setattr(request, _REQUEST_ATTR, handle)
            return handle
        except Exception:
            rp.report_failure("django-begin", "otelprof: could not read the Django request; it runs unprofiled")
            return None

    # ---------------------------------------------------------- hooks
    def _pick_up_span(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        handle = getattr(request, _REQUEST_ATTR, None)
        if handle is not None and (handle.session is not None or handle.light is not None) and handle.span is None:
            try:
                handle.pick_up_span()  # our middleware sits outside OpenTelemetry's
            except Exception:
                self.request_profiling.report_failure("django-view", "otelprof: could not read the span")
        return None

    async def _pick_up_span_async(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        return self._pick_up_span(request, view_func, view_args, view_kwargs)

    def process_exception(self, request: Any, exception: Exception) -> None:
        handle = getattr(request, _REQUEST_ATTR, None)
        if handle is not None:
            handle.set_error(exception)
        return None  # Django goes on to produce its normal 500 response


def _cover_streaming(handle: RequestHandle, response: Any) -> None:
    """End the profile when the streamed body ends (or the response is closed)."""
    closers = getattr(response, "_resource_closers", None)  # Django's list of close() callbacks
    if closers is not None:
        closers.append(handle.finish)  # backstop: client went away, body never iterated
    if getattr(response, "file_to_stream", None) is not None:
        # FileResponse: the WSGI server may use wsgi.file_wrapper and never iterate
        # streaming_content; the profile ends when the server closes the response.
        if closers is None:
            handle.finish()
        return
    if getattr(response, "is_async", False):
        response.streaming_content = _aiter_profiled(response.streaming_content, handle)
    else:
        response.streaming_content = _iter_profiled(response.streaming_content, handle)


def _follow_body(handle: RequestHandle) -> None:
    """The body may be consumed elsewhere than the view ran (under ASGI: the handler's
    task, or a ``sync_to_async(list)`` thread for a sync iterator): sample that too."""
    session = handle.session
    try:
        if session is not None and not session.finished:
            session.attach_current()
    except Exception:
        handle.rp.report_failure("django-body", "otelprof: could not follow a streamed body")


def _iter_profiled(content: Iterable[bytes], handle: RequestHandle) -> Iterator[bytes]:
    error: Optional[BaseException] = None
    _follow_body(handle)
    try:
        for chunk in content:
            yield chunk
    except Exception as exc:
        error = exc
        raise
    finally:
        handle.finish(error=error)


async def _aiter_profiled(content: AsyncIterator[bytes], handle: RequestHandle) -> AsyncIterator[bytes]:
    error: Optional[BaseException] = None
    _follow_body(handle)
    try:
        async for chunk in content:
            yield chunk
    except Exception as exc:
        error = exc
        raise
    finally:
        handle.finish(error=error)
