"""Pyroscope exporter against the project's Pyroscope receiver: the Connect push API
(PushRequest decoded by the receiver's own wire reader, pprof by our independent
decoder and by ``go tool pprof``), the legacy /ingest fallback, auth and retries."""

from __future__ import annotations

import time

import pytest

from otelprof_middleware.config import Config
from otelprof_middleware.export.channel import ExportChannel
from otelprof_middleware.export.registry import create_exporter
from otelprof_middleware.export.settings import BatchSettings
from otelprof_middleware.export.sizing import estimate_size
from otelprof_middleware.stats import Stats

from helpers.pprof_decode import GO_MISSING, decode_pprof, run_go_pprof, stacks_by_function
from helpers.pyroscope_receiver import PyroscopeReceiver
from test_delivery import Recorder, synthetic

PUSH = "/push.v1.PusherService/Push"


def pyro_channel(rx, wait=None, stats=None, **options):
    config = Config.load(dict(exporter="pyroscope", pyroscope_endpoint=rx.url, service_name="demo-web", **options),
                         env={})
    return ExportChannel(create_exporter("pyroscope", config), stats or Stats(),
                         batch=BatchSettings(batch_size=config.batch_size, batch_timeout=60), wait=wait)


def send_all(ch, profiles):
    for p in profiles:
        assert ch.offer(p, estimate_size(p))
    assert ch.force_flush(30)


def pyro_work_loop(seconds):
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += sum(range(200))
    return x


def test_push_through_the_profiler_with_span_labels(profiler_factory, otel_tracing, tmp_path):
    tracer, _spans = otel_tracing
    with PyroscopeReceiver() as rx:
        profiler = profiler_factory(exporter="pyroscope", pyroscope_endpoint=rx.url, service_name="demo-web",
                                    sample_hz=200, min_samples=1, batch_timeout=60)
        with tracer.start_as_current_span("GET /work") as span:
            with profiler.profile("work"):
                pyro_work_loop(0.3)
        ctx = span.get_span_context()
        assert profiler.force_flush(20)
        (req,) = rx.accepted(PUSH)
        assert req.headers["content-type"] == "application/proto"
        (series,) = rx.series()
        assert series.labels == {"__name__": "process_cpu", "service_name": "demo-web"}
        (raw, sample_id) = series.samples[0]
        assert raw[:2] == b"\x1f\x8b"  # gzip'd pprof
        assert len(sample_id) == 36  # a UUID
        decoded = decode_pprof(raw)
        stacks = stacks_by_function(decoded)
        assert any("pyro_work_loop" in names for names, _v, _l in stacks)
        for _names, _values, labels in stacks:
            assert labels["span_id"] == format(ctx.span_id, "016x")
            assert labels["trace_id"] == format(ctx.trace_id, "032x")
            assert labels["span_name"] == "GET /work"
        path = tmp_path / "push.pb.gz"
        path.write_bytes(raw)
        out = run_go_pprof(["-raw"], str(path))
        if out is None:
            pytest.skip(GO_MISSING)
        assert "pyro_work_loop" in out
        assert format(ctx.span_id, "016x") in out


def test_auth_headers_basic_and_tenant():
    with PyroscopeReceiver() as rx:
        ch = pyro_channel(rx, pyroscope_basic_auth="user:pa:ss", pyroscope_tenant_id="team-a")
        send_all(ch, [synthetic("a")])
        h = rx.requests[0].headers
        import base64

        assert h["authorization"] == "Basic " + base64.b64encode(b"user:pa:ss").decode()
        assert h["x-scope-orgid"] == "team-a"


def test_auth_bearer_token():
    with PyroscopeReceiver() as rx:
        ch = pyro_channel(rx, pyroscope_token="tok123")
        send_all(ch, [synthetic("a")])
        assert rx.requests[0].headers["authorization"] == "Bearer tok123"


def test_batch_is_one_push_with_one_series_per_profile():
    stats = Stats()
    with PyroscopeReceiver() as rx:
        ch = pyro_channel(rx, stats=stats)
        profiles = [synthetic(f"p{i}", seed=i) for i in range(3)]
        send_all(ch, profiles)
        assert len(rx.requests) == 1
        series = rx.series()
        assert len(series) == 3
        span_ids = sorted({stacks_by_function(decode_pprof(s.samples[0][0]))[0][2]["span_id"] for s in series})
        assert span_ids == sorted(format(p.link.span_id, "016x") for p in profiles)
    assert stats.snapshot()["exporters"]["pyroscope"]["exported"] == 3


@pytest.mark.parametrize("status", [404, 415, 501])
def test_falls_back_to_ingest_when_push_is_unavailable(status):
    stats = Stats()
    with PyroscopeReceiver(push_available=False, unavailable_status=status) as rx:
        ch = pyro_channel(rx, stats=stats)
        profiles = [synthetic("a"), synthetic("b", seed=1)]
        send_all(ch, profiles)
        ingests = rx.accepted("/ingest")
        assert len(ingests) == 2
        for r, p in zip(ingests, profiles):
            assert r.query["format"] == "pprof"
            assert r.query["name"] == "demo-web"
            assert r.query["spyName"] != "pyspy"
            assert int(r.query["from"]) == p.start_time_ns // 10**9
            labels = stacks_by_function(decode_pprof(r.body))[0][2]
            assert labels["span_id"] == format(p.link.span_id, "016x")
        # the fallback sticks: the next batch goes straight to /ingest
        n_push = len([r for r in rx.requests if r.path == PUSH])
        send_all(ch, [synthetic("c", seed=2)])
        assert len([r for r in rx.requests if r.path == PUSH]) == n_push == 1
        assert len(rx.accepted("/ingest")) == 3
    assert stats.snapshot()["exporters"]["pyroscope"]["exported"] == 3


def test_ingest_retry_resumes_without_duplicates():
    wait = Recorder()
    with PyroscopeReceiver(push_available=False, ingest_statuses=[200, 503], retry_after="1") as rx:
        ch = pyro_channel(rx, wait=wait)
        profiles = [synthetic("a"), synthetic("b", seed=1), synthetic("c", seed=2)]
        send_all(ch, profiles)
        bodies = [r.body for r in rx.accepted("/ingest")]
        assert len(bodies) == 3  # a, (b failed with 503, retried) b, c: each once
        got = [stacks_by_function(decode_pprof(b))[0][2]["span_id"] for b in bodies]
        assert got == [format(p.link.span_id, "016x") for p in profiles]
        assert wait.delays == [1.0]


def test_push_503_is_retried_exactly_once_delivered():
    wait = Recorder()
    with PyroscopeReceiver(push_statuses=[503], retry_after="2") as rx:
        ch = pyro_channel(rx, wait=wait)
        send_all(ch, [synthetic("a")])
        assert [r.status for r in rx.requests] == [503, 200]
        assert len(rx.series()) == 1
        assert wait.delays == [2.0]


def test_push_400_is_dropped_without_retry_or_fallback():
    stats = Stats()
    wait = Recorder()
    with PyroscopeReceiver(push_statuses=[400]) as rx:
        ch = pyro_channel(rx, wait=wait, stats=stats)
        send_all(ch, [synthetic("a")])
        assert [r.path for r in rx.requests] == [PUSH]
    assert wait.delays == []
    assert stats.snapshot()["exporters"]["pyroscope"]["dropped"] == {"export_failed": 1}
