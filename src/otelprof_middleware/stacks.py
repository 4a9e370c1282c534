"""Raw samples of one session, before they become a :class:`~otelprof_middleware.profile.Profile`.

* :func:`thread_cpu_ns` reads another thread's CPU clock (Linux and most Unixes).
* :class:`StackTable` aggregates samples keyed by (thread name, code object ids,
  instruction offsets): cheap to add on the sampler's hot path.  Each entry keeps
  strong references to its code objects, so an id in a key is never reused.
* :class:`SamplingReport`: how a finished session was sampled (rates used, missed
  ticks, which sampler), written by the sampler, shown as profile attributes.
* :meth:`StackTable.fill` turns entries into the profile model on the export
  worker: instruction offsets become line numbers (:func:`line_of`), and frames of
  this package are folded into their caller, so the profiler's own functions
  never carry self time in a user's profile (set :data:`FOLD_OWN_FRAMES` to False
  to see them when debugging the profiler itself).

Values per entry: ``samples`` (stack samples of any kind: a CPU sample, a wall
observation), ``cpu_ns`` and ``wall_ns``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, Optional

from .profile import AttributeValue, Profile, ProfileBuilder, SpanLink

__all__ = [
    "StackTable",
    "StackSummary",
    "SamplingReport",
    "thread_cpu_ns",
    "native_id_of",
    "HAVE_THREAD_CPU",
    "GAP",
    "UNKNOWN",
    "UNSAMPLED",
    "GC_MARKERS",
    "ALLOC_LOST",
    "StackInterner",
    "PROFILER",
    "FOLD_OWN_FRAMES",
    "line_of",
    "qualname",
    "cap_depth",
    "walk_frames",
]

#: Fold frames of otelprof_middleware into their caller when building profiles.
FOLD_OWN_FRAMES = True

GAP = object()  # marks frames dropped from the middle of a too-deep stack (its offset slot holds the count)
UNKNOWN = object()  # a frame the native sampler recorded but could not name (its code was gone)
UNSAMPLED = object()  # CPU measured on a thread's clock that no sample located (a block shorter than an interval)
#: synthetic leaf frames of samples taken during a garbage collection, by generation
GC_MARKERS = (object(), object(), object())
ALLOC_LOST = object()  # allocation samples whose stack was dropped (a buffer not drained in time)

PROFILER = object()  # a stack made only of our own frames: the profiler's work on the request's thread
_MARKER_NAMES = {id(UNKNOWN): "<unknown>", id(UNSAMPLED): "<unsampled CPU>", id(PROFILER): "<otelprof>",
                 id(ALLOC_LOST): "<allocation samples lost>",
                 **{id(m): f"[gc gen {i}]" for i, m in enumerate(GC_MARKERS)}}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: asyncio waits named in the flame graph: a stack whose leaf is one of these
#: coroutines (a task suspended in it, or about to be) gets a synthetic leaf frame
_ASYNCIO_WAITS = (("locks", "Lock", "acquire"), ("locks", "Semaphore", "acquire"), ("locks", "Event", "wait"),
                  ("locks", "Condition", "wait"), ("queues", "Queue", "get"), ("queues", "Queue", "put"))
_await_markers: dict[int, str] = {}


def _asyncio_wait_markers() -> dict[int, str]:
    """``id(code) -> "[await asyncio.Lock]"`` for :data:`_ASYNCIO_WAITS`, once asyncio
    is imported (never imported for it: an app without asyncio has no such wait)."""
    if not _await_markers and "asyncio" in sys.modules:
        for module, cls, method in _ASYNCIO_WAITS:
            mod = sys.modules.get("asyncio." + module)
            fn = getattr(getattr(mod, cls, None), method, None)
            code = getattr(fn, "__code__", None)
            if code is not None:
                _await_markers[id(code)] = f"[await asyncio.{cls}]"
    return _await_markers

try:  # per-thread CPU clocks (Linux, most Unixes)
    _getcpuclockid = time.pthread_getcpuclockid
    _clock_gettime_ns = time.clock_gettime_ns
    HAVE_THREAD_CPU = True
except AttributeError:  # pragma: no cover - Windows/macOS without it
    HAVE_THREAD_CPU = False


_LINUX = sys.platform.startswith("linux")


def thread_cpu_ns(ident: int, native_id: int = 0) -> Optional[int]:
    """CPU time of another thread of this process in ns, or None if unavailable.

    On Linux, give the thread's kernel id (``Thread.native_id``) whenever the thread
    may have exited: its CPU clock id is then computed from that id, and a thread
    that is gone yields None.  ``pthread_getcpuclockid`` on the identifier of a
    thread that has exited reads freed memory (it crashed under thread churn)."""
    if not HAVE_THREAD_CPU:
        return None
    try:
        if native_id and _LINUX:
            # the kernel's encoding of a thread CPU clock (glibc MAKE_THREAD_CPUCLOCK)
            return _clock_gettime_ns((~native_id << 3) | 6)
        return _clock_gettime_ns(_getcpuclockid(ident))
    except (OSError, OverflowError, ValueError):
        return None


def native_id_of(ident: int) -> int:
    """The kernel id of a live thread of this process (0 if unknown)."""
    if ident == threading.get_ident():
        return threading.get_native_id()
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    return int(getattr(t, "native_id", 0) or 0) if t is not None else 0


def qualname(code: CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)


def line_of(code: CodeType, lasti: int) -> int:
    """The line ``frame.f_lineno`` reports for a frame of ``code`` at byte offset
    ``lasti`` (``frame.f_lasti``): ``co_firstlineno`` before the first instruction,
    0 where the line table has no line.  Remembered for the process: each profile's
    own cache (:class:`StackInterner`) starts empty, and a profile of a short request
    (one or two samples, 40-60 frames deep in a framework) spent most of its building
    time scanning line tables."""
    key = (id(code), lasti)
    known = _LINES.get(key)
    if known is not None and known[0] is code:
        return known[1]
    line = _scan_line(code, lasti)
    if len(_LINES) >= _LINES_MAX:
        _LINES.clear()  # (bounded; the entries keep their code objects alive, so ids stay theirs)
    _LINES[key] = (code, line)
    return line


_LINES: dict[tuple[int, int], tuple[CodeType, int]] = {}
_LINES_MAX = 1 << 16


def _scan_line(code: CodeType, lasti: int) -> int:
    if lasti < 0:
        return code.co_firstlineno
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line or 0
    return 0


def cap_depth(codes: Any, lastis: Any, max_depth: int, omitted: int = 0) -> tuple[Any, Any]:
    """Keep the leaf frames and the root of a stack deeper than ``max_depth``, with a
    :data:`GAP` marker whose offset slot holds the number of frames left out.
    ``omitted``: frames already missing just before the root (the native handler
    caps very deep stacks the same way)."""
    total = len(codes) + omitted
    if total <= max_depth and not omitted:
        return codes, lastis
    keep = len(codes) - 1 if total <= max_depth else min(max_depth - 2, len(codes) - 1)
    return ((*codes[:keep], GAP, codes[-1]), (*lastis[:keep], total - keep - 1, lastis[-1]))


def walk_frames(frame: Optional[FrameType], stop: Any, max_depth: int) -> tuple[Any, Any]:
    """Leaf-first code objects and instruction offsets from ``frame`` down to the
    root (or to ``stop``, a frame included as the last one)."""
    codes: list[Any] = []
    lines: list[int] = []
    append_c = codes.append
    append_l = lines.append
    while frame is not None:
        append_c(frame.f_code)
        append_l(frame.f_lasti)  # a line number only on the export worker (StackTable.fill)
        if frame is stop:
            break
        frame = frame.f_back
    if len(codes) > max_depth:
        return cap_depth(codes, lines, max_depth)
    return codes, lines


def _is_own(code: Any) -> bool:
    filename = getattr(code, "co_filename", "")
    return isinstance(filename, str) and filename.startswith(_PACKAGE_DIR)


def _fold(codes: tuple[Any, ...], lastis: tuple[int, ...], own: dict[int, bool]) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """Leave out our own frames (their time goes to their caller); a stack made of
    nothing else (the profiler starting or ending on the request's thread, before or
    after any user frame) becomes one ``<otelprof>`` frame: measured time, and
    plainly ours."""
    keep = []
    for i, code in enumerate(codes):
        if code is GAP or id(code) in _MARKER_NAMES:
            keep.append(i)
            continue
        k = id(code)
        mine = own.get(k)
        if mine is None:
            mine = own[k] = _is_own(code)
        if not mine:
            keep.append(i)
    if len(keep) == len(codes):
        return codes, lastis
    if not keep or all(codes[i] is GAP for i in keep):
        return (PROFILER,), (0,)
    return tuple(codes[i] for i in keep), tuple(lastis[i] for i in keep)


@dataclass
class SamplingReport:
    """How a finished session was sampled (written by the sampler at the end)."""

    sampler: str = "python"  # "native", "python" or "native+python" (CPU samples' source)
    rates: list[tuple[int, int, int, int]] = field(default_factory=list)  # (hz, governor level, from_ns, to_ns)
    ticks: int = 0  # wall ticks taken
    ticks_missed: int = 0  # wall ticks late by more than half an interval, counted per interval lost
    period_ns: int = 0  # the interval of the last rate used
    cpu_timer: str = ""  # what interrupted natively sampled threads (perf_event, posix_timer)

    def attributes(self, duration_ns: int) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {"otelprof.sampler": self.sampler,
                                            "otelprof.ticks_missed": self.ticks_missed}
        if self.cpu_timer:
            attrs["otelprof.cpu_timer"] = self.cpu_timer
        if self.rates:
            parts = []
            for hz, level, start, end in self.rates:
                gov = f" (governor {level})" if level else ""
                parts.append(f"{hz}Hz{gov} {start / 1e6:.0f}-{end / 1e6:.0f}ms")
            attrs["otelprof.rates"] = ", ".join(parts)
            level = max(r[1] for r in self.rates)
            if level:
                attrs["otelprof.governor_level"] = level
        if duration_ns > 0:
            attrs["otelprof.effective_hz"] = round(self.ticks / (duration_ns / 1e9), 1)
        return attrs


class StackSummary:
    """Totals of a table: what a span attribute or a log line shows."""

    __slots__ = ("samples", "cpu_ns", "wall_ns", "top_frame")

    def __init__(self, samples: int, cpu_ns: int, wall_ns: int, top_frame: str) -> None:
        self.samples = samples
        self.cpu_ns = cpu_ns
        self.wall_ns = wall_ns
        self.top_frame = top_frame


class StackTable:
    """Raw aggregated samples of one session: (thread name, code ids, instruction
    offsets) -> ``[samples, cpu_ns, wall_ns, codes]``.  Offsets
    (``f_lasti``) are turned into line numbers by :meth:`fill`, on the export
    worker: reading ``f_lasti`` costs a third of ``f_lineno`` (a line-table search)
    in the sampler's per-frame loop."""

    __slots__ = ("entries", "ticks", "closed")

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], list[Any]] = {}
        self.ticks = 0  # samples recorded (every kind): what max_samples caps
        self.closed = False  # the session ended: late samples (a tick under way) are dropped

    def close(self) -> None:
        """No more samples: what the profile and the span's summary show is final."""
        self.closed = True

    def add(self, thread_name: str, codes: Any, lastis: Any, cpu_ns: int, wall_ns: int) -> tuple[Any, ...]:
        """Add one sample; returns its key (to add a remainder to it later)."""
        key = (thread_name, tuple(map(id, codes)), tuple(lastis))
        if self.closed:
            return key
        rec = self.entries.get(key)
        if rec is None:
            self.entries[key] = [1, cpu_ns, wall_ns, tuple(codes)]
        else:
            rec[0] += 1
            rec[1] += cpu_ns
            rec[2] += wall_ns
        self.ticks += 1
        return key

    def add_to(self, key: tuple[Any, ...], cpu_ns: int = 0, wall_ns: int = 0) -> bool:
        """Add values to an existing entry without counting a sample (a remainder)."""
        rec = self.entries.get(key)
        if rec is None or self.closed:
            return False
        rec[1] += cpu_ns
        rec[2] += wall_ns
        return True

    def _snapshot(self) -> list[tuple[tuple[Any, ...], list[Any]]]:
        # a sample may be added while we read (a tick or a drain under way when the
        # session finished): copy first, retrying if the dict changed meanwhile
        for _ in range(5):
            try:
                return [(k, list(v)) for k, v in list(self.entries.items())]
            except RuntimeError:
                continue
        return []

    def summary(self) -> StackSummary:
        """Totals and the hottest self-CPU function (own frames folded), cheaply:
        no line numbers, no profile model."""
        samples = cpu = wall = 0
        by_leaf: dict[str, list[int]] = {}  # name -> [self cpu, self wall]
        own: dict[int, bool] = {}
        for (_thread, _ids, lastis), (n, c, w, codes) in self._snapshot():
            samples += n
            cpu += c
            wall += w
            if FOLD_OWN_FRAMES:
                codes, _ = _fold(codes, lastis, own)
            if codes:
                leaf = codes[0]
                name = "<frames omitted>" if leaf is GAP else _MARKER_NAMES.get(id(leaf)) or qualname(leaf)
                acc = by_leaf.setdefault(name, [0, 0])
                acc[0] += c
                acc[1] += w
        # the hottest by self CPU; by self wall time when nothing used CPU (an I/O request)
        i = 0 if cpu else 1
        ranked = [(v[i], k) for k, v in by_leaf.items() if v[i] > 0]
        top = max(ranked)[1] if ranked else ""
        return StackSummary(samples, cpu, wall, top)

    def fill(self, profile: Profile, *, interner: Optional["StackInterner"] = None,
             link: Optional[SpanLink] = None) -> Profile:
        """Intern everything into ``profile`` (runs on the export worker).  Window
        profiles fill one profile from many tables (one per request): they pass one
        ``interner`` for all (its builder's, whose caches the requests' stacks share),
        and each table's span as the ``link`` of its samples."""
        if interner is None:
            interner = StackInterner(ProfileBuilder(profile))
        for (thread_name, _ids, lastis), (count, cpu, wall, codes) in self._snapshot():
            interner.builder.add(interner.stack(codes, lastis), thread_name, count, cpu, wall, link=link)
        return profile


