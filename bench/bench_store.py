"""Benchmark the local store, its API and the viewer's pages (not a test).

    python bench/bench_store.py [--profiles 1000] [--rows 100000] [--pages 10000] [--repeat 3]

Builds, in a temporary folder:

* 2 x ``--profiles`` request profiles of one route, written by the real file
  exporter (so each has its stored digest), half of them an hour older: each has
  300 stacks drawn from the route's pool of 3000 (a call tree: stacks share their
  callers, 25-35 frames over 200 functions), 3000 ticks;
* a copy of that folder without digests (another tool's files, or an older
  version's folder), and ``--profiles`` profiles that share no stack at all;
* an index of ``--rows`` profiles (tiny real files, rows inserted in bulk);
* a folder of ``--pages`` profiles for the pages' API calls.

and times, each ``--repeat`` times (min and median, seconds or milliseconds):

| what | target |
|---|---|
| merge of ``--profiles`` profiles never read before (a fresh reader each time): from stored digests; a one-shot ``otelprof merge``; without digests (decoded, in this process only and with helper processes); digests held in the viewer's memory | ≤ 2 s |
| diff of two selections of ``--profiles`` profiles each, the same ways | ≤ 3 s |
| the export worker's cost per profile, with and without its digest | (reported) |
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
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


class RouteProfiles:
    """Request profiles of one route: each has ``stacks`` stacks drawn from the route's
    pool of ``pool`` distinct stacks, 3000 ticks spread over them.  The pool is a call
    tree as real code makes one: the first stack is 25-35 random frames (over 200
    functions, 4 lines each), every next one is a copy of an earlier one cut 1 to 8
    frames above its leaf and grown back to 25-35 frames, so stacks share their
    callers.  ``pool=0``: every profile has stacks of its own, random frames all the
    way (no two profiles share a stack, nor a caller): the worst case for digests."""

    def __init__(self, pool: int = 3000, stacks: int = 300, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.stacks = stacks
        self.functions = [(f"pkg.module{i % 17}.Class{i % 7}.method_{i}", f"/srv/app/pkg/module{i % 17}.py", 10 + i)
                          for i in range(200)]
        self.pool: list[list[tuple[int, int]]] = []
        for _ in range(pool):
            base = self.rng.choice(self.pool)[:-self.rng.randint(1, 8)] if self.pool else []
            self.pool.append(self._grow(base))

    def _grow(self, stack: list[tuple[int, int]]) -> list[tuple[int, int]]:
        rng = self.rng
        depth = rng.randint(25, 35)
        return stack + [(rng.randrange(200), rng.randint(1, 4) * 10) for _ in range(max(1, depth - len(stack)))]

    def profile(self, start_ns: int) -> Profile:
        rng = self.rng
        p = Profile(name="GET /api/items/{id}", start_time_ns=start_ns, duration_ns=2_500_000_000,
                    period_ns=10_000_000, attributes={"http.route": "/api/items/{id}", "http.request.method": "GET"},
                    triggers=("probability",))
        b = ProfileBuilder(p)
        chosen = rng.sample(self.pool, self.stacks) if self.pool else [self._grow([]) for _ in range(self.stacks)]
        ids = [b.stack([b.location(b.function(*self.functions[f]), line) for f, line in reversed(st)])
               for st in chosen]
        for _ in range(3000):
            b.add(ids[rng.randrange(len(ids))], "MainThread", count=1, cpu_ns=10_000_000,
                  wall_ns=10_000_000 + rng.randrange(1000))
        return p


def request_profiles(directory: str, n: int, shape: RouteProfiles) -> list[float]:
    """``n`` profiles written by the file exporter, half of them an hour older; the
    seconds each export took."""
    now = time.time_ns()
    exporter = FileExporter(Config.load({"exporter": "file", "output_dir": directory, "max_files": 10 * n}, env={}))
    took = []
    for i in range(n):
        p = shape.profile(now - (2 * H if i % 2 else H) + i * 10**6)
        t0 = time.perf_counter()
        exporter.export([p])
        took.append(time.perf_counter() - t0)
    exporter.shutdown()
    return took


def drop_digests(directory: str) -> None:
    """The folder as another tool (or an older version) would have written it."""
    index = ProfileIndex(directory)
    index.clear_digests()
    index.close()


def export_cost(repeat: int) -> list[tuple[str, str, str]]:
    """Per profile on the export worker: encode_pprof, digest_profile, and the whole
    FileExporter.export with and without the digest (interleaved), for a 300-stack
    and a 20-stack request profile."""
    from otelprof_middleware.export import file as file_module
    from otelprof_middleware.store.digest import digest_profile

    rows = []
    for stacks in (300, 20):
        shape = RouteProfiles(stacks=stacks)
        profiles = [shape.profile(time.time_ns()) for _ in range(50)]
        for what, fn in (("encode_pprof", encode_pprof), ("digest_profile", digest_profile)):
            runs = [min(_time(lambda: fn(p), 3)[0] for p in profiles[:10]) for _ in range(repeat)]
            rows.append((f"{what} of one {stacks}-stack request profile", "", f"{min(runs) * 1e3:.2f} ms"))
        took: dict[bool, list[float]] = {True: [], False: []}
        real = file_module.digest_profile
        for r in range(repeat):
            for digest_on in ((True, False) if r % 2 == 0 else (False, True)):
                d = tempfile.mkdtemp(prefix="otelprof-bench-export-")
                try:
                    file_module.digest_profile = real if digest_on else (lambda profile: None)
                    exporter = FileExporter(Config.load({"exporter": "file", "output_dir": d, "max_files": 1000},
                                                        env={}))
                    each = []
                    for p in profiles:
                        p.start_time_ns += 1000
                        p.profile_id = os.urandom(16)
                        t0 = time.perf_counter()
                        exporter.export([p])
                        each.append(time.perf_counter() - t0)
                    exporter.shutdown()
                    took[digest_on].append(statistics.median(each))
                finally:
                    file_module.digest_profile = real
                    shutil.rmtree(d, ignore_errors=True)
        rows.append((f"FileExporter.export of a {stacks}-stack profile, without / with its digest "
                     "(median of 50 exports, min of runs)", "",
                     f"{min(took[False]) * 1e3:.2f} ms / {min(took[True]) * 1e3:.2f} ms"))
    return rows


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
        n = args.profiles
        if not os.path.isdir(req):
            t0 = time.perf_counter()
            request_profiles(req, 2 * n, RouteProfiles())
            print(f"built {2 * n} request profiles in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        foreign = os.path.join(root, "foreign")
        if not os.path.isdir(foreign):
            shutil.copytree(req, foreign)
        sel_a = parse_selector("route=/api/items/{id} from=now-3h until=now-90m")
        sel_b = parse_selector("route=/api/items/{id} from=now-90m")

        def merge(directory: str, parallel: bool = False, expect: str = "") -> Callable[[], None]:
            def timed() -> None:
                folder = ProfileFolder(directory, parallel=parallel)
                r = folder.merge(sel_b, limit=n)
                assert len(r.profile_ids) == n, len(r.profile_ids)
                assert folder.last_merge[expect] >= n // 2, folder.last_merge
                render_merge(r, "json", sel=sel_b)
            return timed

        def diff(directory: str, parallel: bool = False, expect: str = "") -> Callable[[], None]:
            def timed() -> None:
                folder = ProfileFolder(directory, parallel=parallel)
                left, right = folder.merge(sel_a, limit=n), folder.merge(sel_b, limit=n)
                assert len(left.profile_ids) == len(right.profile_ids) == n
                assert folder.last_merge[expect] >= n // 2, folder.last_merge
                render_diff(left, right, "json", a=sel_a, b=sel_b)
            return timed

        def timed_runs(fn: Callable[[], None], before: Callable[[], None] = lambda: None) -> tuple[float, float]:
            runs = []
            for _ in range(args.repeat):
                before()
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            return min(runs), statistics.median(runs)

        def secs(lo_med: tuple[float, float]) -> str:
            return f"{lo_med[0]:.2f} s / {lo_med[1]:.2f} s"

        results.append((f"merge {n} exporter-written profiles (300 stacks each), never read before, "
                        "from their stored digests, one process, + JSON tree", "≤ 2 s",
                        secs(timed_runs(merge(req, expect="from_store")))))
        results.append((f"diff {n} vs {n} of them, never read before, from stored digests, + JSON", "≤ 3 s",
                        secs(timed_runs(diff(req, expect="from_store")))))
        cli = [sys.executable, "-m", "otelprof_middleware", "merge", "-d", req, "--limit", str(n),
               "--format", "json", "route=/api/items/{id}", "from=now-90m"]
        results.append((f"`otelprof merge` of {n} of them, a one-shot process (start-up included), JSON", "≤ 2 s",
                        secs(timed_runs(lambda: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)))))
        for parallel, how in ((False, "one process"), (True, "with helper processes")):
            results.append((f"merge {n} profiles without digests (another tool's folder: pprof decoded, "
                            f"digested and stored), {how}, + JSON tree", "",
                            secs(timed_runs(merge(foreign, parallel, "decoded" if not parallel else "by_helpers"),
                                            lambda: drop_digests(foreign)))))
            results.append((f"diff {n} vs {n} without digests, {how}, + JSON", "",
                            secs(timed_runs(diff(foreign, parallel, "decoded" if not parallel else "by_helpers"),
                                            lambda: drop_digests(foreign)))))
        results.append(("the same merge once those digests are stored", "≤ 2 s",
                        secs(timed_runs(merge(foreign, expect="from_store")))))

        # the viewer: digests already in memory (its background pass loads the newest ones)
        viewer = ProfileFolder(req)
        t0 = time.perf_counter()
        while viewer.prefill(newest=2 * n, budget=500):
            pass
        results.append((f"background load of {2 * n} stored digests into the viewer's memory", "",
                        f"{time.perf_counter() - t0:.2f} s"))

        def memory_merge() -> None:
            r = viewer.merge(sel_b, limit=n, reuse=False)
            assert viewer.last_merge["from_memory"] == n, viewer.last_merge
            render_merge(r, "json", sel=sel_b)

        def memory_diff() -> None:
            left, right = viewer.merge(sel_a, limit=n, reuse=False), viewer.merge(sel_b, limit=n, reuse=False)
            render_diff(left, right, "json", a=sel_a, b=sel_b)

        results.append((f"merge {n} profiles whose digests the viewer holds in memory, + JSON tree", "≤ 2 s",
                        secs(timed_runs(memory_merge))))
        results.append((f"diff {n} vs {n}, digests in memory, + JSON", "≤ 3 s", secs(timed_runs(memory_diff))))
        results.append(("the same merge requested again (whole-merge cache), as pprof", "",
                        "{:.0f} ms / {:.0f} ms".format(*(1e3 * x for x in timed_runs(
                            lambda: render_merge(viewer.merge(sel_b, limit=n), "pprof", sel=sel_b))))))

        unique = os.path.join(root, "unique")
        if not os.path.isdir(unique):
            request_profiles(unique, n, RouteProfiles(pool=0))
        everything = parse_selector("")

        def unique_merge() -> None:
            folder = ProfileFolder(unique)
            r = folder.merge(everything, limit=n)
            assert folder.last_merge["from_store"] == n and len(r.stacks.stacks) > 290 * n

        results.append((f"worst case: merge {n} stored profiles that share no stack (~{300 * n:,} distinct), "
                        "without rendering", "", secs(timed_runs(unique_merge))))
        results += export_cost(args.repeat)

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
