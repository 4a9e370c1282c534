"""OTLP/gRPC exporter against the project's gRPC receiver: payloads decoded with the
opentelemetry-proto classes, retryable codes, RetryInfo, metadata, env selection."""

from __future__ import annotations


import pytest

pytest.importorskip("grpc")

from otelprof_middleware.config import Config
from otelprof_middleware.export.channel import ExportChannel
from otelprof_middleware.export.otlp_grpc import OTLPGRPCExporter, grpc_target, parse_retry_info
from otelprof_middleware.export.registry import create_exporter, create_exporters
from otelprof_middleware.export.settings import BatchSettings
from otelprof_middleware.export.sizing import estimate_size
from otelprof_middleware.stats import Stats

from helpers.grpc_receiver import GRPCReceiver, status_details
from helpers.otlp_check import check_request
from test_delivery import Recorder, run_profiles, synthetic


def grpc_channel(rx: GRPCReceiver, wait=None, stats=None, **options):
    config = Config.load(dict(exporter="otlp", protocol="grpc", endpoint=rx.url, **options), env={})
    return ExportChannel(create_exporter("otlp", config), stats or Stats(),
                         batch=BatchSettings(batch_size=config.batch_size, batch_timeout=60), wait=wait)


def send_all(ch, profiles):
    for p in profiles:
        assert ch.offer(p, estimate_size(p))
    assert ch.force_flush(30)


def ids_in(rx: GRPCReceiver) -> list[str]:
    out = []
    for r in rx.accepted:
        for rp in r.message.resource_profiles:
            for sp in rp.scope_profiles:
                out.extend(p.profile_id.hex() for p in sp.profiles)
    return sorted(set(out))


def test_grpc_export_through_the_profiler_decodes_with_opentelemetry_proto(profiler_factory):
    with GRPCReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", protocol="grpc", endpoint=rx.url, min_samples=0,
                                    batch_size=10, batch_timeout=60, headers="x-api-key=secret")
        ids = run_profiles(profiler, ["a", "b", "c"])
        assert profiler.force_flush(20)
        assert len(rx.requests) == 1
        req = rx.requests[0]
        assert check_request(req.message) == []
        assert ids_in(rx) == sorted(ids)
        assert req.metadata["x-api-key"] == "secret"
        res = {kv.key: kv.value.string_value for kv in req.message.resource_profiles[0].resource.attributes}
        assert res["service.name"] == profiler.config.service_name
        assert profiler.stats()["exporters"]["otlp"]["exported"] == 3


def test_unavailable_with_retry_info_is_retried_after_the_given_delay():
    wait = Recorder()
    stats = Stats()
    with GRPCReceiver(codes=["UNAVAILABLE", "UNAVAILABLE"], retry_delay=2.5) as rx:
        ch = grpc_channel(rx, wait=wait, stats=stats)
        p = synthetic("a")
        send_all(ch, [p])
        assert [r.code for r in rx.requests] == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
        assert wait.delays == [2.5, 2.5]
        assert ids_in(rx) == [p.profile_id_hex]
    assert stats.snapshot()["exporters"]["otlp"]["exported"] == 1


@pytest.mark.parametrize("code", ["CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE",
                                  "DATA_LOSS"])
def test_retryable_codes_without_retry_info_back_off(code):
    wait = Recorder()
    with GRPCReceiver(codes=[code]) as rx:
        ch = grpc_channel(rx, wait=wait, retry_initial_backoff=1)
        send_all(ch, [synthetic("a")])
        assert [r.code for r in rx.requests] == [code, "OK"]
        assert len(wait.delays) == 1 and 0.5 <= wait.delays[0] <= 1


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "UNKNOWN", "NOT_FOUND", "PERMISSION_DENIED",
                                  "UNAUTHENTICATED", "FAILED_PRECONDITION", "UNIMPLEMENTED", "INTERNAL",
                                  "RESOURCE_EXHAUSTED"])
def test_non_retryable_codes_drop_without_retry(code):
    wait = Recorder()
    stats = Stats()
    with GRPCReceiver(codes=[code]) as rx:
        ch = grpc_channel(rx, wait=wait, stats=stats)
        send_all(ch, [synthetic("a"), synthetic("b")])
        assert len(rx.requests) == 1
    assert wait.delays == []
    assert stats.snapshot()["exporters"]["otlp"]["dropped"] == {"export_failed": 2}


def test_resource_exhausted_with_retry_info_is_retried():
    wait = Recorder()
    with GRPCReceiver(codes=["RESOURCE_EXHAUSTED"], retry_delay=4) as rx:
        ch = grpc_channel(rx, wait=wait)
        send_all(ch, [synthetic("a")])
        assert [r.code for r in rx.requests] == ["RESOURCE_EXHAUSTED", "OK"]
        assert wait.delays == [4.0]


def test_partial_success_over_grpc_is_not_retried():
    stats = Stats()
    with GRPCReceiver(partial_success=(2, "bad")) as rx:
        ch = grpc_channel(rx, stats=stats)
        send_all(ch, [synthetic("a")])
        assert len(rx.requests) == 1
    assert stats.snapshot()["exporters"]["otlp"]["dropped"] == {"rejected": 1}


def test_server_down_is_unavailable_and_retried_until_it_comes_up():
    rx = GRPCReceiver()
    wait_calls = []
    holder = {}

    def wait(seconds):
        wait_calls.append(seconds)
        if len(wait_calls) == 3:  # after three failed attempts, the server comes up
            holder["rx"] = rx.start()
            holder["ch"].exporter.endpoint = rx.url
            holder["ch"].exporter.target = f"127.0.0.1:{rx.port}"
            holder["ch"].exporter.after_fork()  # forget the old channel
        return True

    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    config = Config.load(dict(exporter="otlp", protocol="grpc", endpoint=f"http://127.0.0.1:{dead_port}",
                              export_timeout=2), env={})
    stats = Stats()
    ch = ExportChannel(create_exporter("otlp", config), stats, batch=BatchSettings(batch_timeout=60), wait=wait)
    holder["ch"] = ch
    try:
        p = synthetic("a")
        send_all(ch, [p])
        assert len(wait_calls) == 3
        assert ids_in(rx) == [p.profile_id_hex]
        assert stats.snapshot()["exporters"]["otlp"]["exported"] == 1
    finally:
        rx.stop()


def test_parse_retry_info_and_target():
    assert parse_retry_info(status_details(14, "x", 1.25)) == pytest.approx(1.25)
    assert parse_retry_info(status_details(14, "x", None)) is None
    assert parse_retry_info(b"\xff\xff") is None
    assert grpc_target("http://collector:4317") == ("collector:4317", False)
    assert grpc_target("https://collector") == ("collector:4317", True)


def test_env_selects_grpc(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    config = Config.load({})
    (exp,) = create_exporters(config)
    assert isinstance(exp, OTLPGRPCExporter)
    assert exp.target == "127.0.0.1:4317" and not exp.tls
