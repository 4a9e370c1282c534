"""How Grafana Pyroscope names and scales what we send (project-owned re-implementation).

Read from grafana/pyroscope at 3fe6a457a32004efc46da819cbc114472d07415e:

* OTLP (``pkg/ingester/otlp/convert.go``): a Profile's type string is
  ``sample_type:unit:period_type:period_unit`` (the period part empty when
  ``period`` is 0 or no ``period_type``).  ``samples:count:cpu:nanoseconds`` is
  named ``process_cpu``, its sample type becomes ``cpu/nanoseconds`` and each value
  is multiplied by ``period``; ``off_cpu:nanoseconds::`` is ``off_cpu``; any other
  type is named after its period type (``wall:nanoseconds:wall:nanoseconds`` ->
  ``wall``), values unchanged.  The pprof it builds keeps the period type.
* Series (``pkg/phlaredb/labels/labels.go`` CreateProfileLabels): one series per
  sample type, profile type ID ``<__name__>:<type>:<unit>:<period_type>:<period_unit>``.
* Legacy ``/ingest`` (``pkg/og/convert/pprof/profile.go`` metricName): ``__name__``
  is ``wall`` if any sample type is ``wall``, else ``process_cpu`` for the first type
  containing ``cpu``, ``memory``/``mutex``/``block``/``goroutines`` likewise.
* Label names (``pkg/validation/validate.go`` SanitizeLegacyLabelName): dots
  become underscores; any other character outside ``[a-zA-Z0-9_]`` (or a leading
  digit) makes the series invalid.
"""

from __future__ import annotations

import re
from typing import Any, Optional

__all__ = ["otlp_profile_types", "pprof_profile_types", "ingest_metric_name", "label_name"]


def _s(req: Any, i: int) -> str:
    return req.dictionary.string_table[i]


def otlp_profile_types(req: Any) -> list[tuple[str, int]]:
    """For each OTLP Profile of ``req``: (profile type ID, total of its values after
    Pyroscope's conversion)."""
    out = []
    for rp in req.resource_profiles:
        for sp in rp.scope_profiles:
            for prof in sp.profiles:
                st, su = _s(req, prof.sample_type.type_strindex), _s(req, prof.sample_type.unit_strindex)
                has_period_type = prof.HasField("period_type")
                pt = _s(req, prof.period_type.type_strindex) if has_period_type else ""
                pu = _s(req, prof.period_type.unit_strindex) if has_period_type else ""
                kind = f"{st}:{su}:{pt if prof.period else ''}:{pu if prof.period else ''}"
                factor = 1
                if kind == "samples:count:cpu:nanoseconds":
                    name, st, su, factor = "process_cpu", "cpu", "nanoseconds", prof.period
                elif kind == "off_cpu:nanoseconds::":
                    name = "off_cpu"
                else:
                    name = kind.split(":")[2]
                total = 0
                for sample in prof.samples:
                    values = list(sample.values) or [len(sample.timestamps_unix_nano)]
                    total += sum(values) * factor
                out.append((f"{name}:{st}:{su}:{pt}:{pu}", total))
    return out


def pprof_profile_types(name: str, sample_types: list[tuple[str, str]], period_type: tuple[str, str]) -> list[str]:
    """The series profile type IDs of a pprof pushed with ``__name__`` = ``name``."""
    pt, pu = period_type
    return [f"{name}:{t}:{u}:{pt}:{pu}" for t, u in sample_types]


def ingest_metric_name(sample_types: list[tuple[str, str]]) -> str:
    types = [t for t, _ in sample_types]
    if "wall" in types:
        return "wall"
    for t in types:
        if "cpu" in t:
            return "process_cpu"
        if "alloc_" in t or "inuse_" in t or t in ("space", "objects"):
            return "memory"
    return types[-1] if types else ""


_LEGACY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.]*$")


def label_name(key: str) -> Optional[str]:
    """The series label name Pyroscope makes of ``key``, or None if it rejects it."""
    return key.replace(".", "_") if _LEGACY.match(key) else None