class StackInterner:
    """Turns recorded (codes, offsets) stacks into a profile's locations: our own
    frames folded, offsets made line numbers, markers named.  Shared by every
    table that fills a profile (the CPU/wall table, the allocation and lock tables)."""

    __slots__ = ("builder", "_fn", "_loc", "_own", "_waits")

    def __init__(self, builder: ProfileBuilder) -> None:
        self.builder = builder
        self._fn: dict[int, int] = {}
        #: ``(id(code), offset) -> location index``: a frame seen before costs one lookup
        #: (a window profile interns the same stacks for every request in it)
        self._loc: dict[tuple[int, int], int] = {}
        self._own: dict[int, bool] = {}
        self._waits = _asyncio_wait_markers()

    def stack(self, codes: Any, lastis: Any) -> int:
        b = self.builder
        if FOLD_OWN_FRAMES:
            codes, lastis = _fold(codes, lastis, self._own)
        fn_cache, loc_cache = self._fn, self._loc
        locs = []
        if codes and self._waits:
            wait = self._waits.get(id(codes[0]))
            if wait is not None:  # a task waiting on an asyncio lock, semaphore, event, queue
                locs.append(b.location(b.function(wait), 0))
        for code, lasti in zip(codes, lastis):
            if code is GAP:
                f = b.function(f"<{lasti} frames omitted>")  # the gap's slot holds the count
                locs.append(b.location(f, 0))
                continue
            marker = _MARKER_NAMES.get(id(code))
            if marker is not None:
                locs.append(b.location(b.function(marker), 0))
                continue
            key = (id(code), lasti)
            loc = loc_cache.get(key)
            if loc is None:
                fn = fn_cache.get(key[0])
                if fn is None:
                    fn = fn_cache[key[0]] = b.function(qualname(code), code.co_filename, code.co_firstlineno)
                loc = loc_cache[key] = b.location(fn, line_of(code, lasti))
            locs.append(loc)
        return b.stack(locs)
