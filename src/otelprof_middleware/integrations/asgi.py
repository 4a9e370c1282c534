"""Pure ASGI middleware for Starlette, FastAPI and any other ASGI 3 application.

    from otelprof_middleware.asgi import ProfilingMiddleware

    app.add_middleware(ProfilingMiddleware, probability=0.01)               # FastAPI / Starlette
    app = Starlette(routes=..., middleware=[Middleware(ProfilingMiddleware, exporter="otlp")])
    app = ProfilingMiddleware(app, profiler=my_profiler)                   # any ASGI app

What it does per ``http`` request (``lifespan`` and ``websocket`` scopes pass
through untouched):

* asks the shared policy (:mod:`..policy`) whether to profile, through the one
  request lifecycle every integration uses (:mod:`.lifecycle`);
* when profiled, the request's asyncio **task** is sampled (not the loop thread,
  which other requests share), tasks that send the response for it (Starlette runs a
  ``StreamingResponse`` body in a child task) are attached at their first ``send``,
  and thread-pool work started for it is followed (:func:`.threads.install`);
* the profile covers the request until the application returns (the last body
  chunk and Starlette background tasks included), also when it raises (the error
  propagates unchanged) or is cancelled;
* the trace link is the current OpenTelemetry span at entry, else the span seen
  at the first ``send`` (our middleware may sit outside the OTel one), else the
  incoming ``traceparent`` (link source ``traceparent``);
* the response is passed on untouched, except for ``X-Profile-Id`` added to
  ``http.response.start`` when ``expose_profile_id`` applies;
* header-triggered requests are sampled at :data:`HEADER_BOOST_HZ` for their first
  :data:`HEADER_BOOST_SECONDS`, then at ``sample_hz``, so that a request of a few
  milliseconds still gets samples;
* at ``lifespan`` shutdown, after the application handled it, the profiler is
  shut down (``shutdown(shutdown_timeout)``: flush, count what is left) in a worker thread.

Nothing here does I/O, encoding or blocking work on the event loop, and no
profiler failure ever reaches the application: it is counted and logged once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from ..policy import RequestInfo
from ..profile import SpanLink
from ..profiler import Profiler
from ..tracecontext import current_span
from .lifecycle import HEADER_BOOST_HZ, HEADER_BOOST_SECONDS, PROFILE_ID_HEADER, RequestHandle, RequestProfiling
from .threads import install as install_thread_hooks

__all__ = ["ProfilingMiddleware", "HEADER_BOOST_HZ", "HEADER_BOOST_SECONDS"]

log = logging.getLogger("otelprof_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_PROFILE_ID_HEADER = PROFILE_ID_HEADER.lower().encode("latin-1")
_TRACEPARENT = b"traceparent"
_HOST = b"host"


class ProfilingMiddleware:
    """Per-request, trace-linked profiling for an ASGI application.

    ``profiler`` shares an existing :class:`~otelprof_middleware.Profiler`; otherwise
    ``options`` are the engine's configuration options (``probability=0.01``,
    ``exporter="otlp"``, ``header_secret=...``) for a profiler of this middleware,
    and with neither the process-wide default profiler (configured from the
    environment) is used.  A bad option raises ``ConfigError`` here, at start-up.
    """

    def __init__(self, app: ASGIApp, profiler: Optional[Profiler] = None, **options: Any) -> None:
        self.app = app
        self.profiling = RequestProfiling(profiler, **options)
        config = self.profiling.config
        self._header = self.profiling.policy.header_name.encode("latin-1")
        self._need_url = bool(config.excluded_urls)
        self._flushing = False
        install_thread_hooks()

    @property
    def profiler(self) -> Profiler:
        return self.profiling.profiler

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        try:
            handle: Optional[RequestHandle] = self._begin(scope)
        except Exception:
            self.profiler._fail_once("asgi-begin", "otelprof: could not read the ASGI request; it runs unprofiled")
            handle = None
        if handle is None:
            await self.app(scope, receive, send)
            return
        if not handle.watched:
            # Not profiled: the application gets the server's own send, untouched.
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                handle.finish(error=exc)
                raise
            handle.finish()
            return
        if handle.session is None:
            await self._watched(handle, scope, receive, send)
        else:
            await self._profiled(handle, scope, receive, send)

    async def _watched(self, handle: RequestHandle, scope: Scope, receive: Receive, send: Send) -> None:
        """Not profiled at entry, but late triggers watch it: record the status, and
        hand over to the profiled path if the watchdog promotes the request meanwhile."""
        promoted: list[Any] = []

        async def status_send(message: Message) -> None:
            if handle.session is not None:  # promoted while it ran
                if not promoted:  # the request's own task was attached by the promotion
                    target = getattr(handle, "_target", None)
                    promoted.append(target[1] if target else None)
                try:
                    message = self._on_send(handle, scope, message, promoted, {"first": False})
                except Exception:
                    self.profiler._fail_once("asgi-send", "otelprof: profiling failed while sending a response; "
                                             "the response is unchanged")
            elif message["type"] == "http.response.start":
                handle.status = message.get("status")
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        except BaseException as exc:
            self._end(handle, scope, exc)
            raise
        self._end(handle, scope, None)

    def _begin(self, scope: Scope) -> RequestHandle:
        wanted = self._header
        value = traceparent = host = None
        headers = scope.get("headers") or ()
        for name, raw in headers:
            if name == wanted:
                value = raw
            elif name == _TRACEPARENT:
                traceparent = raw
            elif name == _HOST:
                host = raw
        header_value = value.decode("latin-1") if value is not None else None
        header_name = self.profiling.policy.header_name

        def header(name: str) -> Optional[str]:
            if name.lower() == header_name:
                return header_value
            return _find_header(headers, name)

        path = scope.get("path") or "/"
        info = RequestInfo(
            method=scope.get("method") or "GET",
            path=path,
            url=_full_url(scope, host) if self._need_url else "",
            header=header,
        )
        return self.profiling.begin(info, traceparent=traceparent.decode("latin-1") if traceparent else None)

    # ------------------------------------------------------------------ profiled request
    async def _profiled(self, handle: RequestHandle, scope: Scope, receive: Receive, send: Send) -> None:
        fail = self.profiler._fail_once
        request_task = _current_task()
        attached: list[Any] = [request_task]
        state = {"first": True}

        async def profiling_send(message: Message) -> None:
            try:
                message = self._on_send(handle, scope, message, attached, state)
            except Exception:
                fail("asgi-send", "otelprof: profiling failed while sending a response; the response is unchanged")
            await send(message)

        try:
            await self.app(scope, receive, profiling_send)
        except BaseException as exc:
            self._end(handle, scope, exc)
            raise
        self._end(handle, scope, None)

    def _on_send(self, handle: RequestHandle, scope: Scope, message: Message,
                 attached: list[Any], state: dict[str, bool]) -> Message:
        if handle.session is None:  # not (yet) profiled: only what late triggers need
            if message.get("type") == "http.response.start":
                handle.set_status(message.get("status"))  # type: ignore[arg-type]
                route = _scope_route(scope)
                if route:
                    handle.info.route = route
            return message
        if state["first"]:
            state["first"] = False
            if handle.span is None:
                _pick_up_span(handle)
        task = _current_task()
        if task is not None and task not in attached and handle.session is not None:
            # e.g. Starlette's StreamingResponse produces the body in a child task
            attached.append(task)
            handle.session.attach_current()
        kind = message.get("type")
        if kind == "http.response.start":
            handle.set_status(message.get("status"))  # type: ignore[arg-type]
            _set_route(handle, scope)
            extra = handle.response_headers()
            if extra:
                new = dict(message)
                new["headers"] = list(message.get("headers") or ()) + [
                    (_PROFILE_ID_HEADER if k == PROFILE_ID_HEADER else k.lower().encode("latin-1"),
                     v.encode("latin-1"))
                    for k, v in extra
                ]
                return new
        elif kind == "http.response.body" and not message.get("more_body", False):
            # The OTel ASGI middleware ends its span right after this message: put the
            # summary on it now (finish() refreshes it if the span still records).
            handle.annotate_span()
        return message

    def _end(self, handle: RequestHandle, scope: Scope, error: Optional[BaseException]) -> None:
        try:
            _set_route(handle, scope)
            if isinstance(error, asyncio.CancelledError) and handle.session is not None:
                handle.session.attributes["otelprof.cancelled"] = True
        except Exception:
            pass
        handle.finish(error=error)

    # ------------------------------------------------------------------ lifespan
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"shutdown": False, "flushed": False}

        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                state["shutdown"] = True
            return message

        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not state["flushed"]:
                state["flushed"] = True
                await self._flush()  # before the server is told it may stop
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        finally:
            if state["shutdown"] and not state["flushed"]:
                state["flushed"] = True
                await self._flush()

    async def _flush(self) -> None:
        """``shutdown`` in a worker thread: the event loop never waits on export I/O."""
        profiler = self.profiler
        if self._flushing:
            return
        self._flushing = True
        try:
            timeout = profiler.config.shutdown_timeout
            try:
                import anyio.to_thread

                await anyio.to_thread.run_sync(profiler.shutdown, timeout)
            except ImportError:
                await asyncio.get_running_loop().run_in_executor(None, profiler.shutdown, timeout)
        except Exception:
            profiler._fail_once("asgi-flush", "otelprof: flushing profiles at shutdown failed")
        finally:
            self._flushing = False


# ---------------------------------------------------------------------- helpers


def _current_task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:  # not running on asyncio
        return None


def _find_header(headers: Any, name: str) -> Optional[str]:
    want = name.lower().encode("latin-1")
    for k, v in headers:
        if k == want:
            return v.decode("latin-1")
    return None


def _full_url(scope: Scope, host: Optional[bytes]) -> str:
    """``scheme://host/root_path/path?query`` as the OTel ASGI instrumentation builds it."""
    scheme = scope.get("scheme") or "http"
    if host:
        netloc = host.decode("latin-1")
    else:
        server = scope.get("server")
        if server:
            h, port = server[0], server[1]
            default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
            netloc = h if port is None or port == default else f"{h}:{port}"
        else:
            netloc = ""
    path = (scope.get("root_path") or "") + (scope.get("path") or "/")
    query = scope.get("query_string") or b""
    url = f"{scheme}://{netloc}{path}"
    if query:
        url += "?" + query.decode("latin-1")
    return url


