"""Lock waits per request (the ``lock`` profile type).

While installed, ``threading.Lock`` and ``threading.RLock`` make wrapped locks
(the extension's ``ProfiledLock``, the same logic in C, where it is built; else
:class:`_Watched`).
``Condition``, ``Event`` and ``queue.Queue`` build their locks through those two
names, so theirs are wrapped too (those created after installation: a lock made
at import time before the profiler started stays a plain lock).
``threading.Semaphore``/``BoundedSemaphore`` become subclasses whose ``acquire``
is timed the same way: waiting for a semaphore is waiting in ``Condition.wait``,
not for a lock, so the lock wrapper alone would not see it.

A wrapped lock's ``acquire`` first tries the lock without blocking; a free lock
is taken at once (the cost of the wrapper: one Python call).  Only a lock held by
someone else leads to the check whether the thread is attached to a session; if
it is, ``lock_sample_rate`` of those waits are timed, and the wait
(``lock_wait/nanoseconds``) and one acquisition (``lock_acquires/count``), both
scaled by ``1 / lock_sample_rate``, are recorded with the acquiring stack and the
lock's creation site (label ``lock_site``, ``file:line`` of the first frame
outside ``threading``/``queue``).  Acquisitions that did not wait are not recorded.

Waiting inside ``Condition.wait`` (for a notify) is not a lock wait and is not
counted; re-taking the lock after it is.  Uninstalling restores the original
names; wrapped locks still in use keep working, unwatched.  ``isinstance(x,
threading.Lock)`` is false for wrapped locks while installed (the same trade-off
as other lock profilers).

asyncio waits already show as wall time in a task's stack (``Lock.acquire``,
``Semaphore.acquire``, ``Event.wait`` frames name them).
"""

from __future__ import annotations

import importlib
import os
import queue
import random
import sys
import threading
import time
from threading import get_ident
from typing import TYPE_CHECKING, Any, Optional

from ..stacks import walk_frames
from . import threads
from .cost import hook_cost

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["install", "uninstall", "installed", "is_profiled", "rate", "PREFER_NATIVE"]

_original: dict[str, Any] = {}
_active = False
_rate = 1.0
_SKIP_FILES = frozenset(os.path.normcase(f) for f in (threading.__file__, queue.__file__) if f)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _creation_site() -> str:
    frame: Any = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if os.path.normcase(filename) not in _SKIP_FILES and not filename.startswith(_OWN_DIR):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


class _Watched:
    """A lock (``_inner``) whose contended acquisitions are timed for profiled threads.

    Every acquisition first tries the lock without blocking (one C call): a free
    lock is taken at once, whoever the thread is, and only a lock that is held
    leads to the profiled-thread check and the timing.  ``release`` is the inner
    lock's own method (an instance attribute: no Python frame)."""

    __slots__ = ("_inner", "_site", "_acquire", "release", "__weakref__")

    def __init__(self, inner: Any, site: str) -> None:
        self._inner = inner
        self._site = site
        self._acquire = inner.acquire
        self.release = inner.release

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._acquire(False):
            return True
        if not blocking:
            return False
        return _wait(self, timeout)

    def __enter__(self) -> bool:
        if self._acquire(False):
            return True
        return _wait(self, -1)

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def locked(self) -> bool:
        return self._inner.locked()

    def __getattr__(self, name: str) -> Any:
        # RLock's _is_owned/_release_save/_acquire_restore (Condition uses them),
        # _at_fork_reinit, ...
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<profiled {self._inner!r} from {self._site}>"


def _wait(lock: Any, timeout: float) -> bool:
    """The lock is held by someone else: wait for it, timed if this thread is profiled."""
    rate = _rate
    if (not _active or get_ident() not in threads.entries
            or (rate < 1.0 and random.random() >= rate)):
        return lock._acquire(True, timeout)
    start = time.monotonic_ns()
    got = lock._acquire(True, timeout)
    end = time.monotonic_ns()
    try:
        _record(lock._site, end - start, rate)
    except Exception:  # never let profiling break a lock
        pass
    hook_cost.add(time.monotonic_ns() - end)  # the recording is ours, the wait the app's
    return got


