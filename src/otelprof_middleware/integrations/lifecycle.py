"""The request lifecycle shared by every integration (ASGI, WSGI, Django, Flask).

Adapters use the fast entry; a custom adapter (or a test) may use the generic one::

    rp = RequestProfiling(profiler=None, **options)       # one per middleware instance

    # fast entry (the project's adapters): nothing is allocated for a request that
    # is neither profiled nor watched
    verdict, span = rp.screen(header_value, traceparent)
    if verdict:                                           # Screen.SKIP is 0
        handle = MyRequest(rp, ...)                       # a RequestHandle subclass
        if handle.open(verdict, span, traceparent):       # False: neither profiled nor watched
            ...

    # generic entry
    handle = rp.begin(RequestInfo(...), traceparent=...)  # never raises

    handle.set_route("/items/{id}")                       # when the framework knows it
    extra = handle.response_headers(present)              # when the response starts
    handle.set_status(200)
    handle.finish(error=None)                             # when the body is done

A handle exists for a request that is profiled, or watched by the late triggers
(which must see its status and end).  :class:`RequestHandle` implements what the
policy needs of a request (:class:`~otelprof_middleware.policy.ProfilableRequest`);
adapters subclass it to describe their request lazily (:meth:`RequestHandle.describe`).

Every entry point (begin, each ASGI send, finish) has one error firewall:
``except Exception`` → :meth:`RequestProfiling.report_failure` (counted, logged
once); the code inside lets errors rise to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any, Callable, Optional, TypeVar, cast

from opentelemetry import trace as _trace

from ..policy import Decision, Policy, RequestInfo, Screen, TailState, TailTicket
from ..profile import SpanLink
from ..config import Config
from ..profiler import (UNFINISHED_LIGHT_NAME, Profiler, activate_session, deactivate_session, get_profiler,
                        shared_profiler)
from ..session import EXTRA_SPAN_KEYS, LightTicket, Session, session_summary
from ..tracecontext import (SPAN_KEY as _SPAN_KEY, current_context as _current_context, link_from_span,
                            parse_traceparent, set_span_attributes, span_or_none, trace_of_traceparent)
from . import threads
from ._http import headers_to_add

__all__ = ["RequestProfiling", "RequestHandle", "PROFILE_ID_HEADER", "HEADER_BOOST_HZ", "HEADER_BOOST_SECONDS"]

T = TypeVar("T")

PROFILE_ID_HEADER = "X-Profile-Id"
#: Sampling rate of a header-triggered request at its start (1 sample per ms) ...
HEADER_BOOST_HZ = 1000
#: ... for this long; then ``sample_hz`` (or the governor's rate).
HEADER_BOOST_SECONDS = 0.2

_WATCH, _DECIDE_SAMPLED = Screen.WATCH, Screen.DECIDE_SAMPLED
_REGISTERED = TailState.REGISTERED
_NOT_STARTED = Decision.no("not_started")
#: the decision of a light ticket's request (the budgets apply at its first sample)
_LIGHT = Decision(True, ("probability",))
_get_current_span = _trace.get_current_span
_INVALID_SPAN = _trace.INVALID_SPAN
#: what a screen without a span answers (no allocation)
_NO_TRACE: tuple[Optional[int], bool] = (None, True)
_follow_hops = threads.follow_hops
_ref = weakref.ref
_reset_hops = threads.reset_hops


class RequestProfiling:
    """A profiler and its policy, as one middleware instance uses them.

    ``profiler`` uses that :class:`~otelprof_middleware.Profiler`; otherwise
    ``options`` configure the process's profiler (``get_profiler()`` returns it;
    see :func:`~otelprof_middleware.profiler.shared_profiler`), and with neither
    the process's profiler is used as it is (configured from the environment).
    ``by`` names the integration in the warning about a second, different
    configuration.  A bad option raises ``ConfigError`` here, at start-up."""

    def __init__(self, profiler: Optional[Profiler] = None, *, by: str = "ProfilingMiddleware(...)",
                 **options: Any) -> None:
        if profiler is not None and options:
            raise TypeError("pass either profiler= or options, not both (the profiler carries its own config)")
        #: the profiler is the process's (not one given with ``profiler=``)
        self.shared = profiler is None
        self.by = by
        if profiler is None:
            profiler = shared_profiler(Config.load(options), by=by) if options else get_profiler()
        self.profiler = profiler
        # Header-triggered requests are sampled at this rate for their first
        # HEADER_BOOST_SECONDS, so that a request of a few milliseconds still gets
        # samples (the caller was promised a profile id); None: no boost.
        self.header_boost_hz: Optional[int] = HEADER_BOOST_HZ if HEADER_BOOST_HZ > profiler.config.sample_hz else None
        threads.install()  # the one place the thread-pool hooks are installed

    @property
    def config(self) -> Any:
        return self.profiler.config

    def renew(self) -> None:
        """The app starts again (a second ASGI lifespan in one process, e.g. a test
        client per test): the process's profiler, shut down when the app last
        stopped, is replaced by a new one of the same configuration.  A profiler
        given with ``profiler=`` is the caller's to manage."""
        p = self.profiler
        if self.shared and p.config.enabled and not p.enabled:
            self.profiler = shared_profiler(p.config, by=self.by)

    @property
    def policy(self) -> Policy:
        """The profiler's policy (read on every request, so a test may replace it)."""
        return self.profiler.policy

    @property
    def header_name(self) -> str:
        """The trigger header, lower case."""
        return self.profiler.policy.header_name

    def report_failure(self, key: str, message: str) -> None:
        """The error firewall of the adapters' entry points (counted, logged once)."""
        self.profiler.report_failure(key, message)

    # ------------------------------------------------------------ entry
    def screen(self, header_value: Optional[str], traceparent: Optional[str]) -> tuple[Screen, Any]:
        """The cheap first answer for a request (``Screen.SKIP`` is falsy), with the
        current span (when there is one) for :meth:`RequestHandle.open`.  Allocates
        nothing for most requests."""
        entry = self.profiler.policy.entry
        span: Any = _current_context().get(_SPAN_KEY)  # None for most requests: two C calls
        if span is None and not traceparent:
            return entry.screen(header_value, None, True), None
        span = span_or_none(span)
        trace = _NO_TRACE
        if entry.needs_trace:
            ctx = span.get_span_context() if span is not None else None
            if ctx is not None and ctx.is_valid:
                trace = ctx.trace_id, bool(ctx.trace_flags & 0x01)
            elif traceparent:
                trace = trace_of_traceparent(traceparent) or _NO_TRACE
        return entry.screen(header_value, trace[0], trace[1]), span

    def begin(self, info: RequestInfo, *, traceparent: Optional[str] = None) -> "RequestHandle":
        """The generic entry: a handle for ``info`` (profiled, watched, or neither).
        Never raises."""
        handle = RequestHandle(self, info)
        try:
            verdict, span = self.screen(info.header(self.header_name), traceparent)
            if verdict:
                handle.open(verdict, span, traceparent)
        except Exception:
            self.report_failure("begin", "otelprof: request profiling failed at start; request unprofiled")
        return handle