def _scope_route(scope: Scope) -> Optional[str]:
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else None


def route_of(scope: Scope) -> Optional[str]:
    """The route template of the request, when the framework exposes it.

    FastAPI (and Starlette subclasses that do the same) put the matched route in
    ``scope["route"]``; plain Starlette only sets ``scope["endpoint"]``, so the
    application's routes are matched again (as the OTel FastAPI instrumentation
    does) — only for profiled requests, at most twice per request.
    """
    path = _scope_route(scope)
    if path:
        return path
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if not routes or "endpoint" not in scope:
        return None
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - scope["app"] is a Starlette app
        return None
    for r in routes:
        try:
            match, _child = r.matches(scope)
        except Exception:
            continue
        if match == Match.FULL:
            path = getattr(r, "path_format", None) or getattr(r, "path", None)
            return path if isinstance(path, str) and path else None
    return None


def _set_route(handle: RequestHandle, scope: Scope) -> None:
    if handle.session is None:
        route = _scope_route(scope)  # no route matching for requests that are not profiled
        if route:
            handle.info.route = route
        return
    route = route_of(scope)
    if route and route != handle.info.route:
        handle.set_route(route)


def _pick_up_span(handle: RequestHandle) -> None:
    """Find the span late, at the first ``send`` (our middleware sits outside the OTel one).

    opentelemetry-instrumentation-asgi ends its ``<name> http send`` child span before
    it calls the server's ``send`` (0.66b1), so the current span here is the SERVER
    span.  Older releases called ``send`` *inside* that child span: then we link to
    its parent (the SERVER span: same trace id and span id) without annotating it,
    since only its context is reachable.
    """
    span = current_span()
    if span is None:
        return
    parent = _instrumentation_child_parent(span)
    if parent is None:
        handle.pick_up_span()
        return
    handle.pick_up_link(SpanLink(parent.trace_id, parent.span_id, sampled=bool(parent.trace_flags & 0x01),
                                 source="span"))


def _instrumentation_child_parent(span: Any) -> Any:
    """The parent context when ``span`` is an ASGI instrumentation send/receive child span."""
    try:
        attributes = getattr(span, "attributes", None) or {}
        if "asgi.event.type" not in attributes:
            return None
        parent = getattr(span, "parent", None)
        if parent is None or not parent.is_valid or parent.is_remote:
            return None
        return parent
    except Exception:
        return None
