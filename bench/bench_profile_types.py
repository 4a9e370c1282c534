"""Cost of the extra profile types (issue 14), side by side in one run (not a test).

    python bench/bench_profile_types.py [--requests 20] [--rounds 7]

1. **Per request.**  Three workloads, each run as profiled "requests"
   (``profiler.profile()`` around the work, the CPU/wall sampler running as for
   any profiled request) under four configurations: ``off`` (``profile_types``
   default: cpu,wall), ``alloc``, ``lock``, ``gc``:

   * ``json``: build and serialise a ~1 MB JSON document (allocation-heavy);
   * ``cpu``: pure computation (few allocations);
   * ``locks``: 20,000 ``threading.Lock`` acquisitions plus a queue hand-off to a
     worker thread (lock-heavy; some acquisitions wait).

   Configurations are interleaved in rounds (a fresh profiler per batch, so only
   one configuration's hooks are installed at a time); a batch is timed on the
   calling thread's CPU clock; the cost is the median over rounds of
   ``batch(type) / batch(off) - 1``.
2. **Hook cost per unsampled allocation.**  ``_native.alloc_bench(n, 64)`` times
   ``PyObject_Malloc(64)`` + ``PyObject_Free`` pairs from C (no interpreter in the
   loop, the thread's CPU clock): no hook; armed but no profile running (the
   allocator is not wrapped then); wrapped because another thread is profiled;
   wrapped with this thread profiled (countdown running; at the default 512 KiB
   interval one 64-byte allocation in ~8,000 is sampled, included).  Interleaved,
   medians; the difference is the hook's cost per allocation (the free is not
   hooked without ``heap``).

Targets (issue 14): alloc ≤ 5 % on ``json``, ≤ 2 % on ``cpu``; lock ≤ 3 % on
``locks``; gc ≤ 0.5 %; ≤ 20 ns per unsampled allocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import statistics
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
logging.getLogger("otelprof_middleware").addHandler(logging.NullHandler())

from otelprof_middleware import Profiler  # noqa: E402
from otelprof_middleware.profiletypes import alloc  # noqa: E402

CONFIGS = {"off": "cpu,wall", "alloc": "alloc", "lock": "lock", "gc": "gc"}
TARGETS = {("json", "alloc"): 5.0, ("cpu", "alloc"): 2.0, ("locks", "lock"): 3.0,
           ("json", "gc"): 0.5, ("cpu", "gc"): 0.5, ("locks", "gc"): 0.5}


def work_json() -> int:
    doc = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i)], "price": i * 0.5}
                     for i in range(12000)]}
    return len(json.dumps(doc))


def work_cpu() -> int:
    x = 0
    for i in range(300000):
        x = (x * 31 + i) % 1000003
    return x


def work_locks() -> int:
    lock = threading.Lock()
    q: "queue.Queue[int]" = queue.Queue()
    done = threading.Event()

    def consumer() -> None:
        for _ in range(2000):
            q.get()
        done.set()

    t = threading.Thread(target=consumer)
    t.start()
    n = 0
    for i in range(20000):
        with lock:
            n += 1
        if i % 10 == 0:
            q.put(i)
    done.wait(10)
    t.join()
    return n


WORKLOADS: dict[str, Callable[[], int]] = {"json": work_json, "cpu": work_cpu, "locks": work_locks}


def batch(profile_types: str, work: Callable[[], int], requests: int) -> float:
    p = Profiler(exporters=[], profile_types=profile_types, min_samples=0)
    try:
        work()  # warm up (and create this configuration's locks after its hooks)
        t0 = time.thread_time()
        for _ in range(requests):
            with p.profile("bench"):
                work()
        return time.thread_time() - t0
    finally:
        p.shutdown(5)


def per_request(requests: int, rounds: int) -> None:
    print(f"per request: {requests} profiled requests per batch, {rounds} rounds, CPU time of the calling thread")
    print(f"{'workload':8} {'off ms/req':>10}  " + "  ".join(f"{k:>14}" for k in CONFIGS if k != "off"))
    for name, work in WORKLOADS.items():
        ratios: dict[str, list[float]] = {k: [] for k in CONFIGS if k != "off"}
        base: list[float] = []
        for _ in range(rounds):
            off = batch(CONFIGS["off"], work, requests)
            base.append(off)
            for k in ratios:
                ratios[k].append(batch(CONFIGS[k], work, requests) / off - 1)
        cells = []
        for k, rs in ratios.items():
            med = statistics.median(rs) * 100
            target = TARGETS.get((name, k))
            mark = "" if target is None else (" ok" if med <= target else " MISS")
            cells.append(f"{med:+6.2f} %{mark:5}")
        print(f"{name:8} {statistics.median(base) / requests * 1000:10.2f}  " + "  ".join(f"{c:>14}" for c in cells))


def hook_cost(n: int, rounds: int) -> None:
    lib = alloc.available()[0]
    if lib is None:
        print("hook cost: the C extension's allocation hook is not built; skipped")
        return
    me = threading.get_ident()
    runs: dict[str, list[float]] = {"no hook": [], "armed, no profile running": [],
                                    "wrapped, thread not profiled": [], "wrapped, thread profiled": []}
    lib.alloc_bench(n, 64)  # warm up
    for _ in range(rounds):
        runs["no hook"].append(lib.alloc_bench(n, 64))
        lib.alloc_install(512.0 * 1024, 128, False)
        runs["armed, no profile running"].append(lib.alloc_bench(n, 64))
        lib.alloc_track(1, True)  # another (pretend) thread is profiled: the allocator is wrapped
        runs["wrapped, thread not profiled"].append(lib.alloc_bench(n, 64))
        lib.alloc_track(me, True)
        runs["wrapped, thread profiled"].append(lib.alloc_bench(n, 64))
        lib.alloc_drain()
        lib.alloc_track(me, False)
        lib.alloc_track(1, False)
        lib.alloc_uninstall()
    base = statistics.median(runs["no hook"])
    print(f"\nhook cost per PyObject_Malloc(64)+PyObject_Free pair ({n:,} pairs, median of {rounds}):")
    for k, v in runs.items():
        med = statistics.median(v)
        extra = "" if k == "no hook" else f"   +{med - base:5.2f} ns{'  ok' if med - base <= 20 else '  MISS'} (target 20)"
        print(f"  {k:30} {med:6.2f} ns{extra}")


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    hook_cost(args.pairs, args.rounds)
    print()
    per_request(args.requests, args.rounds)


if __name__ == "__main__":
    main()