class RequestHandle(TailTicket):
    """One request's profiling state (plain attributes with class defaults, so a
    watched request sets only what it uses).  Adapters subclass it: their
    constructor records ``thread_id`` (and ``task``), what a promotion must attach;
    ``describe()`` builds the :class:`RequestInfo` when the policy needs it."""

    decision: Decision = _NOT_STARTED
    #: the framework's request object (an adapter's), let go when the request ends:
    #: it usually refers back to this handle, and no reference cycle must remain
    source: Any = None
    session: Optional[Session] = None
    #: a request profiled by chance, registered for sampling before it has a session
    light: Optional[LightTicket] = None
    span: Any = None
    traceparent: Optional[str] = None
    status: Optional[int] = None
    error: Optional[BaseException] = None
    thread_id: Optional[int] = None
    task: Any = None
    _info: Optional[RequestInfo] = None
    _link: Optional[SpanLink] = None
    _token: Any = None
    _hop_token: Any = None
    _hops: Optional[list[list[Any]]] = None
    _linked = False
    _done = False
    _span_marked = False

    def __init__(self, rp: RequestProfiling, info: Optional[RequestInfo] = None) -> None:
        self.rp = rp
        if info is not None:
            self._info = info
        self.capture_target()

    # ------------------------------------------------------------ description
    def describe(self) -> RequestInfo:
        """The request's description (adapters override this; built at most once)."""
        return RequestInfo()

    @property
    def info(self) -> RequestInfo:
        """The request's description, with its trace link (built on first use)."""
        info = self._info
        if info is None or not self._linked:
            if info is None:
                info = self._info = self.describe()
            if info.link is None:
                info.link = self._link_now()
            self._linked = True
        return info

    def _link_now(self) -> Optional[SpanLink]:
        link = link_from_span(self.span) if self.span is not None else None
        if link is None:
            link = self._link
            if link is None and self.traceparent:
                link = self._link = parse_traceparent(self.traceparent)
        return link

    def capture_target(self) -> None:
        """Record the thread (and asyncio task) serving the request, for a promotion
        that runs on the watchdog thread (adapters do it in their constructor)."""
        self.thread_id = threading.get_ident()
        try:
            self.task = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread
            pass

    @property
    def profiled(self) -> bool:
        return self.session is not None

    @property
    def watched(self) -> bool:
        """True when the request is profiled, or the late triggers watch it (slow
        promotion, flight recorder, route arming) and so must see its status and
        end.  An integration may skip every hook of a request that is not watched."""
        return self.session is not None or self.tail_t0 is not None

    @property
    def profile_id(self) -> Optional[str]:
        return self.session.profile_id_hex if self.session is not None else None

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` ran."""
        return self._done

    # ------------------------------------------------------------ start
    def open(self, verdict: Screen, span: Any, traceparent: Optional[str] = None) -> bool:
        """Enter the request: watch it (``Screen.WATCH``) or decide in full.  True when
        the integration must follow the request (:attr:`watched`).  ``span`` comes
        from :meth:`RequestProfiling.screen`; ``traceparent`` is the incoming header
        (the link when there is no span)."""
        if span is not None:
            self.span = span
        if traceparent is not None:
            self.traceparent = traceparent
        rp = self.rp
        policy = rp.profiler.policy
        late = policy.late
        if verdict is _WATCH:  # the common case: nothing selected it, the late triggers watch it
            if late.watch(self):  # (promotion on: thread-pool hand-offs are followed)
                self._hop_token = _follow_hops(_ref(self))  # the watchdog's cached weak reference
            return True
        entry = policy.entry
        if verdict is _DECIDE_SAMPLED and rp.profiler.light_sessions and not entry.has_exclusions:
            # selected by chance and by nothing else (screen() says so): a light ticket
            self.light = rp.profiler.light_enter(self, self.thread_id or threading.get_ident(), self.task)
            if self.light is not None:
                self.decision = _LIGHT
                late.started_sampled(self)  # (the outcome arms routes; no watchdog, no recorder)
                self._hop_token = _follow_hops(_ref(self))  # work it hands to a thread pool: bind_hop
                return True
        self._open_full(entry, verdict)
        late.started(self)  # flight recorder, watchdog registration
        if self.tail_state == _REGISTERED:
            self._hop_token = _follow_hops(_ref(self))
        return self.session is not None or self.tail_t0 is not None

    def light_session(self, ticket: LightTicket) -> Optional[Session]:
        """The session of this request's light ticket, at its first sample (maybe on
        the sampler thread): the budgets, then a light session (``Session.light``)
        whose target is the ticket.  What describes the request (its name, route,
        URL) is made at the end (:meth:`_complete_light`)."""
        entry = self.rp.profiler.policy.entry
        decision = entry.admit(["probability"])
        if not decision.profile or not entry.claim(decision):
            return None
        session = self.rp.profiler.start_session(UNFINISHED_LIGHT_NAME, link=self._link_now(),
                                                 triggers=("probability",), ticket=ticket)
        entry.bind(session)
        return session

    def _open_full(self, entry: Any, verdict: Screen) -> None:
        rp = self.rp
        info = self.info
        decision = self.decision = entry.decide(info, True if verdict is _DECIDE_SAMPLED else None)
        if decision.profile and not entry.claim(decision):
            decision = self.decision = Decision.no("concurrency", decision.header_requested)
        if decision.profile:
            boost = rp.header_boost_hz if "header" in decision.triggers and decision.hz is None else None
            session = self.start_profile(decision.triggers, hz=boost or decision.hz,
                                         profile_types=decision.profile_types)
            entry.bind(session)
            if session is not None:
                if boost:
                    session.return_to(rp.config.sample_hz, HEADER_BOOST_SECONDS)
                if decision.expose_profile_id:
                    session.keep_if_empty = True  # its id goes to the client: always export it

    def start_profile(self, triggers: tuple[str, ...], hz: Optional[int] = None, *,
                      remote: bool = False, profile_types: tuple[str, ...] = ()) -> Optional[Session]:
        """Start sampling this request (at entry, or later for a late trigger).
        ``remote``: called from another thread (a promotion on the watchdog thread),
        so the request's own thread or task is attached, with the pool threads it is
        working in.  ``profile_types``: types the trigger header added."""
        if self.session is not None or self._done:
            return self.session
        info = self.info
        name, attrs = self._description()
        session = self.rp.profiler.start_session(name, link=info.link, attributes=attrs, triggers=tuple(triggers),
                                                 hz=hz, attach=not remote, profile_types=profile_types)
        if session is None:
            return None
        if remote:
            if self.task is not None:
                session.attach_task(self.task, self.task.get_loop(), self.thread_id)
            elif self.thread_id is not None:
                session.attach_thread(self.thread_id)
            with _hop_lock:
                self.session = session
                for hop in self._hops or ():
                    session.attach_thread(hop[0])
                    hop[1] = session
        else:
            self.session = session
            self._token = activate_session(session)
        self._mark_span()
        return session

    def _description(self) -> tuple[str, dict[str, Any]]:
        """The profile's name (``GET /items/{id}``) and the request's attributes."""
        info = self.info
        attrs: dict[str, Any] = {"http.request.method": info.method, "url.path": info.path}
        if info.route:
            attrs["http.route"] = info.route
        return f"{info.method} {info.route or info.path}", attrs

    def _mark_span(self) -> None:
        if self.session is None or self.span is None or self._span_marked:
            return
        link = self.session.link
        if link is not None and link.source == "span":
            set_span_attributes(self.span, {"pyroscope.profile.id": link.span_id_hex})
            self._span_marked = True

    def bind_hop(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Wrap ``fn``, handed to another thread while the request is watched: that
        thread is attached if the request is (or gets) promoted while ``fn`` runs."""

        def run_hop(*args: Any, **kwargs: Any) -> T:
            hop: list[Any] = [threading.get_ident(), None]
            try:
                with _hop_lock:
                    if self._hops is None:
                        self._hops = []
                    self._hops.append(hop)
                    session = self.session
                    if session is None and self.light is not None:
                        # profiled by chance: work handed to a thread pool is sampled
                        # in the request's session, made now if no sample made it yet
                        session = self.light.session_for_sample()
                    if session is not None and not session.finished:
                        session.attach_thread(hop[0])
                        hop[1] = session
            except Exception:  # the hook's firewall: the work itself always runs
                self.rp.report_failure("hop", "otelprof: could not follow work into a thread pool")
            try:
                return fn(*args, **kwargs)
            finally:
                try:
                    with _hop_lock:
                        if self._hops is not None and hop in self._hops:
                            self._hops.remove(hop)
                        if hop[1] is not None:
                            hop[1].detach_thread(hop[0])
                except Exception:
                    self.rp.report_failure("hop", "otelprof: could not follow work into a thread pool")

        return run_hop

    # ------------------------------------------------------------ span
    def pick_up_span(self) -> None:
        """Read the current span again (our middleware may sit outside the OTel one)."""
        if self.span is not None:
            return
        span = _get_current_span()
        if span is _INVALID_SPAN or not span.get_span_context().is_valid:
            return
        self.span = span
        self.pick_up_link(link_from_span(span))

    def pick_up_link(self, link: Optional[SpanLink], span: Any = None) -> None:
        """Use ``link`` (a span found by the integration, e.g. the parent of an
        instrumentation's child span) when no span was known yet; ``span`` is the
        span object to annotate, if the integration has it."""
        if link is None:
            return
        if span is not None:
            self.span = span
        if self._info is not None:
            self._info.link = link
        session = self.session
        if session is not None and (session.link is None or session.link.source != "span"):
            session.link = link
            self._mark_span()

    # ------------------------------------------------------------ response
    def set_status(self, status: Optional[int]) -> None:
        self.status = status

    def set_error(self, error: BaseException) -> None:
        """Record an exception the framework turned into its error page (the first one wins)."""
        if self.error is None:
            self.error = error

    def set_route(self, route: Optional[str]) -> None:
        """The route template, as the framework's router reported it."""
        if not route:
            return
        info = self.info
        info.route = route
        if self.session is not None:
            self.session.attributes["http.route"] = route
            self.session.name = f"{info.method} {route}"

    def response_headers(self, present: Callable[[str], bool] = lambda name: False) -> list[tuple[str, str]]:
        """Headers to add to the response (only ``X-Profile-Id`` when exposed), minus
        those it already has (``present(name)``, any case)."""
        if self.session is not None and self.decision.expose_profile_id:
            return headers_to_add([(PROFILE_ID_HEADER, self.session.profile_id_hex)], present)
        return []

    # ------------------------------------------------------------ end
    def finish(self, error: Optional[BaseException] = None) -> None:
        """End of the request (body sent, or failed).  Idempotent, never raises.
        An exception that no response was sent for counts as status 500 (the server
        or an outer error middleware turns it into one), a cancellation does not."""
        if self._done:
            return
        self._done = True
        try:
            if error is not None:
                self.set_error(error)
                if self.status is None and isinstance(error, Exception):
                    self.status = 500
            if self._hop_token is not None:
                try:
                    _reset_hops(self._hop_token)
                except ValueError:  # ended in another context than it began (a streamed body)
                    pass
            if self.light is not None:  # a request profiled by chance: a session if it was sampled
                self.session, self.light = self.rp.profiler.light_exit(self.light), None
            if self.session is None:  # the common case: watched only
                if self.tail_t0 is not None:
                    self.rp.profiler.policy.late.finished(self)  # outcome -> route arming
            else:
                if not self.session.light:  # (a light session's end is looked at only if it has samples)
                    self.on_profiled_end(error)
                # outcome -> route arming, flight-recorder keep/discard; False: the
                # watchdog is promoting this request right now and finalises it itself
                if (self.tail_t0 is None or self.rp.profiler.policy.late.finished(self)) and self.session is not None:
                    self.finalize()
        except Exception:
            self.rp.report_failure("finish", "otelprof: request profiling failed at finish")
        self.source = None

    def on_profiled_end(self, error: Optional[BaseException]) -> None:
        """Adapters' last look at a profiled request before it ends (the route)."""

    def finalize(self) -> None:
        """Finish the request's profile (status, duration, error on it) and export it."""
        session = self.session
        if session is None:
            return
        if session.light:
            self.rp.profiler.finish_session(session, error=self.error, complete=self._complete_light)
            if session.stacks.ticks:
                self.annotate_span()
            return
        self.pick_up_span()
        if self._token is not None:
            deactivate_session(self._token)  # (finished in another context, e.g. a streamed body: nothing to do)
            self._token = None
        self._record_outcome(session)
        self.rp.profiler.finish_session(session, error=self.error)
        self.annotate_span()

    def _record_outcome(self, session: Session) -> None:
        """Status, duration and error of the request, on its profile."""
        attrs = session.attributes
        if self.status is not None:
            attrs["http.response.status_code"] = self.status
        attrs["otelprof.duration_ms"] = round((time.monotonic_ns() - session.start_mono_ns) / 1e6
                                              + float(attrs.get("otelprof.unsampled_head_ms", 0.0)), 3)
        if self.error is not None:
            attrs["error.type"] = type(self.error).__name__
        elif self.status is not None and self.status >= 500:
            attrs["error.type"] = str(self.status)

    def _complete_light(self) -> None:
        """A light session that has samples: describe it like any request's profile."""
        session = self.session
        if session is None:
            return
        self.on_profiled_end(self.error)
        if not self.info.route:
            self.set_route(self.info.resolve_route())
        session.name, attrs = self._description()
        session.attributes.update(attrs)
        self.pick_up_span()
        self._record_outcome(session)

    def drop_profile(self) -> None:
        """Throw the profile away (a flight recording that was not worth keeping)."""
        session = self.session
        if session is None:
            return
        self.rp.profiler.discard_session(session)
        self.session = None
        if self._token is not None:
            deactivate_session(self._token)
            self._token = None

    def annotate_span(self) -> None:
        """Set the profile summary attributes on the span (if it still records).
        Called by :meth:`finish`; integrations whose span ends before the request
        does (the OTel ASGI span ends at the last body chunk) call it just before
        that, with the samples so far."""
        session = self.session
        if session is None or self.span is None or not self.span.is_recording():
            return
        summary = session_summary(session)
        # a short request profiled by chance has no profile of its own: its samples
        # are in its route's aggregate (docs/sampling.md, "Short requests")
        aggregate = session.aggregate_id
        set_span_attributes(self.span, {
            **({"otelprof.aggregate_profile_id": aggregate.hex()} if aggregate is not None
               else {"otelprof.profile_id": session.profile_id_hex}),
            "otelprof.samples": summary["samples"],
            "otelprof.cpu_ms": summary["cpu_ms"],
            "otelprof.wall_ms": summary["wall_ms"],
            "otelprof.top_frame": self.rp.profiler.privacy.text(str(summary["top_frame"])),  # as in the profile
            # the extra profile types asked for (profile_types): alloc_bytes, lock_wait_ms, gc_ms
            **{f"otelprof.{k}": v for k, v in summary.items() if k in EXTRA_SPAN_KEYS},
        })


_hop_lock = threading.Lock()

H = TypeVar("H", bound=RequestHandle)


def specialise(cls: type[H], **attributes: Any) -> type[H]:
    """A subclass of ``cls`` with these class attributes (functions as static
    methods); one class per middleware, so no request pays for its settings."""
    attrs = {k: staticmethod(v) if callable(v) else v for k, v in attributes.items()}
    return cast("type[H]", type(cls.__name__, (cls,), attrs))


def with_route_of(cls: type[H], route_of: Callable[[Any], Optional[str]]) -> type[H]:
    """``cls`` whose requests ask ``route_of(source)`` (the application's router) for
    their route template."""
    return specialise(cls, route_of=route_of)
