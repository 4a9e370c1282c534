"""How big a profile is, and how to make one smaller.

``estimate_size`` is the cheap in-memory estimate that ``max_queue_bytes`` counts;
``trim_profile`` keeps a profile's heaviest samples when one profile alone is over
``max_request_bytes`` (see :meth:`NetworkExporter.prepare`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..profile import Profile, ProfileBuilder

__all__ = ["estimate_size", "trim_profile", "TRUNCATED_ATTRIBUTE"]

#: set on a trimmed profile, with the value ``max_request_bytes``
TRUNCATED_ATTRIBUTE = "otelprof.truncated"


def estimate_size(profile: Profile) -> int:
    """A cheap estimate of a profile's size in bytes (for ``max_queue_bytes``)."""
    size = 256 + 24 * len(profile.samples) + 12 * len(profile.locations)
    for fn in profile.functions:
        size += 24 + len(fn.name) + len(fn.filename)
    for st in profile.stacks:
        size += 8 + 2 * len(st)
    for s in profile.samples:
        size += len(s.thread_name) // 4  # names are interned; a little per sample
    return size


def trim_profile(profile: Profile, keep_ratio: float) -> Optional[Profile]:
    """A copy of ``profile`` with only its heaviest samples (about ``keep_ratio`` of
    them) and the functions/locations/stacks they use.  None if nothing can go."""
    n = len(profile.samples)
    keep = int(n * keep_ratio)
    if keep >= n:
        keep = n - 1
    if keep < 1:
        return None
    ranked = sorted(profile.samples, key=lambda s: (s.cpu_ns, s.count, s.wall_ns), reverse=True)[:keep]
    attrs = dict(profile.attributes)
    attrs[TRUNCATED_ATTRIBUTE] = "max_request_bytes"
    out = dataclasses.replace(profile, functions=[], locations=[], stacks=[], samples=[],
                              attributes=attrs, truncated="max_request_bytes")
    b = ProfileBuilder(out)
    fn_map: dict[int, int] = {}
    loc_map: dict[int, int] = {}
    for s in ranked:
        locs = []
        for li in profile.stacks[s.stack_index]:
            nl = loc_map.get(li)
            if nl is None:
                loc = profile.locations[li]
                nf = fn_map.get(loc.function_index)
                if nf is None:
                    fn = profile.functions[loc.function_index]
                    nf = fn_map[loc.function_index] = b.function(fn.name, fn.filename, fn.start_line)
                nl = loc_map[li] = b.location(nf, loc.line)
            locs.append(nl)
        b.add(b.stack(locs), s.thread_name, s.count, s.cpu_ns, s.wall_ns, link=s.link)
    return out
