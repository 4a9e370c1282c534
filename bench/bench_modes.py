"""Benchmark the window-profile modes side by side in one run (not a test).

    .venv/bin/python bench/bench_modes.py [--rounds 3] [--duration 5] [--connections 8] [--stacks asgi,wsgi]
    .venv/bin/python bench/bench_modes.py --micro     # in-process cost per request, no server
    .venv/bin/python bench/bench_modes.py --thread-cpu --modes none,agg --duration 5   # where it goes
    .venv/bin/python bench/bench_modes.py --instructions [--modes none,p0,agg]   # callgrind: the request path
    cd bench && ../.venv/bin/python bench_modes.py --rounds 30 --duration 1 --stacks asgi --endpoints /fast \
        --modes none,p0,agg     # many short paired rounds: a steadier ratio on a noisy machine

Stacks: FastAPI under uvicorn (1 worker) and Flask under gunicorn (1 sync worker),
each server pinned to core 0 (``taskset``), loaded by ``wrk`` pinned to core 1.
Endpoints: ``/fast`` (returns at once: the shortest request there is) and ``/cpu``
(~5 ms of pure-Python work, calibrated once for all servers).  Configurations:

* ``none``  -- no middleware;
* ``p100``  -- every request profiled at 100 Hz, each exported as its own profile
  (budgets lifted): what short requests cost before aggregates;
* ``agg``   -- every request profiled at 100 Hz, but short ones aggregated:
  ``min_samples=1000`` (every request is short), ``aggregate_window=10s``;
* ``cont``  -- continuous mode at 100 Hz (``continuous_hz=100``), no per-request
  profiles (probability 0, late and CPU triggers off): the cost of sampling the
  whole process all the time.

Extra modes (``--modes``, not run by default): ``p0`` -- the middleware with the
defaults but probability 0 (what deciding costs, nothing sampled); ``timer`` -- no middleware, only a CPU
timer at 100 Hz left running on the serving thread (what interrupting that thread
costs by itself); a ``-posix`` suffix (``agg-posix``, ``timer-posix``, ...) uses POSIX
CPU timers instead of perf counters (cheaper here, less exact where code releases the
GIL: see "CPU attribution under GIL releases" in bench/README.md).

``--instructions`` counts instead of timing (needs ``valgrind``): each configuration's
app is called in process (FastAPI: an asyncio task per request, as uvicorn does;
Flask: its WSGI callable, body iterated and closed) under ``valgrind --tool=callgrind
--separate-threads=yes``, twice (100 and 1,100 requests after a warm-up), and the
serving thread's instructions per request are the difference / 1,000.  The same on a
busy machine as on a quiet one (hash seed fixed), so it is the number to compare a
change to the request path with.  It counts the request path only: ``sample_hz`` is 1
there (valgrind runs the code ~50 times slower, so timers and ticks would fire ~50
times as often per request), so ``agg`` is a request chosen by chance with its ticket,
without its samples, and ``cont`` is left out.

Profiles go to the ``none`` exporter (built, not written), so the numbers are the
middleware + sampler + profile building cost.  Servers are started once and stay up;
runs are interleaved (alternating order per round); medians are reported.
Goals: ``agg`` >= 0.85x of ``none`` on ``/fast``; ``cont`` >= 0.97x on ``/cpu`` and
``/fast``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Optional

from _calibrate import shared_loops  # noqa: E402  (bench/ is on sys.path)
from bench_wsgi import _free_port, _wrk  # noqa: E402  (the same load generator as the WSGI benchmark)

MODES = ("none", "p100", "agg", "cont")
ENDPOINTS = ("/fast", "/cpu")
STACKS = ("asgi", "wsgi")
GOALS = {("/fast", "agg"): 0.85, ("/fast", "cont"): 0.97, ("/cpu", "cont"): 0.97}

COMMON = '''
import os
import threading
MODE = os.environ["BENCH_MODE"]
LOOPS = int(os.environ["BENCH_LOOPS"])
POSIX = MODE.endswith("-posix")  # the CPU timers are POSIX timers, not perf counters
BASE = MODE[:-len("-posix")] if POSIX else MODE
PROFILED = BASE not in ("none", "timer")
if POSIX:
    from otelprof_middleware import native_sampler as _ns
    _ns.PERF_EVENTS = False
if BASE == "timer":  # no middleware: a CPU timer at 100 Hz left running on the serving thread
    from otelprof_middleware import native_sampler as _ns
    _lib = _ns.load()[0]
    _lib.set_max_frames(64)
    _TIMER = _lib.start(threading.get_ident(), threading.get_native_id(), 10_000_000, not POSIX)


def otelprof_options(mode):
    hz = int(os.environ.get("BENCH_SAMPLE_HZ", "100"))  # (--instructions: 1, so that no sample falls in)
    lifted = {"max_profiles_per_minute": 1_000_000, "max_concurrent_profiles": 64, "max_overhead": 1.0,
              "cpu_trigger": False}
    if mode == "p0":
        return {"exporter": "none", "probability": 0.0, "sample_hz": hz, **lifted}
    if mode == "p100":
        return {"exporter": "none", "probability": 1.0, "sample_hz": hz, **lifted}
    if mode == "agg":
        return {"exporter": "none", "probability": 1.0, "sample_hz": hz, "min_samples": 1000,
                "aggregate_window": 10, **lifted}
    return {"exporter": "none", "probability": 0.0, "continuous_hz": 100, "slow_promotion": False,
            "slow_route_arming": False, "error_profile_duration": 0, "cpu_trigger": False}


def burn_5ms():
    total = 0
    for i in range(LOOPS):
        total += i * i % 7
    return total
'''

FASTAPI_APP = COMMON + '''
from fastapi import FastAPI
app = FastAPI()
PROFILER = None
if PROFILED:
    from otelprof_middleware import Profiler
    from otelprof_middleware.asgi import ProfilingMiddleware
    PROFILER = Profiler(**otelprof_options(BASE))
    app.add_middleware(ProfilingMiddleware, profiler=PROFILER)


@app.get("/fast")
async def fast():
    return {"ok": 1}


@app.get("/cpu")
async def cpu():
    return {"v": burn_5ms()}


@app.get("/_stats")
async def stats():
    return PROFILER.stats() if PROFILER is not None else {}
'''

FLASK_APP = COMMON + '''
import json
from flask import Flask
app = Flask(__name__)
PROFILER = None
if PROFILED:
    from otelprof_middleware import Profiler
    from otelprof_middleware.flask import OtelProf
    PROFILER = Profiler(**otelprof_options(BASE))
    OtelProf(app, profiler=PROFILER)


@app.route("/fast")
def fast():
    return "ok"


@app.route("/cpu")
def cpu():
    burn_5ms()
    return "ok"


@app.route("/_stats")
def stats():
    return json.dumps(PROFILER.stats() if PROFILER is not None else {}, default=str)
'''


def _start(workdir: str, stack: str, mode: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    if stack == "asgi":
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bench_modes_fastapi:app", "--host",
               "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
    else:
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync",
               "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048", "bench_modes_flask:app"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELPROF_", "OTEL_"))}
    env.update(BENCH_MODE=mode, PYTHONPATH=workdir, BENCH_LOOPS=str(shared_loops()), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server exited")
            time.sleep(0.1)
    raise RuntimeError(f"{stack}/{mode} did not start")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        proc.kill()
        proc.wait()


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as r:
        return json.loads(r.read())


def micro(repeat: int = 5, number: int = 3000) -> None:
    """In-process cost per request (µs) of each configuration on a trivial ASGI app
    called directly (no server, no sockets), best of ``repeat`` batches."""
    import asyncio

    ns: dict = {}
    exec(textwrap.dedent(COMMON.replace('os.environ["BENCH_MODE"]', '"none"')
                         .replace('int(os.environ["BENCH_LOOPS"])', "1")), ns)
    from otelprof_middleware import Profiler
    from otelprof_middleware.asgi import ProfilingMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "GET", "path": "/fast", "query_string": b"", "scheme": "http",
             "root_path": "", "headers": [(b"host", b"127.0.0.1")]}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    async def run(a) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                await a(dict(scope), receive, send)
            best = min(best, (time.perf_counter() - t0) / number)
        return best * 1e6

    async def go() -> None:
        configs = {"none": app}
        for mode in MODES[1:]:
            configs[mode] = ProfilingMiddleware(app, profiler=Profiler(**ns["otelprof_options"](mode)))
        print(f"| config | µs per request (best of {repeat} x {number}) |")
        print("|---|---:|")
        for name, a in configs.items():
            print(f"| {name} | {await run(a):.1f} |")

    asyncio.run(go())


def _instructions_child(stack: str, mode: str, number: int) -> None:
    """Under callgrind: build the app as its server would, warm up, serve ``number`` requests."""
    import asyncio

    os.environ.update(BENCH_MODE=mode, BENCH_LOOPS="1", BENCH_SAMPLE_HZ="1")
    import logging

    logging.disable(logging.WARNING)  # (the exporter's start-up line)
    ns: dict = {"__name__": "__main__"}  # (Flask finds its root path from the module's name)
    exec(compile(textwrap.dedent(FASTAPI_APP if stack == "asgi" else FLASK_APP), f"bench_modes_{stack}", "exec"), ns)
    app = ns["app"]
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    if stack == "wsgi":
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/fast", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*",
                   "wsgi.input": None, "wsgi.errors": sys.stderr, "wsgi.multithread": False,
                   "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0)}

        def start_response(status: str, headers: list, exc_info: object = None) -> None:
            pass

        import io

        for _ in range(200 + number):
            env = dict(environ)
            env["wsgi.input"] = io.BytesIO(b"")
            body = app(env, start_response)
            for _chunk in body:
                pass
            getattr(body, "close", lambda: None)()
        return
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/fast",
             "raw_path": b"/fast", "query_string": b"", "scheme": "http", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(200 + number):
            await loop.create_task(app(dict(scope), receive, send))

    asyncio.run(serve())


def instructions(stacks: list[str], modes: list[str]) -> None:
    """The serving thread's instructions per ``/fast`` request of each configuration."""
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is required (apt-get install -y valgrind)")
    modes = [m for m in modes if m != "cont"]
    out = tempfile.mkdtemp(prefix="bench-modes-cg-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELPROF_", "OTEL_"))}
    env["PYTHONHASHSEED"] = "0"
    here = os.path.dirname(os.path.abspath(__file__))

    def count(stack: str, mode: str, number: int) -> subprocess.Popen:
        # (address randomisation off where setarch can: dictionaries keyed by addresses
        # then behave the same in every run, and counts repeat within ~0.01 %)
        cmd = ["setarch", "-R"] if shutil.which("setarch") else []
        cmd += ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                f"--callgrind-out-file={out}/{stack}.{mode}.{number}", sys.executable,
                os.path.join(here, "bench_modes.py"), "--instructions-child", stack, mode, str(number)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def total(path: str) -> int:
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise RuntimeError(f"no total in {path}")

    started = time.monotonic()
    per: dict[tuple[str, str], float] = {}
    try:
        for stack in stacks:
            for mode in modes:
                procs = [count(stack, mode, n) for n in (100, 1100)]  # (two cores: side by side)
                for p in procs:
                    _out, err = p.communicate()
                    if p.returncode != 0:
                        sys.exit(f"{stack}/{mode} failed under valgrind:\n{err.decode()[-2000:]}")
                # thread 1 (file suffix -01) is the serving thread
                per[(stack, mode)] = (total(f"{out}/{stack}.{mode}.1100-01") - total(f"{out}/{stack}.{mode}.100-01")) / 1000
                print(f"{stack} {mode}: {per[(stack, mode)]:,.0f} instructions per request", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"\ntotal time {time.monotonic() - started:.0f}s; callgrind, serving thread only, 1,000 requests to /fast "
          "(100 vs 1,100 after 200 of warm-up), sample_hz=1, PYTHONHASHSEED=0\n")
    print("| stack | config | instructions per request | vs none | added by the middleware |")
    print("|---|---|---:|---:|---:|")
    for stack in stacks:
        base = per.get((stack, "none"))
        for mode in modes:
            n = per[(stack, mode)]
            ratio = f"{n / base:.3f}x" if base else "-"
            added = f"{n - base:+,.0f}" if base else "-"
            print(f"| {stack} | {mode} | {n:,.0f} | {ratio} | {added} |")


