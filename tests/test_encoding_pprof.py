"""pprof encoder: wire round trip through an independent decoder, and `go tool pprof`."""

from __future__ import annotations

import gzip
import random

import pytest

from helpers.pprof_decode import GO_MISSING, DecodedProfile, decode_pprof, run_go_pprof, stacks_by_function
from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.encoding._protowire import VarintCache, field_packed, varint
from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
PERIOD = 10_000_000


def make_profile(link: SpanLink | None = None, name: str = "GET /items", **kw: object) -> Profile:
    return Profile(name=name, start_time_ns=1_700_000_000_123_456_789, duration_ns=1_500_000_000, period_ns=PERIOD, link=link, **kw)  # type: ignore[arg-type]


def build_web_profile(link: SpanLink | None) -> Profile:
    """<module> -> handle -> query_db / render, on two threads (one unnamed)."""
    p = make_profile(link, attributes={"http.route": "/items"}, triggers=("slow",))
    b = ProfileBuilder(p)
    mod = b.location(b.function("<module>", "/srv/app.py", 1), 40)
    handle = b.location(b.function("Handler.handle", "/srv/app.py", 10), 12)
    query = b.location(b.function("Repo.query_db", "/srv/db.py", 5), 7)
    render = b.location(b.function("render", "/srv/views.py", 20), 22)
    b.add(b.stack([query, handle, mod]), "MainThread", count=3, cpu_ns=3 * PERIOD, wall_ns=3 * PERIOD + 17)
    b.add(b.stack([render, handle, mod]), "MainThread", count=2, cpu_ns=2 * PERIOD, wall_ns=2 * PERIOD)
    b.add(b.stack([query, handle, mod]), "", count=1, cpu_ns=0, wall_ns=PERIOD)
    return p


def expected_samples(p: Profile) -> list[tuple[list[str], list[int], str]]:
    """Straight from the model: (names leaf first, [count, cpu, wall], thread name)."""
    return [
        ([p.functions[p.locations[i].function_index].name for i in p.stacks[s.stack_index]], [s.count, s.cpu_ns, s.wall_ns], s.thread_name)
        for s in p.samples
    ]


LINK = SpanLink(TRACE_ID, SPAN_ID, span_name="GET /items")


# --------------------------------------------------------------------------- wire writer


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        ((1 << 28) - 1, b"\xff\xff\xff\x7f"),
        (1 << 28, b"\x80\x80\x80\x80\x01"),
        ((1 << 42) - 1, b"\xff\xff\xff\xff\xff\x7f"),
        (1 << 42, b"\x80\x80\x80\x80\x80\x80\x01"),
        ((1 << 64) - 1, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),
        (-2, b"\xfe" + b"\xff" * 8 + b"\x01"),
    ],
)
def test_varint_known_encodings(n: int, expected: bytes) -> None:
    assert varint(n) == expected
    assert VarintCache()[n] == expected


def test_varint_matches_reference_on_random_values() -> None:
    def ref(n: int) -> bytes:
        n &= (1 << 64) - 1
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    rng = random.Random(7)
    for bits in range(1, 65):
        for _ in range(50):
            n = rng.getrandbits(bits)
            assert varint(n) == ref(n), n


def test_packed_field() -> None:
    assert field_packed(1, [1, 300, 2]) == b"\x0a\x04\x01\xac\x02\x02"
    assert field_packed(1, []) == b""


# --------------------------------------------------------------------------- round trip


def decode_both(p: Profile, **kw: object) -> DecodedProfile:
    gz = encode_pprof(p, **kw)  # type: ignore[arg-type]
    raw = encode_pprof(p, compress=False, **kw)  # type: ignore[arg-type]
    assert gz[:2] == b"\x1f\x8b" and raw[:2] != b"\x1f\x8b"
    assert gzip.decompress(gz) == raw
    return decode_pprof(gz)


def test_header_fields() -> None:
    p = build_web_profile(LINK)
    d = decode_both(p)
    assert d.string_table[0] == ""
    assert d.sample_types == [("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds")]
    assert d.default_sample_type == "cpu"
    assert d.period_type == ("cpu", "nanoseconds")
    assert d.period == PERIOD
    assert d.time_nanos == p.start_time_ns and d.duration_nanos == p.duration_ns
    assert f"otelprof.profile_id={p.profile_id.hex()}" in d.comments
    assert d.mapping_ids == []


def test_linked_profile_round_trips_names_values_labels() -> None:
    p = build_web_profile(LINK)
    d = decode_both(p)
    got = stacks_by_function(d)
    want = expected_samples(p)
    assert len(got) == len(want) == 3
    for (names, values, labels), (w_names, w_values, w_thread) in zip(got, want):
        assert names == w_names
        assert values == w_values
        expected_labels = {"span_id": "00f067aa0ba902b7", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                           "span_name": "GET /items", "http.route": "/items"}
        if w_thread:
            expected_labels["thread_name"] = w_thread
        assert labels == expected_labels
    assert got[0][0] == ["Repo.query_db", "Handler.handle", "<module>"]  # leaf first


