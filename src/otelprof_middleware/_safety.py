"""Shared safety primitives: logging a problem once, the error firewall, fork hooks.

Every component that runs on the host's request path or in a background thread
uses these three instead of hand-rolled flags:

* :class:`LogOnce` logs each kind of problem once (or once per ``every``
  seconds, with the number of repeats since the last line);
* :class:`Firewall` is the one ``except Exception`` at an entry point: it counts
  the failure, logs it once with its traceback and swallows it, so a profiler
  bug never reaches the application (write ``try: ... except Exception:
  firewall.report(key, message)`` at the entry point only, and let the code
  inside raise);
* :func:`at_fork_reinit` registers a bound method that re-creates an object's
  locks, queues and threads in a child process after ``fork``; :func:`around_fork`
  registers a pair of bound methods run just before a fork and, in the parent, right
  after it (to hold a lock across the fork, say).  Only weak references are kept,
  so registering never keeps an object alive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional

__all__ = ["LogOnce", "Firewall", "at_fork_reinit", "around_fork", "log"]

#: the package logger
log = logging.getLogger("otelprof_middleware")


class LogOnce:
    """Log each ``key`` once; with ``every`` (seconds), once per period, adding how
    many times the problem repeated since the previous line."""

    def __init__(self, logger: logging.Logger = log, *, every: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._repeats: dict[str, int] = {}
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def __call__(self, key: str, msg: str, *args: Any, exc: bool = False, level: int = logging.WARNING) -> bool:
        """Log ``msg % args`` unless ``key`` was logged (within ``every``); True if logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and (self.every is None or now - last < self.every):
                self._repeats[key] = self._repeats.get(key, 0) + 1
                return False
            self._last[key] = now
            repeats = self._repeats.pop(key, 0)
        if repeats:
            msg += " (%d more since the last report)"
            args = args + (repeats,)
        if exc:
            self.logger.log(level, msg, *args, exc_info=True)
        else:
            self.logger.log(level, msg, *args)
        return True

    def seen(self, key: str) -> bool:
        return key in self._last

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


class Firewall:
    """The error firewall of one component: ``report`` counts a failure through
    ``on_error(key)``, logs it once with the traceback and returns; call it from
    the ``except Exception`` block of an entry point."""

    def __init__(self, on_error: Callable[[str], None], log_once: Optional[LogOnce] = None) -> None:
        self.on_error = on_error
        self.log_once = log_once if log_once is not None else LogOnce()

    def report(self, key: str, message: str) -> None:
        try:
            self.on_error(key)
            self.log_once(key, message, exc=True)
        except Exception:  # pragma: no cover - counting or logging itself failed
            pass


# ---------------------------------------------------------------------- fork hooks

_fork_hooks: list["weakref.WeakMethod[Callable[[], None]]"] = []
_fork_hooks_lock = threading.Lock()


def at_fork_reinit(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in the child process after every ``fork``, for as
    long as its object lives.  Hooks run in registration order."""
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]
    with _fork_hooks_lock:
        _fork_hooks.append(ref)
        if len(_fork_hooks) > 64:
            _fork_hooks[:] = [r for r in _fork_hooks if r() is not None]


_around: list[tuple["weakref.WeakMethod[Callable[[], None]]", "weakref.WeakMethod[Callable[[], None]]"]] = []
_forking = threading.local()  # .after: the after_in_parent hooks of this thread's fork in progress


def around_fork(before: Callable[[], None], after_in_parent: Callable[[], None]) -> None:
    """Call the bound ``before`` in the forking thread just before every ``fork``, and
    ``after_in_parent`` in the parent right after it, for as long as their object
    lives.  ``after_in_parent`` runs only if ``before`` did (the object is held from
    one to the other); ``before`` hooks run newest first, as ``os.register_at_fork``
    runs them.  The child gets its :func:`at_fork_reinit` hooks instead."""
    pair = (weakref.WeakMethod(before), weakref.WeakMethod(after_in_parent))  # type: ignore[arg-type]
    with _fork_hooks_lock:
        _around.append(pair)
        if len(_around) > 64:
            _around[:] = [p for p in _around if p[0]() is not None]


def _run_before_fork() -> None:
    with _fork_hooks_lock:
        pairs = list(_around)
    held: list[Callable[[], None]] = []
    _forking.after = held
    for before_ref, after_ref in reversed(pairs):
        before, after = before_ref(), after_ref()
        if before is None or after is None:
            continue
        try:
            before()
        except Exception:  # pragma: no cover - a hook must never stop the fork
            log.exception("otelprof: a before-fork hook failed")
            continue
        held.append(after)


def _run_after_fork_in_parent() -> None:
    hooks = getattr(_forking, "after", [])[::-1]
    _forking.after = []
    for after in hooks:
        try:
            after()
        except Exception:  # pragma: no cover - a hook must never break the parent
            log.exception("otelprof: an after-fork hook failed")


def _run_fork_hooks() -> None:
    global _fork_hooks_lock
    _fork_hooks_lock = threading.Lock()  # may have been held by another thread at fork time
    _forking.after = []  # the parent's, not the child's: the child re-creates what they held
    alive = []
    for ref in _fork_hooks:
        method = ref()
        if method is None:
            continue
        alive.append(ref)
        try:
            method()
        except Exception:  # pragma: no cover - a hook must never break the child
            log.exception("otelprof: a fork hook failed")
    _fork_hooks[:] = alive


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_run_before_fork, after_in_parent=_run_after_fork_in_parent,
                        after_in_child=_run_fork_hooks)
