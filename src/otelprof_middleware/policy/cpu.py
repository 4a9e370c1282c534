"""Process CPU utilisation, and the high-CPU trigger built on it.

:class:`CpuMonitor` takes one cheap reading per second (``time.process_time_ns``:
user + system CPU of every thread of this process, a single ``clock_gettime``) and
turns it into a utilisation: CPU seconds per wall second divided by the cores
available to the process (``os.sched_getaffinity``, narrowed by a cgroup v2
``cpu.max`` quota when there is one).  No psutil.

The monitor thread is a process-wide daemon started lazily by the first
:class:`CpuTrigger` that needs it; with no live subscriber it blocks on a
condition (no wake-ups).  After ``fork`` the child starts its own thread on first
use.  The trigger keeps a ``firing`` flag that the readings update, so a request
checks one attribute (no clock read) while the trigger is quiet.  The numbers are **per process**: with several worker processes each one
decides for itself.

:class:`CpuTrigger` is the state machine: utilisation above ``cpu_threshold`` for
``cpu_window`` seconds fires it; it then stays active for ``cpu_profile_duration``
seconds and cannot fire again for ``cpu_cooldown`` seconds after that.  Every
method takes ``now`` explicitly so tests drive it with a fake clock.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import Callable, Optional

from .._safety import LogOnce, at_fork_reinit

__all__ = ["CpuMonitor", "CpuTrigger", "available_cores", "get_cpu_monitor"]


def available_cores() -> float:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and float(period) > 0:
            cores = min(cores, float(quota) / float(period))
    except (OSError, ValueError):
        pass
    return max(cores, 0.01)


class CpuTrigger:
    """High-CPU trigger state.  Fed with utilisation readings by a :class:`CpuMonitor`."""

    def __init__(self, threshold: float, window: float, duration: float, cooldown: float) -> None:
        self.threshold = threshold
        self.window = window
        self.duration = duration
        self.cooldown = cooldown
        self.active_until = -math.inf
        self.ready_at = -math.inf  # end of the cooldown
        self.above_since: Optional[float] = None
        self.last_utilisation: Optional[float] = None
        #: True from a firing until the first reading past ``active_until`` (requests
        #: confirm with the clock only while it is set)
        self.firing = False
        self.fired = 0
        self.alive: Callable[[], bool] = lambda: True  # false once the owning profiler is shut down

    def observe(self, utilisation: float, start: float, now: float) -> bool:
        """One reading covering ``[start, now]``.  True when this reading fires the trigger."""
        self.last_utilisation = utilisation
        self.firing = now < self.active_until
        if utilisation < self.threshold:
            self.above_since = None
            return False
        if self.above_since is None:
            self.above_since = start
        if now < self.active_until or now < self.ready_at:
            return False  # already profiling, or cooling down
        if now - self.above_since >= self.window - 1e-9:
            self.fired += 1
            self.active_until = now + self.duration
            self.ready_at = self.active_until + self.cooldown
            self.above_since = None
            self.firing = self.duration > 0
            return True
        return False

    def active(self, now: float) -> bool:
        return now < self.active_until


class CpuMonitor:
    """One process CPU reading per ``interval`` seconds, handed to every subscribed trigger.

    ``read_cpu`` (ns of process CPU), ``clock`` (seconds) and ``cores`` are
    injectable; :meth:`poll` takes one reading by hand (tests), :meth:`ensure_running`
    starts the background thread."""

    def __init__(self, read_cpu: Callable[[], int] = time.process_time_ns,
                 clock: Callable[[], float] = time.monotonic, cores: Optional[float] = None,
                 interval: float = 1.0) -> None:
        self.read_cpu = read_cpu
        self.clock = clock
        self._cores = cores
        self.interval = interval
        self._subscribers: "weakref.WeakSet[CpuTrigger]" = weakref.WeakSet()
        self._cond = threading.Condition(threading.Lock())
        self._thread: Optional[threading.Thread] = None
        self._last: Optional[tuple[float, int]] = None
        self.readings = 0
        self.errors = 0
        self._log = LogOnce(every=300.0)
        at_fork_reinit(self._after_fork)

    @property
    def cores(self) -> float:
        """Cores available to the process (read on first use)."""
        if self._cores is None:
            self._cores = available_cores()
        return self._cores

    @property
    def running(self) -> bool:
        return self._thread is not None

    def subscribe(self, trigger: CpuTrigger) -> None:
        with self._cond:
            self._subscribers.add(trigger)
            self._cond.notify_all()

    def unsubscribe(self, trigger: CpuTrigger) -> None:
        with self._cond:
            self._subscribers.discard(trigger)

    def ensure_running(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            if self._thread is None:
                t = threading.Thread(target=self._run, name="otelprof-cpu", daemon=True)
                self._thread = t
                t.start()

    # ------------------------------------------------------------ readings
    def poll(self) -> Optional[float]:
        """Take one reading; feed it to the subscribers.  The utilisation, or None
        for the very first reading (nothing to compare with)."""
        now = self.clock()
        cpu = self.read_cpu()
        last = self._last
        self._last = (now, cpu)
        if last is None or now <= last[0] or cpu < last[1]:
            return None
        self.readings += 1
        util = (cpu - last[1]) / 1e9 / (now - last[0]) / self.cores
        for trigger in list(self._subscribers):
            if not trigger.alive():
                self.unsubscribe(trigger)
                continue
            trigger.observe(util, last[0], now)
        return util

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._subscribers:
                    self._last = None  # the next reading starts a new interval
                    cond.wait()
            try:
                self.poll()
            except Exception:  # the worker loop's firewall: never let the monitor die of a bug
                self.errors += 1
                self._log("cpu-monitor", "otelprof: CPU monitor reading failed", exc=True)
            time.sleep(self.interval)

    def _after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._last = None


_monitor = CpuMonitor()  # no thread and no file read until a trigger needs it


def get_cpu_monitor() -> CpuMonitor:
    """The process-wide monitor (its thread starts on first need)."""
    return _monitor
