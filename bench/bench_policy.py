"""Benchmarks of the trigger policy (issue 5).

1. Micro: cost of ``RequestProfiling.begin()`` + ``finish()`` for a request that is
   NOT profiled (probability 0), with the defaults (slow promotion, route arming,
   CPU trigger on), with every late trigger off, and with the flight recorder;
   and the entry decision of a request on an armed route with 1 and with 256
   routes armed (one dict lookup by template: the same cost).
2. Server: throughput of a ~5 ms CPU endpoint (raw ASGI app + the project's ASGI
   middleware, uvicorn, 1 process, wrk on loopback), side by side in one run,
   rounds interleaved:
   none (no middleware) | p0 (probability 0, defaults) | rec10 (flight recorder
   10 Hz) | p100 (probability 1, governor off: max_overhead=1) | p100-gov
   (probability 1, max_overhead=0.05).
   The profiler's own CPU share (sampler + export worker + watchdog vs process CPU)
   is read from the server at the end of each run.

    /tmp/venv/bin/python bench/bench_policy.py [--duration 5] [--rounds 3] [--micro-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Any

APP = textwrap.dedent('''
    import json, os, time
    from otelprof_middleware import Profiler
    from otelprof_middleware.overhead import profiler_cpu_ns

    def cpu_work():
        n = 0
        for i in range(int(os.environ.get("WORK", "30000"))):
            n += i * i % 7
        return n

    async def raw(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                await send({"type": m["type"] + ".complete"})
                if m["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/stats":
            body = b"{}"
            if profiler is not None:
                st = profiler.stats()
                st["policy"] = profiler.policy.state().as_dict()
                st["own_cpu_ns"] = profiler_cpu_ns() + profiler.policy.watchdog.cpu_ns_self
                st["process_cpu_ns"] = time.process_time_ns()
                body = json.dumps(st, default=str).encode()
        else:
            body = str(cpu_work()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    profiler = None
    if os.environ.get("MODE") == "none":
        app = raw
    else:
        from otelprof_middleware.asgi import ProfilingMiddleware
        profiler = Profiler()
        app = ProfilingMiddleware(raw, profiler=profiler)
''')

CONFIGS: dict[str, dict[str, str]] = {
    "none": {},
    "p0": {"PROBABILITY": "0"},
    "rec10": {"PROBABILITY": "0", "TAIL_SAMPLING_HZ": "10"},
    "p100": {"PROBABILITY": "1", "MAX_OVERHEAD": "1"},
    "p100-gov": {"PROBABILITY": "1", "MAX_OVERHEAD": "0.05"},
    # a deliberately expensive rate (1 kHz per request): the governor has something to hold back
    "p100-1k": {"PROBABILITY": "1", "MAX_OVERHEAD": "1", "SAMPLE_HZ": "1000"},
    "p100-1k-gov": {"PROBABILITY": "1", "MAX_OVERHEAD": "0.05", "SAMPLE_HZ": "1000"},
}


def micro(n: int = 20000) -> dict[str, float]:
    """Median µs per begin()+finish() of an unprofiled request."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from otelprof_middleware import Profiler
    from otelprof_middleware.integrations.lifecycle import RequestProfiling
    from otelprof_middleware.policy import RequestInfo

    headers = {"host": "127.0.0.1", "user-agent": "bench"}
    results = {}
    variants = {
        "defaults (promotion, arming, cpu trigger on)": {},
        "all late triggers off": dict(slow_promotion=False, slow_route_arming=False, error_profile_duration=0,
                                      cpu_trigger=False, max_overhead=1.0),
        "flight recorder 10 Hz (session started + discarded)": dict(tail_sampling_hz=10),
    }
    for label, opts in variants.items():
        p = Profiler(exporter="none", probability=0.0, **opts)
        rp = RequestProfiling(p)
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n // 10):
                info = RequestInfo(method="GET", path="/items/1", url="http://127.0.0.1/items/1", header=headers.get)
                h = rp.begin(info)
                h.set_status(200)
                h.finish()
            runs.append((time.perf_counter() - t0) / (n // 10) * 1e6)
        results[label] = statistics.median(runs)
        p.shutdown(1)
    return results


def armed_lookup(n: int = 20000) -> dict[int, float]:
    """Median µs of the entry decision of a request whose route is armed, with 1 and
    256 routes armed (templates; the request's template comes from its router)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from otelprof_middleware import Profiler
    from otelprof_middleware.policy import RequestInfo

    out = {}
    for armed in (1, 256):
        p = Profiler(exporter="none", probability=0.0, error_sample_rate=1e-9, cpu_trigger=False, max_overhead=1.0)
        pol = p.policy
        now = pol.clock()
        for i in range(armed - 1):
            pol.arming.arm_route(f"/other{i}/{{id}}", "error", 600, 1e-9, now)
        pol.arming.arm_route("/items/{item_id}", "error", 600, 1e-9, now)
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n // 10):
                pol.decide(RequestInfo(path="/items/7", route_resolver=lambda: "/items/{item_id}"))
            runs.append((time.perf_counter() - t0) / (n // 10) * 1e6)
        out[armed] = statistics.median(runs)
        p.shutdown(1)
    return out


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server died: " + (proc.stdout.read() if proc.stdout else ""))
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def run_server(name: str, app_dir: str, out_dir: str, duration: float, conns: int) -> dict[str, Any]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELPROF_", "OTEL_"))}
    env.update({"MODE": name, "OTELPROF_EXPORTER": "file", "OTELPROF_OUTPUT_DIR": out_dir,
                "OTELPROF_MAX_FILES": "300", "OTELPROF_MAX_PROFILES_PER_MINUTE": "1000000",
                "OTELPROF_EXCLUDED_URLS": "/stats", "OTELPROF_SLOW_THRESHOLD": "1"})
    for k, v in CONFIGS[name].items():
        env["OTELPROF_" + k] = v
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench_app:app", "--app-dir", app_dir, "--port",
                             str(port), "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base + "/stats", proc)
        subprocess.run(["wrk", "-t1", "-c2", "-d1s", base + "/cpu"], capture_output=True)  # warm-up
        before = json.loads(urllib.request.urlopen(base + "/stats").read() or b"{}")
        r = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{int(duration)}s", base + "/cpu"],
                           capture_output=True, text=True)
        m = re.search(r"Requests/sec:\s+([0-9.]+)", r.stdout)
        rps = float(m.group(1)) if m else 0.0
        after = json.loads(urllib.request.urlopen(base + "/stats").read() or b"{}")
        res: dict[str, Any] = {"rps": rps}
        if after:
            d_own = after["own_cpu_ns"] - before.get("own_cpu_ns", 0)
            d_proc = after["process_cpu_ns"] - before.get("process_cpu_ns", 0)
            res["overhead"] = d_own / d_proc if d_proc else None
            res["started"] = after.get("profiles_started", 0) - before.get("profiles_started", 0)
            res["declined"] = after.get("declined", {})
            res["governor_level"] = after["policy"]["governor_level"]
            res["kept"] = after.get("recordings_kept", 0)
        return res
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--micro-only", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    args = ap.parse_args()

    print("## micro: begin()+finish() of an unprofiled request (probability 0), median of 7 x 2000")
    for label, us in micro().items():
        print(f"  {label:55s} {us:7.2f} µs")
    print("## micro: entry decision of a request on an armed route (template), median of 7 x 2000")
    for armed, us in armed_lookup().items():
        print(f"  {armed:4d} routes armed{'':37s} {us:7.2f} µs")
    if args.micro_only:
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found")
    tmp = tempfile.mkdtemp(prefix="otelprof-bench-policy-")
    with open(os.path.join(tmp, "bench_app.py"), "w") as f:
        f.write(APP)
    chosen = [c for c in args.configs.split(",") if c]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown or "none" not in chosen:
        sys.exit(f"--configs: unknown {unknown} (and 'none' is needed as the baseline)")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in chosen}
    try:
        for rnd in range(args.rounds):
            for name in chosen:  # interleaved: every config once per round
                res = run_server(name, tmp, os.path.join(tmp, f"out-{name}-{rnd}"), args.duration, args.conns)
                results[name].append(res)
                print(f"  round {rnd} {name:9s} {res}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(r["rps"] for r in results["none"])
    print(f"\n## server: ~5 ms CPU endpoint, uvicorn 1 process, wrk -t2 -c{args.conns} -d{args.duration}s, "
          f"median of {args.rounds} interleaved rounds")
    print("| config | req/s | ratio vs none | profiler CPU / process CPU | profiles started/s | governor levels |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        rps = statistics.median(r["rps"] for r in rs)
        ovs = [r["overhead"] for r in rs if r.get("overhead") is not None]
        ov = f"{statistics.median(ovs) * 100:.2f} %" if ovs else "-"
        started = statistics.median(r.get("started", 0) for r in rs) / args.duration if name != "none" else 0
        levels = sorted({r.get("governor_level", 0) for r in rs})
        print(f"| {name} | {rps:.1f} | {rps / base:.3f} | {ov} | {started:.1f} | {levels} |")


if __name__ == "__main__":
    main()
