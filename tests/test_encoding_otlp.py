"""OTLP encoder: request shape, shared dictionary, links, and the project checker."""

from __future__ import annotations

from typing import Callable

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from helpers.otlp_check import check_request
from otelprof_middleware.encoding import encode_otlp_request
from otelprof_middleware.profile import Function, Location, Profile, ProfileBuilder, Sample, SpanLink

PERIOD = 10_000_000
LINK_A = SpanLink(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, source="span", span_name="GET /a")
LINK_B = SpanLink(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, source="traceparent")
RESOURCE = {"service.name": "shop", "process.pid": 4242, "sampled": True, "ratio": 0.5}


def build_profile(link: SpanLink | None, name: str = "GET /a", **kw: object) -> Profile:
    p = Profile(name=name, start_time_ns=1_700_000_000_000_000_000, duration_ns=2_000_000_000, period_ns=PERIOD, link=link, **kw)  # type: ignore[arg-type]
    b = ProfileBuilder(p)
    mod = b.location(b.function("<module>", "/srv/app.py", 1), 40)
    handle = b.location(b.function("Handler.handle", "/srv/app.py", 10), 12)
    query = b.location(b.function("Repo.query_db", "/srv/db.py", 5), 7)
    idle = b.location(b.function("asyncio.sleep", "/usr/lib/asyncio/tasks.py", 600), 605)
    b.add(b.stack([query, handle, mod]), "MainThread", count=3, cpu_ns=3 * PERIOD, wall_ns=3 * PERIOD + 5)
    b.add(b.stack([query, handle, mod]), "", count=1, cpu_ns=PERIOD, wall_ns=0)  # no wall: CPU profile only
    b.add(b.stack([idle, handle, mod]), "worker-1", count=2, cpu_ns=0, wall_ns=2 * PERIOD)
    return p


def encode(*profiles: Profile, resource: dict | None = None) -> ExportProfilesServiceRequest:  # type: ignore[type-arg]
    req = encode_otlp_request(list(profiles), resource_attributes=RESOURCE if resource is None else resource, scope_version="1.2.3")
    return ExportProfilesServiceRequest.FromString(req.SerializeToString())


def resolve(req: ExportProfilesServiceRequest, prof: pb.Profile) -> list[tuple[list[str], list[int], dict[str, object], tuple[bytes, bytes] | None]]:
    """(function names leaf first, values, sample attributes, (trace_id, span_id) or None)."""
    d = req.dictionary
    s = d.string_table
    out = []
    for sample in prof.samples:
        names = []
        for li in d.stack_table[sample.stack_index].location_indices:
            (line,) = d.location_table[li].lines
            names.append(s[d.function_table[line.function_index].name_strindex])
        attrs = {s[d.attribute_table[i].key_strindex]: _value(d.attribute_table[i].value) for i in sample.attribute_indices}
        link = None
        if sample.link_index:
            lk = d.link_table[sample.link_index]
            link = (lk.trace_id, lk.span_id)
        out.append((names, list(sample.values), attrs, link))
    return out


def _value(v: object) -> object:
    return getattr(v, v.WhichOneof("value"))  # type: ignore[attr-defined]


def profile_attrs(req: ExportProfilesServiceRequest, prof: pb.Profile) -> dict[str, object]:
    d = req.dictionary
    keys = [d.string_table[d.attribute_table[i].key_strindex] for i in prof.attribute_indices]
    assert len(keys) == len(set(keys)), keys
    return {k: _value(d.attribute_table[i].value) for k, i in zip(keys, prof.attribute_indices)}


def vtype(req: ExportProfilesServiceRequest, vt: pb.ValueType) -> tuple[str, str]:
    return req.dictionary.string_table[vt.type_strindex], req.dictionary.string_table[vt.unit_strindex]


# --------------------------------------------------------------------------- shape


def test_request_shape_and_checker_passes() -> None:
    req = encode(build_profile(LINK_A))
    assert check_request(req) == []
    assert len(req.resource_profiles) == 1
    rp = req.resource_profiles[0]
    attrs = {kv.key: _value(kv.value) for kv in rp.resource.attributes}
    assert attrs == RESOURCE
    assert all(kv.key_strindex == 0 for kv in rp.resource.attributes)
    assert len(rp.scope_profiles) == 1
    assert (rp.scope_profiles[0].scope.name, rp.scope_profiles[0].scope.version) == ("otelprof_middleware", "1.2.3")
    assert len(rp.scope_profiles[0].profiles) == 2


