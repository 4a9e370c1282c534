"""WSGI middleware: ``ProfilingMiddleware(wsgi_app, profiler=None, **options)``.

    from otelprof_middleware.wsgi import ProfilingMiddleware
    application = ProfilingMiddleware(application, probability=0.01)

Every request goes through the shared lifecycle (:mod:`.lifecycle`).  A request
that is neither profiled nor watched gets the application's own iterable back,
untouched.  A watched request (the late triggers need its status and its end) is
followed through ``start_response`` and ends when the application returns a list,
else when the server closes its iterable (iteration itself is not wrapped).  A
profiled request ends when the server has consumed the response iterable and
called its ``close()`` (streamed bodies included; nothing is buffered); a profiled
``wsgi.file_wrapper`` response keeps its type (the profile ends when the wrapped
file is closed), so the server's sendfile fast path still applies.  The status
comes from ``start_response``, where ``X-Profile-Id`` is added when the policy
exposes it.  Exceptions raised by the application or by its iterable propagate
unchanged; one raised before any response counts as status 500.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator, Optional

from ..policy import RequestInfo
from ..profiler import Profiler
from ._http import environ_key, full_url
from .lifecycle import RequestHandle, RequestProfiling, with_route_of

__all__ = ["ProfilingMiddleware", "WSGIRequest", "ENVIRON_KEY"]

#: where the request's :class:`WSGIRequest` is kept in the WSGI environ
ENVIRON_KEY = "otelprof.handle"
_get_ident = threading.get_ident
_ENDED: dict[str, Any] = {}  # the environ of a request that ended (its own is let go)
# status line -> code; apps pass the same few constant strings, so a dict lookup
# replaces parsing (bounded: odd status lines are parsed every time)
_STATUS_CODES: dict[str, int] = {}


def _status_code(status: Any) -> int:
    """The code of a status line (0 for an odd one, which is the application's business)."""
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 0
    if len(_STATUS_CODES) < 512 and isinstance(status, str):
        _STATUS_CODES[status] = code
    return code


class WSGIRequest(RequestHandle):
    """One WSGI request: its environ, and the ``start_response`` hook."""

    #: ``route_of(environ) -> template or None``: the application's router, asked
    #: only while a route is armed (plain WSGI has none; Flask's is its URL map)
    route_of: Optional[Callable[[dict[str, Any]], Optional[str]]] = None
    #: ``debug_of() -> bool``: the framework's debug flag (plain WSGI has none;
    #: Flask's is ``app.debug``), named ``debug_flag`` in messages
    debug_of: Optional[Callable[[], bool]] = None
    debug_flag = ""
    _result: Any = None  # the application's iterable, while the handle stands in for it

    def __init__(self, rp: RequestProfiling, environ: dict[str, Any], start_response: Callable[..., Any]) -> None:
        self.rp = rp
        self.source = environ
        self._start_response = start_response
        self.thread_id = _get_ident()

    @property
    def environ(self) -> dict[str, Any]:
        """The request's environ (empty once the request ended)."""
        return self.source or _ENDED

    def describe(self) -> RequestInfo:
        environ = self.environ
        get = environ.get
        path = ((get("SCRIPT_NAME") or "") + (get("PATH_INFO") or "")) or "/"
        return RequestInfo(method=get("REQUEST_METHOD") or "GET", path=path,
                           header=lambda name: get(environ_key(name)),
                           url_builder=lambda: full_url(get("wsgi.url_scheme"), get("HTTP_HOST"), get("SERVER_NAME"),
                                                        get("SERVER_PORT"), path, get("QUERY_STRING")),
                           route_resolver=self.resolve_route, debug=self.debug_of, debug_flag=self.debug_flag)

    def resolve_route(self) -> Optional[str]:
        """The route template, when the application's router can tell."""
        route_of = self.route_of
        return route_of(self.source) if route_of is not None and self.source is not None else None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """The application's ``start_response``: the status, and ``X-Profile-Id``."""
        code = _STATUS_CODES.get(status)
        if code is None:
            code = _status_code(status)
        if code:
            self.status = code
        session = self.session
        # profiled by chance: a ticket (self.light), or a light session when the request
        # needed a full decision first (e.g. a route was armed) and only chance chose it
        if session is not None or self.light is not None:
            try:
                if session is None or session.light:  # profiled by chance: its name and route are
                    self.pick_up_span()  # made at the end, if sampled; the framework's span is current here
                else:
                    headers = self.profiled_headers(headers)
            except Exception:
                self.rp.report_failure("wsgi-start-response", "otelprof: profiling failed at start_response; "
                                       "the response is unchanged")
        if exc_info is None:
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def profiled_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        self.pick_up_span()  # the framework's span is current here even when we sit outside it
        present = {k.lower() for k, _ in headers}
        extra = self.response_headers(lambda name: name.lower() in present)
        return list(headers) + extra if extra else headers

    def respond(self, app: Callable[..., Iterable[bytes]]) -> Iterable[bytes]:
        """Run ``app`` for this request and hand back its iterable, followed to its end."""
        try:
            result = app(self.source, self.start_response)
        except BaseException as exc:
            self.finish(error=exc)
            raise
        session = self.session
        if self.light is not None or (session is not None and session.light):  # profiled by chance
            if type(result) is list:
                self.finish()  # produced in full: the request ends here
                return result
            return self.profiled_body(result)  # (its __del__ ends the request if close() never comes)
        if session is None:  # watched only
            if type(result) is list:  # produced in full: the request's work is done
                self.finish()
                return result
            # the handle is the iterable: iteration goes straight to the application's
            # iterator, close() ends the request (nothing more is allocated)
            self._result = result
            return self
        return self.profiled_body(result)

    def profiled_body(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """The iterable of a profiled request: its profile ends at ``close()``."""
        try:
            file_wrapper = self.environ.get("wsgi.file_wrapper")
            if (file_wrapper is not None and isinstance(file_wrapper, type) and type(result) is file_wrapper
                    and getattr(result, "filelike", None) is not None):
                return _keep_file_wrapper(result, self)
            return ProfiledBody(result, self)
        except Exception:  # never lose the response because of us
            self.finish()
            return result

    # the iterable of a watched (not profiled) request (see respond)
    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        _close_then_finish(self._result, self)

    # (no __del__: a server that never calls close() drops the handle, and the
    # watchdog sees a request that ended without its end)


class ProfilingMiddleware:
    """WSGI middleware that profiles the requests the shared policy selects.

    ``profiler`` uses that profiler; otherwise ``options`` configure the process's
    profiler (``get_profiler()``; see the ASGI middleware), and :attr:`profiler` is
    the one in use.  A bad option raises ``ConfigError`` here, at start-up.  A plain
    WSGI app has no debug mode: without ``header_secret`` the trigger header is
    honoured only with ``header_trust="any"``.

    ``route_of(environ)`` may give the route template of a request (its router's
    answer, e.g. ``"/items/{id}"``): a slow or failing request then arms its route,
    not only its literal path.  It is asked only while some route is armed."""

    request_class: type[WSGIRequest] = WSGIRequest

    def __init__(self, app: Callable[..., Iterable[bytes]], profiler: Optional[Profiler] = None, *,
                 request_profiling: Optional[RequestProfiling] = None,
                 route_of: Optional[Callable[[dict[str, Any]], Optional[str]]] = None, **options: Any) -> None:
        self.app = app
        if request_profiling is None:
            request_profiling = RequestProfiling(profiler, by="ProfilingMiddleware(...)", **options)
        self.request_profiling = request_profiling
        self._header_key = environ_key(request_profiling.config.header)
        if route_of is not None:  # this middleware's requests know their router
            self.request_class = with_route_of(self.request_class, route_of)

    @property
    def profiler(self) -> Profiler:
        return self.request_profiling.profiler

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        rp = self.request_profiling
        handle: Optional[WSGIRequest] = None
        try:
            traceparent = environ.get("HTTP_TRACEPARENT")
            verdict, span = rp.screen(environ.get(self._header_key), traceparent)
            if verdict:
                handle = self.request_class(rp, environ, start_response)
                if handle.open(verdict, span, traceparent):
                    environ[ENVIRON_KEY] = handle
                else:
                    handle = None
        except Exception:
            rp.report_failure("wsgi-begin", "otelprof: could not read the WSGI request; it runs unprofiled")
            handle = None
        if handle is None:
            return self.app(environ, start_response)
        return handle.respond(self.app)


class ProfiledBody:
    """The application's response iterable; ends the profile at ``close()``.

    Iteration is passed straight through (one chunk at a time, never buffered);
    an exception raised while producing the body is recorded and re-raised."""

    __slots__ = ("_result", "_iter", "_handle", "_error")

    def __init__(self, result: Iterable[bytes], handle: RequestHandle) -> None:
        self._result = result
        self._iter: Optional[Iterator[bytes]] = None
        self._handle = handle
        self._error: Optional[BaseException] = None

    def __iter__(self) -> "ProfiledBody":
        if self._iter is None:
            try:
                self._iter = iter(self._result)
            except BaseException as exc:
                self._error = exc
                raise
        return self

    def __next__(self) -> bytes:
        it = self._iter
        if it is None:
            it = iter(self)._iter  # type: ignore[union-attr]
        try:
            return next(it)  # type: ignore[arg-type]
        except (StopIteration, GeneratorExit):
            raise
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                close()
        except BaseException as exc:
            self._handle.finish(error=self._error or exc)
            raise
        self._handle.finish(error=self._error)

    def __del__(self) -> None:  # a server that never calls close(): don't leave the profile running
        self._handle.finish(error=self._error)


class _ClosingFile:
    """Proxy of a file-like object whose ``close()`` also ends the profile."""

    def __init__(self, filelike: Any, handle: RequestHandle) -> None:
        self._filelike = filelike
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._filelike, name)

    def close(self) -> None:
        _close_then_finish(self._filelike, self._handle)


def _close_then_finish(closable: Any, handle: RequestHandle) -> None:
    """``closable.close()`` (if it has one), and the request ends, whatever happens."""
    try:
        close = getattr(closable, "close", None)
        if close is not None:
            close()
    finally:
        handle.finish()


def _keep_file_wrapper(result: Any, handle: RequestHandle) -> Any:
    """Keep a ``wsgi.file_wrapper`` response (sendfile fast path) and end the profile
    when the server closes it (gunicorn and wsgiref style wrappers, ``.filelike``)."""
    proxy = _ClosingFile(result.filelike, handle)
    result.filelike = proxy
    result.close = proxy.close
    return result
