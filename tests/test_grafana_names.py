"""The profile type names the docs tell Grafana users to pick are what our encoders
produce on every path, as Pyroscope names them (tests/helpers/pyroscope_naming.py
re-implements its rules), and the CPU nanoseconds survive each path exactly."""

from __future__ import annotations

import pathlib
import re

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest

from helpers.pprof_decode import decode_pprof
from helpers.pyroscope_naming import ingest_metric_name, label_name, otlp_profile_types, pprof_profile_types
from otelprof_middleware.config import Config
from otelprof_middleware.encoding import encode_otlp_request, encode_pprof
from otelprof_middleware.export.pyroscope import SERIES, pyroscope_label_name
from otelprof_middleware.export.registry import create_exporter
from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATHS = {
    "OTLP via an OpenTelemetry Collector": "otlp",
    "OTLP straight to Pyroscope (`/v1development/profiles`)": "otlp",
    "Pyroscope push (`exporter=\"pyroscope\"`)": "push",
    "Pyroscope `/ingest` (the push fallback)": "ingest",
}


def documented_names() -> dict[str, tuple[str, str]]:
    """path -> (CPU type, wall type) from the table in docs/delivery.md."""
    text = (ROOT / "docs" / "delivery.md").read_text()
    section = text.split("### Profile types in Grafana", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| `([^`]+)` \| `([^`]+)` \|$", section, flags=re.M)
    return {path: (cpu, wall) for path, cpu, wall in rows}


def sample_profile() -> Profile:
    p = Profile(name="GET /items/{id}", start_time_ns=1_700_000_000_000_000_000, duration_ns=80_000_000,
                period_ns=4_000_000,  # a rate that changed: the period is not what the values mean
                link=SpanLink(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, span_name="GET /items/{id}"),
                attributes={"http.route": "/items/{id}"})
    b = ProfileBuilder(p)
    root = b.location(b.function("handler", "/app.py", 1), 3)
    b.add(b.stack([b.location(b.function("render", "/app.py", 9), 10), root]), "MainThread", count=3,
          cpu_ns=12_345_678, wall_ns=20_000_001)
    b.add(b.stack([b.location(b.function("query", "/db.py", 5), 6), root]), "MainThread", count=2,
          cpu_ns=1_000_003, wall_ns=30_000_000)
    b.add(b.stack([root]), "", count=4, cpu_ns=0, wall_ns=40_000_000)  # waiting: no CPU
    return p


def produced(path: str, p: Profile) -> dict[str, tuple[str, int]]:
    """{"cpu": (profile type ID, total), "wall": ...} as Pyroscope would store them."""
    if path == "otlp":
        req = ExportProfilesServiceRequest.FromString(
            encode_otlp_request([p], resource_attributes={"service.name": "shop"}, scope_version="1").SerializeToString())
        (cpu, wall) = otlp_profile_types(req)
        return {"cpu": cpu, "wall": wall}
    out = {}
    exporter = create_exporter("pyroscope", Config.load(dict(exporter="pyroscope", service_name="shop"), env={}))
    _size, state = exporter.encode([p])
    for kind, name, raw in state[0]:
        d = decode_pprof(raw)
        assert len(d.sample_types) == 1
        if path == "ingest":
            name = ingest_metric_name(d.sample_types)  # the server names it, not us
        else:
            assert dict(exporter.series_labels(p, name))["__name__"] == name
        (type_id,) = pprof_profile_types(name, d.sample_types, d.period_type)
        out[kind] = (type_id, sum(s.values[0] for s in d.samples))
    return out


def test_docs_list_every_path() -> None:
    assert set(documented_names()) == set(PATHS)


@pytest.mark.parametrize("doc_path", sorted(PATHS))
def test_documented_names_are_what_pyroscope_makes_of_our_output(doc_path: str) -> None:
    cpu_name, wall_name = documented_names()[doc_path]
    p = sample_profile()
    got = produced(PATHS[doc_path], p)
    assert got["cpu"] == (cpu_name, p.cpu_ns)  # the name, and the measured ns exactly
    assert got["wall"] == (wall_name, p.wall_ns)


def test_readme_names_the_same_types() -> None:
    readme = (ROOT / "README.md").read_text()
    names = set(documented_names().values())
    assert len(names) == 1  # one pair for every path
    ((cpu, wall),) = names
    assert f"profile type `{cpu}`" in readme and f"`{wall}`" in readme


def test_the_series_kinds_match_the_docs() -> None:
    assert [name for _kind, name in SERIES] == ["process_cpu", "wall"]


@pytest.mark.parametrize("key", ["service.version", "deployment.environment.name", "k8s.pod.name", "team",
                                 "bad-name", "9lives", "ünï", "a b"])
def test_label_names_follow_pyroscope(key: str) -> None:
    assert pyroscope_label_name(key) == label_name(key)


def test_local_pprof_keeps_all_three_types() -> None:
    """The file exporter's pprof (viewer, CLI, go tool pprof) has samples, cpu and wall."""
    d = decode_pprof(encode_pprof(sample_profile()))
    assert [t for t, _ in d.sample_types] == ["samples", "cpu", "wall"]
