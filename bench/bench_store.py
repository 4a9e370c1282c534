"""Benchmark the local store, its API and the viewer's pages (not a test).

    python bench/bench_store.py [--profiles 1000] [--rows 100000] [--pages 10000] [--repeat 3]

Builds, in a temporary folder:

* ``--profiles`` request profiles of one route, ~300 stacks each (the shape of
  ``bench_encode.py``'s request profile: 3000 ticks, 300 stacks ~30 frames deep over
  200 functions), written by the real file exporter, half of them an hour older;
* an index of ``--rows`` profiles (tiny real files, rows inserted in bulk);
* a folder of ``--pages`` profiles for the pages' API calls.

and times, each ``--repeat`` times (min and median, seconds or milliseconds):

| what | target |
|---|---|
| merge of ``--profiles`` profiles: never read before (in this process only, and with helper processes); stored (digested by the viewer's background pass) | ≤ 2 s |
| diff of two selections of ``--profiles`` profiles each, the same three ways | ≤ 3 s |
| list (newest 50), count, timeline over ``--rows`` profiles, through HTTP | ≤ 200 ms per call |
| list page, Explore timeline, route menu with ``--pages`` profiles; one background index pass | responsive |

Numbers on the shared 2-core development VM are indicative only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_encode import build_profile  # noqa: E402

from otelprof_middleware.config import Config  # noqa: E402
from otelprof_middleware.encoding import encode_pprof  # noqa: E402
from otelprof_middleware.export.file import FileExporter, profile_summary  # noqa: E402
from otelprof_middleware.profile import Profile, ProfileBuilder  # noqa: E402
from otelprof_middleware.store.folder import ProfileFolder  # noqa: E402
from otelprof_middleware.store.index import ProfileIndex, row_values  # noqa: E402
from otelprof_middleware.store.layout import profile_file_name  # noqa: E402
from otelprof_middleware.store.outputs import render_diff, render_merge  # noqa: E402
from otelprof_middleware.store.selector import parse_selector  # noqa: E402
from otelprof_middleware.viewer import make_server  # noqa: E402

H = 3600 * 10**9


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs), statistics.median(runs)


def request_profiles(directory: str, n: int) -> None:
    now = time.time_ns()
    exporter = FileExporter(Config.load({"exporter": "file", "output_dir": directory, "max_files": 10 * n}, env={}))
    base = build_profile(n_samples=3000, n_stacks=300, n_threads=1)
    for i in range(n):
        p = Profile(name="GET /api/items/{id}", start_time_ns=now - (2 * H if i % 2 else H) + i * 10**6,
                    duration_ns=base.duration_ns, period_ns=base.period_ns, functions=base.functions,
                    locations=base.locations, stacks=base.stacks, samples=base.samples, link=base.link,
                    attributes=dict(base.attributes), triggers=("probability",))
        exporter.export([p])
    exporter.shutdown()


def bulk_index(directory: str, rows: int) -> None:
    """``rows`` tiny real profiles, indexed in one transaction (the exporter's retention
    check per profile would make building 100,000 take an hour)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    rng = random.Random(7)
    now = time.time_ns()
    p = Profile(name="x", start_time_ns=now, duration_ns=10**6, period_ns=10**7)
    b = ProfileBuilder(p)
    b.add(b.stack([b.location(b.function("handler", "/app/h.py"))]), count=1, cpu_ns=10**6, wall_ns=10**6)
    data = encode_pprof(p)
    routes = [f"/api/r{i}/{{id}}" for i in range(40)]
    index = ProfileIndex(directory)
    with index.transaction() as conn:
        for i in range(rows):
            start = now - rng.randrange(7 * 24 * 3600) * 10**9
            pid = os.urandom(16).hex()
            fname = profile_file_name(start, pid)
            with open(os.path.join(directory, fname), "wb") as f:
                f.write(data)
            route = routes[i % len(routes)]
            p.profile_id = bytes.fromhex(pid)
            p.start_time_ns = start
            p.name = "GET " + route
            p.attributes = {"http.route": route, "http.request.method": "GET",
                            "http.response.status_code": 500 if i % 50 == 0 else 200,
                            "otelprof.duration_ms": round(rng.lognormvariate(3, 1), 3)}
            p.triggers = ("probability",) if i % 4 else ("slow",)
            entry = profile_summary(p)
            entry["file"] = fname
            cols, _doc = row_values(entry, fname, len(data), "exporter")
            index._insert(conn, cols, replace=False)
    index.close()


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (path, r.status, body[:200])
        return body
    finally:
        conn.close()


