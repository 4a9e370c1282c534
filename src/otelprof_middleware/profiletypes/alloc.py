"""Allocation profiles per request (the ``alloc`` and ``heap`` profile types).

The hook lives in the C extension (``native/alloc_hook.c``, the same ``_native``
module as the CPU sampler): it wraps the object allocator, samples allocations as
a Poisson process over bytes (mean ``alloc_sample_interval``), and records the
Python stack of sampled allocations made by *tracked* threads (those attached to
a session: :func:`track`) into preallocated per-thread buffers.  :func:`drain`
(the sampler thread each tick; a thread leaving a session for itself) turns them
into samples of the sessions whose targets were on that thread.

Each sample of ``size`` bytes stands for ``size / p`` bytes and ``1 / p``
allocations, where ``p = 1 - exp(-size / interval)`` is the chance that an
allocation of that size is sampled: unbiased estimates, as Go's ``runtime.MemProfile``
and Datadog's ``memalloc`` scale them.  ``heap`` keeps the addresses of sampled
allocations; those not freed when the request ends are its live bytes
(``inuse_space``/``inuse_objects``, same scaling).

Without the extension (no compiler at install time, ``OTELPROF_BUILD_NATIVE=0``,
another OS or Python), allocation profiling says once that it is unavailable;
profiles then carry ``otelprof.alloc_unavailable=true`` and everything else works.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

from .._safety import LogOnce
from ..stacks import ALLOC_LOST, UNKNOWN, cap_depth
from . import threads

if TYPE_CHECKING:
    from ..config import Config
    from . import Recorder

__all__ = ["install", "uninstall", "track", "drain", "available", "stats", "reset_warnings"]

_log_once = LogOnce()
_lib: Any = None
_interval = 512 * 1024
_heap = False
#: heap: sampled address -> recorders holding it as live
_live: dict[int, list["Recorder"]] = {}
_drain_lock = threading.Lock()


def reset_after_fork() -> None:
    """In a forked child (:class:`~otelprof_middleware.profiletypes.Hooks` calls it):
    a drain under way in the parent left its lock held."""
    global _drain_lock
    _drain_lock = threading.Lock()


def available() -> tuple[Any, str]:
    """(the extension, "") if the allocation hook can be used, else (None, why)."""
    if not sys.platform.startswith("linux"):
        return None, f"not available on {sys.platform}"
    try:
        lib = importlib.import_module(__package__.rpartition(".")[0] + "._native")
    except ImportError as e:
        return None, f"extension not built ({e})"
    if "alloc_hook" not in getattr(lib, "features", ()):
        return None, "this build of the extension has no allocation hook (needs Linux, CPython 3.10-3.13)"
    return lib, ""


def install(config: "Config") -> bool:
    global _lib, _interval, _heap
    lib, reason = available()
    if lib is None:
        _log_once("alloc-unavailable", "otelprof: allocation profiling unavailable (%s); profiles have no "
                  "allocation samples, everything else works", reason)
        return False
    _interval = config.alloc_sample_interval
    _heap = "heap" in config.profile_types or "heap" in config.header_profile_types
    lib.alloc_install(float(_interval), min(config.max_stack_depth + 1, 512), _heap)
    _lib = lib
    return True


def uninstall() -> None:
    global _lib
    lib, _lib = _lib, None
    _live.clear()
    if lib is not None and not lib.alloc_uninstall():
        _log_once("alloc-stacked", "otelprof: another allocator hook was installed over ours; ours stays "
                  "in place, passing every call through")


def track(ident: int, on: bool) -> bool:
    """Sample (``on``) or stop sampling thread ``ident``'s allocations; False if
    allocation profiling is unavailable."""
    lib = _lib
    if lib is None:
        return False
    return bool(lib.alloc_track(ident, on))


def interval() -> int:
    """The sampling interval in force (bytes), 0 while the hook is not installed."""
    return _interval if _lib is not None else 0


def reset_warnings() -> None:
    """Forget that "allocation profiling unavailable" was logged (it is logged once
    per process); for test suites that check it."""
    global _log_once
    _log_once = LogOnce()


def stats() -> Optional[dict[str, int]]:
    lib = _lib
    return dict(lib.alloc_stats()) if lib is not None else None


def scale(size: int, interval: int) -> float:
    """How many allocations one sample of ``size`` bytes stands for."""
    if size <= 0:
        return 1.0
    return 1.0 / -math.expm1(-size / interval)


def drain() -> None:
    """Bill the buffered samples (the sampler thread each tick; a thread leaving a
    session, for itself).  One drain at a time, dispatch included: a thread leaving
    its session must not drop its entry while another drain still holds its samples."""
    with _drain_lock:
        _drain()


def _drain() -> None:
    lib = _lib
    if lib is None:
        return
    samples, freed, lost = lib.alloc_drain()
    entries = threads.entries
    interval = _interval
    for ident, size, ptr, omitted, codes, lastis, addrs in samples:
        found = entries.get(ident)
        if not found:
            continue
        if None in codes:
            codes = tuple(UNKNOWN if c is None else c for c in codes)
        k = scale(size, interval)
        values = {"alloc_space": int(round(size * k)), "alloc_objects": int(round(k))}
        for recorder, target in found:
            if not recorder.alloc:
                continue
            cut_codes, cut_lastis, cut_omitted = codes, lastis, omitted
            if target.task is not None:
                frame = getattr(target.task.get_coro(), "cr_frame", None)
                fa = lib.frame_address(frame) if frame is not None else 0
                if not fa or fa not in addrs:
                    continue  # another task was running
                i = addrs.index(fa)
                cut_omitted = omitted if i == len(addrs) - 1 else 0
                cut_codes, cut_lastis = codes[:i + 1], lastis[:i + 1]
            cut_codes, cut_lastis = cap_depth(cut_codes, cut_lastis, recorder.session.max_depth, cut_omitted)
            recorder.record(target, cut_codes, cut_lastis, values)
            if recorder.heap and not recorder.table.closed:
                name = target.thread_name or threads.thread_name(target.thread_id)
                key = (name, tuple(map(id, cut_codes)), tuple(cut_lastis), ())
                recorder.live[ptr] = (key, values["alloc_space"], values["alloc_objects"])
                _live.setdefault(ptr, []).append(recorder)
    for ptr in freed:
        for recorder in _live.pop(ptr, ()):
            recorder.live.pop(ptr, None)
    for ident, (n, space, objects) in lost.items():
        # the estimate is kept (the stack is not): totals stay unbiased
        values = {"alloc_space": int(round(space)), "alloc_objects": int(round(objects))}
        for recorder, target in entries.get(ident, ()):
            if recorder.alloc:
                recorder.alloc_lost += n
                recorder.record(target, (ALLOC_LOST,), (0,), values)


def release_live(recorder: "Recorder") -> None:
    """The session ended: its live set is final, stop watching its addresses."""
    lib = _lib
    for ptr in list(recorder.live):
        holders = _live.get(ptr)
        if holders is None:
            continue
        if recorder in holders:
            holders.remove(recorder)
        if not holders:
            del _live[ptr]
            if lib is not None:
                lib.alloc_forget_live(ptr)
