"""Delivery that loses nothing: the OTLP retry rules, batching and size limits, bounded
queues against a receiver that never answers, several exporters at once, graceful
shutdown, self-metrics, and no spans for our own exports.

Receivers run on 127.0.0.1 in this process (tests/helpers).  Timings are configured
small (backoff, batch timeout) and nothing asserts wall-clock durations: waits the
code asks for are recorded through the channel's ``wait`` hook."""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import threading
import time
from typing import Any

import pytest

from otelprof_middleware.config import Config
from otelprof_middleware.export.channel import ExportChannel
from otelprof_middleware.export.registry import create_exporter
from otelprof_middleware.export.retry import ByteRateLimiter, parse_retry_after
from otelprof_middleware.export.settings import BatchSettings, batch_settings
from otelprof_middleware.export.sizing import estimate_size
from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink
from otelprof_middleware.stats import Stats

from helpers.otlp_check import check_request
from helpers.otlp_receiver import OTLPReceiver

FAST = dict(min_samples=0, retry_initial_backoff=0.01, retry_max_backoff=0.05, batch_timeout=0.05)


# ----------------------------------------------------------------------------- helpers


def synthetic(name: str, n_samples: int = 3, fn_name_len: int = 10, seed: int = 0) -> Profile:
    """A profile with ``n_samples`` distinct stacks (no sampler involved)."""
    p = Profile(name=name, start_time_ns=time.time_ns(), duration_ns=50_000_000, period_ns=10_000_000,
                link=SpanLink(0x1234 + seed, 0x99 + seed, span_name=name))
    b = ProfileBuilder(p)
    root = b.location(b.function("main", "/app/main.py", 1), 10)
    for i in range(n_samples):
        f = b.function(f"fn_{i}_" + "x" * fn_name_len, "/app/mod.py", i + 1)
        b.add(b.stack([b.location(f, i + 2), root]), "MainThread", count=i + 1, cpu_ns=(i + 1) * 10_000_000,
              wall_ns=(i + 1) * 10_000_000)
    return p


def profile_ids(rx: OTLPReceiver) -> list[str]:
    """Our profile ids in the accepted requests (two OTLP profiles, CPU + wall, per profile)."""
    out = []
    for prof in rx.profiles():
        out.append(prof.profile_id.hex())
    return out[::2] if all(out[i] == out[i + 1] for i in range(0, len(out), 2)) else out


