"""GC pauses per request (the ``gc`` profile type), from ``gc.callbacks``.

A collection runs on the thread whose allocation triggered it, holding the GIL
(every other Python thread waits meanwhile).  The ``start``/``stop`` callbacks run
on that thread, so when it is attached to a session the pause is that session's:
its length goes into ``otelprof.gc_ms`` (profile and span).  The callback of a
thread attached to nothing costs a dict lookup.

Samples taken during a collection get a synthetic leaf frame ``[gc gen N]``: CPU
samples of the native sampler carry their time (monotonic ns) and are matched,
when drained, against the recent collections of their thread (:func:`leaf`); a
wall sample of the sampler thread cannot be taken while a collection holds the
GIL, except where a finalizer lets go of it, and is matched by :func:`collecting`.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from threading import get_ident
from typing import TYPE_CHECKING, Any, Optional

from ..stacks import GC_MARKERS
from . import threads
from .cost import hook_cost

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["install", "uninstall", "leaf", "collecting"]

_RECENT = 64  # collections kept per thread for matching CPU samples drained later

_started: dict[int, tuple[int, int]] = {}  # thread -> (start ns, generation) of the collection under way
_recent: dict[int, deque[tuple[int, int, int]]] = {}  # thread -> (start, end, generation)
_installed = False


def _callback(phase: str, info: dict[str, Any]) -> None:
    ident = get_ident()
    found = threads.entries.get(ident)
    if not found:
        return
    if phase == "start":
        _started[ident] = (time.monotonic_ns(), int(info.get("generation", 0)))
        return
    began = _started.pop(ident, None)
    if began is None:
        return
    start, gen = began
    end = time.monotonic_ns()
    recent = _recent.get(ident)
    if recent is None:
        recent = _recent[ident] = deque(maxlen=_RECENT)
    recent.append((start, end, gen))
    for recorder, _target in threads.for_current(ident, found):
        if recorder.gc:
            recorder.add_gc(end - start)
    hook_cost.add(time.monotonic_ns() - end)  # the bookkeeping is ours, the collection the app's


def leaf(ident: int, mono_ns: int) -> Optional[object]:
    """The ``[gc gen N]`` marker if thread ``ident`` was collecting at ``mono_ns``
    (a collection under way included: the sampler thread may drain in the middle of
    one, e.g. while a finalizer or a GC callback lets go of the GIL)."""
    began = _started.get(ident)
    if began is not None and mono_ns >= began[0]:
        return GC_MARKERS[min(began[1], 2)]
    recent = _recent.get(ident)
    if not recent:
        return None
    for start, end, gen in reversed(recent):
        if start <= mono_ns <= end:
            return GC_MARKERS[min(gen, 2)]
        if end < mono_ns:
            return None
    return None


def collecting(ident: int) -> Optional[object]:
    """The ``[gc gen N]`` marker if thread ``ident`` is collecting right now."""
    began = _started.get(ident)
    return GC_MARKERS[min(began[1], 2)] if began is not None else None


def forget(ident: int) -> None:
    """Thread ``ident`` is attached to nothing any more."""
    _recent.pop(ident, None)
    _started.pop(ident, None)


def install(config: "Config") -> bool:
    global _installed
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)
    _installed = True
    return True


def uninstall() -> None:
    global _installed
    while _callback in gc.callbacks:
        gc.callbacks.remove(_callback)
    _started.clear()
    _recent.clear()
    _installed = False


def installed() -> bool:
    """True while our callback is in ``gc.callbacks`` (once)."""
    return _installed and gc.callbacks.count(_callback) == 1


def watching() -> bool:
    """True if some thread's collections are on record (cheap: checked per CPU sample)."""
    return bool(_recent) or bool(_started)
