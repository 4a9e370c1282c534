"""ProfilingMiddleware through a real uvicorn server on 127.0.0.1 (httpx client),
with the profiles read back from the file exporter's pprof files."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from typing import Any

import httpx
import pytest
from helpers.asgi_server import serve_in_subprocess, serve_in_thread
from helpers.pprof_decode import decode_pprof, stacks_by_function

from otelprof_middleware.asgi import ProfilingMiddleware

pytestmark = pytest.mark.integration

EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "fastapi_app")


# ---------------------------------------------------------------------- app under test
# Distinct function names per endpoint, so a profile shows whose work it sampled.


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def burn_alpha(seconds: float) -> None:
    _spin(seconds)


def burn_beta(seconds: float) -> None:
    _spin(seconds)


def burn_in_thread_pool(seconds: float) -> None:
    _spin(seconds)


def burn_in_to_thread(seconds: float) -> None:
    _spin(seconds)


def burn_in_executor(seconds: float) -> None:
    _spin(seconds)


def burn_in_generator(seconds: float) -> None:
    _spin(seconds)


def burn_first_hop(seconds: float) -> None:
    _spin(seconds)


def burn_later_hop(seconds: float) -> None:
    _spin(seconds)


def failing_helper() -> None:
    _spin(0.02)
    raise ValueError("boom")


def make_app(**instrument: Any) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/alpha")
    async def endpoint_alpha() -> dict:
        for _ in range(8):
            burn_alpha(0.004)
            await asyncio.sleep(0)  # let the other requests on the loop run
        return {"ok": "alpha"}

    @app.get("/beta")
    async def endpoint_beta() -> dict:
        for _ in range(8):
            burn_beta(0.004)
            await asyncio.sleep(0)
        return {"ok": "beta"}

    @app.get("/sync")
    def endpoint_sync() -> dict:  # FastAPI runs it in the AnyIO thread pool
        burn_in_thread_pool(0.06)
        return {"ok": "sync"}

    @app.get("/hops")
    async def endpoint_hops() -> dict:
        await asyncio.to_thread(burn_in_to_thread, 0.05)
        await asyncio.get_running_loop().run_in_executor(None, burn_in_executor, 0.05)
        return {"ok": "hops"}

    async def body_chunks():
        for i in range(6):
            burn_in_generator(0.01)
            yield b"chunk %d\n" % i

    @app.get("/stream")
    async def endpoint_stream() -> Any:
        return StreamingResponse(body_chunks(), media_type="text/plain")

    @app.get("/sleep")
    async def endpoint_sleep() -> dict:
        await asyncio.sleep(0.15)
        return {"ok": "sleep"}

    @app.get("/plain")
    async def endpoint_plain() -> dict:
        return {"ok": "plain"}

    @app.get("/slow-sync")
    def endpoint_slow_sync() -> dict:  # in a pool thread from start to end
        burn_in_thread_pool(0.8)
        return {"ok": "slow-sync"}

    @app.get("/slow-hops")
    async def endpoint_slow_hops() -> dict:
        await asyncio.to_thread(burn_first_hop, 0.6)  # promoted during this one
        await asyncio.to_thread(burn_later_hop, 0.3)  # and this one starts after the promotion
        return {"ok": "slow-hops"}

    @app.get("/boom")
    def endpoint_boom() -> dict:
        failing_helper()
        return {}

    return app


def read_profiles(profiler: Any) -> list[dict]:
    """Index lines of the file exporter, each with ``stacks`` (names leaf first, values, labels)."""
    assert profiler.force_flush(10)
    out_dir = profiler.config.output_dir
    path = os.path.join(out_dir, "index.jsonl")
    if not os.path.exists(path):
        return []
    entries = []
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            with open(os.path.join(out_dir, entry["file"]), "rb") as pf:
                decoded = decode_pprof(pf.read())
            entry["stacks"] = stacks_by_function(decoded)
            entry["functions"] = {n for names, _v, _l in entry["stacks"] for n in names}
            entry["sample_types"] = decoded.sample_types
            entries.append(entry)
    return entries


def value(entry: dict, kind: str, predicate: Any = lambda names: True) -> int:
    index = [t for t, _u in entry["sample_types"]].index(kind)
    return sum(vals[index] for names, vals, _l in entry["stacks"] if predicate(names))


# ---------------------------------------------------------------------- attribution


def test_concurrent_requests_on_one_loop_do_not_contaminate(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0, max_concurrent_profiles=100, max_profiles_per_minute=10000,
                                sample_hz=200)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    paths = ["/alpha", "/beta"] * 12
    with serve_in_thread(app) as base:
        async def fire() -> list:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(*(client.get(p) for p in paths))

        responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(paths)
    profiles = read_profiles(profiler)
    alpha = [p for p in profiles if p["name"] == "GET /alpha"]
    beta = [p for p in profiles if p["name"] == "GET /beta"]
    assert len(alpha) + len(beta) >= 20  # 24 started; a profile without any sample is not written
    for p in alpha:
        assert not p["functions"] & {"burn_beta", "make_app.<locals>.endpoint_beta"}, p["name"]
    for p in beta:
        assert not p["functions"] & {"burn_alpha", "make_app.<locals>.endpoint_alpha"}, p["name"]
    # and each side did record its own work
    assert sum("burn_alpha" in p["functions"] for p in alpha) >= len(alpha) // 2
    assert sum("burn_beta" in p["functions"] for p in beta) >= len(beta) // 2


def test_thread_pool_work_is_in_the_request_profile(profiler_factory: Any, monkeypatch: Any) -> None:
    from otelprof_middleware import stacks

    # keep our wrapper's frames (run_attached) in the stacks: this test looks at them
    monkeypatch.setattr(stacks, "FOLD_OWN_FRAMES", False)
    profiler = profiler_factory(header_trust="any", probability=0.0)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        ids = {path: client.get(path, headers={"X-Enable-Profiling": "1"}).headers["x-profile-id"]
               for path in ("/sync", "/hops")}
    by_id = {p["profile_id"]: p for p in read_profiles(profiler)}
    sync, hops = by_id[ids["/sync"]], by_id[ids["/hops"]]
    assert "burn_in_thread_pool" in sync["functions"]
    assert value(sync, "cpu", lambda names: names[0] == "_spin" and "burn_in_thread_pool" in names) > 0
    assert {"burn_in_to_thread", "burn_in_executor"} <= hops["functions"]
    # the pool thread was detached afterwards: no samples of it outside the work
    for p in (sync, hops):
        for names, _v, labels in p["stacks"]:
            if labels.get("thread_name", "").startswith(("AnyIO", "asyncio", "ThreadPool")):
                # the work, our wrapper around it, or CPU of the attachment that no sample located
                assert (any(n.startswith("burn_in_") or n == "_spin" for n in names)
                        or any(n.endswith("run_attached") for n in names) or names == ["<unsampled CPU>"]), names


def test_streaming_generator_frames_are_in_the_profile(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/stream", headers={"X-Enable-Profiling": "1"})
    assert r.text == "".join(f"chunk {i}\n" for i in range(6))
    p = {p["profile_id"]: p for p in read_profiles(profiler)}[r.headers["x-profile-id"]]
    assert {"burn_in_generator", "make_app.<locals>.body_chunks"} <= p["functions"]
    assert p["attributes"]["http.response.status_code"] == 200


def test_awaiting_endpoint_shows_wall_time_and_almost_no_cpu(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/sleep", headers={"X-Enable-Profiling": "1"})
    p = {p["profile_id"]: p for p in read_profiles(profiler)}[r.headers["x-profile-id"]]
    waiting = value(p, "wall", lambda names: names[0] == "sleep" and "make_app.<locals>.endpoint_sleep" in names)
    total_wall = value(p, "wall")
    assert waiting > 0.8 * total_wall
    assert value(p, "cpu") < 0.2 * total_wall
    assert value(p, "cpu", lambda names: names[0] == "sleep") == 0


def test_promoted_def_endpoint_samples_its_pool_thread(profiler_factory: Any) -> None:
    """A slow request promoted while it works in a thread pool (a FastAPI ``def``
    endpoint, ``asyncio.to_thread``): the pool thread it is in at that moment, and
    those it hands work to later, are sampled with their CPU time."""
    profiler = profiler_factory(probability=0.0, slow_threshold="0.2", sample_hz=200, slow_route_arming=False)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/slow-sync").status_code == 200
        assert client.get("/slow-hops").status_code == 200
    profiles = {p["name"]: p for p in read_profiles(profiler)}
    sync, hops = profiles["GET /slow-sync"], profiles["GET /slow-hops"]
    for p in (sync, hops):
        assert p["trigger"] == "slow" and p["attributes"]["otelprof.unsampled_head_ms"] >= 200
    # most of the 0.6 s of CPU after the promotion (at 0.2 s), not an empty wait
    assert value(sync, "cpu", lambda names: "burn_in_thread_pool" in names) > 300_000_000, sync["functions"]
    assert value(hops, "cpu", lambda names: "burn_first_hop" in names) > 150_000_000, hops["functions"]
    assert value(hops, "cpu", lambda names: "burn_later_hop" in names) > 150_000_000, hops["functions"]


def test_unhandled_exception_is_recorded_as_a_500(profiler_factory: Any) -> None:
    """FastAPI renders the 500 outside our middleware (ServerErrorMiddleware): that
    response cannot carry ``X-Profile-Id``, but the profile records the status and the
    error, and is found by route and status in the profile list."""
    profiler = profiler_factory(header_trust="any", probability=0.0)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/boom", headers={"X-Enable-Profiling": "1"})
    assert r.status_code == 500 and "x-profile-id" not in r.headers
    [p] = [p for p in read_profiles(profiler) if p["name"] == "GET /boom"]
    assert p["attributes"]["http.response.status_code"] == 500
    assert p["attributes"]["error.type"] == "ValueError" and p["attributes"]["otelprof.error"] == "ValueError"
    assert "failing_helper" in p["functions"]


# ---------------------------------------------------------------------- trace links


def _spans_by_name(exporter: Any) -> dict:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_link_is_the_otel_server_span_and_it_carries_the_profile_id(profiler_factory: Any, otel_tracing: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _tracer, exporter = otel_tracing
    profiler = profiler_factory(header_trust="any", probability=0.0)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    FastAPIInstrumentor.instrument_app(app)
    trace_id = secrets.token_hex(16)
    try:
        with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            r = client.get("/sync", headers={"X-Enable-Profiling": "1",
                                             "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    server = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert len(server) == 1
    span = server[0]
    span_hex = format(span.context.span_id, "016x")
    assert format(span.context.trace_id, "032x") == trace_id
    p = {p["profile_id"]: p for p in read_profiles(profiler)}[r.headers["x-profile-id"]]
    assert (p["trace_id"], p["span_id"], p["link_source"]) == (trace_id, span_hex, "span")
    labels = {(lab.get("trace_id"), lab.get("span_id")) for _n, _v, lab in p["stacks"]}
    assert labels == {(trace_id, span_hex)}
    attrs = span.attributes
    assert attrs["pyroscope.profile.id"] == span_hex
    assert attrs["otelprof.profile_id"] == r.headers["x-profile-id"]
    assert attrs["otelprof.samples"] > 0 and attrs["otelprof.cpu_ms"] > 0
    assert attrs["otelprof.top_frame"]


def test_outside_the_otel_middleware_the_span_is_picked_up_at_send(profiler_factory: Any, otel_tracing: Any) -> None:
    """Plain Starlette: a later ``add_middleware`` puts ours outside OpenTelemetryMiddleware."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    _tracer, exporter = otel_tracing
    profiler = profiler_factory(header_trust="any", probability=0.0)

    async def work(request: Any) -> Any:
        burn_alpha(0.03)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/work/{n}", work)])
    app.add_middleware(OpenTelemetryMiddleware)
    app.add_middleware(ProfilingMiddleware, profiler=profiler)  # outermost: sees no span at entry
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/work/7", headers={"X-Enable-Profiling": "1"})
    assert r.text == "done"
    span = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER][0]
    span_hex = format(span.context.span_id, "016x")
    p = {p["profile_id"]: p for p in read_profiles(profiler)}[r.headers["x-profile-id"]]
    assert (p["span_id"], p["link_source"]) == (span_hex, "span")
    assert span.attributes["pyroscope.profile.id"] == span_hex
    assert p["attributes"]["http.route"] == "/work/{n}"  # plain Starlette: matched from the app's routes


