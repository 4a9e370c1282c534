"""Is CPU billed to the function that spent it?  (not a test)

One worker thread runs a workload with a known CPU split between functions: a
"pure" function that never releases the GIL, and "chatty" functions that spend
the same kind of CPU but release the GIL often (a 1-byte socket send, a log
record written to a file, ``time.sleep(0)``).  A profiler that needs the GIL to
look (our pure-Python sampler) sees the worker only where it releases the GIL
and bills the CPU in between there; a profiler that interrupts the thread
itself (our native CPU timers) or reads it from outside (py-spy) should not.

The truth is measured in the worker: the thread's CPU clock around each call.
Each profiler's share of a function is the CPU (py-spy: samples) of stacks
containing it, over all the workload's functions.  Everything runs in one
worker process: our native profile (perf_event counters where allowed), our
native profile with POSIX CPU timers forced, then our pure-Python profile, with
py-spy (``pip install py-spy``) recording the same process throughout (its truth
is the whole run's).

    python bench/bench_attribution.py                       # 2 workloads x 6 s per profiler
    python bench/bench_attribution.py --seconds 10 --hz 100 --no-py-spy

Target: ours (native) within +-5 points of the truth for every function.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

TARGET_POINTS = 5.0

# our profiles, one after the other in the worker: phase -> label
PHASES = {
    "native": "ours, native (default)",
    "native-timer": "ours, native, POSIX timers forced",
    "python": "ours, pure-Python sampler",
    "continuous": "ours, continuous mode (continuous_hz)",
}

# name -> (ms of CPU per call, how it releases the GIL)
WORKLOADS: dict[str, list[tuple[str, float, str]]] = {
    "pure/chatty": [("pure", 8.0, "none"), ("chatty", 2.0, "socket")],
    "mixed": [("pure", 6.0, "none"), ("chatty_socket", 2.0, "socket"), ("chatty_log", 1.0, "log"),
              ("chatty_sleep0", 1.0, "sleep0")],
}


# ---------------------------------------------------------------------------- worker side


def _worker(args: argparse.Namespace) -> None:
    import logging
    import socket
    import threading

    from otelprof_middleware import Profiler

    spec = WORKLOADS[args.workload]
    a, b = socket.socketpair()
    a.setblocking(True)

    def reader() -> None:  # keeps the socket drained (blocks without the GIL)
        while True:
            if not b.recv(65536):
                return

    threading.Thread(target=reader, daemon=True, name="reader").start()
    log = logging.getLogger("bench-attribution")
    log.propagate = False
    log.addHandler(logging.FileHandler(os.devnull))
    log.setLevel(logging.INFO)

    def release(kind: str) -> None:
        if kind == "socket":
            a.send(b"x")
        elif kind == "log":
            log.info("x")
        elif kind == "sleep0":
            time.sleep(0)

    def make(name: str, kind: str) -> Any:
        # every function adds numbers in its own frame; chatty ones release the GIL every 200 additions
        src = (f"def {name}(n, release, kind):\n"
               "    x = 0\n"
               "    for i in range(n):\n"
               "        x += i\n"
               + ("        if i % 200 == 199:\n            release(kind)\n" if kind != "none" else "")
               + "    return x\n")
        ns: dict[str, Any] = {}
        exec(compile(src, f"<bench-{name}>", "exec"), ns)
        return ns[name]

    funcs = [(name, make(name, kind), kind, ms) for name, ms, kind in spec]
    # calibrate: iterations for the wanted CPU per call
    sizes = {}
    for name, fn, kind, ms in funcs:
        n = 20000
        while True:
            t0 = time.thread_time_ns()
            fn(n, release, kind)
            dt = time.thread_time_ns() - t0
            if dt > 20e6:
                break
            n *= 2
        sizes[name] = max(1, int(n * ms * 1e6 / dt))

    def run_for(seconds: float, truth: dict[str, int]) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, fn, kind, _ms in funcs:
                t0 = time.thread_time_ns()
                fn(sizes[name], release, kind)
                truth[name] += time.thread_time_ns() - t0

    results: dict[str, Any] = {"functions": [f[0] for f in funcs], "phases": {}}
    total_truth = {f[0]: 0 for f in funcs}
    from otelprof_middleware import native_sampler

    from otelprof_middleware.testing import InMemoryProfileExporter

    for kind in PHASES:
        native_sampler.PERF_EVENTS = kind != "native-timer"
        truth = {f[0]: 0 for f in funcs}
        if kind == "continuous":  # the whole process at hz, no per-request profile
            memory = InMemoryProfileExporter()
            profiler = Profiler(exporters=[memory], probability=0.0, cpu_trigger=False, continuous_hz=args.hz,
                                continuous_window=3600)
            run_for(args.seconds, truth)
            profiler.force_flush(30)
            (profile,) = memory.by_name("continuous")
        else:
            profiler = Profiler(exporter="none", sample_hz=args.hz, native_sampler=kind != "python",
                                max_profile_duration=3600, max_samples=10_000_000)
            with profiler.profile(f"attribution-{kind}") as session:
                run_for(args.seconds, truth)
            profile = session.to_profile()
        cpu = {f[0]: 0 for f in funcs}
        for s in profile.samples:
            names = {profile.functions[profile.locations[i].function_index].name for i in profile.stacks[s.stack_index]}
            for fn in cpu:
                if fn in names:
                    cpu[fn] += s.cpu_ns
        results["phases"][kind] = {"truth": truth, "profiled": cpu, "cpu_ns": profile.cpu_ns,
                                   "sampler": "/".join(str(profile.attributes.get(k)) for k in
                                                       ("otelprof.sampler", "otelprof.cpu_timer") if k in profile.attributes)}
        for k, v in truth.items():
            total_truth[k] += v
        profiler.shutdown(timeout=5)
    results["truth_all"] = total_truth
    print(json.dumps(results), flush=True)


# ---------------------------------------------------------------------------- driver side


def _py_spy_shares(path: str, functions: list[str]) -> dict[str, int]:
    counts = {f: 0 for f in functions}
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            frames = {fr.split(" (", 1)[0] for fr in stack.split(";")}
            for fn in functions:
                if fn in frames:
                    counts[fn] += int(n)
    return counts


def _shares(values: dict[str, int]) -> dict[str, float]:
    total = sum(values.values())
    return {k: (100.0 * v / total if total else 0.0) for k, v in values.items()}


def run_workload(name: str, args: argparse.Namespace) -> list[list[str]]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--workload", name,
           "--seconds", str(args.seconds), "--hz", str(args.hz)]
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    use_spy = args.py_spy and os.path.exists(spy)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "py-spy.txt")
        if use_spy:
            cmd = [spy, "record", "--format", "raw", "-r", str(args.hz), "-o", raw, "--"] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 4 + 120)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"worker failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        res = json.loads(lines[-1])
        functions = res["functions"]
        spy_counts = _py_spy_shares(raw, functions) if use_spy and os.path.exists(raw) else None

    rows = []
    for kind, label in PHASES.items():
        ph = res["phases"][kind]
        truth, got = _shares(ph["truth"]), _shares(ph["profiled"])
        err = max(abs(got[f] - truth[f]) for f in functions)
        rows.append([name, f"{label} ({ph['sampler']})", *(f"{got[f]:.1f}" for f in functions),
                     *(f"{truth[f]:.1f}" for f in functions), f"{err:.1f}",
                     "yes" if err <= TARGET_POINTS else "NO"])
    if spy_counts is not None:
        truth, got = _shares(res["truth_all"]), _shares(spy_counts)
        err = max(abs(got[f] - truth[f]) for f in functions)
        rows.append([name, "py-spy (out of process)", *(f"{got[f]:.1f}" for f in functions),
                     *(f"{truth[f]:.1f}" for f in functions), f"{err:.1f}", "yes" if err <= TARGET_POINTS else "NO"])
    header = ["workload", "profiler", *(f"{f} %" for f in functions), *(f"truth {f} %" for f in functions),
              "max error (points)", f"<= {TARGET_POINTS:g}"]
    return [header] + rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="per profiler and workload")
    ap.add_argument("--hz", type=int, default=250, help="250: enough samples for a few points of noise")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-py-spy", dest="py_spy", action="store_false")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="pure/chatty", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    import platform

    print(f"Python {platform.python_version()}, {args.seconds:g} s per profiler, {args.hz} Hz")
    ok = True
    for name in args.workloads.split(","):
        table = run_workload(name, args)
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        print()
        for j, r in enumerate(table):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
            if j == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        ok = ok and all(r[-1] == "yes" for r in table[1:] if "(default)" in r[1])
    print(f"\nours (native, default) within +-{TARGET_POINTS:g} points of the truth: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