def serve(directory: str) -> tuple[Any, int]:
    server = make_server(directory, "127.0.0.1", 0, sync_interval=3600)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, server.server_address[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="build the folders here and keep them")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="otelprof-bench-store-")
    results: list[tuple[str, str, str]] = []
    try:
        req = os.path.join(root, "requests")
        if not os.path.isdir(req):
            t0 = time.perf_counter()
            request_profiles(req, 2 * args.profiles)
            print(f"built {2 * args.profiles} request profiles in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        sel_a = parse_selector("route=/api/items/{id} from=now-3h until=now-90m")
        sel_b = parse_selector("route=/api/items/{id} from=now-90m")
        n = args.profiles

        def cold_merge(parallel: bool) -> Callable[[], None]:
            def run() -> None:
                folder = ProfileFolder(req, parallel=parallel)
                r = folder.merge(sel_b, limit=n)
                assert len(r.profile_ids) == n, len(r.profile_ids)
                render_merge(r, "json", sel=sel_b)
            return run

        def cold_diff(parallel: bool) -> Callable[[], None]:
            def run() -> None:
                folder = ProfileFolder(req, parallel=parallel)
                left, right = folder.merge(sel_a, limit=n), folder.merge(sel_b, limit=n)
                assert len(left.profile_ids) == len(right.profile_ids) == n
                render_diff(left, right, "json", a=sel_a, b=sel_b)
            return run

        for parallel, how in ((False, "this process only"), (True, "with helper processes")):
            lo, med = _time(cold_merge(parallel), args.repeat)
            results.append((f"merge {n} profiles (300 stacks each), never read before, {how}, + JSON tree", "≤ 2 s",
                            f"{lo:.2f} s / {med:.2f} s"))
            lo, med = _time(cold_diff(parallel), args.repeat)
            results.append((f"diff {n} vs {n} profiles, never read before, {how}, + JSON", "≤ 3 s",
                            f"{lo:.2f} s / {med:.2f} s"))

        # stored profiles as the viewer holds them: digested by its background pass
        stored = ProfileFolder(req)
        t0 = time.perf_counter()
        while stored.prefill(newest=2 * n, budget=500):
            pass
        results.append((f"background digest of {2 * n} stored profiles (the viewer, while idle)", "",
                        f"{time.perf_counter() - t0:.2f} s"))

        def stored_merge() -> None:
            r = stored.merge(sel_b, limit=n, reuse=False)  # every profile from its digest
            assert stored.last_merge["from_digests"] == n
            render_merge(r, "json", sel=sel_b)

        def stored_diff() -> None:
            left, right = stored.merge(sel_a, limit=n, reuse=False), stored.merge(sel_b, limit=n, reuse=False)
            render_diff(left, right, "json", a=sel_a, b=sel_b)

        lo, med = _time(stored_merge, args.repeat)
        results.append((f"merge {n} stored profiles, + JSON tree", "≤ 2 s", f"{lo:.2f} s / {med:.2f} s"))
        lo, med = _time(stored_diff, args.repeat)
        results.append((f"diff {n} vs {n} stored profiles, + JSON", "≤ 3 s", f"{lo:.2f} s / {med:.2f} s"))
        lo, med = _time(lambda: render_merge(stored.merge(sel_b, limit=n), "pprof", sel=sel_b), args.repeat)
        results.append(("the same merge requested again (whole-merge cache), as pprof", "",
                        f"{lo * 1e3:.0f} ms / {med * 1e3:.0f} ms"))

        big = os.path.join(root, "index")
        if not os.path.isdir(big):
            t0 = time.perf_counter()
            bulk_index(big, args.rows)
            print(f"built an index of {args.rows} profiles in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        server, port = serve(big)
        try:
            q = quote("route=/api/r7/{id} status=5xx from=now-3d", safe="")
            for what, path in (("list newest 50", "/api/v1/profiles?limit=50"),
                               ("list, selector, slowest first", f"/api/v1/profiles?limit=50&sort=-duration&q={q}"),
                               ("count", "/api/v1/count"),
                               ("count, selector", f"/api/v1/count?q={q}"),
                               ("timeline, all (step auto)", "/api/v1/timeline?points=2000"),
                               ("timeline, one route, last day", "/api/v1/timeline?q=" + quote("route=/api/r3/{id} from=now-1d", safe="")),
                               ("route menu (values)", "/api/v1/values/route")):
                lo, med = _time(lambda: http_get(port, path), args.repeat)
                results.append((f"{what} over {args.rows} profiles (HTTP)", "≤ 200 ms", f"{lo * 1e3:.0f} ms / {med * 1e3:.0f} ms"))
        finally:
            server.shutdown()
            server.server_close()

        pages = os.path.join(root, "pages")
        if not os.path.isdir(pages):
            bulk_index(pages, args.pages)
        t0 = time.perf_counter()
        folder = ProfileFolder(pages)
        folder.sync(force=True)
        results.append((f"one index pass over a folder of {args.pages} files (background)", "",
                        f"{(time.perf_counter() - t0) * 1e3:.0f} ms"))
        server, port = serve(pages)
        try:
            def list_page() -> None:
                for path in ("/", "/static/pages.js", "/api/v1/folder", "/api/v1/profiles?limit=50",
                             "/api/v1/values/route", "/api/v1/values/trigger"):
                    http_get(port, path)

            lo, med = _time(list_page, args.repeat)
            results.append((f"list page, all its requests, {args.pages} profiles", "responsive",
                            f"{lo * 1e3:.0f} ms / {med * 1e3:.0f} ms"))

            def explore_page() -> None:
                http_get(port, "/api/v1/timeline?q=" + quote("route=/api/r1/{id} from=now-24h", safe=""))
                http_get(port, "/api/v1/merge?q=" + quote("route=/api/r1/{id} from=now-24h", safe=""))

            lo, med = _time(explore_page, args.repeat)
            results.append((f"Explore page (timeline + merge of one route's day), {args.pages} profiles", "responsive",
                            f"{lo * 1e3:.0f} ms / {med * 1e3:.0f} ms"))
        finally:
            server.shutdown()
            server.server_close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores; min / median of {args.repeat}\n")
    print("| what | target | result |")
    print("|---|---|---|")
    for what, target, result in results:
        print(f"| {what} | {target} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
