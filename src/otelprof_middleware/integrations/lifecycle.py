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

from ..policy import Decision, RequestInfo
from ..profile import SpanLink
from ..profiler import _CURRENT, Profiler, get_profiler
from ..session import Session, session_summary
from ..tracecontext import current_span, link_from_span, parse_traceparent, set_span_attributes

__all__ = ["RequestProfiling", "RequestHandle", "PROFILE_ID_HEADER", "HEADER_BOOST_HZ", "HEADER_BOOST_SECONDS"]

log = logging.getLogger("otelprof_middleware")

PROFILE_ID_HEADER = "X-Profile-Id"
#: Sampling rate of a header-triggered request at its start (1 sample per ms) ...
HEADER_BOOST_HZ = 1000
#: ... for this long; then ``sample_hz`` (or the governor's rate).
HEADER_BOOST_SECONDS = 0.2


class RequestProfiling:
    """Profiler + policy for one middleware instance."""

    def __init__(self, profiler: Optional[Profiler] = None, **options: Any) -> None:
        if profiler is not None and options:
            raise TypeError("pass either profiler= or options, not both (the profiler carries its own config)")
        if profiler is None:
            profiler = Profiler(**options) if options else get_profiler()
        self.profiler = profiler
        self.policy = policy_for(profiler)
        # Header-triggered requests are sampled at this rate for their first
        # HEADER_BOOST_SECONDS, so that a request of a few milliseconds still gets
        # samples (the caller was promised a profile id); None: no boost.
        cfg = profiler.config
        self.header_boost_hz: Optional[int] = HEADER_BOOST_HZ if HEADER_BOOST_HZ > cfg.sample_hz else None

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


from ..policy.policy import policy_for  # noqa: E402  (one policy per profiler; kept importable from here)


class RequestHandle:
    """One request's profiling state."""

    __slots__ = ("rp", "info", "decision", "session", "span", "status", "error",
                 "start_ns", "_token", "_traceparent", "_done", "_span_start_set",
                 "_t0", "_target", "_tail_state", "_recording")

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
        # late triggers (policy.request_started / request_finished / the watchdog)
        self._t0: Optional[float] = None
        self._target: Any = None
        self._tail_state = 0
        self._recording = False

    @property
    def profiled(self) -> bool:
        return self.session is not None

    @property
    def watched(self) -> bool:
        """True when the request is profiled, or the policy watches it (late triggers:
        slow promotion, flight recorder, route arming) and so must see its status and end.
        An integration may skip every hook of a request that is not watched."""
        return self.session is not None or self._t0 is not None or bool(self._tail_state)

    @property
    def profile_id(self) -> Optional[str]:
        return self.session.profile_id_hex if self.session is not None else None

    # ------------------------------------------------------------ start
    def _begin(self, traceparent: Optional[str]) -> None:
        self.span = current_span()
        link = link_from_span(self.span) if self.span is not None else None
        if link is None and traceparent:
            self._traceparent = parse_traceparent(traceparent)
        self.info.link = link or self._traceparent
        self.decision = self.rp.policy.decide(self.info)
        decision = self.decision
        if decision.profile:
            boost = self.rp.header_boost_hz if "header" in decision.triggers else None
            base = decision.hz or self.rp.config.sample_hz
            session = self.start_profile(decision.triggers, hz=boost or decision.hz)
            if session is not None:
                if boost:
                    session.return_to(base, HEADER_BOOST_SECONDS)
                if decision.expose_profile_id:
                    session.keep_if_empty = True  # its id goes to the client: always export it
        self.rp.policy.request_started(self)  # flight recorder, watchdog registration

    def start_profile(self, triggers: tuple[str, ...], hz: Optional[int] = None, *,
                      target: Any = None) -> Optional[Session]:
        """Start sampling this request (at entry, or later for a late trigger).
        ``target`` = ``(thread_id, task, loop)`` captured at entry: attach that
        instead of the caller (promotion runs on the watchdog thread)."""
        if self.session is not None or self._done:
            return self.session
        info = self.info
        attrs: dict[str, Any] = {"http.request.method": info.method, "url.path": info.path}
        if info.route:
            attrs["http.route"] = info.route
        name = f"{info.method} {info.route or info.path}"
        link = link_from_span(self.span) if self.span is not None else self._traceparent
        session = self.rp.profiler.start_session(name, link=link, attributes=attrs, triggers=tuple(triggers), hz=hz,
                                                 attach=target is None)
        if session is None:
            return None
        self.session = session
        if target is not None:
            thread_id, task, loop = target
            if task is not None:
                session.attach_task(task, loop, thread_id)
            else:
                session.attach_thread(thread_id)
            self._annotate_span_start()
            return session
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

    def pick_up_link(self, link: Optional[SpanLink], span: Any = None) -> None:
        """Use ``link`` (a span found by the integration, e.g. the parent of an
        instrumentation's child span) when no span was known yet; ``span`` is the
        span object to annotate, if the integration has it."""
        if self.span is not None or link is None:
            return
        try:
            self.info.link = link
            if span is not None:
                self.span = span
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
        try:
            # outcome -> route arming, flight-recorder keep/discard; False: the
            # watchdog is promoting this request right now and finalises it itself
            if not self.rp.policy.request_finished(self):
                return
        except Exception:
            self.rp.profiler._fail_once("finish-policy", "otelprof: request outcome could not be judged")
        self._finalize()

    def _finalize(self) -> None:
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
        self.annotate_span()

    def annotate_span(self) -> None:
        """Set the profile summary attributes on the span (if it still records).
        Called by :meth:`finish`; integrations whose span ends before the request
        does (the OTel ASGI span ends at the last body chunk) call it just before
        that, with the samples so far.  Never raises."""
        session = self.session
        if session is None or self.span is None:
            return
        try:
            if not self.span.is_recording():
                return
            summary = session_summary(session)
            set_span_attributes(self.span, {
                "otelprof.profile_id": session.profile_id_hex,
                "otelprof.samples": summary["samples"],
                "otelprof.cpu_ms": summary["cpu_ms"],
                "otelprof.wall_ms": summary["wall_ms"],
                "otelprof.top_frame": summary["top_frame"],
            })
        except Exception:
            pass
