"""Export: file exporter (pprof + index.jsonl, retention), OTLP/HTTP exporter
(against the project's test receiver), the bounded queue and failure isolation."""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
import time

import pytest

from otelprof_middleware.export.base import ExportResult
from otelprof_middleware.export.pipeline import ExportPipeline
from otelprof_middleware.export.settings import BatchSettings
from otelprof_middleware.session import Session
from otelprof_middleware.stats import Stats

from helpers.otlp_check import check_request
from helpers.otlp_receiver import OTLPReceiver
from helpers.pprof_decode import GO_MISSING, decode_pprof, run_go_pprof, stacks_by_function

FILE_RE = re.compile(r"^(\d{8}T\d{12}Z)_([0-9a-f]{32})\.pb\.gz$")


def export_parse_rows(seconds):
    """CPU work with a name to look for in the exported profiles."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(500):
            x += i
    return x


def export_checksum_rows(seconds):
    return export_parse_rows(seconds)


def read_index(out_dir):
    path = os.path.join(out_dir, "index.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pb_files(out_dir):
    return sorted(n for n in os.listdir(out_dir) if n.endswith(".pb.gz"))


def short(name):
    return name.rsplit(".", 1)[-1]


# --------------------------------------------------------------------------- file exporter


def test_file_export_writes_pprof_and_index_line(profiler_factory, otel_tracing, tmp_path):
    tracer, _spans = otel_tracing
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out))
    before_ns = time.time_ns()
    with tracer.start_as_current_span("import-job") as span:
        with profiler.profile("nightly-import", tenant="a", rows=3) as session:
            export_parse_rows(0.15)
            export_checksum_rows(0.1)
    assert profiler.force_flush(10)
    ctx = span.get_span_context()

    (name,) = pb_files(out)
    m = FILE_RE.match(name)
    assert m, name
    assert m.group(2) == session.profile_id_hex
    stamp = time.strptime(m.group(1)[:15], "%Y%m%dT%H%M%S")
    assert abs(time.mktime(stamp) - time.mktime(time.gmtime(before_ns / 1e9))) <= 2  # UTC, not local

    (line,) = read_index(out)
    assert line["file"] == name
    assert line["profile_id"] == session.profile_id_hex
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert line["name"] == "nightly-import"
    assert line["trigger"] == "manual"
    user_attrs = {k: v for k, v in line["attributes"].items() if not k.startswith("otelprof.")}
    assert user_attrs == {"tenant": "a", "rows": 3}
    assert line["attributes"]["otelprof.sampler"] in ("native", "python")  # how it was sampled
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["start"])
    assert line["duration_ms"] > 0
    assert line["samples"] > 0
    assert line["cpu_ms"] > 0
    assert line["samples"] == session.to_profile().sample_count

    # the pure-Python decoder reads it, with our functions and the span labels
    decoded = decode_pprof((out / name).read_bytes())
    assert decoded.was_gzipped
    stacks = stacks_by_function(decoded)
    names = {short(n) for names, _, _ in stacks for n in names}
    assert {"export_parse_rows", "export_checksum_rows"} <= names
    assert all(labels["span_id"] == line["span_id"] and labels["trace_id"] == line["trace_id"]
               for _, _, labels in stacks)
    assert sum(v[0] for _, v, _ in stacks) == line["samples"]


def test_file_export_readable_by_go_tool_pprof(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out))
    with profiler.profile("go-check"):
        export_parse_rows(0.2)
    assert profiler.force_flush(10)
    (name,) = pb_files(out)
    text = run_go_pprof(["-top"], str(out / name))
    if text is None:
        pytest.skip(GO_MISSING)
    assert "export_parse_rows" in text


def test_no_index_line_without_a_span(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), min_samples=0)
    with profiler.profile("no-span"):
        pass
    assert profiler.force_flush(10)
    (line,) = read_index(out)
    assert line["trace_id"] is None and line["span_id"] is None


def test_file_retention_by_max_files_and_no_temp_files(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), max_files=3, min_samples=0)
    ids = []
    for i in range(5):
        with profiler.profile(f"p{i}") as s:
            ids.append(s.profile_id_hex)
        time.sleep(0.002)  # distinct start stamps, so name order == creation order
        assert profiler.force_flush(10)
    names = pb_files(out)
    assert len(names) == 3
    assert [FILE_RE.match(n).group(2) for n in names] == ids[2:]  # the oldest two went
    leftovers = [n for n in os.listdir(out) if n.endswith(".tmp") or n.startswith(".")]
    assert leftovers == []
    assert [line["profile_id"] for line in read_index(out)] == ids[2:]  # the index is trimmed with the files

    # a new exporter on the same folder counts the files already there
    profiler2 = profiler_factory(exporter="file", output_dir=str(out), max_files=3, min_samples=0)
    with profiler2.profile("p5") as s:
        ids.append(s.profile_id_hex)
    assert profiler2.force_flush(10)
    assert [FILE_RE.match(n).group(2) for n in pb_files(out)] == ids[3:]


def test_file_retention_by_max_bytes(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), max_bytes=1024, min_samples=0)
    for i in range(30):
        with profiler.profile(f"p{i}", padding="x" * 10):
            pass
    assert profiler.force_flush(10)
    sizes = [os.path.getsize(out / n) for n in pb_files(out)]
    assert sizes and sum(sizes) <= 1024
    assert len(sizes) < 30


def test_min_samples_drops_short_profiles(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), min_samples=1000)
    with profiler.profile("too-short"):
        pass
    assert profiler.force_flush(10)
    assert not out.exists() or pb_files(out) == []
    assert profiler.stats()["dropped"]["too_short"] == 1


# --------------------------------------------------------------------------- OTLP exporter


def test_otlp_export_to_receiver_with_span_link(profiler_factory, otel_tracing):
    tracer, _spans = otel_tracing
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, service_name="svc-under-test",
                                    resource_attributes={"deployment.environment": "test"})
        with tracer.start_as_current_span("request") as span:
            with profiler.profile("otlp-job", tenant="b"):
                export_parse_rows(0.15)
        assert profiler.force_flush(10)
        assert rx.wait_for(1, timeout=5)

    ctx = span.get_span_context()
    (rec,) = rx.requests
    assert rec.status == 200
    assert rec.header("content-type") == "application/x-protobuf"
    assert rec.header("content-encoding") == "gzip"
    assert gzip.decompress(rec.raw_body) == rec.body
    req = rec.message
    errors = check_request(req)
    assert not errors, "\n".join(errors)

    (rp,) = req.resource_profiles
    res = {kv.key: kv.value.string_value for kv in rp.resource.attributes if kv.value.HasField("string_value")}
    assert res["service.name"] == "svc-under-test"
    assert res["deployment.environment"] == "test"

    d = req.dictionary
    links = list(d.link_table)[1:]
    assert len(links) == 1
    assert len(links[0].trace_id) == 16 and len(links[0].span_id) == 8
    assert links[0].trace_id == ctx.trace_id.to_bytes(16, "big")
    assert links[0].span_id == ctx.span_id.to_bytes(8, "big")

    profiles = rx.profiles()
    assert profiles
    samples = [s for p in profiles for s in p.samples]
    assert samples and all(s.link_index == 1 for s in samples)
    fn_names = {short(d.string_table[f.name_strindex]) for f in d.function_table}
    assert "export_parse_rows" in fn_names


def test_otlp_export_uncompressed_and_custom_headers(profiler_factory):
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, compression="none", min_samples=0,
                                    headers={"x-api-key": "k1"})
        with profiler.profile("plain"):
            export_parse_rows(0.05)
        assert profiler.force_flush(10)
        assert rx.wait_for(1, timeout=5)
    (rec,) = rx.requests
    assert rec.header("content-encoding") == ""
    assert rec.header("x-api-key") == "k1"
    assert rec.raw_body == rec.body and rec.message is not None
    assert not check_request(rec.message)


def test_otlp_http_error_is_counted_not_raised(profiler_factory):
    with OTLPReceiver(statuses=[400]) as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0)
        with profiler.profile("rejected"):
            export_parse_rows(0.05)
        assert profiler.force_flush(10)
        assert rx.wait_for(1, timeout=5)
    stats = profiler.stats()
    assert stats["dropped_total"] == 1
    assert stats.get("exported.otlp", 0) == 0


def test_otlp_unreachable_endpoint_is_counted(profiler_factory):
    rx = OTLPReceiver().start()
    url = rx.url
    rx.stop()  # nothing listens on that port any more
    profiler = profiler_factory(exporter="otlp", endpoint=url, export_timeout=2, retry_timeout=0, min_samples=0)
    with profiler.profile("nowhere"):
        export_parse_rows(0.05)
    assert profiler.force_flush(30)
    assert profiler.stats()["exporters"]["otlp"]["dropped"].get("export_failed") == 1


# --------------------------------------------------------------------------- queue and failures


class BlockingExporter:
    name = "blocking"

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.returned = threading.Event()
        self.exported = []

    def export(self, profiles):
        self.started.set()
        self.release.wait(30)
        self.exported.extend(profiles)
        self.returned.set()
        return ExportResult(exported=len(profiles))

    def shutdown(self):
        self.release.set()


class FailingExporter:
    name = "failing"

    def __init__(self):
        self.calls = 0

    def export(self, profiles):
        self.calls += 1
        raise RuntimeError("exporter exploded")

    def shutdown(self):
        pass


def run_in_thread(fn, timeout=5.0):
    """Run ``fn`` in a thread; fail if it does not return within ``timeout`` (it would
    mean the call blocked behind the stuck exporter)."""
    result = []
    t = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "call blocked"
    return result[0]


def unsampled_session(name):
    """A session that never sampled (it builds into an empty profile)."""
    return Session(name, hz=100, max_depth=64, max_duration=1.0, max_samples=100)


def test_queue_overflow_drops_and_counts_without_blocking(profiler_factory):
    blocking = BlockingExporter()
    profiler = profiler_factory(exporters=[blocking], queue_size=2, min_samples=0)

    def one_profile(name):
        def run():
            with profiler.profile(name):
                pass
            return True
        return run

    run_in_thread(one_profile("in-flight"))
    assert blocking.started.wait(5)  # the worker holds the first one, the queue is empty
    for i in range(2):
        run_in_thread(one_profile(f"queued-{i}"))
    assert profiler.stats()["queue_pending"] == 3
    for i in range(3):
        run_in_thread(one_profile(f"dropped-{i}"))

    assert run_in_thread(lambda: profiler.finish_session(unsampled_session("one-more"))) is False
    stats = profiler.stats()
    assert stats["dropped"]["queue_full"] == 4
    assert stats["queue_pending"] == 3
    assert stats["profiles_started"] == 6

    # shutdown while the exporter is stuck: the two queued profiles and the one in
    # flight (not confirmed by the deadline) are dropped as 'shutdown'
    assert run_in_thread(lambda: profiler.shutdown(timeout=0.2)) is False
    stats = profiler.stats()
    assert stats["exporters"]["blocking"]["dropped"] == {"shutdown": 3}
    assert stats["dropped"] == {"queue_full": 4}
    assert stats["queue_pending"] == 0
    assert profiler.finish_session(unsampled_session("late")) is False  # after shutdown
    assert profiler.stats()["dropped"] == {"queue_full": 4, "shutdown": 1}
    blocking.release.set()
    assert profiler.force_flush(5)
    # the exporter finished its call after the deadline (wait for its worker to be done
    # with it: force_flush after shutdown has nothing to wait for): not counted a second time
    assert blocking.returned.wait(5)
    workers = [t for t in threading.enumerate() if t.name == "otelprof-export-blocking"]
    for t in workers:
        t.join(5)
    assert [p.name for p in blocking.exported] == ["in-flight"]
    assert profiler.stats()["exporters"]["blocking"]["dropped"] == {"shutdown": 3}
    assert profiler.stats()["exporters"]["blocking"]["exported"] == 0


def test_pipeline_directly_queue_full_exact_counts():
    stats = Stats()
    blocking = BlockingExporter()
    pipe = ExportPipeline([blocking], stats, batch=BatchSettings(queue_size=2))

    assert pipe.submit(unsampled_session("a")) is True
    assert blocking.started.wait(5)
    results = run_in_thread(lambda: [pipe.submit(unsampled_session(n)) for n in "bcdefg"])
    assert results == [True, True, False, False, False, False]
    assert stats.snapshot()["dropped"] == {"queue_full": 4}
    assert pipe.pending == 3
    blocking.release.set()
    assert pipe.force_flush(5)
    assert [p.name for p in blocking.exported] == ["a", "b", "c"]
    assert stats.get("exported.blocking") == 3
    assert pipe.shutdown(5) is True
    assert stats.snapshot()["dropped"] == {"queue_full": 4}


def test_failing_exporter_never_raises_into_profile(profiler_factory, profile_collector):
    failing = FailingExporter()
    profiler = profiler_factory(exporters=[failing], min_samples=0)
    collected = profile_collector(profiler)  # a second exporter still gets the profile
    for _ in range(2):
        with profiler.profile("boom"):
            export_parse_rows(0.05)
    assert profiler.force_flush(10)
    assert failing.calls == 2
    assert profiler.stats()["exporters"]["failing"]["dropped"]["export_failed"] == 2
    assert [p.name for p in collected.profiles] == ["boom", "boom"]


def test_failing_build_is_counted(profiler_factory):
    profiler = profiler_factory(exporter="none")
    with profiler.profile("broken") as session:
        export_parse_rows(0.05)
        session.stacks = None  # to_profile() will fail on the export worker
    assert profiler.force_flush(10)
    assert profiler.stats()["dropped"]["error"] == 1


def test_force_flush_returns_true_after_the_export(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), min_samples=0)
    assert profiler.force_flush(1) is True  # nothing to do
    with profiler.profile("flushed"):
        export_parse_rows(0.05)
    assert profiler.force_flush(10) is True
    # no waiting: once force_flush returned True, the file and its index line exist
    assert len(pb_files(out)) == 1
    assert len(read_index(out)) == 1
    assert profiler.stats()["exported.file"] == 1
    assert profiler.stats()["queue_pending"] == 0


def test_force_flush_times_out_with_a_stuck_exporter(profiler_factory):
    blocking = BlockingExporter()
    profiler = profiler_factory(exporters=[blocking], min_samples=0)
    with profiler.profile("stuck"):
        export_parse_rows(0.05)
    assert blocking.started.wait(5)
    assert profiler.force_flush(0.1) is False
    blocking.release.set()
    assert profiler.force_flush(5) is True


def test_shutdown_finishes_running_sessions_and_exports_them(profiler_factory, tmp_path):
    out = tmp_path / "out"
    profiler = profiler_factory(exporter="file", output_dir=str(out), min_samples=0)
    session = profiler.start_session("left-open")
    assert session is not None
    assert profiler.shutdown(timeout=10) is True
    assert session.finished
    assert [line["name"] for line in read_index(out)] == ["left-open"]
    with profiler.profile("after") as s:  # disabled after shutdown
        assert s is None
