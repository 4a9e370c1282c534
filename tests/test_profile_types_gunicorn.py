"""Allocation, lock-wait and GC data per request, end to end through gunicorn (issue 14).

A plain WSGI app under ``gunicorn -k gthread --threads 2`` (one worker process,
two request threads): OpenTelemetry's WSGI middleware around ours.
Two requests run at the same time on the worker's two threads (a barrier holds
each until the other has started); each allocates a known amount in its own
function, waits for its own lock (held by a thread outside any request) and
collects garbage.  Each request's profile, as ``go tool pprof -sample_index``
(or our independent decoder) reads it, the file exporter's index and the span
attributes show its own allocations, lock wait and GC time and nothing of the
other request's.  No assertion depends on how fast the machine is: the lock is
held until the waiter's thread is seen blocked in the wait, and the waits are
bounded from below by construction only.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from helpers.extra_types import pprof_totals
from helpers.pprof_decode import run_go_pprof
from helpers.wsgi_servers import gunicorn_argv, start_server, write_otel_setup
from otelprof_middleware.profiletypes import alloc

pytestmark = pytest.mark.integration

CHUNK = 16 * 1024
ALLOC = {"a": 48 * 1024 * 1024, "b": 24 * 1024 * 1024}
INTERVAL = 32 * 1024
HOLD_S = 0.05

APP = textwrap.dedent('''
    import gc
    import itertools
    import os
    import sys
    import threading

    import otel_test_setup
    otel_test_setup.setup()
    import json
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    from otelprof_middleware.wsgi import ProfilingMiddleware

    CHUNK = {chunk}
    ALLOC = {alloc}
    HOLD_S = {hold}

    PROFILED = ProfilingMiddleware(
        lambda environ, start_response: ROUTES[environ["PATH_INFO"]](environ, start_response),
        exporter="file", output_dir=os.environ["PROFILE_DIR"], probability=1.0, min_samples=0,
        profile_types="alloc,lock,gc", alloc_sample_interval={interval}, excluded_urls="/ready,/_spans")
    app = OpenTelemetryMiddleware(PROFILED)

    # made once the extension's profiler installed the lock hook: wrapped locks, this line their site
    LOCKS = {{"a": threading.Lock(), "b": threading.Lock()}}
    SITE = "%s:%d" % (os.path.basename(__file__), sys._getframe().f_lineno - 1)  # relative (docs/privacy.md)
    BARRIER = threading.Barrier(2)
    A_COLLECTED = threading.Event()


    def allocate_for_a(n):
        for _ in itertools.repeat(None, n // CHUNK):
            bytes(CHUNK)


    def allocate_for_b(n):
        for _ in itertools.repeat(None, n // CHUNK):
            bytes(CHUNK)


    def wait_for_lock_a(lock):
        with lock:
            pass


    def wait_for_lock_b(lock):
        with lock:
            pass


    def collect_in_a():
        gc.collect()


    def collect_in_b():
        gc.collect()


    def reply(start_response, body, content_type="application/json"):
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


    def work(name, allocate, wait, collect):
        BARRIER.wait(20)  # both requests are in flight, on the worker's two threads
        allocate(ALLOC[name])
        held, release = threading.Event(), threading.Event()
        lock = LOCKS[name]

        def holder():  # a thread outside any request holds our lock for a while
            with lock:
                held.set()
                release.wait(10)

        threading.Thread(target=holder).start()
        held.wait(10)
        threading.Timer(HOLD_S, release.set).start()
        wait(lock)
        # one collection at a time (a gc.collect() during another thread's returns at once)
        if name == "b":
            A_COLLECTED.wait(20)
        collect()
        if name == "a":
            A_COLLECTED.set()
        return json.dumps({{"thread": threading.get_ident(), "pid": os.getpid(), "site": SITE}}).encode()


    ROUTES = {{
        "/ready": lambda environ, start_response: reply(start_response, b"ok", "text/plain"),
        "/a": lambda environ, start_response: reply(
            start_response, work("a", allocate_for_a, wait_for_lock_a, collect_in_a)),
        "/b": lambda environ, start_response: reply(
            start_response, work("b", allocate_for_b, wait_for_lock_b, collect_in_b)),
        "/_spans": lambda environ, start_response: reply(start_response, otel_test_setup.spans_json()),
    }}
''').format(chunk=CHUNK, alloc=ALLOC, hold=HOLD_S, interval=INTERVAL)


@pytest.mark.skipif(alloc.available()[0] is None, reason="the C extension's allocation hook is not built")
def test_gunicorn_two_concurrent_requests_get_their_own_allocations_lock_waits_and_gc(tmp_path: Any) -> None:
    write_otel_setup(tmp_path)
    (tmp_path / "pt_app.py").write_text(APP)
    profiles = tmp_path / "profiles"
    argv = gunicorn_argv("pt_app:app", worker_class="gthread", threads=2)
    with start_server(argv, cwd=tmp_path, env={"PROFILE_DIR": str(profiles)}) as server:
        replies: dict[str, Any] = {}

        def get(path: str) -> None:
            replies[path] = server.get(path, timeout=60)

        callers = [threading.Thread(target=get, args=(p,)) for p in ("/a", "/b")]
        for t in callers:
            t.start()
        for t in callers:
            t.join(90)
        assert {p: r[0] for p, r in replies.items()} == {"/a": 200, "/b": 200}, server.output()
        body = {p: json.loads(r[2]) for p, r in replies.items()}
        assert body["/a"]["thread"] != body["/b"]["thread"]  # two threads of one worker
        assert body["/a"]["pid"] == body["/b"]["pid"]
        # a span ends once the server closed the response, which may be after the client read it
        deadline = time.monotonic() + 60
        while True:
            spans = [s for s in server.get_json("/_spans") if s["kind"] == "SERVER"]
            if {"/a", "/b"} <= {s["attributes"].get("http.target") for s in spans} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        output = server.stop()  # the final flush writes every profile
    assert "Traceback" not in output, output

    with open(profiles / "index.jsonl") as f:
        index = {e["profile_id"]: e for e in map(json.loads, f)}
    site = body["/a"]["site"]
    for name, other in (("a", "b"), ("b", "a")):
        [entry] = [e for e in index.values() if e["attributes"]["url.path"] == f"/{name}"]
        [span] = [s for s in spans if s["span_id"] == entry["span_id"]]
        assert span["attributes"]["otelprof.profile_id"] == entry["profile_id"]
        assert entry["span_id"] == span["span_id"] and entry["trace_id"] == span["trace_id"]
        path = str(profiles / entry["file"])
        totals, leaves, sites, functions = pprof_totals(path)

        # allocations: this request's function, the known amount within 10 %, never the other's
        truth = (ALLOC[name] // CHUNK) * sys.getsizeof(bytes(CHUNK))
        mine = leaves["alloc_space"].get(f"allocate_for_{name}", 0)
        assert abs(mine - truth) <= 0.10 * truth, (name, mine, truth)
        assert f"allocate_for_{other}" not in functions
        # lock wait: its own lock, held for HOLD_S by another thread (no upper bound:
        # a loaded machine only makes the wait longer), at its own acquiring frame
        assert leaves["lock_wait"].get(f"wait_for_lock_{name}", 0) >= 0.6 * HOLD_S * 1e9, leaves["lock_wait"]
        assert leaves["lock_acquires"].get(f"wait_for_lock_{name}", 0) >= 1
        assert f"wait_for_lock_{other}" not in functions
        assert site in sites, sites
        # GC: its own collection, in the index and on the span
        assert entry["attributes"]["otelprof.gc_collections"] >= 1
        assert entry["attributes"]["otelprof.gc_ms"] > 0
        assert f"collect_in_{other}" not in functions

        # one truth: the span's figures are the profile's
        assert span["attributes"]["otelprof.alloc_bytes"] == totals["alloc_space"]
        assert span["attributes"]["otelprof.lock_wait_ms"] == round(totals["lock_wait"] / 1e6, 3)
        assert span["attributes"]["otelprof.gc_ms"] == entry["attributes"]["otelprof.gc_ms"]

        # go tool pprof reads the same, per sample type
        raw = run_go_pprof(["-raw"], path)
        if raw is None:
            continue
        assert "alloc_space/bytes" in raw and "lock_wait/nanoseconds" in raw
        for index_name, fn in (("alloc_space", "allocate_for"), ("lock_wait", "wait_for_lock")):
            top = run_go_pprof([f"-sample_index={index_name}", "-top", "-nodecount=500"], path)
            assert top is not None and f"{fn}_{name}" in top, top
            assert f"{fn}_{other}" not in top, top
