"""Cost of one sampler tick per attached thread (not a test).

N threads are parked at a given Python stack depth (blocked on a lock inside the
deepest frame, so no interpreter frames of ``threading`` sit on top), a Session
attaches all of them to a :class:`Sampler` without a thread of its own
(``Sampler(background=False)``, ``register``), and ``Sampler.tick(now)`` is
called many times.  The baseline is the same tick with no thread attached (the
session bookkeeping) with the same threads alive.

Two modes, side by side: ``native`` (stacks read by the extension's walker; the
parked threads have CPU timers, idle since they use no CPU) and ``python``
(``native_sampler=False``: ``sys._current_frames()`` and ``f_back``).  The CPU
timers' own cost (the signal handler on a busy thread) is measured by
``--handler``.

    python bench/bench_sampler.py                     # 8 threads, depths 20/50/150
    python bench/bench_sampler.py --threads 4 --depths 50 --reps 5000 --modes python

Target: <= 15 us per thread per tick at depth 50.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import threading
import time
from typing import Callable, Optional

from otelprof_middleware import native_sampler
from otelprof_middleware.sampler import Sampler
from otelprof_middleware.session import Session
from otelprof_middleware.stacks import StackTable, thread_cpu_ns

TARGET_US = 15.0


def _depth_here() -> int:
    f = sys._getframe(1)
    n = 0
    while f is not None:
        n += 1
        f = f.f_back
    return n


class ParkedThreads:
    """``n`` threads whose stacks are exactly ``depth`` Python frames deep while parked."""

    def __init__(self, n: int, depth: int) -> None:
        self.depth = depth
        self.gate = threading.Lock()
        self.gate.acquire()
        self.ready = threading.Barrier(n + 1)
        self.seen_depths: list[int] = []
        self.threads = [threading.Thread(target=self._run, name=f"parked-{i}", daemon=True) for i in range(n)]

    def _run(self) -> None:
        self._descend(self.depth - _depth_here())

    def _descend(self, remaining: int) -> None:
        if remaining > 1:
            self._descend(remaining - 1)
            return
        self.seen_depths.append(_depth_here())
        self.ready.wait()
        self.gate.acquire()  # parked: C call, no Python frame above this one
        self.gate.release()

    def __enter__(self) -> "ParkedThreads":
        for t in self.threads:
            t.start()
        self.ready.wait()
        assert set(self.seen_depths) == {self.depth}, self.seen_depths
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.release()
        for t in self.threads:
            t.join(5)


def time_ticks(threads: list[threading.Thread], reps: int, max_depth: int, native: bool) -> list[int]:
    """ns per ``tick`` call, one entry per call."""
    session = Session("bench", hz=100, max_depth=max_depth, max_duration=3600, max_samples=10_000_000,
                      native=native)
    for t in threads:
        session.attach_thread(t.ident, t.name)
    sampler = Sampler(background=False)  # no thread: we drive tick ourselves
    sampler.register(session)
    interval = session.interval_ns
    start = session.start_mono_ns
    tick = sampler.tick
    clock = time.perf_counter_ns
    out: list[int] = []
    try:
        for k in range(1, 51):  # warm up (first stack interned, caches filled)
            tick(start + k * interval)
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for k in range(51, 51 + reps):
                now = start + k * interval  # always due, never past max_duration
                t0 = clock()
                tick(now)
                out.append(clock() - t0)
        finally:
            if gc_was:
                gc.enable()
        if threads:  # every tick took one (wall) sample of every thread
            assert sum(e[0] for e in session.stacks.entries.values()) == (reps + 50) * len(threads)
    finally:
        sampler.unregister(session)
    return out


def breakdown(parked: ParkedThreads, reps: int, max_depth: int) -> dict[str, float]:
    """Median us per call of the per-thread parts of a tick, for one parked thread."""
    t = parked.threads[0]
    frame = sys._current_frames()[t.ident]
    table = StackTable()
    lib, _ = native_sampler.load()
    clock = time.perf_counter_ns

    def per_call(fn: Callable[[], object], batch: int = 20) -> float:
        runs = []
        for _ in range(max(1, reps // batch)):
            t0 = clock()
            for _ in range(batch):
                fn()
            runs.append((clock() - t0) / batch)
        return statistics.median(runs) / 1000.0

    def walk_python() -> tuple[list, list]:
        f, codes, lastis = frame, [], []
        while f is not None:
            codes.append(f.f_code)
            lastis.append(f.f_lasti)
            f = f.f_back
        return codes, lastis

    codes, lastis = walk_python()
    parts = {
        "walk (f_back, f_lasti)": per_call(walk_python),
        "StackTable.add": per_call(lambda: table.add(t.name, codes, lastis, 1, 1)),
        "thread_cpu_ns": per_call(lambda: thread_cpu_ns(t.ident)),
    }
    if lib is not None:
        parts["native walk"] = per_call(lambda: lib.walk(t.ident, max_depth))
    return parts


def handler_cost(seconds: float, depth: int) -> Optional[tuple[float, str]]:
    """(us of CPU per signal in the CPU timer's handler, timer kind) on a thread
    spinning at ``depth`` frames, sampled at 1 kHz and drained every 10 ms."""
    lib, _ = native_sampler.load()
    if lib is None:
        return None
    stop = [False]

    def spin(d: int) -> None:
        if d > 0:
            return spin(d - 1)
        x = 0
        while not stop[0]:
            x += 1

    t = threading.Thread(target=spin, args=(depth - _depth_here() - 3,), daemon=True)
    t.start()
    time.sleep(0.05)
    handle = lib.start(t.ident, t.native_id, 1_000_000, native_sampler.PERF_EVENTS)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
        n += len(lib.drain(handle))
    handler_ns, _overruns, _dropped, source = lib.slot_stats(handle)
    n += len(lib.stop(handle))
    stop[0] = True
    t.join(5)
    return handler_ns / max(1, n) / 1000.0, native_sampler.SOURCE_NAMES.get(source, source)


def summarize(samples: list[int]) -> tuple[float, float]:
    return statistics.median(samples) / 1000.0, min(samples) / 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--depths", default="20,50,150")
    ap.add_argument("--reps", type=int, default=3000)
    ap.add_argument("--max-depth", type=int, default=128, help="Session.max_depth (config max_stack_depth)")
    ap.add_argument("--modes", default="native,python", help="native and/or python (how stacks are read)")
    ap.add_argument("--breakdown", action="store_true", help="also time the per-thread parts at each depth")
    ap.add_argument("--handler", action="store_true", help="also time the CPU timer's signal handler")
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if "native" in modes and native_sampler.load()[0] is None:
        print(f"native mode skipped: {native_sampler.load()[1]}")
        modes.remove("native")

    print(f"Python {platform.python_version()} ({platform.machine()}), {args.threads} threads, "
          f"{args.reps} ticks per row, max_stack_depth={args.max_depth}")
    header = (f"{'mode':>7} {'depth':>6} {'tick median us':>15} {'tick min us':>12} "
              f"{'baseline med us':>16} {'per-thread med us':>18} {'per-thread min us':>18}  <= {TARGET_US:g} us")
    print(header)
    print("-" * len(header))
    ok_at_50: dict[str, bool] = {}
    parts: dict[int, dict[str, float]] = {}
    for depth in depths:
        with ParkedThreads(args.threads, depth) as parked:
            for mode in modes:
                native = mode == "native"
                base_med, base_min = summarize(time_ticks([], args.reps, args.max_depth, native))
                tick_med, tick_min = summarize(time_ticks(parked.threads, args.reps, args.max_depth, native))
                per_med = (tick_med - base_med) / args.threads
                per_min = (tick_min - base_min) / args.threads
                verdict = "yes" if per_med <= TARGET_US else "no"
                if depth == 50:
                    ok_at_50[mode] = per_med <= TARGET_US
                print(f"{mode:>7} {depth:>6} {tick_med:>15.2f} {tick_min:>12.2f} {base_med:>16.2f} "
                      f"{per_med:>18.2f} {per_min:>18.2f}  {verdict}")
            if args.breakdown:
                parts[depth] = breakdown(parked, args.reps, args.max_depth)
    if parts:
        print("\nper-thread parts, median us per call (one thread):")
        names = list(next(iter(parts.values())))
        print(f"{'depth':>6} " + " ".join(f"{n:>22}" for n in names))
        for depth, p in parts.items():
            print(f"{depth:>6} " + " ".join(f"{p[n]:>22.2f}" for n in names))
    if args.handler:
        print("\nCPU timer signal handler, us of CPU per sample (a thread spinning, 1 kHz, 3 s):")
        for depth in depths:
            got = handler_cost(3.0, depth)
            if got is not None:
                print(f"  depth {depth:>4}: {got[0]:.2f} us ({got[1]})")
    for mode, ok in ok_at_50.items():
        print(f"\n{mode}, depth 50: {'meets' if ok else 'MISSES'} the target of <= {TARGET_US:g} us per thread per tick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
