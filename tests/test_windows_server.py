"""Window profiles through a real server (uvicorn, FastAPI with its OpenTelemetry
instrumentation): a burst of short requests becomes one aggregate profile per
route, each sample linked to its request's span, decoded independently (the
``opentelemetry-proto`` classes for OTLP, our pprof decoder for the file)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from helpers.asgi_server import serve_in_thread
from helpers.otlp_receiver import OTLPReceiver
from helpers.pprof_decode import decode_pprof
from otelprof_middleware.asgi import ProfilingMiddleware

pytestmark = pytest.mark.integration


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def make_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/short/{n}")
    async def short(n: int) -> dict:
        spin(0.004)  # a few ms: a sample or two at 1 kHz
        return {"n": n}

    @app.get("/other")
    def other() -> dict:  # in the thread pool
        spin(0.004)
        return {"ok": 1}

    return app


def test_burst_of_short_requests_yields_aggregates_linked_to_each_span(profiler_factory: Any, otel_tracing: Any,
                                                                        tmp_path: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _tracer, span_exporter = otel_tracing
    out_dir = str(tmp_path / "profiles")
    app = make_app()
    n_requests = 40
    with OTLPReceiver() as rx:
        # min_samples at its maximum: every request profiled by chance is "short"
        profiler = profiler_factory(exporter="file,otlp", output_dir=out_dir, endpoint=rx.url, probability=1.0,
                                    sample_hz=1000, min_samples=1000, aggregate_window=3600, batch_timeout=60,
                                    max_profiles_per_minute=1000, trigger_limits="probability=1000", max_overhead=1.0)
        app.add_middleware(ProfilingMiddleware, profiler=profiler)
        FastAPIInstrumentor.instrument_app(app)
        try:
            with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
                for i in range(n_requests):
                    path = f"/short/{i}" if i % 4 else "/other"
                    assert client.get(path).status_code == 200
        finally:
            FastAPIInstrumentor.uninstrument_app(app)
        assert profiler.force_flush(30)
        messages = list(rx.messages)

    spans = [s for s in span_exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert len(spans) == n_requests
    st = profiler.stats()
    # every request is accounted for: its samples are in an aggregate, or it had none
    assert st["profiles_started"] == n_requests
    assert st["profiles_aggregated"] + st["dropped"].get("too_short", 0) == n_requests, st
    assert st["profiles_aggregated"] >= n_requests // 2, st  # 4 ms of CPU at 1 kHz: almost always sampled
    aggregated = {s.context.span_id: s for s in spans if "otelprof.aggregate_profile_id" in s.attributes}
    assert len(aggregated) == st["profiles_aggregated"]
    for s in aggregated.values():
        assert "otelprof.profile_id" not in s.attributes  # it has no profile of its own
        assert s.attributes["otelprof.samples"] >= 1
    agg_ids = {s.attributes["otelprof.aggregate_profile_id"] for s in aggregated.values()}
    routes = {s.attributes["otelprof.aggregate_profile_id"]: s.attributes["http.route"] for s in aggregated.values()}
    assert set(routes.values()) <= {"/short/{n}", "/other"} and len(agg_ids) == len(set(routes.values()))

    # OTLP, decoded with the opentelemetry-proto classes: per span, samples and CPU add up
    otlp_cpu: dict[int, int] = {}
    otlp_wall: dict[int, int] = {}
    seen_ids = set()
    for req in messages:
        d = req.dictionary
        for prof in req.resource_profiles[0].scope_profiles[0].profiles:
            seen_ids.add(prof.profile_id.hex())
            kind = d.string_table[prof.sample_type.type_strindex]
            target = otlp_cpu if kind == "samples" else otlp_wall
            for sample in prof.samples:
                assert sample.link_index > 0
                link = d.link_table[sample.link_index]
                span_id = int.from_bytes(link.span_id, "big")
                assert span_id in aggregated
                assert int.from_bytes(link.trace_id, "big") == aggregated[span_id].context.trace_id
                target[span_id] = target.get(span_id, 0) + sum(sample.values)
    assert seen_ids == agg_ids
    for span_id, s in aggregated.items():
        assert abs(otlp_cpu.get(span_id, 0) / 1e6 - s.attributes["otelprof.cpu_ms"]) <= 0.001 + 1e-9, s.attributes
        assert abs(otlp_wall.get(span_id, 0) / 1e6 - s.attributes["otelprof.wall_ms"]) <= 0.001 + 1e-9, s.attributes

    # pprof (the file exporter), decoded independently: the same per-span counts
    with open(f"{out_dir}/index.jsonl") as f:
        entries = [json.loads(line) for line in f]
    assert {e["profile_id"] for e in entries} == agg_ids
    samples_by_span: dict[int, int] = {}
    requests = 0
    for e in entries:
        assert e["attributes"]["otelprof.window"] == "aggregate"
        requests += e["attributes"]["otelprof.requests"]
        with open(f"{out_dir}/{e['file']}", "rb") as f:
            decoded = decode_pprof(f.read())
        types = [t for t, _ in decoded.sample_types]
        for sample in decoded.samples:
            span_id = int(sample.labels["span_id"], 16)
            assert int(sample.labels["trace_id"], 16) == aggregated[span_id].context.trace_id
            samples_by_span[span_id] = samples_by_span.get(span_id, 0) + sample.values[types.index("samples")]
    assert requests == len(aggregated)
    assert samples_by_span == {k: s.attributes["otelprof.samples"] for k, s in aggregated.items()}


def test_continuous_mode_links_request_samples_to_their_spans_through_uvicorn(profiler_factory: Any, otel_tracing: Any,
                                                                               tmp_path: Any) -> None:
    """``continuous_hz`` with no per-request profiles at all (probability 0): the whole
    process is sampled; samples taken while a request ran carry its span (the span
    registry), a background thread of the app is in the profile too; one request
    profiled by its header beside it keeps its own profile."""
    import threading

    from fastapi import FastAPI
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _tracer, span_exporter = otel_tracing
    app = FastAPI()

    @app.get("/cpu")
    async def cpu() -> dict:
        spin(0.05)
        return {"ok": 1}

    stop = threading.Event()

    def housekeeping() -> None:  # work outside any request
        while not stop.is_set():
            spin(0.005)
            stop.wait(0.005)

    bg = threading.Thread(target=housekeeping, name="app-housekeeping", daemon=True)
    bg.start()
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, probability=0.0, continuous_hz=100,
                                    continuous_window=3600, batch_timeout=60, header_trust="any", min_samples=0)
        app.add_middleware(ProfilingMiddleware, profiler=profiler)
        FastAPIInstrumentor.instrument_app(app)
        try:
            with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
                for _ in range(6):
                    assert client.get("/cpu").status_code == 200
                assert client.get("/cpu", headers={"X-Enable-Profiling": "1"}).status_code == 200
        finally:
            FastAPIInstrumentor.uninstrument_app(app)
            stop.set()
            bg.join()
        assert profiler.shutdown(30)  # ends the continuous window
        messages = list(rx.messages)

    spans = {s.context.span_id: s for s in span_exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER}
    assert len(spans) == 7
    continuous = []
    per_request = []
    for req in messages:
        d = req.dictionary
        for prof in req.resource_profiles[0].scope_profiles[0].profiles:
            attrs = {d.string_table[d.attribute_table[i].key_strindex]: d.attribute_table[i].value
                     for i in prof.attribute_indices}
            kind = attrs.get("otelprof.window")
            (continuous if kind is not None and kind.string_value == "continuous" else per_request).append((d, prof))
    assert continuous and per_request
    linked: dict[int, int] = {}
    threads = set()
    for d, prof in continuous:
        if d.string_table[prof.sample_type.type_strindex] != "samples":
            continue  # the CPU profile
        for sample in prof.samples:
            names = {d.string_table[d.attribute_table[i].key_strindex]: d.attribute_table[i].value.string_value
                     for i in sample.attribute_indices}
            threads.add(names.get("thread.name"))
            if sample.link_index:
                link = d.link_table[sample.link_index]
                span_id = int.from_bytes(link.span_id, "big")
                assert span_id in spans  # only ever a request's server span
                assert int.from_bytes(link.trace_id, "big") == spans[span_id].context.trace_id
                linked[span_id] = linked.get(span_id, 0) + sum(sample.values)
    assert "app-housekeeping" in threads  # a background thread, outside any request
    # 50 ms of CPU per request at 100 Hz: most requests' CPU is linked to their span
    assert len(linked) >= 3, (len(linked), threads)