def _server_threads(pid: int) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(pid, tid) -> (CPU ticks, voluntary, involuntary context switches) of the
    server's process and its children (gunicorn's worker)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                out[(p, int(tid))] = (int(fields[11]) + int(fields[12]),
                                      int(status["voluntary_ctxt_switches"]),
                                      int(status["nonvoluntary_ctxt_switches"]))
            except (OSError, ValueError, KeyError, IndexError):
                pass
    return out


def thread_cpu(workdir: str, stacks: list[str], modes: list[str], duration: float, connections: int) -> None:
    """CPU per request of each server thread under load on ``/fast`` (from
    ``/proc/<pid>/task/*/stat``, before and after ``duration`` seconds of ``wrk``):
    where a configuration's cost is spent (request thread, sampler thread...)."""
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    print("| stack | config | requests | request thread µs/req | other threads µs/req | "
          "context switches/req (request thread, vol+invol) |")
    print("|---|---|---:|---:|---:|---:|")
    for stack in stacks:
        for mode in modes:
            proc, port = _start(workdir, stack, mode)
            try:
                url = f"http://127.0.0.1:{port}/fast"
                _wrk(url, 2.0, connections)  # warm-up
                before = _server_threads(proc.pid)
                out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
                                      url], capture_output=True, text=True).stdout
                after = _server_threads(proc.pid)
            finally:
                _stop(proc)
            n = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
            used = {k: tuple(a - b for a, b in zip(v, before.get(k, (0, 0, 0)))) for k, v in after.items()}
            busiest = max(used, key=lambda k: used[k][0])
            cpu, vol, invol = used[busiest]
            others = sum(v[0] for k, v in used.items() if k != busiest)
            print(f"| {stack} | {mode} | {n} | {cpu * tick_us / n:.1f} | {others * tick_us / n:.1f} | "
                  f"{(vol + invol) / n:.2f} |", flush=True)


