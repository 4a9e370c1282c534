"""``otelprof_middleware.testing``: the in-memory exporter and the profile readers an
application's test suite uses, checked against known work, and the complete example
test of ``docs/testing.md``, run with pytest as a user would run it."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink
from otelprof_middleware.testing import InMemoryProfileExporter, summarize, top_functions

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cpu_marker_for_testing(seconds: float) -> int:
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += sum(range(300))
    return x


def sleep_marker_for_testing(seconds: float) -> None:
    time.sleep(seconds)


def test_captured_profile_shows_the_work_its_cpu_and_wall(profiler_factory: Any, otel_tracing: Any) -> None:
    tracer, _spans = otel_tracing
    exporter = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exporter], sample_hz=200)
    with tracer.start_as_current_span("import") as span:
        with profiler.profile("nightly-import", tenant="a"):
            cpu_marker_for_testing(0.2)
            sleep_marker_for_testing(0.2)
    assert profiler.force_flush(10)
    (profile,) = exporter.profiles
    assert exporter.by_name("nightly-import") == [profile] and exporter.by_name("other") == []

    s = summarize(profile)
    assert s.name == "nightly-import" and s.profile_id == profile.profile_id_hex
    assert s.shows("cpu_marker_for_testing") and s.shows("sleep_marker_for_testing")
    assert not s.shows("marker_for_testing")  # a suffix must be a whole name part
    assert s.trace_id == format(span.get_span_context().trace_id, "032x")
    assert s.span_id == format(span.get_span_context().span_id, "016x")
    assert s.attributes["tenant"] == "a" and s.triggers == ("manual",)
    # CPU: the burn; wall: the burn and the sleep (sampled, so not to the millisecond)
    assert 100 <= s.cpu_ms <= 400
    assert s.wall_ms >= s.cpu_ms + 100
    assert s.samples == profile.sample_count > 0
    # self CPU: the burn loop (sum() is C code, so the loop's frame is the leaf)
    assert s.top[0][0].endswith("cpu_marker_for_testing") and s.top[0][1] >= 0.5 * s.cpu_ms
    # inclusive: every caller counts too (the test runner's frames as much as the marker)
    top_inclusive = dict(top_functions(profile, 1000, inclusive=True))
    burn = next(name for name in top_inclusive if name.endswith("cpu_marker_for_testing"))
    assert top_inclusive[burn] == pytest.approx(s.cpu_ms, rel=0.5)
    by_wall = dict(top_functions(profile, 1000, by="wall", inclusive=True))
    sleep = next(name for name in by_wall if name.endswith("sleep_marker_for_testing"))
    assert by_wall[sleep] >= 100 and top_inclusive.get(sleep, 0.0) < 50


def test_top_functions_on_a_known_profile() -> None:
    p = Profile(name="known", start_time_ns=1, duration_ns=1, period_ns=10_000_000, link=SpanLink(1, 2))
    b = ProfileBuilder(p)
    main = b.location(b.function("main"), 1)
    parse = b.location(b.function("Parser.parse"), 2)
    io = b.location(b.function("read"), 3)
    b.add(b.stack([parse, main]), count=3, cpu_ns=30_000_000, wall_ns=30_000_000)
    b.add(b.stack([io, main]), count=5, cpu_ns=1_000_000, wall_ns=50_000_000)
    b.add(b.stack([main]), count=1, cpu_ns=2_000_000, wall_ns=10_000_000)
    assert top_functions(p, 2) == [("Parser.parse", 30.0), ("main", 2.0)]
    assert top_functions(p, by="wall") == [("read", 50.0), ("Parser.parse", 30.0), ("main", 10.0)]
    assert top_functions(p, by="samples", inclusive=True) == [("main", 9.0), ("read", 5.0), ("Parser.parse", 3.0)]
    s = summarize(p)
    assert (s.cpu_ms, s.wall_ms, s.samples) == (33.0, 90.0, 9)
    assert s.top[0] == ("Parser.parse", 30.0) and s.shows("parse") and s.shows("Parser.parse")
    assert (s.trace_id, s.span_id) == (format(1, "032x"), format(2, "016x"))
    with pytest.raises(ValueError, match="by must be one of"):
        top_functions(p, by="memory")


def test_exporter_waits_clears_and_is_added_only_before_the_first_profile(profiler_factory: Any) -> None:
    profiler = profiler_factory(exporter="none", min_samples=0)
    exporter = InMemoryProfileExporter()
    profiler.add_exporter(exporter)
    assert profiler.exporters == (exporter,)
    assert exporter.wait_for(1, timeout=0.05) is False
    with profiler.profile("one"):
        pass
    assert exporter.wait_for(1, timeout=10)
    with pytest.raises(RuntimeError, match="before the first profile"):
        profiler.add_exporter(InMemoryProfileExporter())
    exporter.clear()
    assert exporter.profiles == []
    assert profiler.shutdown(5) and exporter.shut_down


def test_exporters_option_takes_objects_and_names(profiler_factory: Any, tmp_path: Any) -> None:
    exporter = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=["file", exporter], output_dir=str(tmp_path / "out"), min_samples=0)
    assert [e.name for e in profiler.exporters] == ["file", "memory"]
    with profiler.profile("both"):
        pass
    assert profiler.force_flush(10)
    assert [p.name for p in exporter.profiles] == ["both"]
    assert len(list((tmp_path / "out").glob("*.pb.gz"))) == 1
    with pytest.raises(TypeError, match="exporters="):
        profiler_factory(exporters=[object()])
    with pytest.raises(TypeError, match="exporters="):
        profiler_factory(exporters="file")
    with pytest.raises(ValueError, match="no exporter is registered as 'jaeger'"):
        profiler_factory(exporters=["jaeger"])


def _example_from_docs() -> str:
    text = (ROOT / "docs" / "testing.md").read_text()
    m = re.search(r"<!-- example-test -->\s*```python\n(.*?)```", text, flags=re.S)
    assert m, "docs/testing.md lost its example test"
    return m.group(1)


def test_the_docs_example_test_passes_under_pytest(tmp_path: Any) -> None:
    pytest.importorskip("starlette")
    (tmp_path / "test_checkout_profile.py").write_text(_example_from_docs())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_checkout_profile.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
