"""Profile types beyond CPU and wall time: allocations, lock waits, GC pauses (issue 14).

Design notes:

* **Per request, not per process.**  Each hook (the allocator hook in the C
  extension, the lock wrappers, the ``gc.callbacks`` entry) records only work done
  by threads attached to a session, and bills it to those sessions.
  :mod:`.threads` keeps ``thread ident -> (recorder, target)`` entries, updated when
  a session gains or loses a target (:class:`Recorder` is the session's
  :class:`~otelprof_middleware.session.ExtrasRecorder`).
* **Installed only when asked for.**  :class:`Hooks` installs a type's hook when the
  first profiler that lists it in ``profile_types`` (or ``header_profile_types``)
  starts, removes it when the last one shuts down, and in a forked child removes everything (a child re-installs at its
  first session, see :meth:`Hooks.ensure`).  ``enabled=false`` or a default
  ``profile_types`` install nothing.
* **Raw samples** go into the session's :class:`ExtraTable` (stack, thread, labels ->
  values of :data:`~otelprof_middleware.profile.EXTRA_TYPES`); on the export worker
  :meth:`Recorder.fill` interns them into the profile next to the CPU/wall samples
  (same frames folding and line numbers: :class:`~otelprof_middleware.stacks.StackInterner`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from .._safety import LogOnce, at_fork_reinit
from ..profile import AttributeValue, Profile, ProfileBuilder
from ..stacks import StackInterner
from . import threads
from .cost import hook_cost

if TYPE_CHECKING:
    from ..config import Config
    from ..session import Session, Target

__all__ = ["Hooks", "Recorder", "ExtraTable", "hooks", "recorder_for", "drain"]

#: the profile types handled here (cpu and wall are the sampler's)
EXTRA_PROFILE_TYPES = ("alloc", "heap", "lock", "gc")

_log_once = LogOnce()


class ExtraTable:
    """Raw extra samples of one session: (thread, code ids, offsets, labels) ->
    ``[values, codes, lastis]``.  Written under the GIL by the hooks and the drain."""

    __slots__ = ("entries", "closed")

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], list[Any]] = {}
        self.closed = False

    def add(self, thread_name: str, codes: Any, lastis: Any, values: dict[str, int],
            labels: tuple[tuple[str, str], ...] = ()) -> None:
        if self.closed:
            return
        key = (thread_name, tuple(map(id, codes)), tuple(lastis), labels)
        rec = self.entries.get(key)
        if rec is None:
            self.entries[key] = [dict(values), tuple(codes), tuple(lastis)]
            return
        acc = rec[0]
        for k, v in values.items():
            acc[k] = acc.get(k, 0) + v

    def snapshot(self) -> list[tuple[tuple[Any, ...], list[Any]]]:
        for _ in range(5):
            try:
                return [(k, [dict(v[0]), v[1], v[2]]) for k, v in list(self.entries.items())]
            except RuntimeError:  # changed while we read: a hook on another thread
                continue
        return []

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _key, (values, _c, _l) in self.snapshot():
            for k, v in values.items():
                out[k] = out.get(k, 0) + v
        return out


class Recorder:
    """What a session records beyond CPU and wall time (one per session that asks)."""

    def __init__(self, session: "Session", types: tuple[str, ...], alloc_interval: int, lock_rate: float) -> None:
        self.session = session
        self.types = types
        self.alloc = "alloc" in types
        self.heap = "heap" in types
        self.lock = "lock" in types
        self.gc = "gc" in types
        self.alloc_interval = alloc_interval
        self.lock_rate = lock_rate
        self.table = ExtraTable()
        self.gc_ns = 0
        self.gc_collections = 0
        self.live: dict[int, tuple[tuple[Any, ...], int, int]] = {}  # heap: address -> (key, bytes, objects)
        self.alloc_lost = 0  # sampled allocations dropped (a full buffer)
        self.alloc_available = True  # False: asked for, but the hook is not there

    # ------------------------------------------------------------ targets
    def target_added(self, session: "Session", target: "Target") -> None:
        threads.add(target.thread_id, self, target)
        if self.alloc:
            from . import alloc

            self.alloc_available = alloc.track(target.thread_id, True)

    def target_removed(self, session: "Session", target: "Target") -> None:
        if self.alloc:
            from . import alloc

            t0 = time.monotonic_ns()
            alloc.drain()  # what this thread allocated so far is ours: bill it before letting go
            hook_cost.add(time.monotonic_ns() - t0)  # on the request's thread: the governor counts it
            alloc.track(target.thread_id, False)
        threads.remove(target.thread_id, self, target)
        if target.thread_id not in threads.entries:
            from . import gcwatch

            gcwatch.forget(target.thread_id)

    def close(self) -> None:
        """The session stops sampling: bill what the buffers hold, then freeze."""
        if self.alloc:
            from . import alloc

            t0 = time.monotonic_ns()
            alloc.drain()
            hook_cost.add(time.monotonic_ns() - t0)  # usually on the request's thread (its end)
            alloc.release_live(self)
        self.table.closed = True

    # ------------------------------------------------------------ recording (hooks)
    def record(self, target: "Target", codes: Any, lastis: Any, values: dict[str, int],
               labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.table.add(target.thread_name or threads.thread_name(target.thread_id), codes, lastis, values, labels)

    def add_gc(self, ns: int) -> None:
        self.gc_ns += ns
        self.gc_collections += 1

    # ------------------------------------------------------------ results
    def attributes(self) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {"otelprof.profile_types": ",".join(("cpu", "wall") + self.types)}
        if self.gc:
            attrs["otelprof.gc_ms"] = round(self.gc_ns / 1e6, 3)
            attrs["otelprof.gc_collections"] = self.gc_collections
        if self.alloc:
            attrs["otelprof.alloc_sample_interval"] = self.alloc_interval
            if not self.alloc_available:
                attrs["otelprof.alloc_unavailable"] = True
            if self.alloc_lost:
                attrs["otelprof.alloc_samples_lost"] = self.alloc_lost
        if self.lock:
            attrs["otelprof.lock_sample_rate"] = self.lock_rate
        return attrs

    def summary(self) -> dict[str, object]:
        """Span attributes (without the ``otelprof.`` prefix): the same numbers the
        profile holds."""
        totals = self.table.totals()
        out: dict[str, object] = {}
        if self.alloc:
            out["alloc_bytes"] = totals.get("alloc_space", 0)
        if self.lock:
            out["lock_wait_ms"] = round(totals.get("lock_wait", 0) / 1e6, 3)
        if self.gc:
            out["gc_ms"] = round(self.gc_ns / 1e6, 3)
        return out

    def fill(self, profile: Profile) -> Profile:
        """Intern the extra samples into ``profile`` (on the export worker)."""
        entries = self.table.snapshot()
        if self.heap:
            live: dict[tuple[Any, ...], list[int]] = {}
            for key, nbytes, nobj in list(self.live.values()):
                acc = live.setdefault(key, [0, 0])
                acc[0] += nbytes
                acc[1] += nobj
            for key, values in entries:
                got = live.get(key)
                if got is not None:
                    values[0]["inuse_space"] = got[0]
                    values[0]["inuse_objects"] = got[1]
        if self.alloc:
            profile.extra_periods["alloc_space"] = self.alloc_interval
        interner = StackInterner(ProfileBuilder(profile))
        b = interner.builder
        for (thread_name, _ids, _lastis, labels), (values, codes, lastis) in entries:
            b.add(interner.stack(codes, lastis), thread_name, 0, 0, 0, values=values, labels=labels)
        if self.alloc:
            # the type is there even when nothing was sampled: "no allocation seen" is an answer
            b.declare("alloc_objects", "alloc_space", *(("inuse_objects", "inuse_space") if self.heap else ()))
        if self.lock:
            b.declare("lock_acquires", "lock_wait")
        return profile


def recorder_for(session: "Session", config: "Config", extra: tuple[str, ...] = ()) -> Optional[Recorder]:
    """A recorder if ``config`` (or ``extra``, the types a trigger header added) asks
    for a type beyond cpu and wall, else None."""
    types = tuple(t for t in EXTRA_PROFILE_TYPES if t in config.profile_types or t in extra)
    if not types:
        return None
    from . import alloc, locks

    # the hooks are process-wide: the first profiler that installed them set their
    # interval and rate, which are what this profile's samples really used
    return Recorder(session, types, alloc.interval() or config.alloc_sample_interval,
                    locks.rate() if locks.installed() else config.lock_sample_rate)


def drain() -> None:
    """Move the allocation samples the C buffers hold into their sessions (the
    sampler thread calls this each tick)."""
    if hooks.installed.get("alloc"):
        from . import alloc

        alloc.drain()


class Hooks:
    """Which hooks are installed, reference-counted by the profilers that asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.users: dict[str, int] = {}
        self.installed: dict[str, bool] = {}

    def acquire(self, config: "Config") -> None:
        """A profiler with ``config`` starts: install the hooks its types need."""
        if not config.enabled:
            return
        wanted = self._wanted(config)
        with self._lock:
            for kind in wanted:
                self.users[kind] = self.users.get(kind, 0) + 1
            self._sync(config)

    def release(self, config: "Config") -> None:
        """A profiler shuts down: remove hooks nobody else needs."""
        if not config.enabled:
            return
        with self._lock:
            for kind in self._wanted(config):
                if self.users.get(kind, 0) > 0:
                    self.users[kind] -= 1
            self._sync(config)

    def ensure(self, config: "Config") -> None:
        """Re-install what a fork removed (the child's first session)."""
        wanted = self._wanted(config)
        if all(self.installed.get(k) for k in wanted) or not config.enabled:
            return
        with self._lock:
            for kind in wanted:
                self.users[kind] = max(1, self.users.get(kind, 0))
            self._sync(config)

    @staticmethod
    def _wanted(config: "Config") -> tuple[str, ...]:
        # the header's types too: a lock made before its hook is in is never profiled,
        # so the hooks a header may ask for are installed from the start
        types = config.profile_types + config.header_profile_types
        out = []
        if "alloc" in types or "heap" in types:
            out.append("alloc")
        if "lock" in types:
            out.append("lock")
        if "gc" in types:
            out.append("gc")
        return tuple(out)

    def _sync(self, config: "Config") -> None:
        from . import alloc, gcwatch, locks

        for kind, module in (("gc", gcwatch), ("lock", locks), ("alloc", alloc)):
            want = self.users.get(kind, 0) > 0
            have = self.installed.get(kind, False)
            try:
                if want and not have:
                    self.installed[kind] = module.install(config)
                elif have and not want:
                    module.uninstall()
                    self.installed[kind] = False
            except Exception:  # a hook that cannot be installed never stops the app
                self.installed[kind] = False
                _log_once(f"install-{kind}", "otelprof: the %s hook could not be installed; %s profiles "
                          "stay empty", kind, kind, exc=True)

    def uninstall_all(self) -> None:
        from . import alloc, gcwatch, locks

        for kind, module in (("gc", gcwatch), ("lock", locks), ("alloc", alloc)):
            if self.installed.get(kind):
                try:
                    module.uninstall()
                except Exception:
                    _log_once(f"uninstall-{kind}", "otelprof: the %s hook could not be removed", kind, exc=True)
            self.installed[kind] = False
        self.users = {}

    def _after_fork(self) -> None:
        # the child has only the forking thread: no hook, no user, no stale state;
        # a profiler alive in the child re-installs at its first session (ensure)
        from . import alloc

        self._lock = threading.Lock()
        alloc.reset_after_fork()
        self.uninstall_all()
        threads.reset()


hooks = Hooks()
at_fork_reinit(hooks._after_fork)
