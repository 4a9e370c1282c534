"""WSGI middleware: ``ProfilingMiddleware(wsgi_app, profiler=None, **options)``.

    from otelprof_middleware.wsgi import ProfilingMiddleware
    application = ProfilingMiddleware(application, probability=0.01)

Every request goes through the shared :class:`RequestProfiling` lifecycle.  A
profiled request ends when the server has consumed the response iterable and
called its ``close()`` (streamed bodies included; nothing is buffered).  The
status comes from ``start_response``, where ``X-Profile-Id`` is added when the
policy exposes it.  Exceptions raised by the application or by its iterable
propagate unchanged.  Unprofiled requests get the application's own iterable
back (no wrapper), so ``wsgi.file_wrapper`` responses keep their fast path; a
profiled ``wsgi.file_wrapper`` response keeps its type too (the profile ends
when the wrapped file is closed).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import quote

from ..policy import RequestInfo
from ..profiler import Profiler
from .lifecycle import RequestHandle, RequestProfiling

__all__ = ["ProfilingMiddleware", "request_info_from_environ", "ENVIRON_KEY"]

#: where the request's :class:`RequestHandle` is kept in the WSGI environ
ENVIRON_KEY = "otelprof.handle"


def request_info_from_environ(environ: dict[str, Any]) -> RequestInfo:
    """A :class:`RequestInfo` for a WSGI request (headers read lazily from the environ)."""
    path = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
    path = path or "/"
    get = environ.get

    def header(name: str) -> Optional[str]:
        return get("HTTP_" + name.upper().replace("-", "_"))

    return RequestInfo(
        method=environ.get("REQUEST_METHOD") or "GET",
        path=path,
        url=_full_url(environ, path),
        header=header,
    )


_SAFE = "/;=,:@!$&'()*+~"


def _full_url(environ: dict[str, Any], path: str) -> str:
    """The request URL as the OpenTelemetry WSGI instrumentation spells it."""
    try:
        scheme = environ.get("wsgi.url_scheme") or "http"
        host = environ.get("HTTP_HOST")
        if not host:
            host = environ.get("SERVER_NAME") or "localhost"
            port = str(environ.get("SERVER_PORT") or "")
            if port and not ((scheme == "http" and port == "80") or (scheme == "https" and port == "443")):
                host += ":" + port
        url = f"{scheme}://{host}{quote(path, safe=_SAFE)}"
        qs = environ.get("QUERY_STRING")
        return url + "?" + qs if qs else url
    except Exception:
        return path


class ProfilingMiddleware:
    """WSGI middleware that profiles the requests the shared policy selects."""

    def __init__(self, app: Callable[..., Iterable[bytes]], profiler: Optional[Profiler] = None, *,
                 request_profiling: Optional[RequestProfiling] = None, **options: Any) -> None:
        self.app = app
        if request_profiling is None:
            request_profiling = RequestProfiling(profiler, **options)
        self.request_profiling = request_profiling
        from . import threads

        threads.install()

    @property
    def profiler(self) -> Profiler:
        return self.request_profiling.profiler

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        handle: Optional[RequestHandle] = None
        try:
            handle = self.request_profiling.begin(request_info_from_environ(environ),
                                                  traceparent=environ.get("HTTP_TRACEPARENT"))
            environ[ENVIRON_KEY] = handle
        except Exception:
            handle = None
        if handle is None or not handle.watched:
            return self.app(environ, start_response)
        return self._profiled(handle, environ, start_response)

    def _profiled(self, handle: RequestHandle, environ: dict[str, Any],
                  start_response: Callable[..., Any]) -> Iterable[bytes]:
        def profiled_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            try:
                extra = _on_start_response(handle, status, headers)
                if extra:
                    headers = list(headers) + extra
            except Exception:
                pass
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, profiled_start_response)
        except BaseException as exc:
            handle.finish(error=exc)
            raise
        try:
            file_wrapper = environ.get("wsgi.file_wrapper")
            if (file_wrapper is not None and isinstance(file_wrapper, type) and type(result) is file_wrapper
                    and getattr(result, "filelike", None) is not None):
                return _keep_file_wrapper(result, handle)
            return ProfiledBody(result, handle)
        except Exception:  # never lose the response because of us
            handle.finish()
            return result


def _on_start_response(handle: RequestHandle, status: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    try:
        handle.set_status(int(str(status)[:3]))
    except ValueError:
        pass
    if handle.session is not None:
        handle.pick_up_span()  # the framework's span is current here even when we sit outside it
    extra = handle.response_headers()
    if extra:
        present = {k.lower() for k, _ in headers}
        extra = [(k, v) for k, v in extra if k.lower() not in present]
    return extra


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
        except StopIteration:
            raise
        except GeneratorExit:
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
        try:
            self._handle.finish(error=self._error)
        except Exception:
            pass


class _ClosingFile:
    """Proxy of a file-like object whose ``close()`` also ends the profile."""

    def __init__(self, filelike: Any, handle: RequestHandle) -> None:
        self._filelike = filelike
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._filelike, name)

    def close(self) -> None:
        try:
            close = getattr(self._filelike, "close", None)
            if close is not None:
                close()
        finally:
            self._handle.finish()


def _keep_file_wrapper(result: Any, handle: RequestHandle) -> Any:
    """Keep a ``wsgi.file_wrapper`` response (sendfile fast path) and end the profile
    when the server closes it (gunicorn and wsgiref style wrappers, ``.filelike``)."""
    proxy = _ClosingFile(result.filelike, handle)
    result.filelike = proxy
    result.close = proxy.close
    return result
