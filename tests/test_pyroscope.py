"""Pyroscope exporter against the project's Pyroscope receiver: the Connect push API
(PushRequest decoded by the receiver's own wire reader, pprof by our independent
decoder and by ``go tool pprof``), the legacy /ingest fallback, auth and retries."""

from __future__ import annotations

import os
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
        # one series per profile type: CPU and wall, named as the OTLP path names them
        cpu_series, wall_series = rx.series()
        for series, name in ((cpu_series, "process_cpu"), (wall_series, "wall")):
            assert series.labels["__name__"] == name and series.labels["service_name"] == "demo-web"
            # the resource as Pyroscope maps it: dots become underscores
            assert series.labels["process_pid"] == str(os.getpid())
            assert series.labels["telemetry_sdk_language"] == "python"
            assert all("." not in k for k in series.labels), series.labels
        (raw, sample_id) = cpu_series.samples[0]
        assert raw[:2] == b"\x1f\x8b"  # gzip'd pprof
        assert len(sample_id) == 36  # a UUID
        decoded = decode_pprof(raw)
        assert decoded.sample_types == [("cpu", "nanoseconds")] and decoded.period_type == ("cpu", "nanoseconds")
        wall = decode_pprof(wall_series.samples[0][0])
        assert wall.sample_types == [("wall", "nanoseconds")] and wall.period_type == ("wall", "nanoseconds")
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


def test_batch_is_one_push_with_a_cpu_and_a_wall_series_per_profile():
    stats = Stats()
    with PyroscopeReceiver() as rx:
        ch = pyro_channel(rx, stats=stats)
        profiles = [synthetic(f"p{i}", seed=i) for i in range(3)]
        send_all(ch, profiles)
        assert len(rx.requests) == 1
        series = rx.series()
        assert [s.labels["__name__"] for s in series] == ["process_cpu", "wall"] * 3
        span_ids = [stacks_by_function(decode_pprof(s.samples[0][0]))[0][2]["span_id"] for s in series]
        assert span_ids == [format(p.link.span_id, "016x") for p in profiles for _ in range(2)]
        for s, p in zip(series[::2], profiles):  # the CPU series holds the profile's CPU ns exactly
            assert sum(v[0] for _, v, _ in stacks_by_function(decode_pprof(s.samples[0][0]))) == p.cpu_ns
    assert stats.snapshot()["exporters"]["pyroscope"]["exported"] == 3


def test_series_labels_map_the_resource_as_pyroscope_does():
    with PyroscopeReceiver() as rx:
        ch = pyro_channel(rx, resource_attributes={"service.version": "1.4.2", "deployment.environment": "prod",
                                                   "k8s.pod.name": "web-1", "bad-name": "x", "team": "a,b"})
        send_all(ch, [synthetic("a")])
        labels = rx.series()[0].labels
        assert labels["service_version"] == "1.4.2"
        # the deprecated name still arrives, and its semantic-convention successor too
        assert labels["deployment_environment"] == labels["deployment_environment_name"] == "prod"
        assert labels["k8s_pod_name"] == "web-1" and labels["team"] == "a,b"
        assert "bad-name" not in labels and "bad_name" not in labels  # Pyroscope would reject the series
        assert len(labels) <= 30


@pytest.mark.parametrize("status", [404, 415, 501])
def test_falls_back_to_ingest_when_push_is_unavailable(status):
    stats = Stats()
    with PyroscopeReceiver(push_available=False, unavailable_status=status) as rx:
        ch = pyro_channel(rx, stats=stats)
        profiles = [synthetic("a"), synthetic("b", seed=1)]
        send_all(ch, profiles)
        ingests = rx.accepted("/ingest")
        assert len(ingests) == 4  # a CPU and a wall pprof per profile
        for r, (p, kind) in zip(ingests, [(p, k) for p in profiles for k in ("cpu", "wall")]):
            assert r.query["format"] == "pprof"
            # the series labels ride in the name (the server names the profile type after the
            # sample type: a CPU-only pprof is process_cpu, a wall-only one is wall)
            assert r.query["name"].startswith("demo-web{") and f"process_pid={os.getpid()}" in r.query["name"]
            assert r.query["spyName"] != "pyspy"
            assert int(r.query["from"]) == p.start_time_ns // 10**9
            decoded = decode_pprof(r.body)
            assert decoded.sample_types == [(kind, "nanoseconds")]
            labels = stacks_by_function(decoded)[0][2]
            assert labels["span_id"] == format(p.link.span_id, "016x")
        # the fallback sticks: the next batch goes straight to /ingest
        n_push = len([r for r in rx.requests if r.path == PUSH])
        send_all(ch, [synthetic("c", seed=2)])
        assert len([r for r in rx.requests if r.path == PUSH]) == n_push == 1
        assert len(rx.accepted("/ingest")) == 6
    assert stats.snapshot()["exporters"]["pyroscope"]["exported"] == 3


def test_ingest_retry_resumes_without_duplicates():
    wait = Recorder()
    with PyroscopeReceiver(push_available=False, ingest_statuses=[200, 503], retry_after="1") as rx:
        ch = pyro_channel(rx, wait=wait)
        profiles = [synthetic("a"), synthetic("b", seed=1), synthetic("c", seed=2)]
        send_all(ch, profiles)
        bodies = [r.body for r in rx.accepted("/ingest")]
        assert len(bodies) == 6  # CPU + wall of a (its wall pprof got a 503 and was retried), b and c: each once
        got = [stacks_by_function(decode_pprof(b))[0][2]["span_id"] for b in bodies]
        assert got == [format(p.link.span_id, "016x") for p in profiles for _ in range(2)]
        assert wait.delays == [1.0]


def test_push_503_is_retried_exactly_once_delivered():
    wait = Recorder()
    with PyroscopeReceiver(push_statuses=[503], retry_after="2") as rx:
        ch = pyro_channel(rx, wait=wait)
        send_all(ch, [synthetic("a")])
        assert [r.status for r in rx.requests] == [503, 200]
        assert len(rx.series()) == 2  # CPU and wall, once
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
