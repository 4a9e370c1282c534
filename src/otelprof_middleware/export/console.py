"""Console exporter: one summary line per profile (id, name, samples, top self-time frames)."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Optional, Sequence

from .base import ExportResult

if TYPE_CHECKING:
    from ..profile import Profile

__all__ = ["ConsoleExporter", "format_summary"]


def format_summary(profile: "Profile") -> str:
    link = profile.link
    tops = ", ".join(f"{name} {value / 1e6:.1f}ms" for name, value in profile.top_self(3))
    parts = [
        f"profile {profile.profile_id_hex}",
        f"name={profile.name!r}",
        f"samples={profile.sample_count}",
        f"cpu={profile.cpu_ns / 1e6:.1f}ms",
        f"wall={profile.wall_ns / 1e6:.1f}ms",
    ]
    if link is not None and link.is_valid:
        parts.append(f"trace_id={link.trace_id_hex} span_id={link.span_id_hex}")
    if profile.triggers:
        parts.append("trigger=" + ",".join(profile.triggers))
    parts.append(f"top=[{tops}]")
    return " ".join(parts)


class ConsoleExporter:
    name = "console"

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self.stream = stream
        self.destination = "standard error" if stream is None else getattr(stream, "name", "a stream")

    def export(self, profiles: Sequence["Profile"]) -> ExportResult:
        out = self.stream or sys.stderr
        for p in profiles:
            out.write(format_summary(p) + "\n")
        out.flush()
        return ExportResult(exported=len(profiles))

    def shutdown(self) -> None:
        pass