def test_ids_lines_and_functions() -> None:
    p = build_web_profile(LINK)
    d = decode_pprof(encode_pprof(p))
    assert not d.duplicate_location_ids and not d.duplicate_function_ids
    assert 0 not in d.locations and 0 not in d.functions
    assert len(d.locations) == len(p.locations) and len(d.functions) == len(p.functions)
    by_name = {f.name: f for f in d.functions.values()}
    assert by_name["Repo.query_db"].filename == "/srv/db.py"
    assert by_name["Repo.query_db"].start_line == 5
    assert all(f.system_name == "" for f in d.functions.values())
    for loc in d.locations.values():
        assert loc.mapping_id == 0 and loc.address == 0 and len(loc.lines) == 1
    lines = {d.functions[loc.lines[0][0]].name: loc.lines[0][1] for loc in d.locations.values()}
    assert lines == {"<module>": 40, "Handler.handle": 12, "Repo.query_db": 7, "render": 22}
    for s in d.samples:
        assert all(lid in d.locations for lid in s.location_ids)


def test_unlinked_profile_has_no_span_labels() -> None:
    p = build_web_profile(None)
    d = decode_pprof(encode_pprof(p))
    labels = [s.labels for s in d.samples]
    route = {"http.route": "/items"}  # the route template of the profile, on every sample
    assert labels == [{**route, "thread_name": "MainThread"}, {**route, "thread_name": "MainThread"}, route]
    assert all(s.label_keys == list(s.labels) for s in d.samples)


@pytest.mark.parametrize("link", [SpanLink(0, SPAN_ID), SpanLink(TRACE_ID, 0)])
def test_invalid_link_is_not_labelled(link: SpanLink) -> None:
    d = decode_pprof(encode_pprof(build_web_profile(link)))
    assert all("span_id" not in s.labels and "trace_id" not in s.labels for s in d.samples)


def test_link_without_span_name_has_no_span_name_label() -> None:
    d = decode_pprof(encode_pprof(build_web_profile(SpanLink(TRACE_ID, SPAN_ID))))
    assert all("span_name" not in s.labels and s.labels["span_id"] == "00f067aa0ba902b7" for s in d.samples)


def test_extra_labels_never_repeat_a_key() -> None:
    p = build_web_profile(LINK)
    extra = {"env": "dev", "span_id": "ffffffffffffffff", "thread_name": "bogus", "pprof::x": "reserved", "empty": ""}
    d = decode_pprof(encode_pprof(p, extra_labels=extra))
    for s in d.samples:
        assert len(s.label_keys) == len(set(s.label_keys)), s.label_keys
        assert s.labels["env"] == "dev"
        assert s.labels["span_id"] == "00f067aa0ba902b7"  # built-in labels win
        assert "pprof::x" not in s.labels and "empty" not in s.labels
    assert d.samples[0].labels["thread_name"] == "MainThread"
    assert d.samples[2].labels["thread_name"] == "bogus"  # no thread name of its own


def test_deep_stack_and_unicode_names() -> None:
    p = make_profile(LINK)
    b = ProfileBuilder(p)
    names = [f"niveau_{i}_é" for i in range(400)] + ["处理请求", "λ.<lambda>", "emoji_🐍", "<module>"]
    stack = b.stack(b.location(b.function(n, f"/srv/ünï/{i % 3}.py", i + 1), i + 1) for i, n in enumerate(names))
    b.add(stack, "Thread-ü", count=1, cpu_ns=7, wall_ns=9)
    d = decode_both(p)
    [(got_names, values, labels)] = stacks_by_function(d)
    assert got_names == names
    assert values == [1, 7, 9]
    assert labels["thread_name"] == "Thread-ü"


def test_large_values_round_trip() -> None:
    p = make_profile(None)
    b = ProfileBuilder(p)
    st = b.stack([b.location(b.function("f"))])
    big = [(1, 1 << 27, (1 << 28) + 5), (2, 1 << 41, (1 << 42) + 3), (3, (1 << 62) + 11, (1 << 63) - 1)]
    for i, (c, cpu, wall) in enumerate(big):
        b.add(st, f"t{i}", count=c, cpu_ns=cpu, wall_ns=wall)
    d = decode_pprof(encode_pprof(p))
    assert [s.values for s in d.samples] == [list(v) for v in big]


def test_empty_profile() -> None:
    p = make_profile(LINK)
    d = decode_both(p)
    assert d.samples == [] and d.locations == {} and d.functions == {}
    assert d.sample_types[1] == ("cpu", "nanoseconds") and d.default_sample_type == "cpu"