def _record(site: str, waited: int, rate: float) -> None:
    ident = get_ident()
    found = threads.entries.get(ident)
    if not found:
        return
    owners = threads.for_current(ident, found)
    if not owners:
        return
    frame = sys._getframe(2)  # the caller of acquire/__enter__
    scale = 1.0 / rate if rate > 0 else 1.0
    values = {"lock_wait": int(round(waited * scale)), "lock_acquires": int(round(scale))}
    labels = (("lock_site", site),)
    for recorder, target in owners:
        if recorder.lock:
            stop = None
            if target.task is not None:
                stop = getattr(target.task.get_coro(), "cr_frame", None)
            codes, lastis = walk_frames(frame, stop, recorder.session.max_depth)
            recorder.record(target, codes, lastis, values, labels)


def _timed_wait(acquire: Any, site: str, blocking: bool, timeout: Optional[float]) -> bool:
    """``acquire(blocking, timeout)`` of a semaphore, timed like a lock's."""
    rate = _rate
    if rate < 1.0 and random.random() >= rate:
        return acquire(blocking, timeout)
    if acquire(False):
        return True
    if not blocking:
        return False
    start = time.monotonic_ns()
    got = acquire(True, timeout)
    end = time.monotonic_ns()
    try:
        _record(site, end - start, rate)
    except Exception:  # never let profiling break a semaphore
        pass
    hook_cost.add(time.monotonic_ns() - end)
    return got


class _SemaphoreWait:
    """Timed ``acquire`` for the semaphore classes below (a mixin)."""

    _site = "<unknown>"

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)  # type: ignore[call-arg]
        self._site = _creation_site()

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        plain = super().acquire  # type: ignore[misc]
        if not _active or get_ident() not in threads.entries:
            return bool(plain(blocking, timeout))
        return _timed_wait(plain, self._site, blocking, timeout)

    __enter__ = acquire


class _WatchedSemaphore(_SemaphoreWait, threading.Semaphore):
    pass


class _WatchedBoundedSemaphore(_SemaphoreWait, threading.BoundedSemaphore):
    pass


#: use the extension's ProfiledLock where it is built (False: the Python wrapper; tests)
PREFER_NATIVE = True
#: the wrapper type: the extension's ProfiledLock (the same logic in C, no Python
#: frame on the fast path) where it is built, else _Watched
_wrapper: Any = _Watched


def _native_wrapper() -> Any:
    try:
        lib = importlib.import_module(__package__.rpartition(".")[0] + "._native")
    except ImportError:
        return None
    if "lock_wrap" not in getattr(lib, "features", ()):
        return None
    lib.set_lock_slow_path(_wait)
    return lib.ProfiledLock


def _make_lock() -> Any:
    return _wrapper(_original["Lock"](), _creation_site())


def _make_rlock(*args: Any, **kwargs: Any) -> Any:
    return _wrapper(_original["RLock"](*args, **kwargs), _creation_site())


def install(config: "Config") -> bool:
    global _active, _rate, _wrapper
    if not _original:
        _rate = config.lock_sample_rate
        _wrapper = (_native_wrapper() if PREFER_NATIVE else None) or _Watched
        _original["Lock"] = threading.Lock
        _original["RLock"] = threading.RLock
        _original["Semaphore"] = threading.Semaphore
        _original["BoundedSemaphore"] = threading.BoundedSemaphore
        threading.Lock = _make_lock  # type: ignore[misc,assignment]
        threading.RLock = _make_rlock  # type: ignore[misc,assignment]
        threading.Semaphore = _WatchedSemaphore  # type: ignore[misc]
        threading.BoundedSemaphore = _WatchedBoundedSemaphore  # type: ignore[misc]
    _active = True
    return True


def uninstall() -> None:
    global _active
    _active = False
    if _original:
        threading.Lock = _original.pop("Lock")  # type: ignore[misc]
        threading.RLock = _original.pop("RLock")  # type: ignore[misc]
        threading.Semaphore = _original.pop("Semaphore")  # type: ignore[misc]
        threading.BoundedSemaphore = _original.pop("BoundedSemaphore")  # type: ignore[misc]


def rate() -> float:
    """The share of contended acquisitions timed (``lock_sample_rate`` of the
    profiler that installed the hook)."""
    return _rate


def installed() -> bool:
    """True while ``threading.Lock`` & co. make profiled locks."""
    return bool(_original)


def is_profiled(lock: Any) -> bool:
    """True if ``lock`` (a lock or semaphore) records its waits."""
    return isinstance(lock, (_Watched, _WatchedSemaphore, _WatchedBoundedSemaphore)) or (
        type(lock).__name__ == "ProfiledLock" and hasattr(lock, "_site"))
