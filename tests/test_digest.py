"""Profile digests: what the file exporter stores next to each pprof so that merges,
diffs and top tables never decode one.

Every digest is checked against the profile it was made from (sums computed here
from the :class:`Profile` model) and against the pprof the exporter wrote, decoded by
the store's reader; merges over digests are checked against the synthetic stacks of
hand-built folders, and against the same merge with every digest removed."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from helpers.profile_folder import Spec, build, checkout_specs, expected_stacks, frames, write
from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.profile import Location, Profile, ProfileBuilder
from otelprof_middleware.store import digest as digest_module
from otelprof_middleware.store import folder as folder_module
from otelprof_middleware.store.digest import (
    FORMAT_VERSION,
    DigestError,
    StackTable,
    digest_profile,
    digest_stacks,
    load_digest,
    sum_digests,
)
from otelprof_middleware.store.folder import ProfileFolder
from otelprof_middleware.store.index import ProfileIndex
from otelprof_middleware.store.layout import INDEX_DB, profile_file_name
from otelprof_middleware.store.outputs import render_diff, render_merge
from otelprof_middleware.store.pprof import FunctionTable, read_stacks
from otelprof_middleware.store.selector import parse_selector

TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(TESTS), "src")
NOW = time.time_ns()
MIN = 60 * 10**9
H = 60 * MIN
Frame = tuple[str, str, int, int]


# --------------------------------------------------------------------------- helpers


def model_sums(p: Profile) -> dict[tuple[Frame, ...], list[int]]:
    """Root-first frames (name, file, start line, line) -> [samples, cpu, wall], from the
    model: threads summed, all-zero samples left out, names as UTF-8 stores them, a
    line outside 0..2**24-1 read as 0 (as any pprof reader that keys frames by line)."""
    def text(s: str) -> str:
        return s.encode("utf-8", "replace").decode("utf-8")

    out: dict[tuple[Frame, ...], list[int]] = {}
    for s in p.samples:
        if not (s.count or s.cpu_ns or s.wall_ns):
            continue
        key = []
        for li in reversed(p.stacks[s.stack_index]):
            loc = p.locations[li]
            fn = p.functions[loc.function_index]
            key.append((text(fn.name), text(fn.filename), fn.start_line, loc.line if 0 <= loc.line < 1 << 24 else 0))
        acc = out.setdefault(tuple(key), [0, 0, 0])
        for i, v in enumerate((s.count, s.cpu_ns, s.wall_ns)):
            acc[i] += v
    return out


def named(table: FunctionTable, stacks: dict[Any, list[int]]) -> dict[tuple[Frame, ...], list[int]]:
    mask = (1 << 24) - 1
    return {tuple((*table.functions[k >> 24], k & mask) for k in key): v for key, v in stacks.items()}


def digest_sums(blobs: list[bytes], stacks: StackTable) -> dict[tuple[Frame, ...], list[int]]:
    (sums, count), = sum_digests([load_digest(b, stacks) for b in blobs]).values()
    assert count == len(blobs)
    return named(stacks.table, {stacks.stacks[sid]: v for sid, v in sums.items()})


def random_profile(rng: random.Random, *, names: list[str] | None = None, threads: int = 3) -> Profile:
    p = Profile(name="x", start_time_ns=NOW, duration_ns=10**9, period_ns=10**7)
    b = ProfileBuilder(p)
    names = names or [f"mod{i % 5}.fn_{i}" for i in range(40)]
    fns = [b.function(n, f"/app/mod{i % 5}.py", i * 7) for i, n in enumerate(names)]
    for _ in range(60):
        stack = b.stack(b.location(rng.choice(fns), rng.choice([0, 1, 12, 400, 65_535, 65_536, 99_999]))
                        for _ in range(rng.randint(0, 12)))
        for t in range(rng.randint(1, threads)):
            n = rng.randint(0, 4)
            b.add(stack, f"thread-{t}", count=n, cpu_ns=n * 10**7 if rng.random() < 0.8 else 0,
                  wall_ns=n * 10**7 + rng.randint(0, 999))
    return p


def drop_digests(d: str) -> None:
    index = ProfileIndex(d)
    assert index.clear_digests() > 0
    index.close()


def digest_rows(d: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    try:
        return conn.execute("SELECT p.file, g.version, g.file_size, g.file_mtime_ns, g.size, length(b.data) "
                            "FROM digests g LEFT JOIN profiles p ON p.id = g.ref "
                            "LEFT JOIN digest_data b ON b.ref = g.ref ORDER BY p.file").fetchall()
    finally:
        conn.close()


def stack_names(r: Any) -> dict[tuple[str, ...], list[int]]:
    table = r.stacks.table
    return {tuple(table.functions[k >> 24][0] for k in key): v for key, v in r.stacks.stacks.items()}


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail any pprof decode a merge attempts (the merge must come from digests)."""
    decoded: list[str] = []

    def refuse(*_a: Any, **_k: Any) -> Any:
        decoded.append("read_stacks")
        raise AssertionError("a merge decoded a pprof")

    monkeypatch.setattr(folder_module, "read_stacks", refuse)
    return decoded


