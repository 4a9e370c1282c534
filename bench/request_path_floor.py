"""The floor of a watched request in pure Python (used by ``bench_request_path.py --floor``).

Hand-inlined middlewares that do, in one function each, only the work an
unprofiled request cannot avoid with the default settings (probability 0.01,
slow promotion, slow and error route arming, high-CPU trigger), and nothing else:
no policy object, no kit, no firewall, no description of the request.

* at entry: read the trigger header and ``traceparent``, ask OpenTelemetry's
  context for a span (two C calls), check that no route is armed, no window is
  open and the CPU trigger is not firing (one attribute each), toss the
  probability coin;
* watch the request: one small ``__slots__`` record (no ``__init__``), one clock
  read, one weakly keyed registry entry for the watchdog (slow promotion), one
  context variable so that thread-pool hand-offs can be followed (promotion);
* see its status: the ``start_response`` / ``send`` hook (error arming);
* see its end: the body's ``close()`` (WSGI iterables that are not lists);
* at the end: drop the registry entry, reset the context variable, read the clock
  once more and compare duration and status with the arming thresholds.

What it leaves out, the real middleware must also do (a firewall around every
entry point, the route and URL for arming, the trace link, ``X-Profile-Id``, ...),
so this is a lower bound, not a competitor.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from typing import Any, Callable, Optional

from otelprof_middleware.tracecontext import SPAN_KEY, current_context

_hops: contextvars.ContextVar[Any] = contextvars.ContextVar("floor_hops", default=None)
_ref = weakref.ref
_clock = time.monotonic
_new = object.__new__


class Trig:
    """What the entry check reads: the trigger state that is almost always quiet."""

    armed = 0
    windows = 0
    cpu_firing = False
    threshold = 1.0
    probability = 0.01

    def __init__(self, coin: Callable[[], float]) -> None:
        self.coin = coin
        self.inflight: dict[Any, bool] = {}

    def enter(self, cls: type, header: Optional[str], traceparent: Any) -> Any:
        """The record of a request nothing selects (watched), or None (decide in full)."""
        if (header is None and traceparent is None and current_context().get(SPAN_KEY) is None
                and not self.armed and not self.windows and not self.cpu_firing
                and self.coin() >= self.probability):
            rec = _new(cls)
            rec.status = None
            rec.t0 = _clock()
            ref = _ref(rec)
            self.inflight[ref] = True
            rec.token = _hops.set(ref)
            return rec
        return None

    def end(self, rec: "Rec") -> None:
        _hops.reset(rec.token)
        self.inflight.pop(_ref(rec), None)
        if _clock() - rec.t0 >= self.threshold or (rec.status is not None and rec.status >= 500):
            self.armed += 0  # (arm the route: never reached here)


class Rec:
    __slots__ = ("t0", "status", "result", "send", "token", "__weakref__")


class WSGIRec(Rec):
    __slots__ = ()
    trig: Trig

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        return self.send(status, headers, exc_info)

    def __iter__(self) -> Any:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.trig.end(self)


def wsgi(app: Callable[..., Any], coin: Callable[[], float]) -> Callable[..., Any]:
    trig = WSGIRec.trig = Trig(coin)

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        rec = trig.enter(WSGIRec, environ.get("HTTP_X_ENABLE_PROFILING"), environ.get("HTTP_TRACEPARENT"))
        if rec is None:
            return app(environ, start_response)
        rec.send = start_response
        try:
            result = app(environ, rec.start_response)
        except BaseException:
            trig.end(rec)
            raise
        if type(result) is list:
            trig.end(rec)
            return result
        rec.result = result
        return rec

    return middleware


class ASGIRec(Rec):
    __slots__ = ()

    def on_send(self, message: Any) -> Any:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)


def asgi(app: Callable[..., Any], coin: Callable[[], float]) -> Callable[..., Any]:
    trig = Trig(coin)

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        header = traceparent = None
        for name, value in scope["headers"]:
            if name == b"x-enable-profiling":
                header = value
            elif name == b"traceparent":
                traceparent = value
        rec = trig.enter(ASGIRec, header, traceparent)
        if rec is None:
            return await app(scope, receive, send)
        rec.send = send
        try:
            await app(scope, receive, rec.on_send)
        finally:
            trig.end(rec)

    return middleware


def django(get_response: Callable[[Any], Any], coin: Callable[[], float]) -> Callable[[Any], Any]:
    trig = Trig(coin)

    def middleware(request: Any) -> Any:
        meta = request.META
        rec = trig.enter(Rec, meta.get("HTTP_X_ENABLE_PROFILING"), meta.get("HTTP_TRACEPARENT"))
        if rec is None:
            return get_response(request)
        try:
            response = get_response(request)
        except BaseException:
            trig.end(rec)
            raise
        rec.status = response.status_code
        trig.end(rec)  # (a streamed body would be wrapped; the benchmark's is not streamed)
        return response

    return middleware
