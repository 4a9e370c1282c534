"""Which profiles go first, and which make room, when the export queues are full.

Every queued session or profile has a :class:`Priority`, read from what the
request path recorded on it (:func:`priority_of`):

* ``PROMISED``: its id was given to a client (``X-Profile-Id``; ``keep_if_empty``);
* ``KEPT``: kept for a reason: a header, slow, error, high-CPU, custom or manual trigger;
* ``SAMPLED``: chosen by chance: probability, an on-demand window, or no trigger
  at all (a flight recording that was not kept for a reason).

A :class:`TieredQueue` holds one FIFO per priority.  It hands out the highest
priority first (oldest first within one), and when a queue is full a newcomer
may evict the newest item of a lower priority: a promised profile is never
dropped for lack of space while a cheaper one is queued.
"""

from __future__ import annotations

import collections
import enum
from typing import Any, Iterator, Optional

__all__ = ["Priority", "priority_of", "TieredQueue", "SAMPLED_TRIGGERS"]

#: triggers that select by chance; any other trigger means "kept for a reason"
SAMPLED_TRIGGERS = frozenset({"probability", "on_demand"})


class Priority(enum.IntEnum):
    SAMPLED = 0
    KEPT = 1
    PROMISED = 2

    @property
    def label(self) -> str:
        """The name used in ``stats()`` and metrics: ``sampled``, ``kept``, ``promised``."""
        return _LABELS[self]


_LABELS = ("sampled", "kept", "promised")
# fixed orders, not ``iter(Priority)``: iterating an enum costs microseconds, and pop()
# runs for every profile
_ASCENDING = (Priority.SAMPLED, Priority.KEPT, Priority.PROMISED)
_DESCENDING = _ASCENDING[::-1]


def priority_of(item: Any) -> Priority:
    """The priority of a session or a profile (both carry ``keep_if_empty`` and ``triggers``)."""
    if getattr(item, "keep_if_empty", False):
        return Priority.PROMISED
    for trigger in getattr(item, "triggers", ()):
        if trigger not in SAMPLED_TRIGGERS:
            return Priority.KEPT
    return Priority.SAMPLED


class TieredQueue:
    """FIFO queues by priority, with the total count and estimated bytes.
    Not thread-safe: the owning worker guards it with its lock."""

    __slots__ = ("_tiers", "_bytes", "_tier_bytes", "_len")

    def __init__(self) -> None:
        self._tiers: tuple["collections.deque[tuple[Any, int]]", ...] = tuple(
            collections.deque() for _ in _ASCENDING)
        self._tier_bytes = [0] * len(_ASCENDING)
        self._bytes = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Any]:
        """Items in the order they will be handed out."""
        for p in _DESCENDING:
            for item, _size in self._tiers[p]:
                yield item

    @property
    def bytes(self) -> int:
        return self._bytes

    def push(self, item: Any, priority: Priority, size: int = 0) -> None:
        self._tiers[priority].append((item, size))
        self._tier_bytes[priority] += size
        self._bytes += size
        self._len += 1

    def pop(self) -> tuple[Any, int, Priority]:
        """The oldest item of the highest priority: ``(item, size, priority)``."""
        for p in _DESCENDING:
            tier = self._tiers[p]
            if tier:
                item, size = tier.popleft()
                self._taken(p, size)
                return item, size, p
        raise IndexError("pop from an empty TieredQueue")

    def count_below(self, priority: Priority) -> int:
        return sum(len(self._tiers[p]) for p in _ASCENDING[:priority])

    def bytes_below(self, priority: Priority) -> int:
        return sum(self._tier_bytes[p] for p in _ASCENDING[:priority])

    def evict_below(self, priority: Priority) -> Optional[tuple[Any, int, Priority]]:
        """Remove the newest item of the lowest priority under ``priority``:
        ``(item, size, its priority)``, or None if there is none."""
        for p in _ASCENDING[:priority]:
            tier = self._tiers[p]
            if tier:
                item, size = tier.pop()
                self._taken(p, size)
                return item, size, p
        return None

    def clear(self) -> list[tuple[Any, Priority]]:
        """Empty the queue; returns what was in it, with each item's priority."""
        out = [(item, p) for p in _ASCENDING for item, _size in self._tiers[p]]
        for tier in self._tiers:
            tier.clear()
        self._tier_bytes = [0] * len(_ASCENDING)
        self._bytes = 0
        self._len = 0
        return out

    def counts(self) -> dict[str, int]:
        """Queued items per priority label."""
        return {_LABELS[p]: len(self._tiers[p]) for p in _ASCENDING}

    def _taken(self, p: Priority, size: int) -> None:
        self._tier_bytes[p] -= size
        self._bytes -= size
        self._len -= 1