# --------------------------------------------------------------------------- the format


def test_a_digest_holds_what_the_pprof_holds() -> None:
    """For profiles with many threads, repeated and empty stacks, zero samples, lines
    beyond 16 and 24 bits, the digest's stacks and sums equal the model's and equal the
    store reader's decode of the pprof the exporter writes."""
    rng = random.Random(3)
    for i in range(25):
        p = random_profile(rng)
        blob = digest_profile(p)
        assert blob is not None
        table = FunctionTable()
        stacks = StackTable(table)
        got = digest_sums([blob], stacks)
        assert got == model_sums(p), i
        assert got == named(table, read_stacks(encode_pprof(p), table).stacks), i


def test_names_pprof_cannot_hold_as_they_are_match_the_pprof() -> None:
    """Lone surrogates become U+FFFD in pprof's UTF-8 strings; NUL, separators, newlines and
    non-ASCII names stay; the digest says exactly what the pprof says."""
    names = ["ok", "bad\udcff", "nul\x00in", "semi;colon", "new\nline", "ünïcødé ✓", "", "x" * 2000]
    p = random_profile(random.Random(5), names=names)
    blob = digest_profile(p)
    assert blob is not None
    table = FunctionTable()
    got = digest_sums([blob], StackTable(table))
    assert got == named(table, read_stacks(encode_pprof(p), table).stacks) == model_sums(p)
    assert any(f[0] == "bad\ufffd" for key in got for f in key)


def test_one_stack_table_across_digests_sums_shared_stacks() -> None:
    """Stacks shared by several profiles are found by hash and summed once per profile."""
    specs = checkout_specs(12, NOW, MIN, slow_render=True, seed=4)
    blobs = [digest_profile(build(s)) for s in specs]
    stacks = StackTable(FunctionTable())
    got = digest_sums([b for b in blobs if b is not None], stacks)
    want = expected_stacks(specs)
    assert {tuple(f[0] for f in key): v for key, v in got.items()} == want
    assert len(stacks) == len(want) == 3 and len(stacks.by_hash) == 3


def test_a_decoded_profile_digests_the_same_as_the_exporters() -> None:
    """The readers' digest of a decoded pprof (foreign files) and the exporter's digest of
    the Profile name the same stacks with the same hashes and values."""
    p = random_profile(random.Random(11))
    table = FunctionTable()
    stacks = StackTable(table)
    blob, d = digest_stacks(read_stacks(encode_pprof(p), table), stacks)
    assert blob is not None and d is not None
    known = dict(stacks.by_hash)
    mine = load_digest(digest_profile(p) or b"", stacks)
    assert stacks.by_hash == known  # every stack found by its hash: the same hashes
    assert sorted(zip(mine.sids, [mine.values[i:i + 30] for i in range(0, len(mine.values), 30)])) == \
        sorted(zip(d.sids, [d.values[i:i + 30] for i in range(0, len(d.values), 30)]))
    assert digest_sums([blob], StackTable(FunctionTable())) == model_sums(p)


@pytest.mark.parametrize("case", ["negative", "int64", "huge line"])
def test_profiles_a_digest_cannot_hold_get_none(case: str) -> None:
    p = random_profile(random.Random(1))
    if case == "negative":
        p.samples[0].wall_ns = -5
    elif case == "int64":
        p.samples[0].cpu_ns = 1 << 63
    else:
        p.locations[0] = Location(0, 1 << 70)
    assert digest_profile(p) is None


