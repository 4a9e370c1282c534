"""Which threads belong to which sessions, for the hooks of the extra profile types.

``entries[ident]`` is a tuple of ``(recorder, target)``: every session (its
:class:`~otelprof_middleware.profiletypes.Recorder`) with a target on thread
``ident``.  Written under a lock, copy-on-write, so a hook reads it with one dict
lookup and no lock.  A task target sits on its loop thread; :func:`for_current`
keeps it only while that task is the one running.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..session import Target
    from . import Recorder

__all__ = ["entries", "add", "remove", "reset", "for_current", "thread_name"]

Entry = tuple["Recorder", "Target"]
entries: dict[int, tuple[Entry, ...]] = {}
_lock = threading.Lock()


def add(ident: int, recorder: "Recorder", target: "Target") -> None:
    with _lock:
        entries[ident] = entries.get(ident, ()) + ((recorder, target),)


def remove(ident: int, recorder: "Recorder", target: "Target") -> None:
    with _lock:
        left = tuple(e for e in entries.get(ident, ()) if e[0] is not recorder or e[1] is not target)
        if left:
            entries[ident] = left
        else:
            entries.pop(ident, None)


def reset() -> None:
    global _lock
    _lock = threading.Lock()
    entries.clear()


def for_current(ident: int, found: tuple[Entry, ...]) -> list[Entry]:
    """The entries of ``found`` (thread ``ident``'s) that own what runs now: thread
    targets always, a task target only while its task runs."""
    out = []
    current: Any = _NOT_LOOKED
    for recorder, target in found:
        if target.task is not None:
            if current is _NOT_LOOKED:
                current = _current_task()
            if current is not target.task:
                continue
        out.append((recorder, target))
    return out


_NOT_LOOKED = object()


def _current_task() -> Any:
    try:
        import asyncio

        return asyncio.current_task()
    except RuntimeError:
        return None


def thread_name(ident: int) -> str:
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    return t.name if t is not None else f"thread-{ident}"
