"""What the policy knows of a request, what it answers, and what it needs of the
request and of the engine.

* :class:`RequestInfo` describes one request in framework-neutral terms.  Its
  full URL (only needed for ``excluded_urls``) and its route template (only needed
  while a route is armed) can be computed lazily by the integration.
* :class:`Decision` is the entry answer; the common "no" answers are shared.
* :class:`ProfilableRequest` is what the late triggers do with a request (start its
  profile, finish or drop it); the integrations' request handle implements it.
* :class:`PolicyHost` is what the policy needs of the engine (the ``Profiler``).

Nothing here imports the integrations or the engine: both depend on this module,
never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from ..profile import SpanLink

if TYPE_CHECKING:
    from ..config import Config
    from ..session import Session
    from .tail import TailState

__all__ = ["RequestInfo", "Decision", "ProfilableRequest", "PolicyHost", "StatsSink"]


def _no_headers(name: str) -> Optional[str]:
    return None


class RequestInfo:
    """A framework-neutral description of one request.

    ``header`` is a case-insensitive accessor (``info.header("x-enable-profiling")``)
    so integrations need not copy all headers.  ``url`` is the full URL used for
    exclusions (matched with ``re.search``, like the OpenTelemetry instrumentations);
    give it as a string, or give ``url_builder`` to build it only if an exclusion
    pattern has to look at it.  ``route`` is the route template when the framework
    already knows it; ``route_resolver`` finds it on demand (the policy asks only
    while some route is armed).  A route template always comes from the framework,
    never from the client.

    ``debug`` tells whether the application's framework runs in debug mode (Django
    ``settings.DEBUG``, Flask and Starlette ``app.debug``): a bool, a callable
    asked only when the answer matters (a trigger header without a
    ``header_secret``), or None for an app that has no debug mode (plain WSGI or
    ASGI).  ``debug_flag`` names the flag in messages (``"app.debug"``).
    """

    __slots__ = ("method", "path", "route", "header", "link", "debug_flag", "_url", "_url_builder",
                 "_route_resolver", "_debug")

    def __init__(self, method: str = "GET", path: str = "/", url: Optional[str] = None, route: Optional[str] = None,
                 header: Callable[[str], Optional[str]] = _no_headers, link: Optional[SpanLink] = None, *,
                 url_builder: Optional[Callable[[], str]] = None,
                 route_resolver: Optional[Callable[[], Optional[str]]] = None,
                 debug: Union[bool, None, Callable[[], Optional[bool]]] = None, debug_flag: str = "") -> None:
        self.method = method
        self.path = path
        self.route = route
        self.header = header
        self.link = link
        self.debug_flag = debug_flag
        self._url = url or None
        self._url_builder = url_builder
        self._route_resolver = route_resolver
        self._debug = debug

    @property
    def url(self) -> str:
        """The full URL (built on first use); the path when it cannot be built."""
        if self._url is None:
            builder = self._url_builder
            self._url = (builder() if builder is not None else "") or self.path
        return self._url

    def resolve_route(self) -> Optional[str]:
        """The route template: the known one, else the framework's router's answer
        (until it has one), else None."""
        if self.route is None and self._route_resolver is not None:
            self.route = self._route_resolver() or None
        return self.route

    def debug_mode(self) -> Optional[bool]:
        """True/False: the framework's debug flag; None: the app has none."""
        debug = self._debug
        if callable(debug):
            debug = self._debug = debug()
        return None if debug is None else bool(debug)

    def __repr__(self) -> str:
        return f"RequestInfo(method={self.method!r}, path={self.path!r}, route={self.route!r})"


@dataclass(frozen=True)
class Decision:
    """Whether to profile a request, and why (``triggers``) or why not (``declined``).
    Immutable, so the common "no" answers are shared objects (no allocation per request)."""

    profile: bool
    triggers: tuple[str, ...] = ()
    declined: str = ""
    header_requested: bool = False
    expose_profile_id: bool = False
    hz: Optional[int] = None
    #: profile types beyond ``profile_types`` the trigger header asked for (``header_profile_types``)
    profile_types: tuple[str, ...] = ()
    #: the budget places a yes took (given back if its profile does not start)
    stamps: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def no(cls, reason: str, header_requested: bool = False) -> "Decision":
        key = (reason, header_requested)
        d = _NO.get(key)
        if d is None:
            d = _NO[key] = cls(False, declined=reason, header_requested=header_requested)
        return d


_NO: dict[tuple[str, bool], Decision] = {}


class ProfilableRequest(Protocol):
    """What the late triggers need of a request; the integrations' handle implements it.

    ``tail_state``, ``tail_t0`` and ``recording`` are the late triggers' own record
    of the request (:class:`~.tail.TailTicket`, which the handle inherits);
    ``info`` describes the request, ``decision`` is the entry decision and
    ``status``/``error`` the outcome so far."""

    tail_state: "TailState"
    tail_t0: Optional[float]
    recording: bool
    decision: Decision
    session: "Optional[Session]"
    status: Optional[int]
    error: Optional[BaseException]

    @property
    def info(self) -> RequestInfo: ...

    def start_profile(self, triggers: tuple[str, ...], hz: Optional[int] = None, *,
                      remote: bool = False) -> "Optional[Session]":
        """Start sampling the request; ``remote``: the caller is another thread (the
        watchdog), so attach the request's own thread or task (and the pool threads it
        is working in).  None when it could not start."""

    def finalize(self) -> None:
        """Finish the request's profile (the request already ended)."""

    def drop_profile(self) -> None:
        """Throw the request's profile away (a recording that was not worth keeping)."""

    def finish(self, error: Optional[BaseException] = None) -> None:
        """End the request on its integration's behalf (a lost end of request)."""


class StatsSink(Protocol):
    """The counters the policy writes."""

    def incr(self, name: str, n: int = 1) -> None: ...

    def declined(self, reason: str, n: int = 1) -> None: ...


class PolicyHost(Protocol):
    """What the policy needs of the engine (``Profiler`` implements it)."""

    config: "Config"

    @property
    def enabled(self) -> bool: ...

    @property
    def stats_recorder(self) -> StatsSink: ...

    def report_failure(self, key: str, message: str) -> None:
        """Count and log once a failure caught at an entry point."""

    def discard_session(self, session: "Optional[Session]") -> None: ...