def test_a_digest_over_its_size_limit_is_not_made(monkeypatch: pytest.MonkeyPatch) -> None:
    p = random_profile(random.Random(2))
    size = len(digest_profile(p) or b"")
    monkeypatch.setattr(digest_module, "MAX_DIGEST_BYTES", size - 1)
    assert digest_profile(p) is None
    monkeypatch.setattr(digest_module, "MAX_DIGEST_BYTES", size)
    assert digest_profile(p) is not None


def test_damaged_digests_raise_digest_error_only() -> None:
    """Truncated, bit-flipped, other-version and inconsistent blobs are refused with
    DigestError (the caller then decodes the pprof); nothing else escapes."""
    p = random_profile(random.Random(8))
    blob = digest_profile(p)
    assert blob is not None
    rng = random.Random(9)
    refused = 0
    for i in range(400):
        b = bytearray(blob)
        if i % 4 == 0:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            load_digest(bytes(b), StackTable(FunctionTable()))
        except DigestError:
            refused += 1
    assert refused > 300
    other = bytearray(blob)
    other[4:6] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    with pytest.raises(DigestError, match="format"):
        load_digest(bytes(other), StackTable(FunctionTable()))
    with pytest.raises(DigestError):
        load_digest(b"OPdg", StackTable(FunctionTable()))


def test_a_damaged_body_that_still_inflates_is_refused() -> None:
    """A digest rewritten with a reference past the frame table, or a value of 2**63,
    is refused even though its parts decompress."""
    import zlib

    p = Profile(name="x", start_time_ns=NOW, duration_ns=1, period_ns=1)
    b = ProfileBuilder(p)
    b.add(b.stack([b.location(b.function("f", "/a.py"), 3)]), count=1, cpu_ns=5, wall_ns=7)
    blob = digest_profile(p) or b""
    header = digest_module.HEADER
    fields = list(header.unpack_from(blob))
    at = header.size + digest_module.HASH_BYTES  # one stack
    hashes = blob[header.size:at]
    head = bytearray(zlib.decompress(blob[at:at + fields[10]]))
    tables = bytearray(zlib.decompress(blob[at + fields[10]:]))

    def assemble(head: bytes, tables: bytes) -> bytes:
        z = zlib.compress(head)
        return header.pack(*fields[:10], len(z)) + hashes + z + zlib.compress(tables)

    assert load_digest(assemble(head, tables), StackTable(FunctionTable())).sids  # reassembled as it was: fine
    bad_ref = bytearray(tables)
    bad_ref[fields[9] + 6:fields[9] + 8] = (7).to_bytes(2, "little")  # after the functions, frame, line, depth
    big_value = bytearray(head)
    big_value[-13] = 0x80  # the top bit of the eighth byte of the cpu field: 2**63
    for h, t in ((head, bad_ref), (big_value, tables)):
        with pytest.raises(DigestError):
            load_digest(assemble(h, t), StackTable(FunctionTable()))


# --------------------------------------------------------------------------- the store


def test_exporter_stores_a_digest_with_each_profile_and_merges_never_decode(
        tmp_path: Any, no_decoding: list[str]) -> None:
    d = str(tmp_path / "p")
    before = checkout_specs(8, NOW - 2 * H, MIN, slow_render=False, seed=5)
    after = checkout_specs(6, NOW - 30 * MIN, MIN, slow_render=True, seed=6)
    write(d, before + after)
    rows = digest_rows(d)
    assert len(rows) == 14 and all(r[1] == FORMAT_VERSION for r in rows)
    for fname, _v, file_size, mtime_ns, size, length in rows:
        st = os.lstat(os.path.join(d, fname))
        assert (file_size, mtime_ns) == (st.st_size, st.st_mtime_ns) and size == length
    folder = ProfileFolder(d, parallel=False)
    r = folder.merge(parse_selector("route=/checkout"))
    assert stack_names(r) == expected_stacks(before + after) and r.stacks.profiles == 14
    assert folder.last_merge == {"from_memory": 0, "from_store": 14, "decoded": 0, "by_helpers": 0}
    left = folder.merge(parse_selector("route=/checkout until=now-1h"))
    right = folder.merge(parse_selector("route=/checkout from=now-1h"))
    assert folder.last_merge == {"from_memory": 6, "from_store": 0, "decoded": 0, "by_helpers": 0}
    assert stack_names(left) == expected_stacks(before) and stack_names(right) == expected_stacks(after)
    body, _ctype, _ext = render_diff(left, right, "json", a=parse_selector(""), b=parse_selector(""))
    assert b"render_template" in body
    assert no_decoding == []


