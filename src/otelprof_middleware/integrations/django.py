"""Django integration: add ``"otelprof_middleware.django.ProfilingMiddleware"`` to
``MIDDLEWARE`` (right after OpenTelemetry's middleware if you list it, else first)
and configure it with one settings dict::

    OTELPROF = {"probability": 0.01, "header_secret": "s3cret", "exporter": "otlp"}

Option names are the same as everywhere else; ``should_profile`` may be a dotted
path.  Without ``OTELPROF`` the process-wide profiler configured from the
environment is used.

The middleware is sync- and async-capable: Django runs it in the handler's own
mode, with no adapter thread hop.  ``StreamingHttpResponse`` bodies (sync and
async iterators) are covered until they end; ``FileResponse`` until the server
closes it.  Under ASGI, sync views that Django runs through ``sync_to_async``
are attributed to the request (the thread-pool hook of
:mod:`otelprof_middleware.integrations.threads`).  ``http.route`` comes from the
resolver's route pattern, as in the OpenTelemetry Django instrumentation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional

from ..config import Config
from ..policy import RequestInfo
from ..profiler import Profiler
from .lifecycle import RequestHandle, RequestProfiling

__all__ = ["ProfilingMiddleware", "MIDDLEWARE_PATH", "request_profiling_from_settings"]

MIDDLEWARE_PATH = "otelprof_middleware.django.ProfilingMiddleware"
#: every spelling of our middleware in MIDDLEWARE
MIDDLEWARE_PATHS = (MIDDLEWARE_PATH, "otelprof_middleware.integrations.django.ProfilingMiddleware")
_REQUEST_ATTR = "_otelprof_handle"
_SAFE = "/;=,:@!$&'()*+~"

try:  # asgiref >= 3.8 / Django >= 5.0
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
except ImportError:  # pragma: no cover - older asgiref
    from asyncio import iscoroutinefunction  # type: ignore[assignment]

    def markcoroutinefunction(func: Any) -> Any:  # type: ignore[misc]
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
        from .flask import framework_excluded_urls

        if raw is not None and not isinstance(raw, dict):
            from ..config import ConfigError

            raise ConfigError("OTELPROF", raw, "must be a dict of options, e.g. {'probability': 0.01}", "settings")
        settings_map = dict(raw or {})
        options = framework_excluded_urls("DJANGO", {}, settings_map)
        if not settings_map and not options:
            rp = RequestProfiling()  # the process-wide default profiler (environment)
        else:
            rp = RequestProfiling(profiler=Profiler(Config.load(options, settings=settings_map,
                                                                settings_name="settings.OTELPROF")))
        _cache = (raw, rp)
        return rp


def _request_info(request: Any) -> RequestInfo:
    meta = request.META
    get = meta.get
    path = request.path or "/"

    def header(name: str) -> Optional[str]:
        return get("HTTP_" + name.upper().replace("-", "_"))

    # not request.build_absolute_uri(): it validates ALLOWED_HOSTS and may raise
    try:
        from urllib.parse import quote

        scheme = "https" if get("wsgi.url_scheme") == "https" or request.is_secure() else "http"
        host = get("HTTP_HOST") or f"{get('SERVER_NAME', 'localhost')}:{get('SERVER_PORT', '')}".rstrip(":")
        url = f"{scheme}://{host}{quote(path, safe=_SAFE)}"
        qs = get("QUERY_STRING")
        if qs:
            url += "?" + qs
    except Exception:
        url = path
    return RequestInfo(method=request.method or "GET", path=path, url=url, header=header)


def _route(request: Any) -> Optional[str]:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    return route or None


# ---------------------------------------------------------------------- middleware


class ProfilingMiddleware:
    """Django middleware (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.request_profiling = request_profiling_from_settings()
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
            # process_view must match the handler's mode, or Django wraps it in sync_to_async
            self.process_view = self._process_view_async  # type: ignore[method-assign, assignment]
        from . import threads

        threads.install()

    # ---------------------------------------------------------- request
    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        handle = self._begin(request)
        if handle is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:  # only when DEBUG_PROPAGATE_EXCEPTIONS or a broken handler
            handle.finish(error=exc)
            raise
        return self._respond(handle, request, response)

    async def __acall__(self, request: Any) -> Any:
        handle = self._begin(request)
        if handle is None:
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            handle.finish(error=exc)
            raise
        return self._respond(handle, request, response)

    def _begin(self, request: Any) -> Optional[RequestHandle]:
        """The request's handle if it is profiled, else None (never raises)."""
        try:
            handle = self.request_profiling.begin(_request_info(request),
                                                  traceparent=request.META.get("HTTP_TRACEPARENT"))
            setattr(request, _REQUEST_ATTR, handle)
            return handle if handle.watched else None
        except Exception:
            return None

    # ---------------------------------------------------------- hooks
    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        _on_view(request)
        return None

    async def _process_view_async(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        _on_view(request)
        return None

    def process_exception(self, request: Any, exception: Exception) -> None:
        handle = getattr(request, _REQUEST_ATTR, None)
        if handle is not None and handle.error is None:
            handle.error = exception
        return None  # Django goes on to produce its normal 500 response

    # ---------------------------------------------------------- response
    def _respond(self, handle: RequestHandle, request: Any, response: Any) -> Any:
        try:
            handle.set_status(int(response.status_code))
            handle.set_route(_route(request))
            for name, value in handle.response_headers():
                if not response.has_header(name):
                    response[name] = value
            if getattr(response, "streaming", False):
                _cover_streaming(handle, response)
            else:
                handle.finish()
        except Exception:
            handle.finish()
        return response


def _on_view(request: Any) -> None:
    handle = getattr(request, _REQUEST_ATTR, None)
    if handle is None:
        return
    try:
        handle.set_route(_route(request))
        if handle.session is not None:
            handle.pick_up_span()  # our middleware may sit outside OpenTelemetry's
    except Exception:
        pass


def _cover_streaming(handle: RequestHandle, response: Any) -> None:
    """End the profile when the streamed body ends (or the response is closed)."""
    closers = getattr(response, "_resource_closers", None)
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
    if session is not None and not session.finished:
        try:
            session.attach_current()
        except Exception:
            pass


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
