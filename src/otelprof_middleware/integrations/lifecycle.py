"""The request lifecycle shared by every integration (ASGI, WSGI, Django, Flask).

    rp = RequestProfiling(profiler=None, **options)     # one per middleware instance
    handle = rp.begin(info)                             # at request entry; never raises
    handle.pick_up_span()                               # later, if the span appears late
    extra = handle.response_headers()                   # when the response starts
    handle.set_status(200)
    handle.finish(error=None)                           # when the body is done

A handle exists for every request (cheap when not profiled) so that triggers that
decide late (slow, error) can act on it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from ..policy import Decision, Policy, RequestInfo
from ..profile import SpanLink
from ..profiler import _CURRENT, Profiler, get_profiler
from ..session import Session, session_summary
from ..tracecontext import current_span, link_from_span, set_span_attributes

__all__ = ["RequestProfiling", "RequestHandle", "PROFILE_ID_HEADER"]

log = logging.getLogger("otelprof_middleware")

PROFILE_ID_HEADER = "X-Profile-Id"


class RequestProfiling:
    """Profiler + policy for one middleware instance."""

    def __init__(self, profiler: Optional[Profiler] = None, **options: Any) -> None:
        if profiler is not None and options:
            raise TypeError("pass either profiler= or options, not both (the profiler carries its own config)")
        if profiler is None:
            profiler = Profiler(**options) if options else get_profiler()
        self.profiler = profiler
        self.policy = policy_for(profiler)

    @property
    def config(self) -> Any:
        return self.profiler.config

    def begin(self, info: RequestInfo, *, traceparent: Optional[str] = None) -> "RequestHandle":
        handle = RequestHandle(self, info)
        try:
            handle._begin(traceparent)
        except Exception:
            self.profiler._fail_once("begin", "otelprof: request profiling failed at start; request unprofiled")
        return handle


def policy_for(profiler: Profiler) -> Policy:
    """One policy per profiler, shared by every integration that uses it."""
    policy = getattr(profiler, "_policy", None)
    if policy is None:
        policy = Policy(profiler)
        profiler._policy = policy  # type: ignore[attr-defined]
    return policy


class RequestHandle:
    """One request's profiling state."""

    __slots__ = ("rp", "info", "decision", "session", "span", "status", "error",
                 "start_ns", "_token", "_traceparent", "_done", "_span_start_set")

    def __init__(self, rp: RequestProfiling, info: RequestInfo) -> None:
        self.rp = rp
        self.info = info
        self.decision: Decision = Decision.no("not_started")
        self.session: Optional[Session] = None
        self.span: Any = None
        self.status: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.start_ns = time.monotonic_ns()
        self._token: Any = None
        self._traceparent: Optional[SpanLink] = None
        self._done = False
        self._span_start_set = False

    @property
    def profiled(self) -> bool:
        return self.session is not None

    @property
    def profile_id(self) -> Optional[str]:
        return self.session.profile_id_hex if self.session is not None else None

    # ------------------------------------------------------------ start
    def _begin(self, traceparent: Optional[str]) -> None:
        from ..tracecontext import parse_traceparent

        self.span = current_span()
        link = link_from_span(self.span) if self.span is not None else None
        if link is None and traceparent:
            self._traceparent = parse_traceparent(traceparent)
        self.info.link = link or self._traceparent
        self.decision = self.rp.policy.decide(self.info)
        if self.decision.profile:
            self.start_profile(self.decision.triggers, hz=self.decision.hz)

    def start_profile(self, triggers: tuple[str, ...], hz: Optional[int] = None) -> Optional[Session]:
        """Start sampling this request (at entry, or later for a late trigger)."""
        if self.session is not None or self._done:
            return self.session
        info = self.info
        attrs: dict[str, Any] = {"http.request.method": info.method, "url.path": info.path}
        if info.route:
            attrs["http.route"] = info.route
        name = f"{info.method} {info.route or info.path}"
        link = link_from_span(self.span) if self.span is not None else self._traceparent
        session = self.rp.profiler.start_session(name, link=link, attributes=attrs, triggers=tuple(triggers), hz=hz)
        if session is None:
            return None
        self.session = session
        self._token = _CURRENT.set(session)
        self._annotate_span_start()
        return session

    def _annotate_span_start(self) -> None:
        if self.session is None or self.span is None or self._span_start_set:
            return
        link = self.session.link
        if link is not None and link.source == "span":
            set_span_attributes(self.span, {"pyroscope.profile.id": link.span_id_hex})
            self._span_start_set = True

    def pick_up_span(self) -> None:
        """Read the current span again (our middleware may sit outside the OTel one)."""
        if self.span is not None:
            return
        try:
            span = current_span()
            if span is None:
                return
            self.span = span
            link = link_from_span(span)
            if link is None:
                return
            self.info.link = link
            if self.session is not None and (self.session.link is None or self.session.link.source != "span"):
                self.session.link = link
                self._annotate_span_start()
        except Exception:
            pass

    # ------------------------------------------------------------ response
    def set_status(self, status: int) -> None:
        self.status = status

    def set_route(self, route: Optional[str]) -> None:
        if route:
            self.info.route = route
            if self.session is not None:
                self.session.attributes["http.route"] = route
                self.session.name = f"{self.info.method} {route}"

    def response_headers(self) -> list[tuple[str, str]]:
        """Headers to add to the response (only ``X-Profile-Id`` when exposed)."""
        if self.session is not None and self.decision.expose_profile_id:
            return [(PROFILE_ID_HEADER, self.session.profile_id_hex)]
        return []

    # ------------------------------------------------------------ end
    def finish(self, error: Optional[BaseException] = None) -> None:
        """End of the request (body sent, or failed).  Idempotent, never raises."""
        if self._done:
            return
        self._done = True
        try:
            self._finish(error)
        except Exception:
            self.rp.profiler._fail_once("finish-request", "otelprof: request profiling failed at finish")

    def _finish(self, error: Optional[BaseException]) -> None:
        if error is not None:
            self.error = error
        session = self.session
        if session is None:
            return
        self.pick_up_span()
        if self._token is not None:
            try:
                _CURRENT.reset(self._token)
            except ValueError:  # finished in another context (e.g. a streaming body)
                pass
            self._token = None
        if self.status is not None:
            session.attributes["http.response.status_code"] = self.status
        session.attributes["otelprof.duration_ms"] = round((time.monotonic_ns() - self.start_ns) / 1e6, 3)
        if self.error is not None:
            session.attributes["error.type"] = type(self.error).__name__
        elif self.status is not None and self.status >= 500:
            session.attributes["error.type"] = str(self.status)
        self.rp.profiler.finish_session(session, error=self.error)
        if self.span is not None:
            summary = session_summary(session)
            set_span_attributes(self.span, {
                "otelprof.profile_id": session.profile_id_hex,
                "otelprof.samples": summary["samples"],
                "otelprof.cpu_ms": summary["cpu_ms"],
                "otelprof.top_frame": summary["top_frame"],
            })
