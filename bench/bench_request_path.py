"""In-process cost of the request path per adapter (not a test): the wrapped app
called directly, side by side with the bare app, no server.

    python bench/bench_request_path.py [--number 2000] [--repeat 31]
    python bench/bench_request_path.py --instructions      # valgrind (callgrind) instruction counts
    python bench/bench_request_path.py --floor             # + the hand-inlined floor (request_path_floor.py)

For each adapter (raw ASGI, raw WSGI, Flask, Django) the same trivial application
is called with and without our integration, in interleaved batches (bare,
wrapped, bare, wrapped, ...); the cost is the median of the per-pair differences,
in µs per request (the table also shows the best batch of each side).  Flask and
Django are compared on one and the same app: the Flask app's own ``wsgi_app``
against the one ``OtelProf`` installed, Django's ``handler.get_response`` against
our middleware around it, so that two app instances' own variation (several µs
for a ~70 µs framework request) does not hide the middleware's cost.  Batches
are timed with the calling thread's CPU clock (``time.thread_time``): time the
machine gives to other processes does not count, nor does the profiler's own
background threads' work.  The WSGI drivers do what a server does (call, iterate the body,
``close()``); the ASGI driver awaits the app with a no-op ``send``.

Configurations (all with the engine's default settings otherwise: probability
0.01, slow promotion, slow and error route arming, high-CPU trigger, overhead
governor):

* ``defaults, no trace``: no OpenTelemetry span and no ``traceparent``; the
  probability coin is a random source that never selects, so every request is an
  *unprofiled* request going through every default check;
* ``defaults, traceparent``: an incoming ``traceparent`` whose trace id the 1 %
  ratio does not select (the decision every service makes for that trace);
* ``late triggers off``: slow promotion, route arming and the high-CPU trigger off
  (nothing watches an unprofiled request);
* ``profiled`` (``--profiled``): probability 1, for scale;
* ``floor`` (``--floor``): not our middleware but the hand-inlined floor of a
  watched request (``bench/request_path_floor.py``): the least pure Python can do
  for the default feature set, on the same app.

``--instructions`` counts instead of timing: each adapter and configuration runs
in its own ``valgrind --tool=callgrind`` process, which dumps the calling thread's
instruction count around every batch (``--dump-before/--dump-after`` of
``functools.reduce``, which only the measuring loop calls after set-up;
``--separate-threads`` leaves the profiler's background threads out).  The cost
is the median per-pair difference in instructions per request: the same on a busy
machine as on a quiet one, so it is the number to compare changes with.

Target (issue 10): an unprofiled request with the defaults costs at most 1.5 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import itertools
import re
import shutil
import subprocess
import tempfile
import logging
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import request_path_floor  # noqa: E402  (after the path set-up above)

logging.getLogger("otelprof_middleware").addHandler(logging.NullHandler())  # no start-up lines in the table

TARGET_US = 1.5
#: low 64 bits far above 1 % of 2**64: the trace-id ratio never selects this trace
UNSELECTED_TRACEPARENT = "00-0000000000000000ffffffffffffff00-00f067aa0ba902b7-01"


class NeverSelects(random.Random):
    """The probability coin of the "no trace" runs: always lands on "not this one".
    A C callable, as ``random.Random.random`` is (a Python method would add a call
    per request that production does not pay)."""

    random = itertools.repeat(0.999999).__next__  # type: ignore[assignment]


CONFIGS: dict[str, dict[str, Any]] = {
    "defaults, no trace": {},
    "defaults, traceparent": {"traceparent": True},
    "late triggers off": {"options": dict(slow_promotion=False, slow_route_arming=False, error_profile_duration=0,
                                          cpu_trigger=False)},
}
#: the hand-inlined floor of a watched request (``request_path_floor.py``), defaults
FLOOR = {"floor (hand-inlined, defaults)": {"floor": True}}
PROFILED = {"profiled (probability 1)": {"options": dict(probability=1.0, max_profiles_per_minute=10**6,
                                                       max_overhead=1.0, min_samples=10**3)}}


def never_selecting(profiler: Any, options: dict[str, Any]) -> Any:
    """``profiler`` with a policy whose probability coin never selects (unless the
    configuration sets its own probability)."""
    from otelprof_middleware.policy import Policy

    if options.get("probability") is None:
        profiler.policy = Policy(profiler, rng=NeverSelects())
    return profiler


def make_profiler(options: dict[str, Any]) -> Any:
    from otelprof_middleware import Profiler

    return never_selecting(Profiler(exporter="none", **options), options)


# ----------------------------------------------------------------------------- apps and drivers

def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def wsgi_environ(traceparent: bool) -> dict[str, Any]:
    import io

    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/trivial", "SCRIPT_NAME": "", "QUERY_STRING": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
           "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*",
           "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
           "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
           "wsgi.version": (1, 0)}
    if traceparent:
        env["HTTP_TRACEPARENT"] = UNSELECTED_TRACEPARENT
    return env


def wsgi_driver(app: Any, environ: dict[str, Any]) -> Callable[[int], None]:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def run(n: int) -> None:
        for _ in range(n):
            result = app(environ.copy(), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return run


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def asgi_scope(traceparent: bool) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    if traceparent:
        headers.append((b"traceparent", UNSELECTED_TRACEPARENT.encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/trivial",
            "raw_path": b"/trivial", "query_string": b"", "scheme": "http", "root_path": "", "headers": headers,
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}


def asgi_driver(app: Any, scope: dict[str, Any]) -> Callable[[int], None]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def batch(n: int) -> None:
        for _ in range(n):
            await app(scope.copy(), receive, send)

    loop = asyncio.new_event_loop()

    def run(n: int) -> None:
        loop.run_until_complete(batch(n))

    return run


def flask_drivers(options: dict[str, Any], environ: dict[str, Any],
                  floor: bool = False) -> tuple[Callable[[int], None], Callable[[int], None]]:
    from flask import Flask

    from otelprof_middleware.flask import OtelProf

    app = Flask("bench")

    @app.route("/trivial")
    def trivial() -> str:
        return "ok"

    own = app.wsgi_app
    if floor:
        return wsgi_driver(own, environ), wsgi_driver(request_path_floor.wsgi(own, NeverSelects().random), environ)
    OtelProf(app, profiler=make_profiler(options))
    return wsgi_driver(own, environ), wsgi_driver(app.wsgi_app, environ)


def django_drivers(options: dict[str, Any], environ: dict[str, Any],
                   floor: bool = False) -> tuple[Callable[[int], None], Callable[[int], None]]:
    import django
    from django.conf import settings

    if not settings.configured:
        from django.http import HttpResponse
        from django.urls import path

        def trivial(request: Any) -> Any:
            return HttpResponse("ok")

        module = type(sys)("bench_django_urls")
        module.urlpatterns = [path("trivial", trivial)]  # type: ignore[attr-defined]
        sys.modules["bench_django_urls"] = module
        settings.configure(DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF="bench_django_urls",
                           DATABASES={}, INSTALLED_APPS=[], MIDDLEWARE=[], LOGGING_CONFIG=None)
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler, WSGIRequest

    from otelprof_middleware.django import ProfilingMiddleware
    from otelprof_middleware.integrations.django import request_profiling_from_settings

    def driver(call: Callable[[Any], Any]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                call(WSGIRequest(environ.copy())).close()
        return run

    handler = WSGIHandler()  # no middleware: Django's own request handling
    if floor:
        middleware: Any = request_path_floor.django(handler.get_response, NeverSelects().random)
        return driver(handler.get_response), driver(middleware)
    settings.OTELPROF = {"exporter": "none", **options}  # a new dict: a new profiler
    never_selecting(request_profiling_from_settings().profiler, options)
    middleware = ProfilingMiddleware(handler.get_response)


    return driver(handler.get_response), driver(middleware)


# ----------------------------------------------------------------------------- measurement

def side_by_side(pair: tuple[Callable[[int], None], Callable[[int], None]], number: int,
                 repeat: int) -> tuple[float, float, float]:
    """(best bare, best wrapped, median of the per-pair differences), µs per request."""
    bare, wrapped = pair
    bare(number // 5)
    wrapped(number // 5)  # warm-up
    best_b = best_w = float("inf")
    diffs = []
    for _ in range(repeat):
        t0 = time.thread_time()
        bare(number)
        t1 = time.thread_time()
        wrapped(number)
        t2 = time.thread_time()
        b, w = (t1 - t0) / number, (t2 - t1) / number
        best_b, best_w = min(best_b, b), min(best_w, w)
        diffs.append(w - b)
    return best_b * 1e6, best_w * 1e6, statistics.median(diffs) * 1e6


def drivers(adapter: str, cfg: dict[str, Any]) -> tuple[Callable[[int], None], Callable[[int], None]]:
    options = dict(cfg.get("options", {}))
    tp = bool(cfg.get("traceparent"))
    floor = bool(cfg.get("floor"))
    if adapter == "ASGI":
        from otelprof_middleware.asgi import ProfilingMiddleware as ASGIMiddleware

        scope = asgi_scope(tp)
        if floor:
            return asgi_driver(asgi_app, scope), asgi_driver(request_path_floor.asgi(asgi_app, NeverSelects().random),
                                                             scope)
        return asgi_driver(asgi_app, scope), asgi_driver(ASGIMiddleware(asgi_app, profiler=make_profiler(options)),
                                                         scope)
    if adapter == "WSGI":
        from otelprof_middleware.wsgi import ProfilingMiddleware as WSGIMiddleware

        env = wsgi_environ(tp)
        if floor:
            return wsgi_driver(wsgi_app, env), wsgi_driver(request_path_floor.wsgi(wsgi_app, NeverSelects().random), env)
        return wsgi_driver(wsgi_app, env), wsgi_driver(WSGIMiddleware(wsgi_app, profiler=make_profiler(options)), env)
    if adapter == "Flask":
        return flask_drivers(options, wsgi_environ(tp), floor)
    return django_drivers(options, wsgi_environ(tp), floor)


def _batch(run: Callable[[int], None], number: int) -> None:
    """``run(number)`` inside ``functools.reduce``: the marker whose entry and exit
    callgrind dumps the counters at."""
    functools.reduce(lambda acc, _: run(number), range(1), None)


def child_instructions(adapter: str, label: str, number: int, repeat: int) -> int:
    """Under callgrind: warm up, then ``repeat`` pairs of batches (bare, wrapped)."""
    bare, wrapped = drivers(adapter, {**CONFIGS, **PROFILED, **FLOOR}[label])
    bare(max(50, number // 5))
    wrapped(max(50, number // 5))
    for _ in range(repeat):
        _batch(bare, number)
        _batch(wrapped, number)
    return 0


def count_instructions(adapter: str, label: str, number: int, repeat: int,
                       keep: str = "") -> tuple[float, float, float]:
    """(bare, wrapped, median per-pair difference), instructions per request."""
    tmp = tempfile.mkdtemp(prefix="bench-cg-")
    out = os.path.join(tmp, "cg.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-before=functools_reduce",
           "--dump-after=functools_reduce", "--separate-threads=yes", sys.executable, os.path.abspath(__file__),
           "--child", adapter, label, "--number", str(number), "--repeat", str(repeat)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        parts = []
        for path in glob.glob(out + ".*-01"):  # the main thread's dumps
            with open(path, encoding="utf-8") as f:
                head = f.read(2000)
            m = re.search(r"^part: (\d+)", head, re.M)
            total = re.search(r"^summary: (\d+)", head, re.M)
            if m and total and "--dump-after=functools_reduce" in head:
                parts.append((int(m.group(1)), int(total.group(1)), path))
        parts.sort()
        batches = parts[-2 * repeat:]  # (set-up may call reduce too: the measured batches are the last)
        if len(batches) != 2 * repeat:
            raise RuntimeError(f"expected {2 * repeat} batches, found {len(batches)}")
        if keep:
            os.makedirs(keep, exist_ok=True)
            tag = f"{adapter}-{label}".replace(" ", "_").replace(",", "")
            shutil.copy(batches[-2][2], os.path.join(keep, f"{tag}.bare.out"))
            shutil.copy(batches[-1][2], os.path.join(keep, f"{tag}.wrapped.out"))
        b = [t / number for _p, t, _ in batches[0::2]]
        w = [t / number for _p, t, _ in batches[1::2]]
        return min(b), min(w), statistics.median(wi - bi for bi, wi in zip(b, w))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main_instructions(args: argparse.Namespace, configs: dict[str, dict[str, Any]]) -> int:
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    print(f"callgrind, {args.repeat} interleaved batch pairs of {args.number} requests, instructions of the "
          f"calling thread; Python {sys.version.split()[0]}")
    print("| adapter | configuration | bare instr (best) | wrapped instr (best) | cost instr/request (median) |")
    print("|---|---|---:|---:|---:|")
    for adapter in [a for a in args.adapters.split(",") if a]:
        for label in configs:
            b, w, cost = count_instructions(adapter, label, args.number, args.repeat, args.keep)
            print(f"| {adapter} | {label} | {b:,.0f} | {w:,.0f} | {cost:,.0f} |", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--number", type=int, default=2000, help="requests per batch")
    ap.add_argument("--repeat", type=int, default=31, help="batch pairs (the median difference counts)")
    ap.add_argument("--adapters", default="ASGI,WSGI,Flask,Django")
    ap.add_argument("--profiled", action="store_true", help="also measure a profiled request (probability 1)")
    ap.add_argument("--floor", action="store_true", help="also measure the hand-inlined floor of a watched request "
                                                          "(bench/request_path_floor.py)")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions with valgrind's callgrind instead of timing (defaults: "
                         "--number 300 --repeat 5)")
    ap.add_argument("--configs", default="", help="'|'-separated parts of configuration labels (default: all)")
    ap.add_argument("--keep", default="", help="with --instructions: keep the last pair's callgrind files here")
    ap.add_argument("--child", nargs=2, metavar=("ADAPTER", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    configs = dict(CONFIGS)
    if args.profiled:
        configs.update(PROFILED)
    if args.floor:
        configs.update(FLOOR)
    if args.configs:
        configs = {k: v for k, v in configs.items() if any(c in k for c in args.configs.split("|"))}
    if args.child:
        return child_instructions(args.child[0], args.child[1], args.number, args.repeat)
    if args.instructions:
        if "--number" not in sys.argv:
            args.number = 300
        if "--repeat" not in sys.argv:
            args.repeat = 5
        return main_instructions(args, configs)
    print(f"{args.repeat} interleaved batch pairs of {args.number} requests, thread CPU time; "
          f"Python {sys.version.split()[0]}")
    print("| adapter | configuration | bare µs (best) | wrapped µs (best) | cost µs (median) | target ≤ 1.5 µs |")
    print("|---|---|---:|---:|---:|---|")
    for adapter in [a for a in args.adapters.split(",") if a]:
        for label, cfg in configs.items():
            bare_us, wrapped_us, cost = side_by_side(drivers(adapter, cfg), args.number, args.repeat)
            verdict = ("met" if cost <= TARGET_US else "MISSED") if label.startswith("defaults") else ""
            print(f"| {adapter} | {label} | {bare_us:.2f} | {wrapped_us:.2f} | {cost:.2f} | {verdict} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