@pytest.mark.parametrize("kind, value_of, period_type", [
    ("cpu", lambda smp: smp.cpu_ns, ("cpu", "nanoseconds")),
    ("wall", lambda smp: smp.wall_ns, ("wall", "nanoseconds")),
])
def test_single_type_profiles_for_pyroscope(kind, value_of, period_type) -> None:  # type: ignore[no-untyped-def]
    """One value per sample (what Pyroscope series are made of), only samples that
    have that value, the period type matching the sample type."""
    p = build_web_profile(LINK)
    d = decode_both(p, kind=kind)
    assert d.sample_types == [(kind, "nanoseconds")] and d.default_sample_type == kind
    assert d.period_type == period_type and d.period == PERIOD
    want = [(names, [value_of(smp)], thread) for (names, _v, thread), smp in zip(expected_samples(p), p.samples)
            if value_of(smp)]
    got = stacks_by_function(d)
    assert [(n, v, lab.get("thread_name", "")) for n, v, lab in got] == want
    assert sum(v[0] for _, v, _ in got) == (p.cpu_ns if kind == "cpu" else p.wall_ns)
    assert all(lab["span_id"] == "00f067aa0ba902b7" and lab["http.route"] == "/items" for _, _, lab in got)


def test_lone_surrogates_never_break_the_profile() -> None:
    """File names decoded with surrogateescape, odd thread or span names: replaced, never an error."""
    bad = "caf\udce9"
    p = make_profile(SpanLink(TRACE_ID, SPAN_ID, span_name=bad), attributes={"http.route": f"/{bad}"})
    b = ProfileBuilder(p)
    b.add(b.stack([b.location(b.function(f"fn_{bad}", f"/srv/{bad}.py", 1), 2)]), f"T-{bad}", count=1, cpu_ns=5,
          wall_ns=6)
    d = decode_both(p, extra_labels={"env": bad})
    [(names, values, labels)] = stacks_by_function(d)
    assert names == ["fn_caf\ufffd"] and values == [1, 5, 6]
    assert labels["thread_name"] == "T-caf\ufffd" and labels["span_name"] == "caf\ufffd"
    assert labels["http.route"] == "/caf\ufffd" and labels["env"] == "caf\ufffd"


def test_decoder_rejects_bad_string_table() -> None:
    # Field 6 (string_table) with a non-empty first entry.
    with pytest.raises(ValueError, match="string_table"):
        decode_pprof(b"\x32\x01x")


# --------------------------------------------------------------------------- go tool pprof


def _write(tmp_path, p: Profile, name: str = "profile.pb.gz") -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_bytes(encode_pprof(p))
    return str(path)


def _go(args: list[str], path: str) -> str:
    out = run_go_pprof(args, path)
    if out is None:
        pytest.skip(GO_MISSING)
    return out


def test_go_pprof_raw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = _go(["-raw"], _write(tmp_path, build_web_profile(LINK)))
    assert "PeriodType: cpu nanoseconds" in out
    assert "Period: 10000000" in out
    assert "samples/count cpu/nanoseconds[dflt] wall/nanoseconds" in out  # default_sample_type=cpu
    for name in ("Repo.query_db", "Handler.handle", "<module>", "render"):
        assert name in out
    assert "span_id:[00f067aa0ba902b7]" in out
    assert "trace_id:[4bf92f3577b34da6a3ce929d0e0e4736]" in out
    assert "thread_name:[MainThread]" in out


def test_go_pprof_top_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = _go(["-top", "-sample_index=cpu"], _write(tmp_path, build_web_profile(LINK)))
    assert "Type: cpu" in out
    lines = {line.split()[-1]: line.split() for line in out.splitlines() if line.strip().endswith(("query_db", "render", "handle", "<module>"))}
    assert lines["Repo.query_db"][0] == "30ms"  # flat: 3 samples x 10 ms (the 3rd sample has cpu 0)
    assert lines["render"][0] == "20ms"
    assert lines["<module>"][3] == "50ms"  # cum


def test_go_pprof_tags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = _go(["-tags"], _write(tmp_path, build_web_profile(LINK)))
    assert "span_id:" in out and "00f067aa0ba902b7" in out
    assert "span_name:" in out and "GET /items" in out
    assert "MainThread" in out


def test_go_pprof_unicode_deep_and_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = make_profile(None)
    b = ProfileBuilder(p)
    names = [f"f{i}" for i in range(300)] + ["处理请求"]
    b.add(b.stack(b.location(b.function(n, "/x.py")) for n in names), count=1, cpu_ns=PERIOD)
    out = _go(["-traces"], _write(tmp_path, p, "deep.pb.gz"))
    assert "处理请求" in out and "f299" in out
    out = _go(["-raw"], _write(tmp_path, make_profile(LINK), "empty.pb.gz"))
    assert "PeriodType: cpu nanoseconds" in out


def test_go_pprof_rejects_broken_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The go check can fail: a file whose sample has a dangling location id."""
    if run_go_pprof(["-raw"], _write(tmp_path, make_profile(None))) is None:
        pytest.skip(GO_MISSING)
    raw = encode_pprof(make_profile(None), compress=False)
    bad = tmp_path / "bad.pb"
    # Sample{location_id=[99], value=[1, 1, 1]} appended to a valid profile.
    bad.write_bytes(raw + b"\x12\x08\x0a\x01\x63\x12\x03\x01\x01\x01")
    with pytest.raises(AssertionError, match="nil location|malformed"):
        run_go_pprof(["-raw"], str(bad))
