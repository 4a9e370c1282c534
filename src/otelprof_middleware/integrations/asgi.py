"""Pure ASGI middleware for Starlette, FastAPI and any other ASGI 3 application.

    from otelprof_middleware.asgi import ProfilingMiddleware

    app.add_middleware(ProfilingMiddleware, probability=0.01)               # FastAPI / Starlette
    app = Starlette(routes=..., middleware=[Middleware(ProfilingMiddleware, exporter="otlp")])
    app = ProfilingMiddleware(app, profiler=my_profiler)                   # any ASGI app

What it does per ``http`` request (``lifespan`` and ``websocket`` scopes pass
through untouched):

* asks the shared policy (:mod:`..policy`) whether to profile, through the one
  request lifecycle every integration uses (:mod:`.lifecycle`); a request that is
  neither profiled nor watched by the late triggers gets the server's ``send``
  untouched;
* per watched or profiled request, one small responder object (:class:`ASGIRequest`)
  holds its state; its ``send`` records the status and hands the message on
  (returning the server's own awaitable: no extra coroutine per message);
* when profiled, the request's asyncio **task** is sampled (not the loop thread,
  which other requests share), tasks that send the response for it (Starlette runs a
  ``StreamingResponse`` body in a child task) are attached at their first ``send``,
  and thread-pool work started for it is followed (:mod:`.threads`);
* the profile covers the request until its last body chunk is sent (where the
  OpenTelemetry ASGI span ends too, so the summary on the span is the finished
  profile's; Starlette background tasks that run after it are not included), or
  until the application returns, raises (the error propagates unchanged) or is
  cancelled without finishing the body;
* the trace link is the current OpenTelemetry span at entry, else the span seen
  at the first ``send`` (our middleware may sit outside the OTel one), else the
  incoming ``traceparent`` (link source ``traceparent``);
* the response is passed on untouched, except for ``X-Profile-Id`` added to
  ``http.response.start`` when ``expose_profile_id`` applies (never twice);
* an exception that escapes the application is recorded with status 500: under
  Starlette/FastAPI the 500 page is rendered outside this middleware (by
  ``ServerErrorMiddleware``), so that response carries no ``X-Profile-Id``; find
  the profile by its trace id or in the profile list (``error.type`` set);
* header-triggered requests are sampled at :data:`HEADER_BOOST_HZ` for their first
  :data:`HEADER_BOOST_SECONDS`, then at ``sample_hz``, so that a request of a few
  milliseconds still gets samples;
* at ``lifespan`` shutdown, after the application handled it, the profiler is
  shut down (``shutdown(shutdown_timeout)``: flush, count what is left) in a worker thread;
* a configuration mistake (a bad option, from keywords or ``OTELPROF_*``
  variables) never turns requests into 500s: Starlette builds its middleware
  lazily, inside the server's first ``lifespan`` call, where an exception reads as
  "lifespan unsupported" to uvicorn.  So the ``ConfigError`` is kept and answered
  at ``lifespan.startup`` with ``lifespan.startup.failed`` (the server stops with
  the message, in uvicorn's ``--lifespan auto`` mode too); a server without the
  lifespan protocol gets every request passed through unprofiled, and the error
  logged once.

Nothing here does I/O, encoding or blocking work on the event loop, and no
profiler failure ever reaches the application: it is counted and logged once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import types
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from .._safety import LogOnce
from ..config import ConfigError
from ..policy import RequestInfo
from ..profile import SpanLink
from ..profiler import Profiler
from ..tracecontext import current_span
from ._http import full_url
from .lifecycle import HEADER_BOOST_HZ, HEADER_BOOST_SECONDS, RequestHandle, RequestProfiling, with_route_of

__all__ = ["ProfilingMiddleware", "ASGIRequest", "HEADER_BOOST_HZ", "HEADER_BOOST_SECONDS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TRACEPARENT = b"traceparent"
_get_ident = threading.get_ident
_asyncio_current_task = asyncio.current_task
# Before Python 3.12 ``asyncio.current_task`` is a Python function that does exactly
# ``_current_tasks.get(loop)``: every request asks it once or twice, so these two C
# calls are made in place instead (None where it is written in C, or absent).
_get_running_loop = asyncio.events._get_running_loop
_TASKS_BY_LOOP: Optional[dict[Any, Any]] = (
    getattr(asyncio.tasks, "_current_tasks", None) if isinstance(asyncio.current_task, types.FunctionType) else None)


class ProfilingMiddleware:
    """Per-request, trace-linked profiling for an ASGI application.

    ``profiler`` uses that :class:`~otelprof_middleware.Profiler`; otherwise
    ``options`` are the engine's configuration options (``probability=0.01``,
    ``exporter="otlp"``, ``header_secret=...``) and configure the process's profiler
    (``get_profiler()`` returns it; options that differ from an existing one get a
    profiler of their own, with a warning); with neither, the process's profiler
    is used as the environment configures it.  :attr:`profiler` is the one in use.

    ``route_of(scope)`` may give the route template of a request for routers other
    than Starlette's (whose routes are matched without help); it is asked only while
    some route is armed.

    A bad option does not raise here (Starlette builds middleware lazily, where an
    exception would not stop the server): it is kept in :attr:`config_error` and
    reported at ``lifespan.startup`` (see the module docstring).
    """

    #: the configuration error, if the options were invalid (then nothing is profiled)
    config_error: Optional[Exception] = None

    def __init__(self, app: ASGIApp, profiler: Optional[Profiler] = None, *,
                 route_of: Optional[Callable[[Scope], Optional[str]]] = None, **options: Any) -> None:
        self.app = app
        self._request_class = ASGIRequest if route_of is None else with_route_of(ASGIRequest, route_of)
        self._flushing = False
        rp: Optional[RequestProfiling] = None
        try:
            rp = RequestProfiling(profiler, by="ProfilingMiddleware(...)", **options)
            self._header = rp.config.header.lower().encode("latin-1")
        except (ConfigError, TypeError) as exc:  # reported at lifespan.startup, or once per process
            self.config_error = exc
        self.request_profiling: Optional[RequestProfiling] = rp

    @property
    def profiler(self) -> Profiler:
        """The profiler this middleware uses (``get_profiler()`` unless it was given
        one, or options that differ from the process's profiler).  Raises the
        configuration error when the options were invalid."""
        rp = self.request_profiling
        if rp is None:
            raise self.config_error  # type: ignore[misc]
        return rp.profiler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        rp = self.request_profiling
        if kind != "http" or rp is None:
            if rp is None:
                await self._unconfigured(scope, receive, send)
            elif kind == "lifespan":
                await _Lifespan(self).run(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        handle: Optional[ASGIRequest] = None
        try:
            # one C call instead of a Python loop over every header (the last of
            # repeated names wins, as it did); a malformed list raises: unprofiled
            headers = dict(scope.get("headers") or ())
            value = headers.get(self._header)
            traceparent = headers.get(_TRACEPARENT)
            tp = traceparent.decode("latin-1") if traceparent else None
            verdict, span = rp.screen(value.decode("latin-1") if value is not None else None, tp)
            if verdict:
                handle = self._request_class(rp, scope, send)
                if not handle.open(verdict, span, tp):
                    handle = None
        except Exception:
            rp.report_failure("asgi-begin", "otelprof: could not read the ASGI request; it runs unprofiled")
            handle = None
        if handle is None:  # the application gets the server's own send, untouched
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, handle.send)
        except BaseException as exc:
            handle.finish(error=exc)
            raise
        handle.finish()

    async def _unconfigured(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The options were invalid: fail the server's start, or serve unprofiled."""
        message = f"otelprof: {self.config_error}"
        if scope["type"] == "lifespan":
            event = await receive()
            if event.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": message})
                return
            # (a shutdown first: the server skipped the start; let the app have it)
            await self.app(scope, _replay(event, receive), send)
            return
        _config_log("unconfigured:" + message,
                    "%s; requests are served unprofiled (the server runs no ASGI lifespan, which would have "
                    "stopped the start)", message, level=logging.ERROR)
        await self.app(scope, receive, send)

    async def flush(self) -> None:
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
            profiler.report_failure("asgi-flush", "otelprof: flushing profiles at shutdown failed")
        finally:
            self._flushing = False


class ASGIRequest(RequestHandle):
    """The responder of one watched or profiled request: its scope, the server's
    ``send``, the tasks sending for it."""

    _attached: Optional[list[Any]] = None  # tasks attached to the profile (the request's own first)
    loop: Any = None  # the running event loop (only where the running task is looked up in place)
    #: ``route_of(scope) -> template or None`` for routers other than Starlette's
    route_of: Optional[Callable[[Scope], Optional[str]]] = None

    def __init__(self, rp: RequestProfiling, scope: Scope, send: Send) -> None:
        self.rp = rp
        self.scope = scope
        self._send = send
        self.thread_id = _get_ident()
        if _TASKS_BY_LOOP is not None:
            # (the loop is kept for send: on 3.11 each lookup of the running loop is a
            # getpid system call)
            loop = self.loop = _get_running_loop()
            self.task = _TASKS_BY_LOOP.get(loop)
        else:
            try:
                self.task = _asyncio_current_task()
            except RuntimeError:  # not running on asyncio
                pass

    def describe(self) -> RequestInfo:
        scope = self.scope
        headers = scope.get("headers") or ()
        path = scope.get("path") or "/"
        app = scope.get("app")  # Starlette and FastAPI put themselves there
        return RequestInfo(method=scope.get("method") or "GET", path=path,
                           header=lambda name: _find_header(headers, name),
                           url_builder=lambda: _full_url(scope, headers),
                           route_resolver=self.resolve_route,
                           debug=None if app is None else lambda: _app_debug(app),
                           debug_flag=f"{type(app).__name__} app.debug")

    def resolve_route(self) -> Optional[str]:
        custom = self.route_of
        return custom(self.scope) if custom is not None else route_of(self.scope)

    def send(self, message: Message) -> Awaitable[None]:
        """The application's ``send``: returns the server's awaitable for ``message``
        (with ``X-Profile-Id`` added when exposed)."""
        try:
            session = self.session
            # profiled by chance: a ticket (self.light), or a light session when the request
            # needed a full decision first (e.g. a route was armed) and only chance chose it
            if session is None or session.light:
                if self.status is None:
                    if message.get("type") == "http.response.start":
                        self.status = message.get("status")  # (body messages: one attribute check)
                        if self.light is not None and self.task is not None:
                            task = _TASKS_BY_LOOP.get(self.loop) if _TASKS_BY_LOOP is not None else _current_task()
                            if task is not self.task:
                                self._follow_sending_task(task)
                elif (self.light is not None or session is not None) and not message.get("more_body", False) \
                        and message.get("type") == "http.response.body":
                    # a request profiled by chance ends here, as _profiled_message ends a
                    # profile: before the OTel span does (its span is looked up only if it
                    # was sampled: on_profiled_end)
                    self.finish()
            else:
                message = self._profiled_message(message)
        except Exception:
            self.rp.report_failure("asgi-send", "otelprof: profiling failed while sending a response; "
                                   "the response is unchanged")
        return self._send(message)

    def _follow_sending_task(self, task: Any) -> None:
        """A request profiled by chance whose response is sent by another task,
        ``task`` (e.g. Starlette's StreamingResponse produces the body in a child
        task): that task is sampled for it too, in its session (made now if no sample
        made it yet)."""
        if task is None or task is self.task or self.light is None:
            return
        session = self.light.session_for_sample()
        if session is not None and not session.finished:
            self._attached = [self.task, task]
            session.attach_current()

    def _profiled_message(self, message: Message) -> Message:
        attached = self._attached
        if attached is None:  # the first send of a profiled (or just promoted) request
            attached = self._attached = [self.task or _current_task()]
            if self.span is None:
                self._pick_up_span_at_send()
        task = _current_task()
        if task is not None and task not in attached and self.session is not None:
            # e.g. Starlette's StreamingResponse produces the body in a child task
            attached.append(task)
            self.session.attach_current()
        kind = message.get("type")
        if kind == "http.response.start":
            self.set_status(message.get("status"))
            self._set_route()
            headers = message.get("headers") or ()
            present = {k.lower() for k, _ in headers}
            extra = self.response_headers(lambda name: name.lower().encode("latin-1") in present)
            if extra:
                new = dict(message)
                new["headers"] = list(headers) + [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                                  for k, v in extra]
                return new
        elif kind == "http.response.body" and not message.get("more_body", False):
            # The OTel ASGI middleware ends its span right after this message: end the
            # profile here, so the summary put on the span is the finished profile's
            # (the same numbers as pprof and OTLP), not the samples so far.
            self.finish()
        return message

    def on_profiled_end(self, error: Optional[BaseException]) -> None:
        if self.span is None and self.session is not None and self.session.light:
            self._pick_up_span_at_send()  # (its first look: a light session ends in its last send)
        self._set_route()
        if isinstance(error, asyncio.CancelledError) and self.session is not None:
            self.session.attributes["otelprof.cancelled"] = True

    def _set_route(self) -> None:
        self.set_route(self.resolve_route())

    def _pick_up_span_at_send(self) -> None:
        """Find the span late, at the first ``send`` (our middleware sits outside the OTel one).

        opentelemetry-instrumentation-asgi ends its ``<name> http send`` child span
        before it calls the server's ``send`` (0.66b1), so the current span here is
        the SERVER span.  Older releases called ``send`` *inside* that child span:
        then we link to its parent (the SERVER span: same trace id and span id)
        without annotating it, since only its context is reachable."""
        span = current_span()
        if span is None:
            return
        parent = _instrumentation_child_parent(span)
        if parent is None:
            self.pick_up_span()
            return
        self.pick_up_link(SpanLink(parent.trace_id, parent.span_id, sampled=bool(parent.trace_flags & 0x01),
                                   source="span"))


class _Lifespan:
    """Passes the ``lifespan`` scope through and flushes finished profiles at
    shutdown, after the application handled it and before the server is told it
    may stop."""

    def __init__(self, middleware: ProfilingMiddleware) -> None:
        self.middleware = middleware
        self.shutdown = False
        self.flushed = False

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive_from, self._send_to = receive, send
        try:
            await self.middleware.app(scope, self.receive, self.send)
        finally:
            if self.shutdown and not self.flushed:
                self.flushed = True
                await self.middleware.flush()

    async def receive(self) -> Message:
        message = await self._receive_from()
        kind = message.get("type")
        if kind == "lifespan.shutdown":
            self.shutdown = True
        elif kind == "lifespan.startup":
            rp = self.middleware.request_profiling
            if rp is not None:
                rp.renew()  # the app starts again in this process (a test client per test)
        return message

    async def send(self, message: Message) -> None:
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not self.flushed:
            self.flushed = True
            await self.middleware.flush()
        await self._send_to(message)


# ---------------------------------------------------------------------- helpers

_config_log = LogOnce()


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that hands out ``first`` again before the next messages."""
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay



def _current_task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:  # not running on asyncio
        return None


def _app_debug(app: Any) -> Optional[bool]:
    """Starlette's (and FastAPI's) ``app.debug``; None for an app without one."""
    debug = getattr(app, "debug", None)
    return debug if isinstance(debug, bool) else None


def _find_header(headers: Any, name: str) -> Optional[str]:
    want = name.lower().encode("latin-1")
    for k, v in headers:
        if k == want:
            return v.decode("latin-1")
    return None


def _full_url(scope: Scope, headers: Any) -> str:
    server = scope.get("server") or (None, None)
    query = scope.get("query_string") or b""
    return full_url(scope.get("scheme"), _find_header(headers, "host"), server[0], server[1],
                    (scope.get("root_path") or "") + (scope.get("path") or "/"), query.decode("latin-1"))


def _scope_route(scope: Scope) -> Optional[str]:
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else None


def route_of(scope: Scope) -> Optional[str]:
    """The route template of the request, when the framework exposes it.

    FastAPI (and Starlette subclasses that do the same) put the matched route in
    ``scope["route"]``; plain Starlette only sets ``scope["endpoint"]``, and before
    routing nothing at all, so the application's routes are matched (as the OTel
    FastAPI instrumentation does) — only for profiled requests and while a route is
    armed.
    """
    path = _scope_route(scope)
    if path:
        return path
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if not routes:
        return None
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - scope["app"] is a Starlette app
        return None
    match_scope = scope if "type" in scope else dict(scope, type="http")
    for r in routes:
        try:
            match, _child = r.matches(match_scope)
        except Exception:
            continue
        if match == Match.FULL:
            path = getattr(r, "path_format", None) or getattr(r, "path", None)
            return path if isinstance(path, str) and path else None
    return None


def _instrumentation_child_parent(span: Any) -> Any:
    """The parent context when ``span`` is an ASGI instrumentation send/receive child span."""
    attributes = getattr(span, "attributes", None) or {}
    if "asgi.event.type" not in attributes:
        return None
    parent = getattr(span, "parent", None)
    if parent is None or not parent.is_valid or parent.is_remote:
        return None
    return parent
