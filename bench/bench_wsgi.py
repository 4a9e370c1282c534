"""Benchmark the WSGI integrations: Flask and Django under gunicorn (not a test).

    /tmp/venv/bin/python bench/bench_wsgi.py [--rounds 2] [--duration 4] [--connections 4]

Servers: ``gunicorn`` with 1 sync worker, pinned to core 0 (``taskset``); load:
``wrk`` pinned to core 1 (1 thread, ``--connections`` connections).  For each
round, endpoint (``/trivial``; ``/cpu`` ~5 ms of pure-Python CPU) and
configuration, in interleaved order:

* ``none``   -- no profiling code at all;
* ``p0``     -- integration installed, probability 0, every other option at its
  default (late triggers, high-CPU trigger, budgets, governor);
* ``p0lean`` -- probability 0 with the late triggers and the high-CPU trigger off;
* ``prod``   -- the production defaults (probability 0.01 and all the defaults);
* ``p100``   -- probability 1.0 at 100 Hz (per-minute and overhead budgets lifted).

Flask uses ``OtelProf(app)``; Django lists ``ProfilingMiddleware`` in MIDDLEWARE.
Profiles go through the export pipeline to the ``none`` exporter (built, not
written).  All 8 servers are started once and stay up; only one is loaded at a
time.  Reports median req/s and p99 per configuration and ratios vs ``none``.
Targets: ``p0`` >= 0.98x and ``prod`` >= 0.97x throughput on ``/trivial``;
``p100`` >= 0.93x on ``/cpu``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from _calibrate import shared_loops  # noqa: E402  (bench/ is on sys.path)

MODES = ("none", "p0", "p0lean", "prod", "p100")
TARGETS = {("/trivial", "p0"): 0.98, ("/trivial", "prod"): 0.97, ("/cpu", "p100"): 0.93}
ENDPOINTS = ("/trivial", "/cpu")
FRAMEWORKS = ("flask", "django")

OPTIONS = '''
def otelprof_options(mode):
    if mode in ("p0", "prod"):  # everything else at its default
        return {"exporter": "none", "probability": 0.0 if mode == "p0" else 0.01}
    if mode == "p0lean":
        return {"exporter": "none", "probability": 0.0, "slow_promotion": False, "slow_route_arming": False,
                "error_profile_duration": 0, "cpu_trigger": False}
    # every request profiled: budgets lifted; the saturated server must not fire the CPU trigger
    return {"exporter": "none", "probability": 1.0, "sample_hz": 100, "max_profiles_per_minute": 1_000_000,
            "max_concurrent_profiles": 64, "max_overhead": 1.0, "cpu_trigger": False}


LOOPS = int(os.environ["BENCH_LOOPS"])


def burn_5ms():
    # a fixed amount of pure-Python work (~5 ms, calibrated once by the driver for all
    # servers): slower interpretation under profiling shows up, unlike a CPU-time loop
    total = 0
    for i in range(LOOPS):
        total += i * i % 7
    return total
'''

FLASK_APP = '''
import os
import time
from flask import Flask
MODE = os.environ["BENCH_MODE"]
''' + OPTIONS + '''
app = Flask(__name__)
if MODE != "none":
    from otelprof_middleware.flask import OtelProf
    OtelProf(app, **otelprof_options(MODE))


@app.route("/trivial")
def trivial():
    return "ok"


@app.route("/cpu")
def cpu():
    burn_5ms()
    return "ok"
'''

DJANGO_APP = '''
import os
import time
import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
MODE = os.environ["BENCH_MODE"]
''' + OPTIONS + '''


def trivial(request):
    return HttpResponse("ok")


def cpu(request):
    burn_5ms()
    return HttpResponse("ok")


urlpatterns = [path("trivial", trivial), path("cpu", cpu)]
settings.configure(
    DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, DATABASES={},
    INSTALLED_APPS=[], MIDDLEWARE=([] if MODE == "none" else ["otelprof_middleware.django.ProfilingMiddleware"]),
    OTELPROF=(otelprof_options(MODE) if MODE != "none" else None),
)
django.setup()
from django.core.wsgi import get_wsgi_application  # noqa: E402
application = get_wsgi_application()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: str, framework: str, mode: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    target = "bench_flask_app:app" if framework == "flask" else "bench_django_app:application"
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync",
           "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048", target]
    env = dict(os.environ, BENCH_MODE=mode, PYTHONPATH=workdir, BENCH_LOOPS=str(shared_loops()))
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
    raise RuntimeError(f"{framework}/{mode} did not start")


def _wrk(url: str, duration: float, connections: int) -> tuple[float, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s",
           "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk reported errors:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
    return rps, p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="bench-wsgi-")
    with open(os.path.join(workdir, "bench_flask_app.py"), "w") as f:
        f.write(textwrap.dedent(FLASK_APP))
    with open(os.path.join(workdir, "bench_django_app.py"), "w") as f:
        f.write(textwrap.dedent(DJANGO_APP))
    servers: dict[tuple[str, str], tuple[subprocess.Popen, int]] = {}
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    try:
        for fw in FRAMEWORKS:
            for mode in MODES:
                servers[(fw, mode)] = _start(workdir, fw, mode)
        for (fw, mode), (_p, port) in servers.items():
            for ep in ENDPOINTS:
                _wrk(f"http://127.0.0.1:{port}{ep}", 1.0, args.connections)  # warm-up
        for r in range(args.rounds):
            for fw in FRAMEWORKS:
                for ep in ENDPOINTS:
                    order = MODES if r % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        port = servers[(fw, mode)][1]
                        results.setdefault((fw, ep, mode), []).append(
                            _wrk(f"http://127.0.0.1:{port}{ep}", args.duration, args.connections))
    finally:
        for proc, _port in servers.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except Exception:
                pass
        shutil.rmtree(workdir, ignore_errors=True)

    print("| framework | endpoint | config | req/s | p99 ms | req/s vs none | p99 vs none |")
    print("|---|---|---|---:|---:|---:|---:|")
    verdicts = []
    for fw in FRAMEWORKS:
        for ep in ENDPOINTS:
            base_rps = statistics.median(x[0] for x in results[(fw, ep, "none")])
            base_p99 = statistics.median(x[1] for x in results[(fw, ep, "none")])
            for mode in MODES:
                rps = statistics.median(x[0] for x in results[(fw, ep, mode)])
                p99 = statistics.median(x[1] for x in results[(fw, ep, mode)])
                print(f"| {fw} | {ep} | {mode} | {rps:.0f} | {p99:.2f} | {rps / base_rps:.3f}x | "
                      f"{p99 / base_p99:.2f}x |")
                target = TARGETS.get((ep, mode))
                if target is not None:
                    verdicts.append(f"{fw} {mode} on {ep}: {rps / base_rps:.3f}x (target >= {target}) "
                                    f"{'MET' if rps / base_rps >= target else 'MISSED'}")
    print(f"\ntotal time {time.monotonic() - started:.0f}s; gunicorn 1 sync worker on core 0, "
          f"wrk -t1 -c{args.connections} -d{args.duration:g}s on core 1, medians of {args.rounds} interleaved runs")
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