def test_cpu_and_wall_profiles() -> None:
    p = build_profile(LINK_A, attributes={"http.route": "/a"}, triggers=("slow", "error"))
    req = encode(p)
    cpu, wall = req.resource_profiles[0].scope_profiles[0].profiles
    # CPU: measured nanoseconds as counts of a 1 ns period (count x period = CPU time)
    assert vtype(req, cpu.sample_type) == ("samples", "count")
    assert vtype(req, cpu.period_type) == ("cpu", "nanoseconds")
    assert cpu.period == 1
    assert vtype(req, wall.sample_type) == ("wall", "nanoseconds")
    assert vtype(req, wall.period_type) == ("wall", "nanoseconds")
    assert wall.period == PERIOD
    for prof in (cpu, wall):
        assert prof.profile_id == p.profile_id and len(prof.profile_id) == 16
        assert prof.time_unix_nano == p.start_time_ns and prof.duration_nano == p.duration_ns
        assert profile_attrs(req, prof) == {
            "http.route": "/a",
            "otelprof.trigger": "slow,error",
            "otelprof.name": "GET /a",
            "otelprof.link.source": "span",
        }
    link = (LINK_A.trace_id_bytes, LINK_A.span_id_bytes)
    shared = {"span_name": "GET /a", "http.route": "/a"}  # on every sample (Pyroscope labels)
    # The zero-CPU sample is left out of the CPU profile; values are the measured ns.
    assert resolve(req, cpu) == [
        (["Repo.query_db", "Handler.handle", "<module>"], [3 * PERIOD], {"thread.name": "MainThread", **shared}, link),
        (["Repo.query_db", "Handler.handle", "<module>"], [PERIOD], shared, link),
    ]
    # The zero-wall sample is left out of the wall profile.
    assert resolve(req, wall) == [
        (["Repo.query_db", "Handler.handle", "<module>"], [3 * PERIOD + 5], {"thread.name": "MainThread", **shared}, link),
        (["asyncio.sleep", "Handler.handle", "<module>"], [2 * PERIOD], {"thread.name": "worker-1", **shared}, link),
    ]
    assert sum(v for _, (v,), _, _ in resolve(req, cpu)) * cpu.period == p.cpu_ns
    assert sum(v for _, (v,), _, _ in resolve(req, wall)) == p.wall_ns


def test_dictionary_entries() -> None:
    req = encode(build_profile(LINK_A))
    d = req.dictionary
    s = d.string_table
    assert s[0] == "" and len(s) == len(set(s))
    assert d.link_table[0].trace_id == bytes(16) and d.link_table[0].span_id == bytes(8)
    for table in (d.mapping_table, d.location_table, d.function_table, d.attribute_table, d.stack_table):
        assert table[0].ByteSize() == 0
    for loc in d.location_table[1:]:
        assert loc.mapping_index == 0 and len(loc.lines) == 1
        (attr,) = loc.attribute_indices
        assert s[d.attribute_table[attr].key_strindex] == "profile.frame.type"
        assert d.attribute_table[attr].value.string_value == "cpython"
    fns = {s[f.name_strindex]: f for f in d.function_table[1:]}
    assert set(fns) == {"<module>", "Handler.handle", "Repo.query_db", "asyncio.sleep"}
    assert s[fns["Repo.query_db"].filename_strindex] == "/srv/db.py" and fns["Repo.query_db"].start_line == 5
    assert all(f.system_name_strindex == 0 for f in fns.values())
    for table in (d.location_table, d.function_table, d.stack_table, d.link_table, d.attribute_table):
        encoded = [m.SerializeToString() for m in table]
        assert len(encoded) == len(set(encoded)), "duplicate dictionary entries"


def test_unlinked_profile() -> None:
    req = encode(build_profile(None))
    assert check_request(req) == []
    assert len(req.dictionary.link_table) == 1
    for prof in req.resource_profiles[0].scope_profiles[0].profiles:
        assert all(sample.link_index == 0 for sample in prof.samples)
        assert "otelprof.link.source" not in profile_attrs(req, prof)


def test_invalid_link_is_not_emitted() -> None:
    req = encode(build_profile(SpanLink(0, 5)))
    assert check_request(req) == []
    assert len(req.dictionary.link_table) == 1


