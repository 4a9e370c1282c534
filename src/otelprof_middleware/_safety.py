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
  locks, queues and threads in a child process after ``fork``.  Only a weak
  reference is kept, so registering never keeps an object alive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional

__all__ = ["LogOnce", "Firewall", "at_fork_reinit", "log"]

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


def _run_fork_hooks() -> None:
    global _fork_hooks_lock
    _fork_hooks_lock = threading.Lock()  # may have been held by another thread at fork time
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
    os.register_at_fork(after_in_child=_run_fork_hooks)