def test_merges_from_digests_equal_merges_from_the_pprofs(tmp_path: Any) -> None:
    """The same selection merged from stored digests and, once they are removed, from
    the decoded files: identical stacks (with lines), values, outputs."""
    d = str(tmp_path / "p")
    rng = random.Random(12)
    profiles = [random_profile(rng) for _ in range(10)]
    for i, p in enumerate(profiles):
        p.start_time_ns = NOW - i * MIN
        p.attributes = {"http.route": "/r"}
    from otelprof_middleware.config import Config
    from otelprof_middleware.export.file import FileExporter

    exporter = FileExporter(Config.load({"exporter": "file", "output_dir": d}, env={}))
    exporter.export(profiles)
    exporter.shutdown()
    sel = parse_selector("route=/r")
    stored = ProfileFolder(d, parallel=False)
    a = stored.merge(sel)
    assert stored.last_merge["from_store"] == 10
    drop_digests(d)
    decoded = ProfileFolder(d, parallel=False)
    b = decoded.merge(sel)
    assert decoded.last_merge["decoded"] == 10
    assert named(a.stacks.table, a.stacks.stacks) == named(b.stacks.table, b.stacks.stacks)
    want: dict[tuple[Frame, ...], list[int]] = {}
    for p in profiles:
        for key, v in model_sums(p).items():
            acc = want.setdefault(key, [0, 0, 0])
            for i, x in enumerate(v):
                acc[i] += x
    assert named(a.stacks.table, a.stacks.stacks) == want
    for fmt in ("collapsed", "d3", "speedscope", "pprof"):
        assert render_merge(a, fmt, sel=sel)[0] == render_merge(b, fmt, sel=sel)[0], fmt