# ---------------------------------------------------------------------- header policy


def test_header_secret_wrong_or_missing_never_profiles(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=0.0, header_secret="letmein")
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    wrong = [{}, {"X-Enable-Profiling": "1"}, {"X-Enable-Profiling": "true"}, {"X-Enable-Profiling": "letmein2"},
             {"X-Enable-Profiling": "LETMEIN"}, {"X-Enable-Profiling": ""}]
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        bad = [client.get("/alpha", headers=h) for h in wrong]
        good = client.get("/alpha", headers={"X-Enable-Profiling": "letmein"})
    assert all(r.status_code == 200 and "x-profile-id" not in r.headers for r in bad)
    assert "x-profile-id" in good.headers
    assert profiler.stats()["profiles_started"] == 1


def test_header_flood_stays_within_the_per_minute_cap(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0, max_header_profiles_per_minute=5)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        responses = [client.get("/plain", headers={"X-Enable-Profiling": "1"}) for _ in range(40)]
    assert all(r.status_code == 200 for r in responses)
    assert sum("x-profile-id" in r.headers for r in responses) == 5
    stats = profiler.stats()
    assert stats["profiles_started"] == 5 and stats["declined"]["header_rate"] == 35


def test_concurrent_header_flood_respects_max_concurrent_profiles(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0, max_concurrent_profiles=2, max_header_profiles_per_minute=1000)
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base:
        async def fire() -> list:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(*(client.get("/sleep", headers={"X-Enable-Profiling": "1"})
                                              for _ in range(10)))

        responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert 1 <= sum("x-profile-id" in r.headers for r in responses) <= 2 * 10
    stats = profiler.stats()
    assert stats["declined"].get("concurrency", 0) >= 1
    assert stats["profiles_started"] + stats["declined"]["concurrency"] == 10


