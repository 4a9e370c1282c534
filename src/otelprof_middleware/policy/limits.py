"""Small thread-safe budgets, all taken atomically:

* :class:`WindowLimiter`: at most ``limit`` events in **any** ``window`` seconds
  (a sliding window: the start times of the last window are kept).  A burst of
  ``limit`` at once is allowed; the next event then waits until the first is a
  whole window old.  This is what "N per minute" promises (a token bucket with a
  burst of N lets nearly 2 N through in the first minute);
* :class:`ProfileBudget`: the per-minute budget of the automatic triggers, split
  in per-trigger shares (see docs/triggers.md, *Budgets*);
* :class:`ConcurrencySlots`: the concurrency cap.

A taken place is a *stamp* (its start time); giving it back removes exactly that
stamp, so a profile that did not start after all does not count.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Optional

from .._safety import at_fork_reinit

__all__ = ["WindowLimiter", "ProfileBudget", "ConcurrencySlots", "BUDGET_WINDOW", "default_shares",
           "Stamp"]

#: seconds of a "per minute" budget
BUDGET_WINDOW = 60.0

#: what a taken place is: ``(limiter, start time)``
Stamp = tuple["WindowLimiter", float]


class WindowLimiter:
    """At most ``limit`` events in any ``window`` seconds (``limit=0``: none).

    Keeps the start times of the events of the last window (at most ``limit``
    floats), oldest first; :meth:`take` drops the expired ones and takes a place
    if one is free, in one step under a lock."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic,
                 window: float = BUDGET_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._stamps: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def take(self) -> Optional[Stamp]:
        """A place in the window (its stamp), or None when ``limit`` are taken."""
        if self.limit <= 0:
            return None
        with self._lock:
            now = self._clock()
            stamps = self._stamps
            self._expire(stamps, now)
            if len(stamps) >= self.limit:
                return None
            stamps.append(now)
            return (self, now)

    def try_acquire(self) -> bool:
        """:meth:`take`, when the place is never given back."""
        return self.take() is not None

    def has_room(self) -> bool:
        """True while a place is free (a hint: :meth:`take` is the atomic step)."""
        if self.limit <= 0:
            return False
        with self._lock:
            self._expire(self._stamps, self._clock())
            return len(self._stamps) < self.limit

    def give_back(self, stamp: Stamp) -> None:
        """Return the place ``stamp`` (from :meth:`take`) took."""
        with self._lock:
            stamps = self._stamps
            t = stamp[1]
            # the stamp is near the newest end: search from there
            for i in range(len(stamps) - 1, -1, -1):
                if stamps[i] == t:
                    del stamps[i]
                    return
                if stamps[i] < t:
                    return  # already expired

    def used(self) -> int:
        """Places taken in the current window."""
        with self._lock:
            self._expire(self._stamps, self._clock())
            return len(self._stamps)

    def _expire(self, stamps: "collections.deque[float]", now: float) -> None:
        edge = now - self.window
        while stamps and stamps[0] <= edge:
            stamps.popleft()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def default_shares(per_minute: int) -> dict[str, int]:
    """Each automatic trigger's default share of ``max_profiles_per_minute``: half
    for ``probability`` (its trace id may come from the client) and for
    ``high_cpu`` (an alarm profiles every request), the whole budget for ``slow``
    and ``error``.  So at least the other half stays for slow, error and high-CPU
    profiles whatever probability does.  ``on_demand`` windows (opened by you)
    have no share of their own."""
    half = max(1, per_minute // 2) if per_minute > 0 else 0
    return {"probability": half, "high_cpu": half}


class ProfileBudget:
    """The automatic triggers' budget: ``total`` profiles in any minute, each
    trigger within its share (``shares``; a trigger without one has only the
    total).  Header and custom profiles are not counted here (the header has its
    own limiter)."""

    #: which share a request selected by several triggers spends first: the least
    #: valuable one, so that the shares of slow and error profiles last
    CHARGE_ORDER = ("probability", "on_demand", "high_cpu", "slow", "error")

    def __init__(self, total: int, shares: Mapping[str, int], clock: Callable[[], float] = time.monotonic) -> None:
        self.total = WindowLimiter(total, clock)
        self.shares = {name: WindowLimiter(n, clock) for name, n in shares.items()}
        self._order = {name: i for i, name in enumerate(self.CHARGE_ORDER)}

    def within_shares(self, triggers: Iterable[str]) -> list[str]:
        """The triggers whose share still has room (those without a share count as having it)."""
        shares = self.shares
        return [t for t in triggers if t not in shares or shares[t].has_room()]

    def take(self, triggers: list[str]) -> Optional[tuple[Stamp, ...]]:
        """Charge a request selected by ``triggers`` (all within their shares): one
        share, then the total.  The stamps taken, or None (nothing is kept)."""
        shares = self.shares
        share_stamp: Optional[Stamp] = None
        if len(triggers) == 1:  # (the common case, without the sort)
            limited = [triggers[0]] if triggers[0] in shares else []
        else:
            limited = sorted((t for t in triggers if t in shares), key=lambda t: self._order.get(t, 99))
        if limited and len(limited) == len(triggers):
            for t in limited:
                share_stamp = shares[t].take()
                if share_stamp is not None:
                    break
            if share_stamp is None:
                return None
        total = self.total.take()
        if total is None:
            if share_stamp is not None:
                share_stamp[0].give_back(share_stamp)
            return None
        return (total,) if share_stamp is None else (share_stamp, total)

    def usage(self) -> dict[str, tuple[int, int]]:
        """``{"total" or trigger: (used in the current window, limit)}``."""
        out = {"total": (self.total.used(), self.total.limit)}
        for name, lim in self.shares.items():
            out[name] = (lim.used(), lim.limit)
        return out


def give_back(stamps: Iterable[Stamp]) -> None:
    """Return every place in ``stamps``."""
    for stamp in stamps:
        stamp[0].give_back(stamp)


class ConcurrencySlots:
    """At most ``limit`` holders at once.  :meth:`take` checks and takes a slot in
    one step under a lock, so concurrent requests can never overshoot the cap.

    A slot is taken for a profile about to start (:meth:`take`) and then held by
    its session (:meth:`hold`), or given back if the start failed (:meth:`give_back`).
    :meth:`release` is idempotent.  When the cap is reached, slots whose session has
    finished meanwhile (ended by someone else, e.g. at shutdown) are reclaimed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: set[Any] = set()
        self._reserved = 0
        self._lock = threading.Lock()
        at_fork_reinit(self._after_fork)

    def __len__(self) -> int:
        """Slots in use (holders whose session finished meanwhile do not count)."""
        return len(self.holders()) + self._reserved

    def __contains__(self, holder: Any) -> bool:
        return holder in self._held

    def holders(self) -> list[Any]:
        """The holders still running."""
        return [h for h in list(self._held) if not getattr(h, "finished", False)]

    def take(self) -> bool:
        """Check and take a slot in one step; False at the cap."""
        with self._lock:
            if not self._free_locked():
                return False
            self._reserved += 1
            return True

    def available(self) -> bool:
        """True while a slot is free (a hint: :meth:`take` is the atomic step)."""
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> bool:
        if len(self._held) + self._reserved < self.limit:
            return True
        self._held.difference_update([s for s in self._held if getattr(s, "finished", False)])
        return len(self._held) + self._reserved < self.limit

    def hold(self, holder: Any) -> None:
        """The reserved slot now belongs to ``holder`` (a session)."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self._held.add(holder)

    def give_back(self) -> None:
        """Return a slot taken by :meth:`take` that no holder got."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def add(self, holder: Any) -> bool:
        """Take a slot for ``holder`` in one step; False at the cap."""
        if not self.take():
            return False
        self.hold(holder)
        return True

    def release(self, holder: Any) -> bool:
        """Free ``holder``'s slot; True if it held one."""
        with self._lock:
            if holder in self._held:
                self._held.discard(holder)
                return True
            return False

    def _after_fork(self) -> None:
        # the parent's profiles do not run in the child
        self._lock = threading.Lock()
        self._held = set()
        self._reserved = 0
