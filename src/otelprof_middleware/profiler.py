"""The public engine: :class:`Profiler` profiles units of work and ships the
results off the hot path.

    profiler = Profiler(exporter="file", output_dir="profiles", sample_hz=100)
    with profiler.profile("nightly-import", tenant="a"):   # also a decorator
        run_import()
    profiler.force_flush(timeout=5); profiler.shutdown(timeout=5)

Integrations use the lower-level :meth:`Profiler.start_session` /
:meth:`Profiler.finish_session`, :func:`activate_session` (the session of the
work running in this context) and :meth:`Profiler.report_failure` (their error
firewall); the request policy is :attr:`Profiler.policy`.  Nothing here raises
into the caller: a failure skips the profile, is counted in
:meth:`Profiler.stats` and logged once.

:meth:`Profiler.shutdown` is the one bounded exit path: the ASGI lifespan
shutdown, the ``atexit`` hook (gunicorn workers after SIGTERM, scripts, Flask's
dev server) and user code all call it; it is idempotent and safe from any thread.

This module composes the engine: it builds the exporters (``export.registry``)
and the export pipeline when a profiler is made, hands the metric instruments to
its ``Stats`` and registers the sampler's CPU with ``overhead``; its request
policy is made here too.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from ._safety import Firewall, LogOnce
from .config import Config, shown_value
from .export.metrics import instruments
from .export.pipeline import ExportPipeline
from .export.priority import SAMPLED_TRIGGERS, priority_of
from .export.registry import create_exporter, create_exporters, describe_destination
from .export.settings import batch_settings
from .overhead import add_cpu_source, overhead_cpu
from .policy import Policy
from .profile import AttributeValue, SpanLink
from .privacy import Privacy
from .profiletypes import hooks as profile_type_hooks
from .profiletypes import EXTRA_PROFILE_TYPES, recorder_for
from . import native_sampler
from .sampler import get_sampler
from .session import LightOwner, LightTicket, Session
from .stats import Stats
from .tracecontext import current_link
from .windows import ContinuousRecorder, ShortRequestAggregator

__all__ = ["Profiler", "get_profiler", "set_profiler", "shared_profiler", "current_session", "activate_session",
           "deactivate_session"]

log = logging.getLogger("otelprof_middleware")

F = TypeVar("F", bound=Callable[..., Any])

_CURRENT: contextvars.ContextVar[Optional[Session]] = contextvars.ContextVar("otelprof_session", default=None)
#: The name a request layer gives a light session until the request names it at its end
#: (kept by one that is still running when the profiler shuts down).
UNFINISHED_LIGHT_NAME = "request profiled by chance (unfinished)"
_USE_CURRENT_SPAN: Any = object()

# Created at import, never first on a worker thread: a fork (gunicorn --preload) while
# a thread is inside a first import would leave the child waiting on that import lock.
_INSTRUMENTS = instruments(overhead_cpu)


def _sampler_cpu_ns() -> int:
    return get_sampler().cpu_ns_self


add_cpu_source(_sampler_cpu_ns)


def _log_start_line(text: str) -> None:
    """Log a start-up fact at INFO.  While the application has set up no logging at
    all, Python shows only warnings; then the line goes to stderr directly, so that
    a new user sees where profiles go."""
    if log.hasHandlers():
        log.info(text)
    else:
        try:
            sys.stderr.write(text + "\n")
        except Exception:  # pragma: no cover - a closed stderr
            pass


def current_session() -> Optional[Session]:
    """The session of the work running in this context (inherited by child tasks
    and by thread-pool work that copies the context), if any."""
    s = _CURRENT.get()
    return s if s is not None and not s.finished else None


def activate_session(session: Optional[Session]) -> "contextvars.Token[Optional[Session]]":
    """Make ``session`` the session of the work running in this context (what
    :func:`current_session` returns here, in child tasks and in thread-pool work);
    undo with :func:`deactivate_session`."""
    return _CURRENT.set(session)


def deactivate_session(token: "contextvars.Token[Optional[Session]]") -> None:
    """Undo :func:`activate_session` (a no-op when called from another context, e.g.
    at the end of a streamed body)."""
    try:
        _CURRENT.reset(token)
    except ValueError:
        pass


class Profiler:
    """Profiles units of work; one per application is typical (``get_profiler()``).

    Options are keyword arguments (or a ``Config``, or ``settings``, a framework
    settings mapping), else ``OTELPROF_*`` / ``OTEL_*`` variables; all of them are in
    ``docs/configuration.md``.  The common ones:

    * ``exporter``: ``"file"`` (default, into ``output_dir="profiles"``), ``"otlp"``
      (default once an endpoint is set), ``"pyroscope"``, ``"console"``, a comma list;
    * ``endpoint``, ``protocol`` (``"http/protobuf"`` or ``"grpc"``), ``headers``: the
      OTLP destination; ``pyroscope_endpoint`` and its own ``pyroscope_*`` credentials;
    * ``service_name``, ``sample_hz`` (default 100), ``min_samples``;
    * ``exporters``: exporter objects used instead of those the ``exporter`` option
      names (a string in the list names a built-in one), e.g.
      ``Profiler(exporters=[InMemoryProfileExporter()])`` in tests.

    A bad value raises :class:`~otelprof_middleware.ConfigError` here, at start-up.
    Where profiles go is logged once (``otelprof: profiles -> ...``).
    """

    def __init__(self, config: Optional[Config] = None, *, settings: Optional[dict[str, Any]] = None,
                 exporters: Optional[Sequence[Any]] = None, **options: Any) -> None:
        self.config = config if config is not None else Config.load(options, settings=settings)
        if config is not None and options:
            self.config = config.replace(**options)
        self._stats = Stats(_INSTRUMENTS)
        self._count_light = self._stats.tally("light_requests")
        self._lock = threading.Lock()
        self._finished_cond = threading.Condition(self._lock)  # a finish_session call ended
        self._active: set[Session] = set()
        self._finishing = 0  # finish_session calls under way (their sessions are in no queue yet)
        self._shut_down = False
        self._closing: Optional[threading.Event] = None  # set once shutdown() is done
        self._shutdown_ok = False
        # an internal failure; a started profile it loses is counted as dropped "error" where it is lost
        self._firewall = Firewall(lambda key: self._stats.incr("internal_errors"))
        #: what may leave the process (masked paths, relative file names, redaction)
        self.privacy = Privacy.from_config(self.config)
        chosen = self._build_exporters(exporters)
        self._pipeline = ExportPipeline([e for e, _how in chosen], self._stats,
                                        batch=batch_settings(self.config), min_samples=self.config.min_samples,
                                        prepare=self.privacy.apply)
        self._announce(chosen)
        self._aggregator: Optional[ShortRequestAggregator] = None
        self._light_possible: Optional[bool] = None
        cfg = self.config
        if cfg.aggregate_window > 0 and cfg.min_samples > 1:
            self._aggregator = ShortRequestAggregator(
                window=cfg.aggregate_window, min_samples=cfg.min_samples, max_routes=cfg.aggregate_max_routes,
                max_stacks=cfg.window_max_stacks, submit=self._pipeline.submit, stats=self._stats,
                firewall=self._firewall)
        self._continuous: Optional[ContinuousRecorder] = None
        if cfg.enabled and cfg.continuous_hz > 0:
            self._start_continuous()
        #: the request policy (triggers, budgets); replace it before building a
        #: middleware to inject clocks or random sources (tests)
        self.policy: Policy = Policy(self)
        profile_type_hooks.acquire(self.config)  # allocation/lock/GC hooks, only for the types asked for
        _live_profilers.add(self)

    def _build_exporters(self, given: Optional[Sequence[Any]]) -> list[tuple[Any, str]]:
        """``(exporter, how it was chosen)``: by the ``exporter`` option, or named or
        given as an object in ``exporters=``."""
        if given is None:
            if not self.config.enabled:
                return []
            return [(e, "option") for e in create_exporters(self.config)]
        if isinstance(given, (str, bytes)):
            raise TypeError("exporters= takes a list of exporters or names, e.g. exporters=['file']")
        out: list[tuple[Any, str]] = []
        for item in given:
            if isinstance(item, str):
                out.append((create_exporter(item, self.config), "name"))
            elif callable(getattr(item, "export", None)) and callable(getattr(item, "shutdown", None)):
                out.append((item, "object"))
            else:
                raise TypeError(f"exporters= takes exporter objects (with export() and shutdown()) or names; "
                                f"got {item!r}")
        return out

    def _announce(self, chosen: list[tuple[Any, str]]) -> None:
        """Say once where profiles go, and where the deciding values came from."""
        if not self.config.enabled:
            text = f"otelprof: profiling is off (enabled=false from {self.config.source_of('enabled')})"
        elif not chosen:
            text = f"otelprof: profiles -> nowhere (exporter=none from {self.config.source_of('exporter')})"
        else:
            text = "otelprof: profiles -> " + " and ".join(
                describe_destination(self.config, e, chosen_by=how) for e, how in chosen)
        _log_start_line(text)

    # ------------------------------------------------------------------ engine API
    @property
    def enabled(self) -> bool:
        return self.config.enabled and not self._shut_down

    @property
    def active_sessions(self) -> int:
        return len(self._active)

    def profile(self, name: Optional[str] = None, *, trigger: str = "manual",
                attributes: Optional[dict[str, AttributeValue]] = None,
                **attrs: AttributeValue) -> "ProfileBlock":
        """Profile a block (``with``) or every call of a function (decorator)."""
        merged = dict(attributes or {})
        merged.update(attrs)
        return ProfileBlock(self, name, trigger, merged)

    def start_session(
        self,
        name: str,
        *,
        link: Union[SpanLink, None, Any] = _USE_CURRENT_SPAN,
        attributes: Optional[dict[str, AttributeValue]] = None,
        triggers: tuple[str, ...] = (),
        attach: bool = True,
        hz: Optional[int] = None,
        profile_types: tuple[str, ...] = (),
        light: Optional[bool] = None,
        ticket: Optional[LightTicket] = None,
    ) -> Optional[Session]:
        """Start sampling a unit of work; None when disabled or on any internal failure.
        ``attach`` attaches the calling asyncio task, or else the calling thread.
        ``profile_types``: types measured besides the config's ``profile_types`` (a
        trigger header's, already checked against ``header_profile_types``).
        ``light``: sample it as a light session (``Session.light``); None: when its
        triggers are of chance only, at the configured rate, and :attr:`light_sessions`
        allows (True: the caller checked :attr:`light_sessions`; a request layer that
        names the session only at its end, ``finish_session(..., complete=)``).
        ``ticket``: the session of that :class:`~otelprof_middleware.session.LightTicket`
        (light, started when the ticket was, its target the ticket's: see
        :meth:`light_enter`)."""
        if not self.enabled:
            return None
        session: Optional[Session] = None
        try:
            if link is _USE_CURRENT_SPAN:
                link = current_link()
            cfg = self.config
            session = Session(
                name,
                hz=hz or cfg.sample_hz,
                max_depth=cfg.max_stack_depth,
                max_duration=cfg.max_profile_duration,
                max_samples=cfg.max_samples,
                link=link,
                attributes=attributes,
                triggers=triggers,
                native=cfg.native_sampler,
            )
            # (a ticket's session records CPU and wall time only: tickets are made only
            # when no other type is configured, see light_sessions)
            session.extras = recorder_for(session, cfg, profile_types) if ticket is None else None
            if session.extras is not None:
                profile_type_hooks.ensure(cfg)  # a forked child installs its hooks here
            if ticket is not None:
                light, attach = True, False
            elif light is None:
                light = attach and session.extras is None and self._light_ok(triggers, hz)
            if attach and not light:
                session.attach_current()
            with self._lock:
                self._active.add(session)
            self._stats.incr("profiles_started")
            if light:
                # a request profiled by chance, whose samples will most likely join its
                # route's aggregate: sampled without a session's per-request bookkeeping
                session.light = True
                get_sampler().register_light(session, ticket)
            else:
                get_sampler().register(session)
            return session
        except Exception:
            if session is not None:
                self._lost(session)
            self.report_failure("start", "otelprof: could not start a profile; the work runs unprofiled")
            return None

    def light_enter(self, owner: LightOwner, thread_id: int, task: Any = None) -> Optional[LightTicket]:
        """Register a request profiled by chance (running in asyncio ``task``, or else
        in thread ``thread_id``, the calling one) for light sampling, before it has a
        session: ``owner.light_session(ticket)`` makes one at its first sample (the
        budgets apply then).  Only when :attr:`light_sessions`; None on any internal
        failure.  End it with :meth:`light_exit`."""
        try:
            cfg = self.config
            ticket = LightTicket(thread_id, task, cfg.sample_hz, cfg.max_stack_depth, owner)
            get_sampler().light_enter(ticket)
            self._count_light()
            return ticket
        except Exception:
            self.report_failure("start", "otelprof: could not start a profile; the work runs unprofiled")
            return None

    def light_exit(self, ticket: LightTicket) -> Optional[Session]:
        """The request of ``ticket`` ended: its session (to finish with
        :meth:`finish_session`), if a sample made one."""
        try:
            return get_sampler().light_exit(ticket)
        except Exception:
            self.report_failure("finish", "otelprof: could not finish a profile; it is skipped")
            return ticket.close()

    @property
    def light_sessions(self) -> bool:
        """True when requests profiled by chance run as light sessions
        (``Session.light``, :class:`~otelprof_middleware.sampler.LightSessions`):
        short-request aggregates are on, the native CPU sampler is available, no extra
        profile type is recorded for every profile, and their ids are not sent to
        clients (``expose_profile_id``: those are kept whatever their length)."""
        ok = self._light_possible
        if ok is None:
            cfg = self.config
            ok = self._light_possible = bool(
                self._aggregator is not None and cfg.native_sampler and cfg.expose_profile_id is not True
                and not any(t in EXTRA_PROFILE_TYPES for t in cfg.profile_types)
                and native_sampler.load()[0] is not None)
        return ok

    def _light_ok(self, triggers: tuple[str, ...], hz: Optional[int]) -> bool:
        """May a session with these triggers be a light one?  Triggers of chance only
        (probability, on-demand windows), at the configured rate."""
        if not triggers or (hz is not None and hz != self.config.sample_hz):
            return False
        return all(t in SAMPLED_TRIGGERS for t in triggers) and self.light_sessions

    def _lost(self, session: Session) -> None:
        """A started session that can no longer be exported: counted once as dropped ``error``."""
        with self._lock:
            if session not in self._active:
                return
            self._active.discard(session)
        session.finished = True
        self._stats.dropped("error", priority=priority_of(session).label)

    def finish_session(self, session: Optional[Session], *, error: Optional[BaseException] = None,
                       complete: Optional[Callable[[], None]] = None) -> bool:
        """Stop sampling ``session`` and queue it for export.  True if queued.
        ``complete()``: called once sampling has stopped, if the session has samples
        (a light session's name and attributes are only worth making then)."""
        if session is None:
            return False
        with self._lock:  # claimed once, also when shutdown finishes it at the same moment
            if session.finished:
                return False
            session.finished = True
            self._active.discard(session)
            self._finishing += 1
        handed_over = False
        try:
            get_sampler().unregister(session)
            session.end_mono_ns = time.monotonic_ns()
            session.detach_all()
            if error is not None and session.error is None:
                session.error = type(error).__name__
            if complete is not None and session.stacks.ticks:
                complete()
            handed_over = True  # from here on the pipeline (or the aggregate) counts it, whatever happens
            aggregator = self._aggregator
            if aggregator is not None:
                fate = aggregator.offer(session)  # a short request profiled by chance: into its route's aggregate
                if fate is not None:
                    return fate == "aggregated"
            return self._pipeline.submit(session)
        except Exception:
            if not handed_over:
                self._stats.dropped("error", priority=priority_of(session).label)
            self.report_failure("finish", "otelprof: could not finish a profile; it is skipped")
            return False
        finally:
            with self._lock:
                self._finishing -= 1
                if not self._finishing and self._closing is not None:  # a shutdown waits for it
                    self._finished_cond.notify_all()

    def discard_session(self, session: Optional[Session]) -> None:
        """Stop sampling ``session`` and throw its samples away (e.g. the request was
        not worth keeping after all)."""
        if session is None or session.finished:
            return
        with self._lock:
            if session.finished:
                return
            session.finished = True
            self._active.discard(session)
        self._stats.incr("profiles_discarded")
        try:
            get_sampler().unregister(session)
            session.detach_all()
        except Exception:
            self.report_failure("discard", "otelprof: could not discard a profile")

    def enable_window(self, seconds: float, probability: float = 1.0, route: Optional[str] = None) -> Any:
        """On-demand profiling (admin tooling): profile requests matching ``route`` (a
        route template or a path; None = all) with ``probability`` for ``seconds``,
        capped by ``max_window``.  Budgets still apply.  Returns the window; its
        ``close()`` ends it early.  Raises ValueError for bad arguments."""
        return self.policy.enable_window(seconds, probability=probability, route=route)

    # ------------------------------------------------------------------ lifecycle
    @property
    def exporters(self) -> tuple[Any, ...]:
        """The exporters this profiler delivers to."""
        return self._pipeline.exporters

    def add_exporter(self, exporter: Any) -> None:
        """Deliver to ``exporter`` too, next to the configured ones (e.g. an
        ``otelprof_middleware.testing.InMemoryProfileExporter`` in a test).  Only
        before the first profile is finished: raises ``RuntimeError`` after that."""
        self._pipeline.add_exporter(exporter)

    def force_flush(self, timeout: Optional[float] = None) -> bool:
        """Export everything finished so far (window profiles end their window now);
        True if done within ``timeout`` seconds."""
        self._flush_windows(close=False)
        return self._pipeline.force_flush(timeout)

    def _flush_windows(self, *, close: bool) -> None:
        try:
            if self._aggregator is not None:
                self._aggregator.flush(close=close)
            if self._continuous is not None:
                self._continuous.flush(close=close, sampler=get_sampler())
        except Exception:
            self.report_failure("windows", "otelprof: could not end the window profiles")

    def _start_continuous(self) -> None:
        cfg = self.config
        recorder = ContinuousRecorder(hz=cfg.continuous_hz, window=cfg.continuous_window,
                                      max_depth=cfg.max_stack_depth, max_stacks=cfg.window_max_stacks,
                                      native=cfg.native_sampler, submit=self._pipeline.submit, stats=self._stats,
                                      firewall=self._firewall)
        recorder.spans.install()  # (again later if the tracer provider is set after us)
        sampler = get_sampler()
        if not sampler.set_continuous(recorder):
            _warn_once("continuous", "otelprof: continuous_hz is set for a second profiler in this process; "
                       "only the first one samples the process continuously")
            return
        self._continuous = recorder

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Stop profiling and deliver what is left within ``timeout`` seconds in all
        (default ``shutdown_timeout``); True if everything was delivered.

        Sessions being finished right now (a request ending) are waited for, within
        the budget; sessions still running are finished as they are.  Whatever is
        still undelivered at the deadline (in flight included) is counted as dropped
        ``shutdown`` and logged with the number.  Idempotent and safe from any
        thread: a second call waits for the first (up to its own ``timeout``) and
        returns its result."""
        if timeout is None:
            timeout = self.config.shutdown_timeout
        with self._lock:
            done = self._closing
            first = done is None
            if done is None:
                done = self._closing = threading.Event()
            self._shut_down = True  # no new sessions from here on
        if not first:
            return done.wait(timeout) and self._shutdown_ok
        deadline = time.monotonic() + timeout
        try:
            with self._lock:
                while self._finishing and self._finished_cond.wait(max(0.0, deadline - time.monotonic())):
                    pass
            for session in list(self._active):
                self.finish_session(session)
            self._flush_windows(close=True)
            self.policy.close()
            profile_type_hooks.release(self.config)
            get_sampler().release_idle_timers()
            self._shutdown_ok = self._pipeline.shutdown(max(0.0, deadline - time.monotonic()))
        finally:
            _live_profilers.discard(self)
            done.set()
        return self._shutdown_ok

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters as plain numbers: profiles started, collected,
        exported, dropped by reason (and priority), what is pending, per exporter.
        ``docs/delivery.md`` ("Counting what was lost") has the identities they satisfy
        once nothing is moving:

        * ``profiles_started + window_profiles = active_sessions + profiles_discarded
          + profiles_aggregated + profiles_pending + profiles_collected + sum(dropped.values())``;
        * for each exporter: ``profiles_collected = exported + sum(dropped.values())
          + queued + in_flight``."""
        snap = self._stats.snapshot()
        for key in ("profiles_started", "profiles_discarded", "profiles_exported", "profiles_aggregated",
                    "window_profiles"):
            snap.setdefault(key, 0)
        snap["active_sessions"] = len(self._active)
        snap["profiles_pending"] = self._pipeline.sessions_pending
        snap["queue_pending"] = self._pipeline.pending
        for ch in self._pipeline.channels:
            e = snap["exporters"].setdefault(ch.name, {"exported": 0, "dropped": {}, "dropped_by_priority": {},
                                                       "requests": 0, "retries": 0})
            e["queued"] = ch.queued
            e["in_flight"] = ch.pending - ch.queued
            e["queued_bytes"] = ch.queued_bytes
            e["queued_by_priority"] = ch.queued_by_priority()
        return snap

    @property
    def stats_recorder(self) -> Stats:
        """The live counters that components count into (``stats()`` reads them)."""
        return self._stats

    def report_failure(self, key: str, message: str) -> None:
        """The error firewall of every entry point into the profiler: count the failure
        (``stats()["internal_errors"]``; a started profile it loses is counted where
        it is lost, as dropped ``error``) and log it once per ``key`` with its
        traceback.  Call it from an ``except Exception`` block; it never raises."""
        self._firewall.report(key, message)


class ProfileBlock:
    """What :meth:`Profiler.profile` returns: a context manager and a decorator.

    Nested use (a block inside a profiled block, also in child tasks or thread-pool
    work that inherit the context) does not start a second profile: it attaches
    the current task or thread to the outer one for the block's duration."""

    def __init__(self, profiler: Profiler, name: Optional[str], trigger: str,
                 attributes: dict[str, AttributeValue]) -> None:
        self._profiler = profiler
        self._name = name
        self._trigger = trigger
        self._attributes = attributes
        self._stack: list[tuple[Optional[Session], Any, str]] = []
        self.session: Optional[Session] = None

    def __enter__(self) -> Optional[Session]:
        outer = current_session()
        if outer is not None:
            kind = outer.attach_current()
            self._stack.append((outer, None, "nested-" + kind))
            return outer
        session = self._profiler.start_session(self._name or "profile", attributes=self._attributes,
                                               triggers=(self._trigger,) if self._trigger else ())
        token = activate_session(session) if session is not None else None
        self._stack.append((session, token, "own"))
        self.session = session
        return session

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        session, token, kind = self._stack.pop()
        if session is None:
            return
        if kind == "own":
            if token is not None:
                deactivate_session(token)  # (exited in another context: nothing to restore)
            self._profiler.finish_session(session, error=exc)
        elif kind == "nested-thread":
            session.detach_thread()

    def __call__(self, func: F) -> F:
        name = self._name or getattr(func, "__qualname__", getattr(func, "__name__", "profile"))
        block = lambda: ProfileBlock(self._profiler, name, self._trigger, self._attributes)  # noqa: E731
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with block():
                    return await func(*args, **kwargs)
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with block():
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------- defaults

_live_profilers: "weakref.WeakSet[Profiler]" = weakref.WeakSet()
_default: Optional[Profiler] = None
_default_by = ""  # who made the default (for the warning about a second configuration)
# profilers of further, different configurations (weakly: they live as long as their users)
_others: list[tuple[Config, "weakref.ref[Profiler]"]] = []
_default_lock = threading.Lock()
_warn_once = LogOnce()


def get_profiler() -> Profiler:
    """The process's profiler: the one the integrations use when they are given
    options or nothing (then it is configured from the environment), or the one
    :func:`set_profiler` installed."""
    global _default, _default_by
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Profiler()
                _default_by = "get_profiler() (from the environment)"
    return _default


def set_profiler(profiler: Optional[Profiler]) -> None:
    """Replace the process's profiler (tests, custom set-ups); None: the next user
    makes a new one."""
    global _default, _default_by
    with _default_lock:
        _default = profiler
        _default_by = "set_profiler()"
        _others.clear()


def shared_profiler(config: Config, *, by: str) -> Profiler:
    """The profiler for ``config`` that an integration configured with options
    (``by`` names it, e.g. ``"ProfilingMiddleware(...)"``) uses: the process's
    profiler, made now if there is none yet.  A configuration that differs from
    the process's profiler gets a profiler of its own (one per configuration) and
    one warning naming the options that differ."""
    global _default, _default_by
    with _default_lock:
        current = _default
        if current is None or current._shut_down:
            _default = Profiler(config)
            _default_by = by
            return _default
        if current.config == config:
            return current
        for cfg, ref in _others:
            other = ref()
            if other is not None and not other._shut_down and cfg == config:
                return other
        _others[:] = [(c, r) for c, r in _others if r() is not None]
        differ = _differences(current.config, config)
        made_by = _default_by
        profiler = Profiler(config)
        _others.append((config, weakref.ref(profiler)))
    _warn_once("second-config:" + differ,
               "otelprof: %s configures a profiler different from the process's profiler (made by %s): %s. "
               "It uses a profiler of its own; get_profiler() returns the first one. To share one profiler, "
               "give the same options, or pass profiler=", by, made_by, differ)
    return profiler


def _differences(old: Config, new: Config) -> str:
    """``"probability=0.5 (keyword argument) instead of 0.01 (default)"``, for every
    option that differs (credentials masked)."""
    out = []
    for name in Config.option_names():
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            out.append(f"{name}={shown_value(name, b)!r} ({new.source_of(name)}) instead of "
                       f"{shown_value(name, a)!r} ({old.source_of(name)})")
    return ", ".join(out) or "the same options, another should_profile"


def _after_fork_in_child() -> None:
    # a lock held by another thread at fork time would stay locked forever in the child;
    # sessions running in the parent are the parent's (their threads do not exist here)
    global _default_lock
    _default_lock = threading.Lock()
    for p in list(_live_profilers):
        p._lock = threading.Lock()
        p._finished_cond = threading.Condition(p._lock)
        p._active = set()
        p._finishing = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Shut every live profiler down, all at once, each within its ``shutdown_timeout``."""
    profilers = list(_live_profilers)
    if len(profilers) == 1:
        _shutdown_quietly(profilers[0])
        return
    threads = [threading.Thread(target=_shutdown_quietly, args=(p,), name="otelprof-exit", daemon=True)
               for p in profilers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + max((p.config.shutdown_timeout for p in profilers), default=0.0) + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def _shutdown_quietly(profiler: Profiler) -> None:
    try:
        profiler.shutdown()
    except Exception:  # pragma: no cover
        pass
