"""Stress the native CPU sampler's signal handler (run as a script, in its own process).

    python tests/helpers/native_stress.py [--seconds 3] [--source perf|timer] [--fork]

Many threads burn CPU in deep recursion, generators, asyncio tasks, exception
handling and freshly compiled code objects that are dropped right away, while
threads start and exit and sessions attach and detach them at 1 kHz.  With
``--fork`` the process forks while sampling and the child profiles itself.

Prints one JSON line with counters and exits 0 if nothing went wrong; a crash in
the handler shows up as a signal exit code.  Checks made here: every named frame
of a sample is a real code object whose name is one of the workload's; samples
of the recursion hold the recursion; the extension's counters are sane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from otelprof_middleware import Profiler, native_sampler
from otelprof_middleware.stacks import GAP, UNKNOWN


def recurse(n: int, stop: list) -> int:
    if n > 0:
        return recurse(n - 1, stop) + 1
    x = 0
    for i in range(3000):
        x += i
    return x


def gen_work(stop: list) -> int:
    def numbers(k: int) -> Any:
        for i in range(k):
            yield i * i

    def nested(k: int) -> Any:
        yield from numbers(k)

    total = 0
    while not stop[0]:
        total += sum(nested(2000))
    return total


def exc_work(stop: list) -> int:
    n = 0
    while not stop[0]:
        try:
            try:
                raise KeyError(n)
            except KeyError as e:
                raise ValueError(str(e)) from e
        except ValueError:
            n += 1
    return n


def fresh_code_work(stop: list) -> int:
    """Compile, run and drop new code objects continuously: recorded code addresses
    are freed and reused, which the drain must never misname."""
    n = 0
    while not stop[0]:
        src = f"def fresh_fn_{n % 50}():\n    x = 0\n    for i in range(2000):\n        x += i\n    return x\n"
        ns: dict[str, Any] = {}
        exec(compile(src, f"<fresh-{n}>", "exec"), ns)
        ns[f"fresh_fn_{n % 50}"]()
        del ns
        n += 1
    return n


def deep_work(stop: list) -> int:
    n = 0
    while not stop[0]:
        n += recurse(400, stop)  # deeper than max_stack_depth, spans data-stack chunks
    return n


def async_work(stop: list) -> int:
    async def leaf() -> int:
        x = 0
        for i in range(5000):
            x += i
        await asyncio.sleep(0)
        return x

    async def middle() -> int:
        return await leaf() + await leaf()

    async def main() -> int:
        n = 0
        while not stop[0]:
            await asyncio.gather(*(middle() for _ in range(8)))
            n += 1
        return n

    return asyncio.run(main())


def short_lived_threads(stop: list, profiler: Profiler) -> int:
    """Threads that start, get attached from here, and exit while their timer runs."""
    n = 0
    while not stop[0]:
        go = threading.Event()

        def body() -> None:
            go.wait(1)
            recurse(50, stop)

        t = threading.Thread(target=body, name=f"short-{n}")
        t.start()
        session = profiler.start_session("short", attach=False, link=None)
        if session is not None:
            session.attach_thread(t.ident, t.name)
        go.set()
        t.join()
        time.sleep(0.001)  # the thread is gone; its timer is still registered
        if session is not None:
            profiler.finish_session(session)
        n += 1
    return n


WORKLOADS = {"recursion": deep_work, "generators": gen_work, "exceptions": exc_work,
             "fresh_code": fresh_code_work, "asyncio": async_work}
KNOWN = {"recurse", "gen_work", "numbers", "nested", "<genexpr>", "exc_work", "fresh_code_work", "deep_work",
         "async_work", "leaf", "middle", "main", "run_worker", "short_lived_threads", "body"}


def _check_profile(profile: Any, problems: list[str]) -> tuple[int, int]:
    unknown = 0
    named = 0
    for s in profile.samples:
        for li in profile.stacks[s.stack_index]:
            fn = profile.functions[profile.locations[li].function_index]
            short = fn.name.rsplit(".", 1)[-1]
            if fn.name == "<unknown>":
                unknown += 1
            elif fn.name.endswith("frames omitted>"):
                pass
            else:
                named += 1
                if short.startswith("fresh_fn_") and not fn.filename.startswith("<fresh-"):
                    problems.append(f"misnamed frame {fn.name} in {fn.filename}")
    return named, unknown


def run(seconds: float, source: str) -> dict[str, Any]:
    native_sampler.PERF_EVENTS = source == "perf"
    lib, reason = native_sampler.load()
    if lib is None:
        return {"error": f"native sampler unavailable: {reason}"}
    profiler = Profiler(exporter="none", sample_hz=1000, max_stack_depth=64, max_profile_duration=3600,
                        max_samples=10_000_000)
    stop = [False]
    problems: list[str] = []
    results: dict[str, Any] = {}

    def run_worker(name: str, fn: Any) -> None:
        # each worker thread profiles itself in short sessions (attach, sample, detach)
        end = time.monotonic() + seconds
        count = 0
        while time.monotonic() < end:
            inner = [False]
            timer = threading.Timer(0.05, lambda: inner.__setitem__(0, True))
            timer.start()
            with profiler.profile(f"stress-{name}") as session:
                fn(inner)
            timer.cancel()
            if session is not None:
                named, unknown = _check_profile(session.to_profile(), problems)
                results[name] = results.get(name, 0) + named
                results[name + ".unknown"] = results.get(name + ".unknown", 0) + unknown
            count += 1
        results[name + ".sessions"] = count

    threads = [threading.Thread(target=run_worker, args=(n, f), name=f"stress-{n}") for n, f in WORKLOADS.items()]
    churn = threading.Thread(target=lambda: results.__setitem__("short_threads", short_lived_threads(stop, profiler)))
    for t in threads:
        t.start()
    churn.start()
    for t in threads:
        t.join(seconds * 10 + 30)
    stop[0] = True
    churn.join(30)
    profiler.shutdown(timeout=10)
    stats = lib.stats()
    results["native"] = stats
    results["problems"] = problems
    if stats["active_threads"] != 0:
        problems.append(f"{stats['active_threads']} timers still active")
    if stats["samples"] == 0:
        problems.append("no native samples at all")
    for name in WORKLOADS:
        if not results.get(name):
            problems.append(f"no named frames for {name}")
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--source", choices=["perf", "timer"], default="perf")
    ap.add_argument("--fork", action="store_true", help="fork while sampling; the child profiles itself too")
    args = ap.parse_args()
    if args.fork:
        return _fork_main(args)
    out = run(args.seconds, args.source)
    print(json.dumps(out, default=str), flush=True)
    return 0 if not out.get("problems") and "error" not in out else 1


def _fork_main(args: argparse.Namespace) -> int:
    native_sampler.PERF_EVENTS = args.source == "perf"
    profiler = Profiler(exporter="none", sample_hz=1000, max_profile_duration=3600)
    stop = [False]
    busy = threading.Thread(target=gen_work, args=(stop,), name="busy")
    busy.start()
    with profiler.profile("parent") as parent_session:
        parent_session.attach_thread(busy.ident, "busy")
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            recurse(30, stop)
        pid = os.fork()  # timers are running in this process right now
        if pid == 0:
            child = Profiler(exporter="none", sample_hz=1000, max_profile_duration=3600)
            with child.profile("child") as s:
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    recurse(30, stop)
            p = s.to_profile()
            ok = p.cpu_ns > 0 and any(f.name == "recurse" for f in p.functions)
            child.shutdown(timeout=5)
            os._exit(0 if ok else 3)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            recurse(30, stop)
    _, status = os.waitpid(pid, 0)
    stop[0] = True
    busy.join(10)
    p = parent_session.to_profile()
    out = {"child_status": status, "parent_cpu_ns": p.cpu_ns, "sampler": p.attributes.get("otelprof.sampler")}
    print(json.dumps(out), flush=True)
    profiler.shutdown(timeout=5)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and p.cpu_ns > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
