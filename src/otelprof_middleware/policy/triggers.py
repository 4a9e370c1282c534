"""Time-boxed triggers: route arming (after a slow or failing request) and on-demand
windows (``Profiler.enable_window``).

Both answer "does this request match?" from its route template when the
integration knows it at entry, else from its path: an armed route template such
as ``/items/{item_id}`` (Starlette/FastAPI), ``/items/<int:id>`` (Flask, Django)
is turned into a regular expression matched against the path, because ASGI
routing usually happens after the middleware has to decide.

Checking costs one truthiness test while nothing is armed or open.  The number of
armed routes is bounded (``max_routes``); expired entries are dropped lazily.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Callable, Optional

__all__ = ["RouteArming", "OnDemandWindow", "OnDemandWindows", "route_pattern"]

_PLACEHOLDER = re.compile(r"\{[^{}/]+\}|<[^<>/]+>")


def route_pattern(route: str) -> Optional["re.Pattern[str]"]:
    """A regex matching the paths of a route template, or None for a literal path.
    Placeholders whose converter says ``path`` match across slashes."""
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


class _Armed:
    __slots__ = ("route", "pattern", "until", "rate", "trigger")

    def __init__(self, route: str, until: float, rate: float, trigger: str) -> None:
        self.route = route
        self.pattern = route_pattern(route)
        self.until = until
        self.rate = rate
        self.trigger = trigger


class RouteArming:
    """Routes armed by a trigger (``slow``, ``error``) until a deadline, at a sample rate."""

    def __init__(self, max_routes: int = 256) -> None:
        self.max_routes = max_routes
        self._armed: dict[tuple[str, str], _Armed] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._armed)

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, route: str, trigger: str, duration: float, rate: float, now: float) -> bool:
        """Arm ``route`` for ``duration`` seconds from ``now``; extends an armed one."""
        if duration <= 0 or rate <= 0 or not route:
            return False
        until = now + duration
        key = (trigger, route)
        with self._lock:
            entry = self._armed.get(key)
            if entry is not None:
                entry.until = max(entry.until, until)
                entry.rate = rate
                return True
            if len(self._armed) >= self.max_routes:
                self._expire_locked(now)
                if len(self._armed) >= self.max_routes:  # drop the one that ends first
                    oldest = min(self._armed, key=lambda k: self._armed[k].until)
                    del self._armed[oldest]
            self._armed[key] = _Armed(route, until, rate, trigger)
            return True

    def _expire_locked(self, now: float) -> None:
        for k in [k for k, e in self._armed.items() if e.until <= now]:
            del self._armed[k]

    def match(self, route: Optional[str], path: str, now: float) -> list[tuple[str, float]]:
        """``[(trigger, rate), ...]`` for the armed entries this request matches."""
        hits: list[tuple[str, float]] = []
        expired = False
        for entry in list(self._armed.values()):
            if entry.until <= now:
                expired = True
                continue
            if route is not None:
                ok = route == entry.route
            else:
                ok = path == entry.route or (entry.pattern is not None and entry.pattern.match(path) is not None)
            if ok:
                hits.append((entry.trigger, entry.rate))
        if expired:
            with self._lock:
                self._expire_locked(now)
        return hits

    def armed(self, now: float) -> dict[tuple[str, str], float]:
        """``{(trigger, route): seconds left}`` (for stats and tests)."""
        return {k: e.until - now for k, e in list(self._armed.items()) if e.until > now}


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
        self._windows: list[OnDemandWindow] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._windows)

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
            self._windows = [w for w in self._windows if w.until > now]
            if len(self._windows) >= self.max_windows:
                self._windows.pop(0)
            self._windows = self._windows + [window]
        return window

    def _drop(self, window: OnDemandWindow) -> None:
        with self._lock:
            self._windows = [w for w in self._windows if w is not window]

    def match(self, route: Optional[str], path: str, now: float) -> list[OnDemandWindow]:
        hits = []
        expired = False
        for w in self._windows:
            if w.until <= now:
                expired = True
            elif w.matches(route, path):
                hits.append(w)
        if expired:
            with self._lock:
                self._windows = [w for w in self._windows if w.until > now]
        return hits

    def open_windows(self, now: Optional[float] = None) -> list[OnDemandWindow]:
        now = self._clock() if now is None else now
        return [w for w in self._windows if w.until > now]
