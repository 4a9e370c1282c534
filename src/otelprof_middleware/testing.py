"""Test helpers for applications: capture the profiles your code produces and assert on them.

:class:`InMemoryProfileExporter` keeps every profile it is given (like
OpenTelemetry's ``InMemorySpanExporter`` keeps spans); :func:`summarize` reads one
profile as plain numbers and names: its top functions, total CPU and wall time,
its trace link and attributes.  ``docs/testing.md`` has a complete example::

    from otelprof_middleware import Profiler
    from otelprof_middleware.testing import InMemoryProfileExporter, summarize

    exporter = InMemoryProfileExporter()
    profiler = Profiler(exporters=[exporter], min_samples=0)
    with profiler.profile("report"):
        build_report()
    profiler.force_flush()
    (profile,) = exporter.profiles
    assert summarize(profile).shows("build_report")

The exporter keeps everything until :meth:`~InMemoryProfileExporter.clear`: it is
meant for tests, not for production.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .export.base import ExportResult
from .profile import AttributeValue, Profile

__all__ = ["InMemoryProfileExporter", "ProfileSummary", "summarize", "top_functions"]


class InMemoryProfileExporter:
    """An exporter that keeps the profiles it is given, for tests.

    Give it to ``Profiler(exporters=[...])`` (or ``profiler.add_exporter(...)``
    before the first profile), run the code, ``profiler.force_flush()``, then read
    :attr:`profiles`."""

    name = "memory"
    destination = "memory (otelprof_middleware.testing)"

    def __init__(self) -> None:
        self._profiles: list[Profile] = []
        self._cond = threading.Condition()
        self.shut_down = False

    # ------------------------------------------------------------ exporter side
    def export(self, profiles: Sequence[Profile]) -> ExportResult:
        with self._cond:
            self._profiles.extend(profiles)
            self._cond.notify_all()
        return ExportResult(exported=len(profiles))

    def shutdown(self) -> None:
        self.shut_down = True

    # ------------------------------------------------------------ test side
    @property
    def profiles(self) -> list[Profile]:
        """The profiles received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._profiles)

    def by_name(self, name: str) -> list[Profile]:
        """The profiles named ``name`` (e.g. ``"GET /items/{item_id}"``)."""
        return [p for p in self.profiles if p.name == name]

    def clear(self) -> None:
        with self._cond:
            self._profiles.clear()

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once at least ``count`` profiles arrived (within ``timeout`` seconds).
        ``profiler.force_flush()`` is usually simpler: it returns when all are here."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._profiles) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


# --------------------------------------------------------------------------- reading a profile

_VALUES = {"cpu": "cpu_ns", "wall": "wall_ns", "samples": "count"}


def top_functions(profile: Profile, n: int = 5, *, by: str = "cpu",
                  inclusive: bool = False) -> list[tuple[str, float]]:
    """The ``n`` functions with the most time, most first, as ``(name, milliseconds)``
    (``by="samples"``: ``(name, samples)``).

    ``by``: ``"cpu"``, ``"wall"`` or ``"samples"``.  Self time (``inclusive=False``)
    counts a sample for the function it was taken in; inclusive time also for every
    caller on the stack (each function once per sample)."""
    try:
        attr = _VALUES[by]
    except KeyError:
        raise ValueError(f"by must be one of {', '.join(_VALUES)}; got {by!r}") from None
    totals: dict[str, int] = {}
    for sample in profile.samples:
        stack = profile.stacks[sample.stack_index]
        if not stack:
            continue
        value = getattr(sample, attr)
        names = [profile.functions[profile.locations[i].function_index].name for i in stack]
        for name in (dict.fromkeys(names) if inclusive else names[:1]):
            totals[name] = totals.get(name, 0) + value
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    scale = 1.0 if by == "samples" else 1e-6
    return [(name, value * scale) for name, value in ranked[:n] if value > 0]


@dataclass(frozen=True)
class ProfileSummary:
    """One profile as plain values (see :func:`summarize`)."""

    name: str
    profile_id: str
    cpu_ms: float
    wall_ms: float
    samples: int
    #: self CPU time per function, most first (wall time when no CPU was recorded)
    top: list[tuple[str, float]]
    #: every function on a sampled stack
    functions: frozenset[str]
    trace_id: Optional[str] = None
    span_id: Optional[str] = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()

    def shows(self, function: str) -> bool:
        """True if ``function`` was on a sampled stack.  A bare name matches a
        qualified one: ``"render"`` matches ``"View.render"``."""
        return any(name == function or name.endswith("." + function) for name in self.functions)


def summarize(profile: Profile, top: int = 5) -> ProfileSummary:
    """The facts an application test asserts on: top functions, totals, link, attributes."""
    link: Any = profile.link if profile.link is not None and profile.link.is_valid else None
    functions = frozenset(profile.functions[profile.locations[i].function_index].name
                          for s in profile.samples for i in profile.stacks[s.stack_index])
    ranked = top_functions(profile, top, by="cpu") or top_functions(profile, top, by="wall")
    return ProfileSummary(
        name=profile.name,
        profile_id=profile.profile_id_hex,
        cpu_ms=profile.cpu_ns / 1e6,
        wall_ms=profile.wall_ns / 1e6,
        samples=profile.sample_count,
        top=ranked,
        functions=functions,
        trace_id=link.trace_id_hex if link else None,
        span_id=link.span_id_hex if link else None,
        attributes=dict(profile.attributes),
        triggers=profile.triggers,
    )
