"""Benchmark the ASGI middleware under uvicorn (not a test).

    /tmp/venv/bin/python bench/bench_asgi.py [--rounds 3] [--duration 5] [--connections 8]

For each round, for each endpoint (``/trivial``, ``/cpu`` ~5 ms of pure-Python CPU),
for each configuration, in interleaved order:

* ``none``   -- no middleware;
* ``p0``     -- ProfilingMiddleware, probability 0, every other option at its default
  (slow promotion, slow and error route arming, the high-CPU trigger, budgets,
  overhead governor): the policy runs and watches every request, nothing is sampled
  unless a trigger fires;
* ``p0lean`` -- probability 0 with the late triggers and the high-CPU trigger off;
* ``prod``   -- the production defaults: probability 0.01 and all the defaults
  (a saturated server fires the high-CPU trigger; the default budgets, 60 profiles a
  minute and 8 at once, bound what it costs);
* ``p100``   -- probability 1.0 (every request profiled at 100 Hz; the per-minute
  and overhead budgets are lifted so that really every request is profiled),

a fresh ``uvicorn bench_asgi:app`` (1 worker, pinned to core 0 with ``taskset``) is
loaded by ``wrk`` pinned to core 1 (1 thread, ``--connections`` connections) for
``--duration`` seconds after a 1 s warm-up.  Profiles go through the export
pipeline to the ``none`` exporter (built, not written), so the numbers are the
middleware + sampler + profile building cost, not disk or network.

Reports the median throughput and p99 latency per configuration and the ratios
vs. ``none``.  Targets: ``p0`` >= 0.98x and ``prod`` >= 0.97x throughput on
``/trivial``; ``p100`` >= 0.93x throughput on ``/cpu``.  ``--micro`` prints the
in-process cost instead (``bench_request_path.py`` has the per-adapter table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

from _calibrate import calibrate, shared_loops, spin  # noqa: E402  (bench/ is on sys.path)

MODES = ("none", "p0", "p0lean", "prod", "p100")
TARGETS = {("/trivial", "p0"): 0.98, ("/trivial", "prod"): 0.97, ("/cpu", "p100"): 0.93}
ENDPOINTS = ("/trivial", "/cpu")

# ----------------------------------------------------------------------------- the app (server side)


def mode_options(mode: str) -> dict:
    """Profiler options of a configuration (everything else at its default)."""
    if mode in ("p0", "prod"):
        return {"probability": 0.0 if mode == "p0" else 0.01}
    if mode == "p0lean":  # probability 0 and no late triggers: nothing watches the request
        return dict(probability=0.0, slow_promotion=False, slow_route_arming=False, error_profile_duration=0,
                    cpu_trigger=False)
    # every request profiled: budgets lifted, the saturated server must not fire the CPU trigger
    # ("p100py": the same with the pure-Python sampler, to compare the two samplers in one run)
    return dict(probability=1.0, sample_hz=100, max_profiles_per_minute=1_000_000, max_concurrent_profiles=64,
                max_overhead=1.0, cpu_trigger=False, native_sampler=mode != "p100py")



def _build_app():  # pragma: no cover - runs in the uvicorn process
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def spin_5ms() -> int:
        return spin(_LOOPS)  # ~5 ms of pure-Python work, the same in every server

    async def trivial(request):
        return PlainTextResponse("ok")

    async def cpu(request):
        return JSONResponse({"v": spin_5ms()})

    holder: dict = {}

    async def stats(request):
        p = holder.get("profiler")
        return JSONResponse(p.stats() if p is not None else {})

    app = Starlette(routes=[Route("/trivial", trivial), Route("/cpu", cpu), Route("/_stats", stats)])
    mode = os.environ.get("BENCH_MODE", "none")
    if mode != "none":
        from otelprof_middleware.asgi import ProfilingMiddleware
        from otelprof_middleware.profiler import Profiler

        profiler = Profiler(exporter="none", **mode_options(mode))
        app.add_middleware(ProfilingMiddleware, profiler=profiler)
        holder["profiler"] = profiler
    return app


if os.environ.get("BENCH_MODE"):  # imported by uvicorn
    # the driver calibrates once and gives every server the same amount of work
    _LOOPS = int(os.environ.get("BENCH_LOOPS") or calibrate())
    app = _build_app()


# ----------------------------------------------------------------------------- the driver


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _start_server(mode: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, BENCH_MODE=mode, PYTHONUNBUFFERED="1", BENCH_LOOPS=str(shared_loops()))
    for k in list(env):
        if k.startswith(("OTELPROF_", "OTEL_")):
            del env[k]
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bench_asgi:app",
           "--app-dir", os.path.dirname(os.path.abspath(__file__)), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server died: " + (proc.stderr.read() if proc.stderr else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def _stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, duration: float, connections: int) -> tuple[float, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = float(m.group(1)) * _UNITS[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk reported errors:\n" + out)
    return rps, p99


def micro(repeat: int = 7, number: int = 5000) -> None:
    """In-process cost of the middleware per request (µs), without a server: a
    trivial ASGI app called directly, best of ``repeat`` batches (robust to a busy
    machine, unlike the throughput runs)."""
    import asyncio

    from otelprof_middleware.asgi import ProfilingMiddleware
    from otelprof_middleware.profiler import Profiler

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "GET", "path": "/trivial", "query_string": b"", "scheme": "http",
             "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"),
                                          (b"accept", b"*/*"), (b"connection", b"keep-alive")]}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    def mw(mode):
        return ProfilingMiddleware(app, profiler=Profiler(exporter="none", **mode_options(mode)))

    configs = {"none": app, **{mode: mw(mode) for mode in MODES if mode != "none"}}

    async def run(a):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                await a(dict(scope), receive, send)
            best = min(best, (time.perf_counter() - t0) / number)
        return best * 1e6

    async def main():
        results = {name: await run(a) for name, a in configs.items()}
        base = results["none"]
        print("| config | µs per request (best of %d x %d) | middleware cost µs |" % (repeat, number))
        print("|---|---:|---:|")
        for name, us in results.items():
            print(f"| {name} | {us:.2f} | {us - base:.2f} |")

    asyncio.run(main())


def _stats(port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as r:
        return json.loads(r.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--micro", action="store_true", help="only the in-process per-request cost")
    args = parser.parse_args()
    if args.micro:
        micro()
        return 0
    modes = [m for m in args.modes.split(",") if m]
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"WARNING: load average {load:.1f} before the run: other processes compete for the cores, "
              "so throughput ratios are not valid (a process with more runnable threads gets more CPU)", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    profiled: dict[tuple[str, str], list[int]] = {}
    started = time.monotonic()
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for mode in modes:  # all servers idle on core 0; only the one under load runs
            port = _free_port()
            servers[mode] = (_start_server(mode, port), port)
        for mode, (_proc, port) in servers.items():
            for endpoint in ENDPOINTS:
                _wrk(f"http://127.0.0.1:{port}{endpoint}", 1.0, args.connections)  # warm-up
        for rnd in range(args.rounds):
            for endpoint in ENDPOINTS:
                order = modes if rnd % 2 == 0 else list(reversed(modes))  # interleaved, alternating order
                for mode in order:
                    port = servers[mode][1]
                    before = _stats(port)
                    rps, p99 = _wrk(f"http://127.0.0.1:{port}{endpoint}", args.duration, args.connections)
                    after = _stats(port)
                    results.setdefault((endpoint, mode), []).append((rps, p99))
                    if mode != "none":
                        n = rps * args.duration
                        profiled.setdefault((endpoint, mode), []).append(
                            after.get("profiles_started", 0) - before.get("profiles_started", 0))
                        profiled.setdefault((endpoint, mode + "#req"), []).append(int(n))
                    print(f"round {rnd + 1} {endpoint:9} {mode:5} {rps:9.1f} req/s  p99 {p99:7.2f} ms", flush=True)
    finally:
        for proc, _port in servers.values():
            _stop_server(proc)
    print(f"\ntotal time {time.monotonic() - started:.0f}s; wrk -t1 -c{args.connections} -d{args.duration:g}s, "
          f"medians of {args.rounds} interleaved runs; uvicorn on core 0, wrk on core 1\n")
    print("| endpoint | config | req/s | p99 ms | throughput vs none | p99 vs none |")
    print("|---|---|---:|---:|---:|---:|")
    verdicts = []
    for endpoint in ENDPOINTS:
        base = results.get((endpoint, "none"))
        base_rps = statistics.median(r for r, _ in base) if base else None
        base_p99 = statistics.median(p for _, p in base) if base else None
        for mode in modes:
            runs = results[(endpoint, mode)]
            rps = statistics.median(r for r, _ in runs)
            p99 = statistics.median(p for _, p in runs)
            ratio = f"{rps / base_rps:.3f}x" if base_rps else "-"
            pratio = f"{p99 / base_p99:.3f}x" if base_p99 else "-"
            print(f"| {endpoint} | {mode} | {rps:.1f} | {p99:.2f} | {ratio} | {pratio} |")
            target = TARGETS.get((endpoint, mode))
            if base_rps and target is not None:
                verdicts.append(f"{mode} on {endpoint}: {rps / base_rps:.3f}x (target >= {target}) "
                                f"{'MET' if rps / base_rps >= target else 'MISSED'}")
    print()
    for (endpoint, mode), counts in sorted(profiled.items()):
        if not mode.endswith("#req"):
            total_req = sum(profiled[(endpoint, mode + "#req")])
            print(f"profiled {endpoint} {mode}: {sum(counts)} profiles started for ~{total_req} requests")
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