def _paired(runs: list[tuple[float, float]], base: Optional[list[tuple[float, float]]]) -> str:
    """The median of the per-round ratios to ``none`` (each round runs every
    configuration back to back, so a slow spell of the machine affects both sides of
    its ratio), with their interquartile range: with many short rounds (``--rounds 30
    --duration 1``) a steadier estimate than the ratio of medians on a noisy VM."""
    if not base or len(runs) != len(base):
        return "-"
    ratios = sorted(r / b for (r, _), (b, _) in zip(runs, base))
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.3f}x"
    q1, _q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f}x ({q1:.3f}-{q3:.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--micro", action="store_true", help="only the in-process cost per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--endpoints", default=",".join(ENDPOINTS), help="e.g. /fast")
    ap.add_argument("--thread-cpu", action="store_true",
                    help="CPU per request of each server thread on /fast, one configuration at a time")
    ap.add_argument("--instructions", action="store_true",
                    help="instructions per request of the serving thread, under callgrind (the request path only)")
    ap.add_argument("--instructions-child", nargs=3, metavar=("STACK", "MODE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.instructions_child:
        stack, mode, number = args.instructions_child
        _instructions_child(stack, mode, int(number))
        return 0
    if args.instructions:
        given = [m for m in args.modes.split(",") if m]
        instructions([s for s in args.stacks.split(",") if s],
                     given if args.modes != ",".join(MODES) else ["none", "p0", "agg"])
        return 0
    if args.micro:
        micro()
        return 0
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    stacks = [s for s in args.stacks.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"WARNING: load average {load:.1f} before the run: ratios are only indicative", flush=True)
    workdir = tempfile.mkdtemp(prefix="bench-modes-")
    for name, text in (("bench_modes_fastapi.py", FASTAPI_APP), ("bench_modes_flask.py", FLASK_APP)):
        with open(os.path.join(workdir, name), "w") as f:
            f.write(textwrap.dedent(text))
    if args.thread_cpu:
        try:
            thread_cpu(workdir, stacks, modes, args.duration, args.connections)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    started = time.monotonic()
    servers: dict[tuple[str, str], tuple[subprocess.Popen, int]] = {}
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    counts: dict[tuple[str, str, str], list[dict]] = {}
    try:
        for stack in stacks:
            for mode in modes:
                servers[(stack, mode)] = _start(workdir, stack, mode)
        endpoints = [e for e in args.endpoints.split(",") if e]
        for (stack, mode), (_proc, port) in servers.items():
            for endpoint in endpoints:
                _wrk(f"http://127.0.0.1:{port}{endpoint}", 1.0, args.connections)  # warm-up
        for rnd in range(args.rounds):
            for stack in stacks:
                for endpoint in endpoints:
                    order = modes if rnd % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        port = servers[(stack, mode)][1]
                        before = _stats(port) if mode != "none" else {}
                        rps, p99 = _wrk(f"http://127.0.0.1:{port}{endpoint}", args.duration, args.connections)
                        after = _stats(port) if mode != "none" else {}
                        results.setdefault((stack, endpoint, mode), []).append((rps, p99))
                        if mode != "none":
                            counts.setdefault((stack, endpoint, mode), []).append(
                                {k: after.get(k, 0) - before.get(k, 0)
                                 for k in ("profiles_started", "profiles_aggregated", "window_profiles",
                                           "profiles_collected")})
                        print(f"round {rnd + 1} {stack} {endpoint:5} {mode:4} {rps:9.1f} req/s  p99 {p99:7.2f} ms",
                              flush=True)
    finally:
        for proc, _port in servers.values():
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal time {time.monotonic() - started:.0f}s; wrk -t1 -c{args.connections} -d{args.duration:g}s, "
          f"medians of {args.rounds} interleaved runs; server on core 0, wrk on core 1\n")
    print("| stack | endpoint | config | req/s | p99 ms | throughput vs none | per-round ratio (IQR) | "
          "p99 vs none | profiles started / aggregated / window profiles / collected |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    verdicts = []
    for stack in stacks:
        for endpoint in endpoints:
            base = results.get((stack, endpoint, "none"))
            base_rps = statistics.median(r for r, _ in base) if base else None
            base_p99 = statistics.median(p for _, p in base) if base else None
            for mode in modes:
                runs = results[(stack, endpoint, mode)]
                rps = statistics.median(r for r, _ in runs)
                p99 = statistics.median(p for _, p in runs)
                c = counts.get((stack, endpoint, mode))
                shown = "-"
                if c:
                    shown = " / ".join(str(sum(x[k] for x in c)) for k in
                                       ("profiles_started", "profiles_aggregated", "window_profiles",
                                        "profiles_collected"))
                ratio = f"{rps / base_rps:.3f}x" if base_rps else "-"
                pratio = f"{p99 / base_p99:.3f}x" if base_p99 else "-"
                paired = _paired(runs, base)
                print(f"| {stack} | {endpoint} | {mode} | {rps:.1f} | {p99:.2f} | {ratio} | {paired} | {pratio} "
                      f"| {shown} |")
                goal = GOALS.get((endpoint, mode))
                if base_rps and goal is not None:
                    verdicts.append(f"{stack} {mode} on {endpoint}: {rps / base_rps:.3f}x (goal >= {goal}) "
                                    f"{'MET' if rps / base_rps >= goal else 'MISSED'}")
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