def test_foreign_files_are_digested_once_and_the_digest_stored(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files another tool (or an older version) wrote: the first merge decodes them and
    stores their digests; the next reader merges without decoding."""
    d = tmp_path / "legacy"
    d.mkdir()
    specs = checkout_specs(7, NOW - 10 * MIN, MIN, slow_render=True, seed=2)
    for s in specs:
        p = build(s)
        (d / profile_file_name(p.start_time_ns, p.profile_id_hex)).write_bytes(encode_pprof(p))
    first = ProfileFolder(str(d), parallel=False)
    first.sync()
    r = first.merge(parse_selector(""))
    assert stack_names(r) == expected_stacks(specs)
    assert first.last_merge == {"from_memory": 0, "from_store": 0, "decoded": 7, "by_helpers": 0}
    assert len(digest_rows(str(d))) == 7
    monkeypatch.setattr(folder_module, "read_stacks", lambda *a, **k: pytest.fail("decoded again"))
    second = ProfileFolder(str(d), parallel=False)
    assert stack_names(second.merge(parse_selector(""))) == expected_stacks(specs)
    assert second.last_merge["from_store"] == 7


def test_stale_damaged_and_other_version_digests_are_rebuilt(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    specs = checkout_specs(6, NOW - 10 * MIN, MIN, slow_render=False, seed=7)
    write(d, specs)
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    refs = [r[0] for r in conn.execute("SELECT ref FROM digests ORDER BY ref")]
    conn.execute("UPDATE digests SET version = 99 WHERE ref = ?", (refs[0],))
    conn.execute("UPDATE digest_data SET data = zeroblob(300) WHERE ref = ?", (refs[1],))
    conn.execute("UPDATE digests SET file_mtime_ns = file_mtime_ns + 1 WHERE ref = ?", (refs[2],))
    conn.commit()
    conn.close()
    folder = ProfileFolder(d, parallel=False)
    r = folder.merge(parse_selector(""))
    assert stack_names(r) == expected_stacks(specs)
    assert folder.last_merge == {"from_memory": 0, "from_store": 3, "decoded": 3, "by_helpers": 0}
    rows = digest_rows(d)
    assert len(rows) == 6 and all(r[1] == FORMAT_VERSION for r in rows)
    again = ProfileFolder(d, parallel=False)
    again.merge(parse_selector(""))
    assert again.last_merge["from_store"] == 6


def test_a_rewritten_file_is_read_not_its_old_digest(tmp_path: Any) -> None:
    """Same name, other content (a copy restored over it): the digest no longer matches
    the file's size and time, so the file is decoded."""
    d = str(tmp_path / "p")
    old = Spec("GET /a", NOW - MIN, [(frames("main", "old_work"), (5, 5 * 10**7, 5 * 10**7))], route="/a")
    (p,) = write(d, [old])
    fname = profile_file_name(p.start_time_ns, p.profile_id_hex)
    new = Spec("GET /a", NOW - MIN, [(frames("main", "new_work", "deeper"), (9, 9 * 10**7, 9 * 10**7))], route="/a",
               profile_id=p.profile_id)
    path = os.path.join(d, fname)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(encode_pprof(build(new)))
    folder = ProfileFolder(d, parallel=False)
    assert stack_names(folder.merge(parse_selector(""))) == expected_stacks([new])
    assert folder.last_merge["decoded"] == 1


def test_retention_deletes_digests_with_their_rows_and_counts_their_bytes(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    specs = [Spec(f"GET /p{i}", NOW - (100 - i) * MIN, [(frames("main", f"w{i}", f"x{j}"), (i + 1, 10**6, 10**6))
                                                         for j in range(20)], route="/p") for i in range(12)]
    write(d, specs, max_files=5)
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    try:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 5
        orphans = "SELECT count(*) FROM digests WHERE ref NOT IN (SELECT id FROM profiles)"
        assert conn.execute(orphans).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM digest_data").fetchone()[0] == 5
        file_bytes = conn.execute("SELECT total(size) FROM profiles").fetchone()[0]
        digest_bytes = conn.execute("SELECT total(size) FROM digests").fetchone()[0]
    finally:
        conn.close()
    # max_bytes bounds the files and their digests together
    budget = int((file_bytes + digest_bytes) / 5 * 3.5)
    d2 = str(tmp_path / "q")
    write(d2, specs, max_bytes=budget)
    conn = sqlite3.connect(os.path.join(d2, INDEX_DB))
    try:
        files, fb = conn.execute("SELECT count(*), total(size) FROM profiles").fetchone()
        digests, db = conn.execute("SELECT count(*), total(size) FROM digests").fetchone()
    finally:
        conn.close()
    assert files == digests == 3 and fb + db <= budget < fb + db + (file_bytes + digest_bytes) / 5


def test_a_digest_failure_never_loses_the_profile(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from otelprof_middleware.export import file as file_module

    def broken(_p: Any) -> Any:
        raise RuntimeError("digest bug")

    monkeypatch.setattr(file_module, "digest_profile", broken)
    d = str(tmp_path / "p")
    specs = checkout_specs(3, NOW - 10 * MIN, MIN, slow_render=False, seed=1)
    write(d, specs)
    assert digest_rows(d) == [] and len([n for n in os.listdir(d) if n.endswith(".pb.gz")]) == 3
    assert "could not make a digest" in caplog.text
    folder = ProfileFolder(d, parallel=False)
    assert stack_names(folder.merge(parse_selector(""))) == expected_stacks(specs)
    assert folder.last_merge["decoded"] == 3 and len(digest_rows(d)) == 3  # digested on first read


def test_a_read_only_reader_uses_stored_digests_and_writes_nothing(tmp_path: Any, no_decoding: list[str]) -> None:
    d = str(tmp_path / "p")
    specs = checkout_specs(4, NOW - 10 * MIN, MIN, slow_render=True, seed=3)
    write(d, specs)
    folder = ProfileFolder(d, writable=False, parallel=False)
    assert stack_names(folder.merge(parse_selector(""))) == expected_stacks(specs)
    assert folder.last_merge["from_store"] == 4
    assert folder.index.put_digests([(1, "x", FORMAT_VERSION, 1, 1, b"x")]) == 0


def test_a_reader_stores_a_digest_only_for_the_row_it_read(tmp_path: Any) -> None:
    """A digest made from file A is not stored under a row that now names file B (the
    row id was reused after A's row was deleted)."""
    d = str(tmp_path / "p")
    specs = checkout_specs(2, NOW - 10 * MIN, MIN, slow_render=False, seed=3)
    write(d, specs)
    drop_digests(d)
    index = ProfileIndex(d)
    (pid, fname, ref), (_p2, other, _r2) = index.files(parse_selector(""), limit=2)
    st = os.lstat(os.path.join(d, fname))
    assert index.put_digests([(ref, other, FORMAT_VERSION, st.st_size, st.st_mtime_ns, b"blob")]) == 0
    assert index.put_digests([(ref, fname, FORMAT_VERSION, st.st_size, st.st_mtime_ns, b"blob")]) == 1
    assert index.digests([ref]) == {ref: (FORMAT_VERSION, st.st_size, st.st_mtime_ns, b"blob")}


def test_the_cli_merges_from_stored_digests(tmp_path: Any) -> None:
    """A one-shot ``otelprof merge`` process reads the stored digests (decoding is made
    to fail in that process) and its merge is the sum of the synthetic stacks."""
    d = str(tmp_path / "p")
    specs = checkout_specs(9, NOW - 10 * MIN, MIN, slow_render=True, seed=8)
    write(d, specs)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{SRC!r}]
        from otelprof_middleware.store import folder
        def refuse(*a, **k):
            raise SystemExit("decoded a pprof")
        folder.read_stacks = refuse
        from otelprof_middleware.cli import main
        sys.exit(main(["merge", "-d", sys.argv[1], "--format", "collapsed", "--metric", "samples", "route=/checkout"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, d], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = {}
    for line in proc.stdout.splitlines():
        stack, value = line.rsplit(" ", 1)
        got[tuple(stack.split(";"))] = int(value)
    assert got == {k: v[0] for k, v in expected_stacks(specs).items()}


@pytest.mark.integration
def test_a_large_merge_without_digests_shares_decoding_with_a_helper(tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PARALLEL_MIN_FILES profiles without a digest, a helper process decodes and
    digests a share; the sum is the synthetic one and every digest is stored."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no helper process")
    d = str(tmp_path / "p")
    specs = checkout_specs(24, NOW - H, MIN, slow_render=True, seed=9)
    write(d, specs)
    drop_digests(d)
    monkeypatch.setattr(folder_module, "PARALLEL_MIN_FILES", 10)
    folder = ProfileFolder(d)
    r = folder.merge(parse_selector(""))
    assert folder.last_merge["by_helpers"] >= 8 and folder.last_merge["from_store"] == 0
    assert folder.last_merge["decoded"] + folder.last_merge["by_helpers"] == 24
    assert stack_names(r) == expected_stacks(specs) and r.stacks.profiles == 24
    assert len(r.profile_ids) == 24 and r.skipped == []
    assert len(digest_rows(d)) == 24


def test_the_viewers_background_pass_loads_stored_digests(tmp_path: Any, no_decoding: list[str]) -> None:
    d = str(tmp_path / "p")
    specs = checkout_specs(14, NOW - 2 * H, 8 * MIN, slow_render=False, seed=5)
    write(d, specs)
    folder = ProfileFolder(d, parallel=False)
    assert folder.prefill(budget=100) == 14 and folder.prefill(budget=100) == 0
    r = folder.merge(parse_selector("status=5xx"))
    assert stack_names(r) == expected_stacks([s for s in specs if s.status == 500])
    assert folder.last_merge["from_memory"] == len(r.profile_ids) > 0


def test_a_profile_without_a_possible_digest_is_merged_from_its_pprof(tmp_path: Any) -> None:
    """Negative values (another tool's pprof could hold them; ours never do) have no
    digest: the exporter stores none, every merge decodes the file, the sums stay exact."""
    d = str(tmp_path / "p")
    odd = Spec("GET /odd", NOW - MIN, [(frames("main", "odd"), (2, 5 * 10**6, -3))], route="/odd")
    normal = Spec("GET /odd", NOW - 2 * MIN, [(frames("main", "fine"), (1, 10**6, 10**6))], route="/odd")
    write(d, [odd, normal])
    assert len(digest_rows(d)) == 1
    for _ in range(2):
        folder = ProfileFolder(d, parallel=False)
        r = folder.merge(parse_selector("route=/odd"))
        assert stack_names(r) == expected_stacks([odd, normal]) and r.stacks.profiles == 2
        assert folder.last_merge == {"from_memory": 0, "from_store": 1, "decoded": 1, "by_helpers": 0}
    assert len(digest_rows(d)) == 1
    viewer = ProfileFolder(d, parallel=False)  # its background pass loads one, decodes one, then rests
    assert viewer.prefill(budget=100) == 2 and viewer.prefill(budget=100) == 0