# ---------------------------------------------------------------------- failures inside the profiler


class ExplodingExporter:
    name = "exploding"

    def export(self, profiles: Any) -> Any:
        raise RuntimeError("collector is on fire")

    def shutdown(self) -> None:
        pass


def test_failing_exporter_or_sampler_never_changes_the_response(profiler_factory: Any, monkeypatch: Any) -> None:
    from otelprof_middleware.sampler import get_sampler

    profiler = profiler_factory(header_trust="any", probability=1.0, exporters=[ExplodingExporter()])
    app = make_app()
    app.add_middleware(ProfilingMiddleware, profiler=profiler)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r1 = client.get("/stream")
        profiler.force_flush(5)

        def broken_register(session: Any) -> None:
            raise RuntimeError("sampler is broken")

        monkeypatch.setattr(get_sampler(), "register", broken_register)
        r2 = client.get("/stream", headers={"X-Enable-Profiling": "1"})
        r3 = client.get("/alpha")
    expected = "".join(f"chunk {i}\n" for i in range(6))
    assert (r1.status_code, r1.text) == (200, expected)
    assert (r2.status_code, r2.text, r2.headers.get("x-profile-id")) == (200, expected, None)
    assert (r3.status_code, r3.json()) == (200, {"ok": "alpha"})
    st = profiler.stats()  # export failures count at their exporter, lost sessions before collection
    assert st["exporters"]["exploding"]["dropped"].get("export_failed", 0) >= 1 and st["dropped"].get("error", 0) >= 1


