"""The profile model: what one finished unit of work (a request, a job) looked like.

A :class:`Profile` holds interned functions, locations (function + line) and
stacks (leaf first), and per (stack, thread, link, labels) sample values:
``count``, ``cpu_ns`` and ``wall_ns``, plus the values of the extra sample types
the profile asked for (:data:`EXTRA_TYPES`: allocations, lock waits) in
``Sample.values``; ``Profile.extra_types`` lists the ones present.  A profile of
one unit of work links to its span (``Profile.link``); a profile covering a time
window (an aggregate of short requests, the continuous profile) has no link of
its own, and each sample taken for a request carries that request's span
(``Sample.link``).

It knows nothing of frameworks or wire formats: integrations fill its attributes, encoders (``otelprof_middleware.encoding``)
turn it into pprof or OTLP.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Union

from ._safety import at_fork_reinit

__all__ = ["SpanLink", "Function", "Location", "Sample", "Profile", "ProfileBuilder", "AttributeValue", "clean_text",
           "EXTRA_TYPES"]

AttributeValue = Union[str, int, float, bool]

#: extra sample types (beyond samples/cpu/wall): name -> (unit, group).  The group
#: names the Pyroscope profile they belong to (``memory``, ``mutex``); order is the
#: order encoders write them in.
EXTRA_TYPES: dict[str, tuple[str, str]] = {
    "alloc_objects": ("count", "memory"),
    "alloc_space": ("bytes", "memory"),
    "inuse_objects": ("count", "memory"),
    "inuse_space": ("bytes", "memory"),
    "lock_acquires": ("count", "mutex"),
    "lock_wait": ("nanoseconds", "mutex"),
}


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(s: str) -> str:
    """``s`` as valid UTF-8 text: lone surrogates (file names decoded with
    ``surrogateescape``, odd thread names, header values) become U+FFFD.  Protobuf
    refuses them, so one such string would otherwise fail a whole export batch."""
    if not isinstance(s, str):
        s = str(s)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", s)
    return s


def clean_value(v: AttributeValue) -> AttributeValue:
    return clean_text(v) if isinstance(v, str) else v


@dataclass(frozen=True)
class SpanLink:
    """The span a profile belongs to.  ``source`` is ``"span"`` (a live OpenTelemetry
    span) or ``"traceparent"`` (only the incoming W3C header was available)."""

    trace_id: int
    span_id: int
    sampled: bool = True
    source: str = "span"
    span_name: str = ""

    @property
    def trace_id_hex(self) -> str:
        return format(self.trace_id, "032x")

    @property
    def span_id_hex(self) -> str:
        return format(self.span_id, "016x")

    @property
    def trace_id_bytes(self) -> bytes:
        return self.trace_id.to_bytes(16, "big")

    @property
    def span_id_bytes(self) -> bytes:
        return self.span_id.to_bytes(8, "big")

    @property
    def is_valid(self) -> bool:
        return 0 < self.trace_id < 1 << 128 and 0 < self.span_id < 1 << 64


@dataclass(frozen=True)
class Function:
    name: str
    filename: str = ""
    start_line: int = 0


@dataclass(frozen=True)
class Location:
    function_index: int  # into Profile.functions
    line: int = 0


@dataclass
class Sample:
    stack_index: int  # into Profile.stacks
    thread_name: str = ""
    count: int = 0
    cpu_ns: int = 0
    wall_ns: int = 0
    link: SpanLink | None = None  # this sample's own span (window profiles); None: the profile's link
    values: dict[str, int] = field(default_factory=dict)  # extra sample types (EXTRA_TYPES)
    labels: tuple[tuple[str, str], ...] = ()  # e.g. (("lock_site", "app.py:12"),)


class _IdSource:
    """Random 16-byte profile ids, read from ``os.urandom`` 4 KiB at a time.

    One ``os.urandom`` call per id cost a profiled request a GIL hand-over (the call
    releases the GIL, and the sampler thread, waiting for it, took it: 10-20 µs of
    that request's time).  The buffer is thrown away in a forked child, so parent
    and child never hand out the same id."""

    _CHUNK = 4096

    def __init__(self) -> None:
        self._reset()
        at_fork_reinit(self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + 16 > len(self._buf):
                self._buf, pos = os.urandom(self._CHUNK), 0
            self._pos = pos + 16
            return self._buf[pos:pos + 16]


_ids = _IdSource()


def new_profile_id() -> bytes:
    """A new random profile id (16 bytes, from the OS's random source)."""
    return _ids.take()


@dataclass
class Profile:
    """One finished profile.  Lists are 0-based and hold no "zero element":
    encoders add whatever their format reserves."""

    name: str
    start_time_ns: int  # unix epoch, ns
    duration_ns: int
    period_ns: int  # sampling interval
    functions: list[Function] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    stacks: list[tuple[int, ...]] = field(default_factory=list)  # location indices, leaf first
    samples: list[Sample] = field(default_factory=list)
    link: SpanLink | None = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()
    profile_id: bytes = field(default_factory=lambda: new_profile_id())
    truncated: str = ""  # why sampling stopped early ("max_duration", "max_samples"), if it did
    keep_if_empty: bool = False  # export even below min_samples (e.g. its id was sent to a client)
    extra_types: tuple[str, ...] = ()  # EXTRA_TYPES recorded, in EXTRA_TYPES order
    extra_periods: dict[str, int] = field(default_factory=dict)  # e.g. alloc_space: the sampling interval

    @property
    def profile_id_hex(self) -> str:
        return self.profile_id.hex()

    @property
    def sample_count(self) -> int:
        return sum(s.count for s in self.samples)

    @property
    def cpu_ns(self) -> int:
        return sum(s.cpu_ns for s in self.samples)

    @property
    def wall_ns(self) -> int:
        return sum(s.wall_ns for s in self.samples)

    def total(self, value: str) -> int:
        """The sum of a sample type over all samples (``cpu_ns``, ``alloc_space``, ...)."""
        if value in ("count", "cpu_ns", "wall_ns"):
            return sum(getattr(s, value) for s in self.samples)
        return sum(s.values.get(value, 0) for s in self.samples)

    def top_self(self, n: int = 3, value: str = "cpu_ns") -> list[tuple[str, int]]:
        """The ``n`` functions with the most self (leaf) value, most first.
        Falls back to sample counts when the chosen value is zero everywhere."""
        totals: dict[str, int] = {}
        for s in self.samples:
            stack = self.stacks[s.stack_index]
            if not stack:
                continue
            fn = self.functions[self.locations[stack[0]].function_index]
            v = getattr(s, value) if value in ("count", "cpu_ns", "wall_ns") else s.values.get(value, 0)
            totals[fn.name] = totals.get(fn.name, 0) + v
        if not any(totals.values()) and value != "count":
            return self.top_self(n, "count")
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        return [kv for kv in ranked[:n] if kv[1] > 0]


class ProfileBuilder:
    """Interns functions, locations and stacks while samples are added."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._functions: dict[Function, int] = {}
        self._locations: dict[Location, int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._samples: dict[tuple[int, str, SpanLink | None, tuple[tuple[str, str], ...]], Sample] = {}

    def function(self, name: str, filename: str = "", start_line: int = 0) -> int:
        key = Function(name, filename, start_line)
        idx = self._functions.get(key)
        if idx is None:
            idx = self._functions[key] = len(self.profile.functions)
            self.profile.functions.append(Function(clean_text(name), clean_text(filename), start_line))
        return idx

    def location(self, function_index: int, line: int = 0) -> int:
        key = Location(function_index, line)
        idx = self._locations.get(key)
        if idx is None:
            idx = self._locations[key] = len(self.profile.locations)
            self.profile.locations.append(key)
        return idx

    def stack(self, location_indices: Iterable[int]) -> int:
        key = tuple(location_indices)
        idx = self._stacks.get(key)
        if idx is None:
            idx = self._stacks[key] = len(self.profile.stacks)
            self.profile.stacks.append(key)
        return idx

    def add(self, stack_index: int, thread_name: str = "", count: int = 1, cpu_ns: int = 0, wall_ns: int = 0,
            link: SpanLink | None = None, values: dict[str, int] | None = None,
            labels: tuple[tuple[str, str], ...] = ()) -> None:
        key = (stack_index, thread_name, link, labels)
        s = self._samples.get(key)
        if s is None:
            s = self._samples[key] = Sample(stack_index, clean_text(thread_name), link=link,
                                            labels=tuple((clean_text(k), clean_text(v)) for k, v in labels))
            self.profile.samples.append(s)
        s.count += count
        s.cpu_ns += cpu_ns
        s.wall_ns += wall_ns
        if values:
            sv = s.values
            for k, v in values.items():
                sv[k] = sv.get(k, 0) + v
            self.declare(*values)

    def declare(self, *types: str) -> None:
        """The profile measures these extra types (even if no sample has a value)."""
        present = self.profile.extra_types
        if any(t not in present for t in types):
            self.profile.extra_types = tuple(t for t in EXTRA_TYPES if t in present or t in types)
