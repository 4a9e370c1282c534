"""Cost of the privacy step per exported profile (not a test).

    python bench/bench_privacy.py [--profiles 200]

``Privacy.apply`` runs on the export worker, once per profile, after the profile is
built and before any exporter sees it (a request that is not profiled never pays
it).  This prints its cost per profile with the defaults (masked path, relative
file names) and with two ``redact_patterns``, side by side with ``encode_pprof`` of
the same profile, for a profile of 300 functions (from 150 real files) and 250
stacks of 40 frames.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.privacy import Privacy
from otelprof_middleware.profile import Function, Location, Profile, Sample


def make_profile(files: list[str]) -> Profile:
    functions = [Function(f"fn{i}", files[i % len(files)], i) for i in range(300)]
    locations = [Location(i, i) for i in range(300)]
    stacks = [tuple(range(k, k + 40)) for k in range(250)]
    samples = [Sample(i, "MainThread", 3, 1000, 1000) for i in range(250)]
    return Profile("GET /users/42/tok_abc12345", time.time_ns(), 10**9, 10**7, functions, locations, stacks, samples,
                   attributes={"http.request.method": "GET", "url.path": "/users/42/tok_abc12345"})


def per_profile(step: Callable[[Profile], Any], files: list[str], n: int) -> float:
    profiles = [make_profile(files) for _ in range(n)]
    t = time.perf_counter()
    for p in profiles:
        step(p)
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=200)
    args = ap.parse_args()
    files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})[:150]
    default, redacting = Privacy(), Privacy(redact_patterns=[r"customer_\w+", r"acme-\d+"])
    for privacy in (default, redacting):  # warm the per-file caches, as a running process has them
        privacy.apply(make_profile(files))
    rows = [("apply, defaults", per_profile(default.apply, files, args.profiles)),
            ("apply, 2 redact_patterns", per_profile(redacting.apply, files, args.profiles)),
            ("encode_pprof (for scale)", per_profile(encode_pprof, files, args.profiles))]
    for name, seconds in rows:
        print(f"{name:28} {seconds * 1e6:8.0f} µs per profile")


if __name__ == "__main__":
    main()