# ---------------------------------------------------------------------- the example app


def test_example_app_traceparent_gives_pprof_label_and_otlp_link(tmp_path: Any) -> None:
    from helpers.otlp_receiver import OTLPReceiver

    trace_id = secrets.token_hex(16)
    parent = secrets.token_hex(8)
    with OTLPReceiver() as rx:
        env = {"OTELPROF_EXPORTER": "file,otlp", "OTELPROF_OUTPUT_DIR": str(tmp_path / "profiles"),
               "OTELPROF_ENDPOINT": rx.url, "OTELPROF_PROBABILITY": "0", "OTELPROF_BATCH_TIMEOUT": "0.1",
               "OTELPROF_HEADER_SECRET": "example-s3cret", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with serve_in_subprocess("app:app", env=env, app_dir=EXAMPLE_DIR, health_path="/health") as srv:
            r = httpx.get(srv.base_url + "/cpu?n=40000", timeout=30,
                          headers={"X-Enable-Profiling": "example-s3cret", "traceparent": f"00-{trace_id}-{parent}-01"})
            assert r.status_code == 200
            profile_id = r.headers["x-profile-id"]
            srv.stop()  # clean stop: lifespan shutdown flushes the profile
        assert srv.returncode == 0, srv.output
        assert rx.wait_for(1, timeout=10, accepted_only=True)
        otlp = rx.profiles()
        req = rx.messages[0]
    # pprof file: the trace_id label is the incoming trace; the span is the server span (a child of `parent`)
    index = [json.loads(line) for line in open(tmp_path / "profiles" / "index.jsonl")]
    entry = [e for e in index if e["profile_id"] == profile_id][0]
    with open(tmp_path / "profiles" / entry["file"], "rb") as f:
        decoded = decode_pprof(f.read())
    labels = {s.labels.get("trace_id") for s in decoded.samples}
    assert labels == {trace_id}
    span_ids = {s.labels.get("span_id") for s in decoded.samples}
    assert len(span_ids) == 1 and parent not in span_ids  # the OTel SERVER span, not the remote parent
    assert entry["link_source"] == "span"
    assert "count_primes" in {n for names, _v, _l in stacks_by_function(decoded) for n in names}
    # OTLP: the Link of the samples carries the same trace id
    # (one OTLP Profile per sample type: cpu, wall ...; all of this request)
    assert otlp and profile_id in {p.profile_id.hex() for p in otlp}
    links = {req.dictionary.link_table[s.link_index].trace_id.hex() for p in otlp for s in p.samples}
    assert links == {trace_id}


def test_example_app_demo_script_runs(tmp_path: Any) -> None:
    import subprocess

    out = subprocess.run([sys.executable, os.path.join(EXAMPLE_DIR, "demo.py"), "--output-dir",
                          str(tmp_path / "demo-profiles")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                                  OTELPROF_HEADER_SECRET="demo-s3cret"))
    assert out.returncode == 0, out.stdout + out.stderr
    # one copy-paste curl, with the secret the demo's requests use
    curls = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 1 and curls[0].startswith("curl -i -H 'X-Enable-Profiling: demo-s3cret' http://127.0.0.1:")
    assert out.stdout.count("X-Profile-Id: -") == 1  # every request but the 500 got its profile id
    assert "profile(s) in" in out.stdout and "flat%" in out.stdout and "count_primes" in out.stdout
    # the 500 without X-Profile-Id is found by its trace id, with its status
    assert "GET /error had no X-Profile-Id" in out.stdout and "(status 500)" in out.stdout, out.stdout