def test_two_profiles_share_dictionary_and_keep_their_links() -> None:
    a, b, c = build_profile(LINK_A), build_profile(LINK_B, name="GET /b"), build_profile(None, name="job")
    req = encode(a, b, c)
    assert check_request(req) == []
    profs = req.resource_profiles[0].scope_profiles[0].profiles
    assert len(profs) == 6
    d = req.dictionary
    # Same code -> the same functions, locations and stacks serve all profiles.
    assert len(d.function_table) == 1 + 4
    assert len(d.location_table) == 1 + 4
    assert len(d.stack_table) == 1 + 2
    assert [(lk.trace_id, lk.span_id) for lk in d.link_table[1:]] == [
        (LINK_A.trace_id_bytes, LINK_A.span_id_bytes),
        (LINK_B.trace_id_bytes, LINK_B.span_id_bytes),
    ]
    expected_links = [(LINK_A.trace_id_bytes, LINK_A.span_id_bytes)] * 2 + [(LINK_B.trace_id_bytes, LINK_B.span_id_bytes)] * 2 + [None] * 2
    for prof, want in zip(profs, expected_links):
        assert {link for *_, link in resolve(req, prof)} == {want}
    assert [p.profile_id for p in profs] == [a.profile_id] * 2 + [b.profile_id] * 2 + [c.profile_id] * 2
    assert profile_attrs(req, profs[2])["otelprof.link.source"] == "traceparent"
    assert profile_attrs(req, profs[4])["otelprof.name"] == "job"


def test_samples_with_same_identity_are_merged() -> None:
    # Hand-built (no ProfileBuilder): duplicate functions/locations/stacks and samples.
    p = Profile(
        name="dup",
        start_time_ns=1,
        duration_ns=2,
        period_ns=PERIOD,
        functions=[Function("f", "/a.py", 1), Function("f", "/a.py", 1)],
        locations=[Location(0, 3), Location(1, 3)],
        stacks=[(0,), (1,)],
        samples=[Sample(0, "T", 1, 10, 100), Sample(1, "T", 2, 20, 200), Sample(0, "U", 4, 0, 0)],
        link=LINK_A,
    )
    req = encode(p)
    assert check_request(req) == []
    cpu, wall = req.resource_profiles[0].scope_profiles[0].profiles
    # T's two samples merged (10 + 20 ns); U used no CPU and no wall: in neither profile
    assert [(s[1], s[2]) for s in resolve(req, cpu)] == [([30], {"thread.name": "T", "span_name": "GET /a"})]
    assert [(s[1], s[2]) for s in resolve(req, wall)] == [([300], {"thread.name": "T", "span_name": "GET /a"})]
    assert len(req.dictionary.stack_table) == 2


def test_profile_attribute_keys_stay_unique() -> None:
    p = build_profile(LINK_A, attributes={"otelprof.name": "user-set", "flag": True, "n": 1, "x": 1.0})
    req = encode(p)
    assert check_request(req) == []
    attrs = profile_attrs(req, req.resource_profiles[0].scope_profiles[0].profiles[0])
    assert attrs["otelprof.name"] == "GET /a"
    # True, 1 and 1.0 are equal in Python but distinct attribute values.
    assert (attrs["flag"], attrs["n"], attrs["x"]) == (True, 1, 1.0)
    assert type(attrs["flag"]) is bool and type(attrs["n"]) is int and type(attrs["x"]) is float


def test_deep_stack_and_unicode() -> None:
    p = Profile(name="ü", start_time_ns=1, duration_ns=1, period_ns=PERIOD, link=LINK_A)
    b = ProfileBuilder(p)
    names = [f"fn_{i}_é" for i in range(300)] + ["处理请求", "emoji_🐍"]
    b.add(b.stack(b.location(b.function(n, "/ü.py", i), i) for i, n in enumerate(names)), "Thread-ü", count=1, cpu_ns=1, wall_ns=1)
    req = encode(p)
    assert check_request(req) == []
    [(got, values, attrs, _)] = resolve(req, req.resource_profiles[0].scope_profiles[0].profiles[0])
    assert got == names and values == [1] and attrs == {"thread.name": "Thread-ü", "span_name": "GET /a"}


def test_lone_surrogates_never_fail_the_request() -> None:
    """One bad string (a file name decoded with surrogateescape, a header value, an
    environment variable) is replaced, never a serialization error for the batch."""
    bad = "caf\udce9"
    p = Profile(name=f"GET /{bad}", start_time_ns=1, duration_ns=1, period_ns=PERIOD,
                link=SpanLink(LINK_A.trace_id, LINK_A.span_id, span_name=bad),
                attributes={f"k{bad}": bad, "http.route": f"/{bad}"})
    b = ProfileBuilder(p)
    b.add(b.stack([b.location(b.function(f"fn_{bad}", f"/{bad}.py", 1), 1)]), f"T{bad}", count=1, cpu_ns=5, wall_ns=5)
    good = Profile(name="ok", start_time_ns=1, duration_ns=1, period_ns=PERIOD, link=LINK_B)
    gb = ProfileBuilder(good)
    gb.add(gb.stack([gb.location(gb.function("fine", "/ok.py", 1), 1)]), "T", count=1, cpu_ns=7, wall_ns=7)
    req = encode(p, good, resource={"service.name": f"svc{bad}", f"host{bad}": bad, "n": 1})
    assert check_request(req) == []
    cpu = req.resource_profiles[0].scope_profiles[0].profiles[0]
    [(names, values, attrs, _)] = resolve(req, cpu)
    assert names == ["fn_caf\ufffd"] and values == [5]
    assert attrs == {"thread.name": "Tcaf\ufffd", "span_name": "caf\ufffd", "http.route": "/caf\ufffd"}
    assert profile_attrs(req, cpu)["kcaf\ufffd"] == "caf\ufffd"
    res = {kv.key: _value(kv.value) for kv in req.resource_profiles[0].resource.attributes}
    assert res == {"service.name": "svccaf\ufffd", "hostcaf\ufffd": "caf\ufffd", "n": 1}
    assert len(req.resource_profiles[0].scope_profiles[0].profiles) == 4  # the good profile is there too


