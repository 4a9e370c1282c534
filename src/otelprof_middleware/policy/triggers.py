"""Time-boxed triggers: route arming (after a slow or failing request) and on-demand
windows (``Profiler.enable_window``).

Route arming is keyed by the **route template** the framework reported for the
request that went wrong (``/items/{item_id}``, ``/items/<int:id>``,
``items/<int:item_id>``): later requests are matched by their own template, one
dict lookup whatever the number of armed routes.  Integrations resolve a
request's template at entry only while some template is armed (the router is
asked once).  A request whose framework reports no template (plain WSGI/ASGI, a
path no route matches) arms only its own literal, normalised path: template
syntax in a raw path is literal text, so no client can arm more than the path it
asked for.

On-demand windows are opened by the operator: their ``route`` may be a template
or a path, and a template is also matched against the path (its placeholders as
wildcards) when the request's template is not known at entry.

Checking costs one truthiness test while nothing is armed or open.  The number of
armed entries is bounded (``max_routes``); expired entries are dropped lazily.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Callable, Optional

from .._safety import at_fork_reinit
from .request import RequestInfo

__all__ = ["RouteArming", "OnDemandWindow", "OnDemandWindows", "route_pattern", "normalise_path"]

_PLACEHOLDER = re.compile(r"\{[^{}/]+\}|<[^<>/]+>")


def route_pattern(route: str) -> Optional["re.Pattern[str]"]:
    """A regex matching the paths of a route template, or None for a literal path.
    Placeholders whose converter says ``path`` match across slashes.  Used for
    on-demand windows only (their route comes from the operator)."""
    if not _PLACEHOLDER.search(route):
        return None
    out = []
    pos = 0
    for m in _PLACEHOLDER.finditer(route):
        out.append(re.escape(route[pos:m.start()]))
        ph = m.group(0)
        out.append(".+" if ":path" in ph or "path:" in ph else "[^/]+")
        pos = m.end()
    out.append(re.escape(route[pos:]))
    try:
        return re.compile("^" + "".join(out) + "$")
    except re.error:  # pragma: no cover - escaped pieces always compile
        return None


def normalise_path(path: str) -> str:
    """``path`` with repeated slashes collapsed, ``.``/``..`` segments resolved and
    no trailing slash, so spellings of one path arm one entry."""
    if path.startswith("/") and "//" not in path and "/." not in path and (path == "/" or path[-1] != "/"):
        return path
    segments: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


class _Armed:
    __slots__ = ("until", "rate")

    def __init__(self, until: float, rate: float) -> None:
        self.until = until
        self.rate = rate


class RouteArming:
    """Route templates (and literal paths) armed by a trigger (``slow``, ``error``)
    until a deadline, at a sample rate."""

    def __init__(self, max_routes: int = 256) -> None:
        self.max_routes = max_routes
        # key -> {trigger: entry}; templates and literal paths kept apart, so a path
        # can never be read as a template
        self._routes: dict[str, dict[str, _Armed]] = {}
        self._paths: dict[str, dict[str, _Armed]] = {}
        #: armed entries (read on every request: a plain attribute, no call)
        self.count = 0
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return self.count

    @property
    def has_routes(self) -> bool:
        """True while some route template is armed (then integrations resolve templates)."""
        return bool(self._routes)

    def arm_route(self, route: str, trigger: str, duration: float, rate: float, now: float) -> bool:
        """Arm the route template ``route`` for ``duration`` s from ``now``; extends an armed one."""
        return self._arm(self._routes, route, trigger, duration, rate, now)

    def arm_path(self, path: str, trigger: str, duration: float, rate: float, now: float) -> bool:
        """Arm one literal path (normalised; braces and angle brackets are plain text)."""
        return self._arm(self._paths, normalise_path(path) if path else "", trigger, duration, rate, now)

    def _arm(self, table: dict[str, dict[str, _Armed]], key: str, trigger: str, duration: float, rate: float,
             now: float) -> bool:
        if duration <= 0 or rate <= 0 or not key:
            return False
        until = now + duration
        with self._lock:
            entries = table.get(key)
            entry = entries.get(trigger) if entries is not None else None
            if entry is not None:
                entry.until = max(entry.until, until)
                entry.rate = rate
                return True
            if self.count >= self.max_routes:
                self._expire_locked(now)
                if self.count >= self.max_routes:  # drop the one that ends first
                    _t, k, trig = min(((e.until, k, trig) for tab in (self._routes, self._paths)
                                       for k, es in tab.items() for trig, e in es.items()), key=lambda x: x[0])
                    tab = self._routes if k in self._routes and trig in self._routes[k] else self._paths
                    self._drop_locked(tab, k, trig)
            table.setdefault(key, {})[trigger] = _Armed(until, rate)
            self.count += 1
            return True

    def _drop_locked(self, table: dict[str, dict[str, _Armed]], key: str, trigger: str) -> None:
        entries = table.get(key)
        if entries is not None and entries.pop(trigger, None) is not None:
            self.count -= 1
            if not entries:
                del table[key]

    def _expire_locked(self, now: float) -> None:
        for table in (self._routes, self._paths):
            for key, entries in list(table.items()):
                for trigger, e in list(entries.items()):
                    if e.until <= now:
                        self._drop_locked(table, key, trigger)

    def match(self, info: RequestInfo, now: float) -> list[tuple[str, float]]:
        """``[(trigger, rate), ...]`` for the armed entries this request matches: its
        route template (resolved only while a template is armed), its literal path."""
        hits: list[tuple[str, float]] = []
        expired = False
        if self._routes:
            route = info.resolve_route()
            entries = self._routes.get(route) if route else None
            if entries:
                for trigger, e in list(entries.items()):
                    if e.until <= now:
                        expired = True
                    else:
                        hits.append((trigger, e.rate))
        if self._paths:
            entries = self._paths.get(normalise_path(info.path))
            if entries:
                for trigger, e in list(entries.items()):
                    if e.until <= now:
                        expired = True
                    elif all(t != trigger for t, _ in hits):
                        hits.append((trigger, e.rate))
        if expired:
            with self._lock:
                self._expire_locked(now)
        return hits

    def armed(self, now: float) -> dict[tuple[str, str], float]:
        """``{(trigger, template or path): seconds left}`` (for stats and tests)."""
        out: dict[tuple[str, str], float] = {}
        for table in (self._routes, self._paths):
            for key, entries in list(table.items()):
                for trigger, e in list(entries.items()):
                    if e.until > now:
                        out[(trigger, key)] = e.until - now
        return out

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


class OnDemandWindow:
    """An open on-demand window; :meth:`close` ends it early."""

    __slots__ = ("until", "probability", "route", "pattern", "_owner", "opened")

    def __init__(self, owner: "OnDemandWindows", until: float, probability: float, route: Optional[str],
                 opened: float) -> None:
        self._owner = owner
        self.until = until
        self.probability = probability
        self.route = route
        self.pattern = route_pattern(route) if route else None
        self.opened = opened

    def close(self) -> None:
        self.until = -math.inf
        self._owner._drop(self)

    def is_open(self, now: float) -> bool:
        return now < self.until

    def matches(self, route: Optional[str], path: str) -> bool:
        if self.route is None:
            return True
        if route is not None and route == self.route:
            return True
        return path == self.route or (self.pattern is not None and self.pattern.match(path) is not None)

    def __repr__(self) -> str:
        return f"OnDemandWindow(route={self.route!r}, probability={self.probability})"


class OnDemandWindows:
    """The open on-demand windows of one policy."""

    def __init__(self, clock: Callable[[], float], max_windows: int = 64) -> None:
        self._clock = clock
        self.max_windows = max_windows
        #: the windows (replaced, never changed in place; read on every request)
        self.windows: list[OnDemandWindow] = []
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def __bool__(self) -> bool:
        return bool(self.windows)

    @property
    def for_routes(self) -> bool:
        """True while an open window names a route (then requests' templates are resolved)."""
        return any(w.route is not None for w in self.windows)

    def open(self, seconds: float, probability: float, route: Optional[str], max_window: float) -> OnDemandWindow:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) \
                or seconds <= 0:
            raise ValueError(f"enable_window: seconds={seconds!r} must be a positive number")
        if not isinstance(probability, (int, float)) or isinstance(probability, bool) \
                or not 0.0 <= probability <= 1.0:
            raise ValueError(f"enable_window: probability={probability!r} must be a number from 0 to 1")
        if route is not None and not isinstance(route, str):
            raise ValueError(f"enable_window: route={route!r} must be a string or None")
        now = self._clock()
        window = OnDemandWindow(self, now + min(float(seconds), max_window), float(probability), route or None, now)
        with self._lock:
            self.windows = [w for w in self.windows if w.until > now]
            if len(self.windows) >= self.max_windows:
                self.windows.pop(0)
            self.windows = self.windows + [window]
        return window

    def _drop(self, window: OnDemandWindow) -> None:
        with self._lock:
            self.windows = [w for w in self.windows if w is not window]

    def match(self, route: Optional[str], path: str, now: float) -> list[OnDemandWindow]:
        hits = []
        expired = False
        for w in self.windows:
            if w.until <= now:
                expired = True
            elif w.matches(route, path):
                hits.append(w)
        if expired:
            with self._lock:
                self.windows = [w for w in self.windows if w.until > now]
        return hits

    def open_windows(self, now: Optional[float] = None) -> list[OnDemandWindow]:
        now = self._clock() if now is None else now
        return [w for w in self.windows if w.until > now]

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