def run_profiles(profiler: Any, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        with profiler.profile(name) as session:
            ids.append(session.profile_id_hex)
    return ids


class Recorder:
    """A ``wait`` hook: records requested delays, never sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return True


def channel_for(rx: OTLPReceiver, *, wait: Any = None, stats: Any = None, **options: Any) -> ExportChannel:
    config = Config.load(dict(exporter="otlp", endpoint=rx.url, **options), env={})
    batch = dataclasses.replace(batch_settings(config), batch_timeout=60, max_upload_rate=0)
    return ExportChannel(create_exporter("otlp", config), stats or Stats(), batch=batch, wait=wait)


def send_all(ch: ExportChannel, profiles: list[Profile]) -> None:
    """Queue ``profiles`` (one batch if they fit ``batch_size``), then flush."""
    for p in profiles:
        assert ch.offer(p, estimate_size(p))
    assert ch.force_flush(30)


# ----------------------------------------------------------------------------- retry rules


def test_503_with_retry_after_then_200_delivers_every_profile_exactly_once(profiler_factory):
    with OTLPReceiver(statuses=[503], retry_after="0") as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, batch_size=10, batch_timeout=30,
                                    **{k: v for k, v in FAST.items() if k != "batch_timeout"})
        ids = run_profiles(profiler, [f"job{i}" for i in range(3)])
        assert profiler.force_flush(20)
        assert [r.status for r in rx.requests] == [503, 200]
        assert sorted(profile_ids(rx)) == sorted(ids)  # all three, once each
        for msg in rx.messages:
            assert check_request(msg) == []
        st = profiler.stats()
        assert st["exporters"]["otlp"]["exported"] == 3
        assert st["exporters"]["otlp"]["retries"] == 1
        assert st["dropped_total"] == 0


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_honour_retry_after_seconds(status):
    wait = Recorder()
    with OTLPReceiver(statuses=[status, status], retry_after=["7", "3"]) as rx:
        stats = Stats()
        ch = channel_for(rx, wait=wait, stats=stats, retry_timeout=120)
        p = synthetic("a")
        send_all(ch, [p])
        assert wait.delays == [7.0, 3.0]  # exactly what the server asked for
        assert [r.status for r in rx.requests] == [status, status, 200]
        assert profile_ids(rx) == [p.profile_id_hex]
        assert stats.snapshot()["exporters"]["otlp"]["exported"] == 1


def test_retry_after_http_date_is_honoured():
    when = time.time() + 40
    http_date = email.utils.formatdate(when, usegmt=True)
    wait = Recorder()
    with OTLPReceiver(statuses=[429], retry_after=http_date) as rx:
        ch = channel_for(rx, wait=wait, retry_timeout=120)
        send_all(ch, [synthetic("a")])
        assert len(wait.delays) == 1 and 30 <= wait.delays[0] <= 40
        assert len(rx.accepted) == 1


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def test_backoff_without_retry_after_grows_exponentially_with_jitter():
    wait = Recorder()
    with OTLPReceiver(statuses=[503, 503, 503, 503]) as rx:
        ch = channel_for(rx, wait=wait, retry_initial_backoff=1, retry_max_backoff=4, retry_timeout=600)
        send_all(ch, [synthetic("a")])
    assert len(wait.delays) == 4
    for delay, base in zip(wait.delays, [1, 2, 4, 4]):  # capped at retry_max_backoff
        assert base / 2 <= delay <= base
    assert len(rx.accepted) == 1


def test_retry_budget_is_bounded_by_retry_timeout():
    wait = Recorder()
    stats = Stats()
    with OTLPReceiver(default_status=503, retry_after="10") as rx:
        ch = channel_for(rx, wait=wait, stats=stats, retry_timeout=25)
        send_all(ch, [synthetic("a")])
        # 10 s + 10 s fit in the 25 s budget; the third delay would not: give up
        assert wait.delays == [10.0, 10.0]
        assert len(rx.requests) == 3
    assert stats.snapshot()["exporters"]["otlp"]["dropped"] == {"export_failed": 1}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 500, 501])
def test_non_retryable_statuses_drop_and_count_without_retry(status):
    wait = Recorder()
    stats = Stats()
    with OTLPReceiver(statuses=[status], retry_after="0") as rx:
        ch = channel_for(rx, wait=wait, stats=stats)
        send_all(ch, [synthetic("a"), synthetic("b")])
        assert len(rx.requests) == 1  # one batch, never retried
    assert wait.delays == []
    snap = stats.snapshot()
    assert snap["exporters"]["otlp"]["dropped"] == {"export_failed": 2}
    assert snap["exporters"]["otlp"]["dropped_by_priority"] == {"sampled": {"export_failed": 2}}
    assert snap["exporters"]["otlp"]["exported"] == 0
    assert snap["dropped"] == {}  # nothing was lost before collection: both at the destination
    assert snap["dropped_total"] == 2


def test_400_through_the_profiler_is_dropped_counted_and_not_retried(profiler_factory):
    with OTLPReceiver(statuses=[400]) as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, batch_size=1, **FAST)
        run_profiles(profiler, ["bad"])
        assert profiler.force_flush(10)
        assert len(rx.requests) == 1
        st = profiler.stats()
        assert st["exporters"]["otlp"]["dropped"] == {"export_failed": 1}
        assert st["dropped"] == {} and st["dropped_total"] == 1
        assert st["exporters"]["otlp"]["retries"] == 0


def test_partial_success_is_counted_and_not_retried():
    stats = Stats()
    wait = Recorder()
    # 3 profiles = 6 OTLP profiles; the server rejects 2 OTLP profiles -> at least 1 of ours lost data
    with OTLPReceiver(partial_success=(2, "2 profiles had bad stacks")) as rx:
        ch = channel_for(rx, wait=wait, stats=stats)
        send_all(ch, [synthetic("a"), synthetic("b"), synthetic("c")])
        assert len(rx.requests) == 1
    assert wait.delays == []
    snap = stats.snapshot()
    assert snap["exporters"]["otlp"]["dropped"] == {"rejected": 1}
    assert snap["exporters"]["otlp"]["exported"] == 2
    assert snap["partial_success_responses"] == 1


def test_partial_success_warning_only_is_full_success():
    stats = Stats()
    with OTLPReceiver(partial_success=(0, "just a warning")) as rx:
        ch = channel_for(rx, stats=stats)
        send_all(ch, [synthetic("a")])
    assert stats.snapshot()["exporters"]["otlp"] == {"exported": 1, "dropped": {}, "dropped_by_priority": {},
                                                     "requests": 1, "retries": 0}


def test_receiver_down_for_a_while_then_up_delivers_everything_once(profiler_factory):
    rx = OTLPReceiver().start()
    port = rx.port
    rx.stop()  # nothing listens on the port now: connection refused
    profiler = profiler_factory(exporter="otlp", endpoint=f"http://127.0.0.1:{port}/v1development/profiles",
                                min_samples=0, retry_initial_backoff=0.05, retry_max_backoff=0.3,
                                retry_timeout=60, batch_size=3, batch_timeout=0.05)
    ids = run_profiles(profiler, [f"job{i}" for i in range(7)])
    deadline = time.monotonic() + 30
    while profiler.stats()["exporters"].get("otlp", {}).get("retries", 0) < 8:  # ~2 s of failures
        assert time.monotonic() < deadline, profiler.stats()
        time.sleep(0.05)
    assert profiler.stats().get("profiles_exported", 0) == 0
    rx2 = OTLPReceiver(port=port).start()
    try:
        assert profiler.force_flush(30)
        assert sorted(profile_ids(rx2)) == sorted(ids)  # every profile, exactly once
        st = profiler.stats()
        assert st["exporters"]["otlp"]["exported"] == 7
        assert st["dropped_total"] == 0
    finally:
        rx2.stop()


# ----------------------------------------------------------------------------- never block, bounded memory


def _stuck_receiver() -> tuple[OTLPReceiver, threading.Event, threading.Event]:
    arrived, release = threading.Event(), threading.Event()

    def respond(rec: Any) -> None:
        arrived.set()
        release.wait(60)
        return None

    return OTLPReceiver(respond=respond), arrived, release


def test_receiver_that_never_answers_never_blocks_and_bounds_memory(profiler_factory):
    rx, arrived, release = _stuck_receiver()
    with rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, queue_size=3, batch_size=1,
                                    export_timeout=60, **FAST)
        first = run_profiles(profiler, ["first"])
        assert arrived.wait(10)  # the exporter is now stuck in a request that never returns
        done = threading.Event()
        ids: list[str] = []

        def app_requests() -> None:
            ids.extend(run_profiles(profiler, [f"r{i}" for i in range(9)]))
            done.set()

        t = threading.Thread(target=app_requests, daemon=True)
        t.start()
        assert done.wait(10), "profile() blocked behind a stuck exporter"
        assert not release.is_set()  # ... while the exporter was still stuck
        # every session built and handed over, or dropped before (the channel itself stays stuck)
        deadline = time.monotonic() + 10
        while profiler.stats()["profiles_collected"] + profiler.stats()["dropped_total"] < 10:
            assert time.monotonic() < deadline, profiler.stats()
            time.sleep(0.01)
        st = profiler.stats()
        # 1 in flight + queue_size queued; everything else dropped and counted, exactly
        assert st["queue_pending"] == 4
        assert st["dropped"] == {"queue_full": 6}
        assert st["exporters"]["otlp"]["queued"] == 3
        release.set()
        assert profiler.force_flush(20)
        got = profile_ids(rx)
        assert len(got) == len(set(got)) == 4
        assert got[0] == first[0] and set(got) <= set(first + ids)


def test_shutdown_with_stuck_exporter_returns_in_time_and_counts_unsent(profiler_factory):
    rx, arrived, release = _stuck_receiver()
    with rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, batch_size=1, export_timeout=60, **FAST)
        run_profiles(profiler, ["first"])
        assert arrived.wait(10)
        run_profiles(profiler, ["q1", "q2"])
        deadline = time.monotonic() + 10
        while profiler.stats()["exporters"].get("otlp", {}).get("queued") != 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(profiler.shutdown(timeout=0.2)), daemon=True)
        t.start()
        t.join(10)
        assert result == [False]
        st = profiler.stats()
        # the two queued and the one in flight (interrupted): everything left at the deadline
        assert st["exporters"]["otlp"]["dropped"] == {"shutdown": 3}
        assert st["exporters"]["otlp"]["dropped_by_priority"] == {"kept": {"shutdown": 3}}
        assert st["queue_pending"] == 0 and st["dropped"] == {}
        release.set()


def test_graceful_shutdown_flushes_pending_batches(profiler_factory):
    with OTLPReceiver() as rx:
        # a long batch timeout: without the shutdown flush these would wait 60 s
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0, batch_size=50,
                                    batch_timeout=60, max_upload_rate=1024)
        ids = run_profiles(profiler, [f"job{i}" for i in range(5)])
        assert rx.requests == []
        assert profiler.shutdown(timeout=10) is True
        assert sorted(profile_ids(rx)) == sorted(ids)
        assert profiler.stats()["dropped_total"] == 0


# ----------------------------------------------------------------------------- batching and limits


def test_batches_share_one_dictionary_per_request(profiler_factory):
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0, batch_size=4, batch_timeout=60)
        ids = run_profiles(profiler, [f"job{i}" for i in range(10)])
        assert profiler.force_flush(20)
        sizes = [sum(len(sp.profiles) for rp in m.resource_profiles for sp in rp.scope_profiles) for m in rx.messages]
        assert sizes == [8, 8, 4]  # 4 + 4 + 2 profiles, CPU + wall each
        for m in rx.messages:
            assert check_request(m) == []
        assert sorted(profile_ids(rx)) == sorted(ids)


def test_batch_timeout_sends_a_partial_batch_on_its_own(profiler_factory):
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0, batch_size=100,
                                    batch_timeout=0.2)
        ids = run_profiles(profiler, ["a", "b", "c"])
        assert rx.wait_for(1, timeout=10)  # no flush: the timeout sent it
        assert sorted(profile_ids(rx)) == sorted(ids)


def test_max_request_bytes_splits_batches():
    stats = Stats()
    with OTLPReceiver() as rx:
        ch = channel_for(rx, stats=stats, max_request_bytes=4096, batch_size=20)
        profiles = [synthetic(f"p{i}", n_samples=8, fn_name_len=60, seed=i) for i in range(12)]
        send_all(ch, profiles)
        assert len(rx.requests) > 1
        for r in rx.requests:
            assert len(r.body) <= 4096  # uncompressed size
        assert sorted(profile_ids(rx)) == sorted(p.profile_id_hex for p in profiles)
    assert stats.snapshot()["exporters"]["otlp"]["exported"] == 12


def test_oversized_profile_is_trimmed_to_fit():
    stats = Stats()
    with OTLPReceiver() as rx:
        ch = channel_for(rx, stats=stats, max_request_bytes=8192)
        big = synthetic("big", n_samples=400, fn_name_len=40)
        send_all(ch, [big])
        assert len(rx.requests) == 1 and len(rx.requests[0].body) <= 8192
        msg = rx.messages[0]
        strings = list(msg.dictionary.string_table)
        attrs = {strings[a.key_strindex]: a.value.string_value
                 for a in (msg.dictionary.attribute_table[i] for i in msg.resource_profiles[0].scope_profiles[0].profiles[0].attribute_indices)}
        assert attrs["otelprof.truncated"] == "max_request_bytes"
        # the heaviest stack survived
        assert "fn_399_" + "x" * 40 in strings
    snap = stats.snapshot()
    assert snap["profiles_trimmed"] == 1 and snap["exporters"]["otlp"]["exported"] == 1


def test_profile_that_cannot_fit_is_dropped_as_too_large():
    stats = Stats()
    with OTLPReceiver() as rx:
        ch = channel_for(rx, stats=stats, max_request_bytes=1024)
        send_all(ch, [synthetic("huge", n_samples=1, fn_name_len=5000)])
        assert rx.requests == []
    assert stats.snapshot()["exporters"]["otlp"]["dropped"] == {"too_large": 1}


def test_max_queue_bytes_bounds_the_channel():
    started, release = threading.Event(), threading.Event()

    class Blocking:
        name = "blocking"

        def export(self, profiles):
            started.set()
            release.wait(30)
            from otelprof_middleware.export.base import ExportResult

            return ExportResult(exported=len(profiles))

        def shutdown(self):
            pass

    stats = Stats()
    ch = ExportChannel(Blocking(), stats, batch=BatchSettings(queue_size=100, max_queue_bytes=1500))
    assert ch.offer(synthetic("a"), 1000)
    assert started.wait(10)
    assert ch.offer(synthetic("b"), 1000)  # fits (the in-flight one left the queue)
    assert not ch.offer(synthetic("c"), 1000)  # 2000 > 1500
    assert ch.offer(synthetic("d"), 400)
    assert stats.snapshot()["exporters"]["blocking"]["dropped"] == {"queue_full": 1}
    assert ch.queued_bytes == 1400
    release.set()
    assert ch.wait_idle(time.monotonic() + 10)
    assert stats.snapshot()["exporters"]["blocking"]["exported"] == 3


def test_rate_limiter_smooths_bursts():
    now = [100.0]
    rl = ByteRateLimiter(1000, clock=lambda: now[0])
    assert rl.delay(600) == 0.0  # within the one-second burst
    assert rl.delay(600) == pytest.approx(0.2)  # 200 bytes of debt at 1000 B/s
    now[0] += 0.2
    assert rl.delay(1000) == pytest.approx(1.0)
    now[0] += 10
    assert rl.delay(500) == 0.0  # refilled, capped at one second's worth
    assert ByteRateLimiter(0).delay(10**9) == 0.0


def test_upload_rate_paces_requests_through_the_channel():
    wait = Recorder()
    with OTLPReceiver() as rx:
        config = Config.load(dict(exporter="otlp", endpoint=rx.url, compression="none", max_upload_rate=1024), env={})
        now = [0.0]

        def wait_and_advance(seconds: float) -> bool:  # a fake clock: waiting moves it on
            now[0] += seconds
            return wait(seconds)

        ch = ExportChannel(create_exporter("otlp", config), Stats(),
                           batch=BatchSettings(batch_size=1, batch_timeout=0, max_upload_rate=1024),
                           wait=wait_and_advance, clock=lambda: now[0])
        profiles = [synthetic(f"p{i}", n_samples=10, fn_name_len=40, seed=i) for i in range(4)]
        for p in profiles:
            ch.offer(p, estimate_size(p))
        assert ch.wait_idle(time.monotonic() + 20)
        sent = sum(len(r.raw_body) for r in rx.requests)
        assert len(rx.accepted) == 4
    # bytes beyond the first second's budget were paced at 1024 B/s
    assert sum(wait.delays) == pytest.approx(max(0, sent - 1024) / 1024, rel=0.05, abs=0.05)


# ----------------------------------------------------------------------------- several exporters


def test_dead_otlp_backend_does_not_stall_the_file_exporter(profiler_factory, tmp_path, monkeypatch):
    from otelprof_middleware import session as session_mod

    builds: list[str] = []
    real = session_mod.Session.to_profile

    def counting(self):
        builds.append(self.name)
        return real(self)

    monkeypatch.setattr(session_mod.Session, "to_profile", counting)
    rx, arrived, release = _stuck_receiver()
    with rx:
        out = tmp_path / "files"
        profiler = profiler_factory(exporter="otlp,file", endpoint=rx.url, output_dir=str(out), batch_size=1,
                                    export_timeout=60, **FAST)
        run_profiles(profiler, ["first"])
        assert arrived.wait(10)
        names = [f"job{i}" for i in range(5)]
        run_profiles(profiler, names)
        deadline = time.monotonic() + 10
        while profiler.stats()["exporters"].get("file", {}).get("exported", 0) < 6:
            assert time.monotonic() < deadline, profiler.stats()
            time.sleep(0.02)
        assert len(list(out.glob("*.pb.gz"))) == 6  # file exporter unaffected by the stuck OTLP one
        assert sorted(builds) == sorted(["first"] + names)  # each profile built once for both exporters
        release.set()
        assert profiler.force_flush(20)
        assert len(profile_ids(rx)) == 6
        st = profiler.stats()
        assert st["exporters"]["otlp"]["exported"] == st["exporters"]["file"]["exported"] == 6
        assert st["profiles_collected"] == 6


def test_otlp_env_headers_and_protocol(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROFILES_HEADERS", "authorization=Bearer%20abc,x-tenant=t1")
    with OTLPReceiver() as rx:
        config = Config.load(dict(exporter="otlp", endpoint=rx.url))
        ch = ExportChannel(create_exporter("otlp", config), Stats(), batch=BatchSettings(batch_timeout=0))
        send_all(ch, [synthetic("a")])
        r = rx.requests[0]
        assert r.header("authorization") == "Bearer abc" and r.header("x-tenant") == "t1"
        assert r.header("content-encoding") == "gzip"
        assert r.header("content-type") == "application/x-protobuf"


# ----------------------------------------------------------------------------- never trace ourselves


def test_instrumented_httpx_creates_no_spans_for_our_exports(profiler_factory, otel_tracing):
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.httpx")
    import httpx

    tracer, spans = otel_tracing
    instrumentor = instrumentation.HTTPXClientInstrumentor()
    instrumentor.instrument()
    try:
        with OTLPReceiver() as rx:
            # control: the instrumentation does trace an ordinary httpx call
            with httpx.Client() as client:
                client.get(rx.base_url + "/control")
            control = [s for s in spans.get_finished_spans() if s.kind.name == "CLIENT"]
            assert len(control) == 1
            spans.clear()

            profiler = profiler_factory(exporter="otlp", endpoint=rx.url, batch_size=1, **FAST)
            with tracer.start_as_current_span("request"):
                run_profiles(profiler, ["traced"])
            assert profiler.force_flush(10)
            assert len(rx.accepted) == 1
            names = [s.name for s in spans.get_finished_spans()]
            assert names == ["request"], names  # no CLIENT span for the export
    finally:
        instrumentor.uninstrument()


# ----------------------------------------------------------------------------- self-metrics


@pytest.fixture(scope="module")
def metric_reader():
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:
        pytest.skip("another MeterProvider was installed in this process")
    return reader


def _metric_points(reader: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            if sm.scope.name != "otelprof_middleware":
                continue
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def _sum(points: list[Any], **attrs: str) -> float:
    return sum(p.value for p in points if all(p.attributes.get(k) == v for k, v in attrs.items()))


def test_self_metrics_match_stats(profiler_factory, metric_reader):
    before = _metric_points(metric_reader)
    with OTLPReceiver(statuses=[400]) as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, batch_size=1, **FAST)
        run_profiles(profiler, ["a", "b", "c"])
        assert profiler.force_flush(10)
    st = profiler.stats()
    after = _metric_points(metric_reader)

    def delta(name: str, **attrs: str) -> float:
        return _sum(after.get(name, []), **attrs) - _sum(before.get(name, []), **attrs)

    assert st["profiles_collected"] == 3
    assert delta("otelprof.profiles.collected") == 3
    assert st["exporters"]["otlp"]["dropped"] == {"export_failed": 1} and st["dropped"] == {}
    assert delta("otelprof.profiles.dropped", reason="export_failed", exporter="otlp", priority="kept") == 1

    def hist(name: str) -> tuple[int, float]:
        pts_a, pts_b = after.get(name, []), before.get(name, [])
        return (sum(p.count for p in pts_a) - sum(p.count for p in pts_b),
                sum(p.sum for p in pts_a) - sum(p.sum for p in pts_b))

    for key, metric in (("export_duration", "otelprof.export.duration"),
                        ("profile_size", "otelprof.profile.size"),
                        ("collection_duration", "otelprof.collection.duration")):
        count, total = hist(metric)
        assert count == st[key]["count"] > 0, key
        assert total == pytest.approx(st[key]["sum"]), key
    overhead = after["otelprof.overhead.cpu"]
    assert len(overhead) == 1 and 0 <= overhead[0].value <= 1
    assert 0 <= st["overhead_cpu"] <= 1


def test_stats_without_sdk_are_plain_numbers(profiler_factory):
    profiler = profiler_factory(exporter="none", min_samples=0)
    run_profiles(profiler, ["x"])
    assert profiler.force_flush(5)
    st = profiler.stats()
    assert st["profiles_collected"] == 1
    assert st["collection_duration"]["count"] == 1
    assert st["profile_size"]["count"] == 1 and st["profile_size"]["sum"] > 0
    assert isinstance(st["overhead_cpu"], float)


# ----------------------------------------------------------------------------- where profiles go


def _announced(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("otelprof: profiles -> ")]


def test_where_profiles_go_is_logged_once_with_the_source_of_each_value(profiler_factory, caplog, tmp_path,
                                                                         monkeypatch):
    caplog.set_level(logging.INFO, logger="otelprof_middleware")
    monkeypatch.chdir(tmp_path)
    from otelprof_middleware import Profiler

    p = Profiler()  # the embedded default
    try:
        assert _announced(caplog) == ["otelprof: profiles -> ./profiles (file exporter; exporter: default; "
                                      "output_dir: default)"]
    finally:
        p.shutdown(1)
    caplog.clear()

    # the newcomer's Quick start: an OTEL endpoint picks the OTLP exporter
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    profiler_factory(config=Config.load({}))
    assert _announced(caplog) == [
        "otelprof: profiles -> http://localhost:4318/v1development/profiles (otlp exporter over http/protobuf; "
        "exporter: default, as OTEL_EXPORTER_OTLP_ENDPOINT is set; endpoint: OTEL_EXPORTER_OTLP_ENDPOINT; "
        "protocol: default)"]
    caplog.clear()

    # opentelemetry-distro's gRPC default: the line says where "grpc" came from
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pw@localhost:4317")
    profiler_factory(config=Config.load({}))
    (line,) = _announced(caplog)
    assert line.startswith("otelprof: profiles -> http://localhost:4317 (otlp exporter over grpc; ")
    assert "protocol: OTEL_EXPORTER_OTLP_PROTOCOL" in line and "pw" not in line
    caplog.clear()

    # keyword arguments, settings and OTELPROF_* variables are named as such
    monkeypatch.setenv("OTELPROF_EXPORTER", "file,pyroscope")
    profiler_factory(config=Config.load({"output_dir": str(tmp_path / "out")},
                                        settings={"pyroscope_endpoint": "http://pyro:4040"}))
    assert _announced(caplog) == [
        "otelprof: profiles -> ./out (file exporter; exporter: OTELPROF_EXPORTER; output_dir: keyword "
        "argument) and http://pyro:4040 (pyroscope exporter; exporter: OTELPROF_EXPORTER; pyroscope_endpoint: "
        "settings)"]


def test_exporter_objects_and_names_are_announced_too(profiler_factory, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="otelprof_middleware")
    from otelprof_middleware.testing import InMemoryProfileExporter

    profiler_factory(exporters=[InMemoryProfileExporter(), "console"])
    assert _announced(caplog) == ["otelprof: profiles -> memory (otelprof_middleware.testing) (memory exporter, given "
                                  "in exporters=) and standard error (console exporter; named in exporters=)"]


def test_where_profiles_go_reaches_stderr_when_no_logging_is_set_up(tmp_path):
    import subprocess
    import sys

    code = "from otelprof_middleware import Profiler; Profiler(exporter='none'); Profiler(output_dir='out')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "otelprof: profiles -> nowhere (exporter=none from keyword argument)",
        "otelprof: profiles -> ./out (file exporter; exporter: default; output_dir: keyword argument)"]


def test_first_failed_export_is_logged_at_once_with_reason_and_endpoint(profiler_factory, caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # a long retry budget and backoff: a line after the budget would come minutes later
    profiler = profiler_factory(exporter="otlp", endpoint=f"http://user:pw-9f2@127.0.0.1:{port}/v1development/profiles",
                                retry_timeout=600, retry_initial_backoff=300, retry_max_backoff=300,
                                min_samples=0, batch_size=1)
    run_profiles(profiler, ["nowhere"])
    deadline = time.monotonic() + 20
    lines: list[str] = []
    while not lines:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)
        lines = [r.getMessage() for r in caplog.records if "could not deliver" in r.getMessage()]
    assert lines == [f"otelprof: otlp exporter could not deliver to http://127.0.0.1:{port}/v1development/profiles: "
                     "ConnectError: [Errno 111] Connection refused; retrying for up to 600 s"]
    assert profiler.stats()["dropped_total"] == 0  # nothing given up yet: it is still retrying
    assert profiler.shutdown(timeout=0.5) is False  # the retry wait is cut short ...
    deadline = time.monotonic() + 10
    while profiler.stats()["exporters"]["otlp"]["dropped"] != {"shutdown": 1}:  # ... and the profile counted
        assert time.monotonic() < deadline, profiler.stats()
        time.sleep(0.02)


# ----------------------------------------------------------------------------- built without a Config


def test_exporter_and_pipeline_are_built_from_their_own_settings_without_a_config():
    from otelprof_middleware.export.otlp_http import OTLPHTTPExporter
    from otelprof_middleware.export.pipeline import ExportPipeline
    from otelprof_middleware.export.resource import resource_attributes
    from otelprof_middleware.export.retry import RetryPolicy
    from otelprof_middleware.export.settings import OTLPTarget
    from otelprof_middleware.session import Session

    with OTLPReceiver(statuses=[503], retry_after="0") as rx:
        exporter = OTLPHTTPExporter(OTLPTarget(endpoint=rx.url, headers={"x-team": "t1"}, compression="none"),
                                    resource=resource_attributes("standalone-svc"),
                                    retry_policy=RetryPolicy(retry_timeout=30, initial_backoff=0.01))
        assert "x-team" not in repr(OTLPTarget(endpoint=rx.url, headers={"x-team": "t1"}))  # values are secrets
        stats = Stats()
        pipeline = ExportPipeline([exporter], stats, batch=BatchSettings(batch_size=2, batch_timeout=60))
        sessions = [Session(f"s{i}", hz=100, max_depth=64, max_duration=1.0, max_samples=100) for i in range(2)]
        assert all(pipeline.submit(s) for s in sessions)
        assert pipeline.force_flush(20)
        assert [r.status for r in rx.requests] == [503, 200]  # one batch of two, retried once
        assert sorted(profile_ids(rx)) == sorted(s.profile_id_hex for s in sessions)
        assert rx.requests[1].header("x-team") == "t1"
        res = {kv.key: kv.value.string_value for kv in rx.messages[0].resource_profiles[0].resource.attributes}
        assert res["service.name"] == "standalone-svc"
        assert stats.snapshot()["exporters"]["otlp"] == {"exported": 2, "dropped": {}, "dropped_by_priority": {},
                                                         "requests": 2, "retries": 1}
        assert pipeline.shutdown(5)


def test_a_tally_counts_exactly_across_threads_without_a_lock():
    """``Stats.tally`` (counters of a path every request takes, e.g. ``light_requests``):
    no increment is lost when threads add at once, and ``get``/``snapshot`` read the
    tally plus what ``incr`` added under the same name."""
    stats = Stats()
    add = stats.tally("light_requests")
    assert stats.get("light_requests") == 0 and stats.snapshot()["light_requests"] == 0
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            add()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.incr("light_requests", 3)
    assert stats.get("light_requests") == 160_003
    assert stats.snapshot()["light_requests"] == 160_003
    assert stats.tally("light_requests") is not add  # (a second caller shares the same count)
    stats.tally("light_requests")()
    assert stats.get("light_requests") == 160_004