def test_empty_profile_and_empty_request() -> None:
    req = encode(Profile(name="idle", start_time_ns=1, duration_ns=1, period_ns=PERIOD, link=LINK_A))
    assert check_request(req) == []
    profs = req.resource_profiles[0].scope_profiles[0].profiles
    assert len(profs) == 2 and all(len(p.samples) == 0 for p in profs)
    empty = encode()
    assert check_request(empty) == []
    assert empty.dictionary.string_table[0] == "" and len(empty.dictionary.stack_table) == 1


# --------------------------------------------------------------------------- checker can fail


def _first_profile(req: ExportProfilesServiceRequest) -> pb.Profile:
    return req.resource_profiles[0].scope_profiles[0].profiles[0]


def _set_dup_sample_attr(req: ExportProfilesServiceRequest) -> None:
    d = req.dictionary
    key = list(d.string_table).index("thread.name")
    extra = d.attribute_table.add(key_strindex=key)
    extra.value.string_value = "other"
    sample = next(s for s in _first_profile(req).samples if s.attribute_indices)
    sample.attribute_indices.append(len(d.attribute_table) - 1)


BAD: dict[str, tuple[Callable[[ExportProfilesServiceRequest], None], str]] = {
    "string0": (lambda r: r.dictionary.string_table.__setitem__(0, "x"), "string_table[0]"),
    "no_zero_stack": (lambda r: r.dictionary.ClearField("stack_table"), "stack_table is empty"),
    "nonzero_location0": (lambda r: setattr(r.dictionary.location_table[0], "mapping_index", 1), "location_table[0] is not the zero"),
    "bad_zero_link": (lambda r: setattr(r.dictionary.link_table[0], "span_id", b"\x01" * 8), "link_table[0]"),
    "stack_range": (lambda r: setattr(_first_profile(r).samples[0], "stack_index", 99), "stack_index: index 99 out of range"),
    "link_range": (lambda r: setattr(_first_profile(r).samples[0], "link_index", 7), "link_index: index 7 out of range"),
    "function_strindex": (lambda r: setattr(r.dictionary.function_table[1], "name_strindex", 10_000), "name_strindex: index 10000"),
    "location_function": (lambda r: setattr(r.dictionary.location_table[1].lines[0], "function_index", 500), "function_index: index 500"),
    "dup_attr_key": (_set_dup_sample_attr, "attribute key 'thread.name' repeated"),
    "short_trace_id": (lambda r: setattr(r.dictionary.link_table[1], "trace_id", b"\x01" * 15), "trace_id must be 16"),
    "zero_span_id": (lambda r: setattr(r.dictionary.link_table[1], "span_id", bytes(8)), "span_id must be 8 non-zero"),
    "two_values": (lambda r: _first_profile(r).samples[0].values.append(1), "2 values with period set"),
    "no_values": (lambda r: _first_profile(r).samples[0].ClearField("values"), "no values and no timestamps"),
    "zero_profile_id": (lambda r: setattr(_first_profile(r), "profile_id", bytes(16)), "profile_id must be 16"),
    "short_profile_id": (lambda r: setattr(_first_profile(r), "profile_id", b"\x01" * 8), "profile_id must be 16"),
    "no_service_name": (lambda r: r.resource_profiles[0].resource.ClearField("attributes"), "no service.name"),
    "key_and_strindex": (lambda r: setattr(r.resource_profiles[0].resource.attributes[0], "key_strindex", 1), "key and key_strindex"),
}


@pytest.mark.parametrize("defect", sorted(BAD))
def test_checker_flags_known_bad_requests(defect: str) -> None:
    req = encode(build_profile(LINK_A))
    assert check_request(req) == []
    mutate, expected = BAD[defect]
    mutate(req)
    errors = check_request(ExportProfilesServiceRequest.FromString(req.SerializeToString()))
    assert errors, f"{defect} not flagged"
    assert any(expected in e for e in errors), errors
