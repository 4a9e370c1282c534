"""Hand-built profile folders for the store, API, CLI and viewer tests.

Profiles are built with the public model (:class:`Profile` + :class:`ProfileBuilder`)
and written by the real ``file`` exporter, so start times, routes, statuses,
triggers and stacks are whatever a test needs.  ``expected_*`` helpers compute
sums from the synthetic stacks themselves (not from the library's decoder)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from otelprof_middleware.config import Config
from otelprof_middleware.export.file import FileExporter
from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink

APP = "/srv/shop/app"
LIB = "/usr/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


@dataclass
class Spec:
    """One synthetic profile: ``stacks`` are root-first ``(name, file)`` frames with
    ``(count, cpu_ns, wall_ns)`` per thread ``""``."""

    name: str
    start_ns: int
    stacks: list[tuple[tuple[tuple[str, str], ...], tuple[int, int, int]]]
    route: str = ""
    method: str = "GET"
    status: Optional[int] = 200
    triggers: tuple[str, ...] = ("probability",)
    duration_ms: float = 50.0
    trace_id: int = 0
    span_id: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    profile_id: bytes = b""


def build(spec: Spec) -> Profile:
    attrs: dict[str, Any] = dict(spec.attributes)
    if spec.route:
        attrs.setdefault("http.route", spec.route)
        attrs.setdefault("http.request.method", spec.method)
    if spec.status is not None:
        attrs.setdefault("http.response.status_code", spec.status)
    attrs.setdefault("otelprof.duration_ms", spec.duration_ms)
    link = SpanLink(spec.trace_id, spec.span_id, span_name=spec.name) if spec.trace_id else None
    p = Profile(name=spec.name, start_time_ns=spec.start_ns, duration_ns=int(spec.duration_ms * 1e6),
                period_ns=10_000_000, link=link, attributes=attrs, triggers=spec.triggers,
                profile_id=spec.profile_id or os.urandom(16))
    b = ProfileBuilder(p)
    for frames, (count, cpu, wall) in spec.stacks:
        locs = [b.location(b.function(n, f, 1), 10) for n, f in reversed(frames)]  # leaf first
        b.add(b.stack(locs), "MainThread", count=count, cpu_ns=cpu, wall_ns=wall)
    return p


def write(directory: str, specs: Iterable[Spec], **config: Any) -> list[Profile]:
    exporter = FileExporter(Config.load(dict(exporter="file", output_dir=directory, **config), env={}))
    profiles = [build(s) for s in specs]
    for p in profiles:
        exporter.export([p])
    exporter.shutdown()
    return profiles


def frames(*names: str, lib: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """Root-first frames; names listed in ``lib`` live in site-packages."""
    return tuple((n, f"{LIB}/framework/{n}.py" if n in lib else f"{APP}/{n}.py") for n in names)


def checkout_specs(n: int, start_ns: int, step_ns: int, *, slow_render: bool, seed: int = 1,
                   route: str = "/checkout") -> list[Spec]:
    """Requests to ``route``: render_template is ~3x slower when ``slow_render``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        render = (30 if slow_render else 10) + rng.randint(0, 3)
        parse = 8 + rng.randint(0, 2)
        db = 12 + rng.randint(0, 4)
        ms = 1_000_000
        stacks = [
            (frames("handle_request", "middleware", "checkout_view", "render_template", lib=("handle_request", "middleware")),
             (render, render * 10 * ms, render * 10 * ms)),
            (frames("handle_request", "middleware", "checkout_view", "parse_json_body", "loads",
                    lib=("handle_request", "middleware", "loads")), (parse, parse * 10 * ms, parse * 10 * ms)),
            (frames("handle_request", "middleware", "checkout_view", "query_database", "execute", "sqlite_step",
                    lib=("handle_request", "middleware", "execute", "sqlite_step")), (db, db * 4 * ms, db * 10 * ms)),
        ]
        status = 500 if i % 10 == 9 else 200
        dur = (render + parse + db) * 10.0
        out.append(Spec(name=f"POST {route}", start_ns=start_ns + i * step_ns, stacks=stacks, route=route,
                        method="POST", status=status, duration_ms=dur, triggers=("probability",) if i % 3 else ("slow",),
                        trace_id=rng.getrandbits(128) | 1, span_id=rng.getrandbits(64) | 1))
    return out


def expected_stacks(specs: Iterable[Spec]) -> dict[tuple[str, ...], list[int]]:
    """Root-first function names -> [count, cpu_ns, wall_ns] summed over ``specs``."""
    out: dict[tuple[str, ...], list[int]] = {}
    for spec in specs:
        for frames_, values in spec.stacks:
            key = tuple(n for n, _f in frames_)
            acc = out.setdefault(key, [0, 0, 0])
            for i, v in enumerate(values):
                acc[i] += v
    return out


def expected_paths(stacks: dict[tuple[str, ...], list[int]]) -> dict[tuple[str, ...], list[int]]:
    """Every call path (prefix) with the sum of the stacks under it."""
    out: dict[tuple[str, ...], list[int]] = {}
    for key, values in stacks.items():
        for depth in range(1, len(key) + 1):
            acc = out.setdefault(key[:depth], [0] * len(values))
            for i, v in enumerate(values):
                acc[i] += v
    return out


def parse_go_raw(text: str) -> tuple[list[str], dict[tuple[str, ...], list[int]]]:
    """``go tool pprof -raw`` output -> (sample type names, root-first names -> values)."""
    import re

    lines = text.splitlines()
    types: list[str] = []
    samples: list[tuple[list[int], list[int]]] = []
    locations: dict[int, list[str]] = {}
    section = ""
    current: list[str] | None = None
    for line in lines:
        if line.startswith("Samples:"):
            section = "samples"
            continue
        if line.startswith("Locations"):
            section = "locations"
            continue
        if line.startswith("Mappings"):
            section = "mappings"
            continue
        if section == "samples":
            if not types:
                types = [t.split("/")[0] for t in line.split()]
                continue
            m = re.match(r"^\s*([-\d\s]+):\s*([\d\s]*)$", line)
            if m:
                values = [int(v) for v in m.group(1).split()]
                samples.append((values, [int(x) for x in m.group(2).split()]))
        elif section == "locations":
            m = re.match(r"^\s*(\d+): 0x[0-9a-f]+ (?:M=\d+ )?(\S+) \S+:\d+ s=", line)
            if m:
                current = locations[int(m.group(1))] = [m.group(2)]
                continue
            m = re.match(r"^\s+(\S+) \S+:\d+ s=", line)  # an inlined frame of the same location
            if m and current is not None:
                current.append(m.group(1))
    out: dict[tuple[str, ...], list[int]] = {}
    for values, locs in samples:
        names: list[str] = []
        for loc in locs:  # leaf first; inlined frames callee first
            names.extend(locations[loc])
        key = tuple(reversed(names))
        acc = out.setdefault(key, [0] * len(values))
        for i, v in enumerate(values):
            acc[i] += v
    return types, out
