"""The local profile store: the bounded pprof reader, the folder index (SQLite), the
file exporter's retention and file safety, concurrent writers.

Folders are written by the real ``file`` exporter from hand-built profiles
(``helpers.profile_folder``) or by hand where a test needs a foreign, corrupt or
legacy file.  Expected values come from the synthetic stacks or from the
independent test decoder (``helpers.pprof_decode``), never from the store itself.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from typing import Any

import pytest

from helpers.pprof_decode import decode_pprof, stacks_by_function
from helpers.profile_folder import Spec, build, checkout_specs, frames, write
from otelprof_middleware.config import Config, ConfigError
from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.store.folder import ProfileFolder
from otelprof_middleware.store.index import ProfileIndex
from otelprof_middleware.store.layout import INDEX_DB, INDEX_LOG, PROFILE_FILE_RE, profile_file_name
from otelprof_middleware.store.pprof import (
    FunctionTable,
    Limits,
    PprofError,
    PprofLimitError,
    read_pprof,
    read_stacks,
)
from otelprof_middleware.store.selector import Selector, parse_selector

TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(TESTS), "src")
NOW = time.time_ns()
MIN = 60 * 10**9


def _files(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".pb.gz"))


def _log(d: str) -> list[dict[str, Any]]:
    with open(os.path.join(d, INDEX_LOG)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _rows(d: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    try:
        return sorted(conn.execute("SELECT profile_id, file FROM profiles").fetchall())
    finally:
        conn.close()


def _spec(i: int, triggers: tuple[str, ...] = ("probability",), **kw: Any) -> Spec:
    return Spec(name=f"GET /p{i}", start_ns=NOW - (1000 - i) * MIN, route=f"/p{i % 3}",
                stacks=[(frames("main", f"work{i % 4}"), (i + 1, (i + 1) * 10**6, (i + 1) * 10**6))],
                triggers=triggers, **kw)


# --------------------------------------------------------------------------- reader


def test_m6_the_review_bomb_is_refused_fast_in_bounded_memory() -> None:
    """M6: 16 KiB of gzip that inflate to 8 M empty samples (review e6_bomb.py (b))."""
    bomb = gzip.compress(b"\x12\x00" * (8 * 1024 * 1024))
    assert len(bomb) < 20 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PprofLimitError, match=r"more than 250,000 samples \(limit max_samples=250,000\)"):
            read_stacks(bomb, FunctionTable())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the review measured +3 GB for this file; the bound is the 16 MiB inflated buffer plus a little
    assert peak < 80 * 1024 * 1024, peak
    with pytest.raises(PprofLimitError, match="max_samples"):
        read_pprof(bomb)


@pytest.mark.parametrize("limit,payload,message", [
    ("max_locations", b"\x22\x02\x08\x01" * 11, "more than 10 locations"),
    ("max_functions", b"\x2a\x02\x08\x01" * 11, "more than 10 functions"),
    ("max_strings", b"\x32\x00" * 11, "more than 10 strings"),
    ("max_samples", b"\x12\x02\x10\x01" * 11, "more than 10 samples"),
])
def test_each_element_limit_has_its_own_error(limit: str, payload: bytes, message: str) -> None:
    small = Limits(**{limit: 10})
    with pytest.raises(PprofLimitError, match=message) as e:
        read_stacks(payload, FunctionTable(), limits=small)
    assert e.value.limit == limit
    read_stacks(payload[:-4] if limit != "max_strings" else payload[:-2], FunctionTable(), limits=small)  # 10 is fine


def test_size_depth_and_label_limits() -> None:
    with pytest.raises(PprofLimitError, match="max_input_bytes"):
        read_pprof(b"\x32\x00" * 600, limits=Limits(max_input_bytes=1000))
    with pytest.raises(PprofLimitError, match="max_decompressed_bytes"):
        read_pprof(gzip.compress(b"\x32\x00" * 3000), limits=Limits(max_decompressed_bytes=4096))
    deep = Spec("deep", NOW, [(tuple((f"f{i}", "/a.py") for i in range(50)), (1, 1, 1))])
    data = encode_pprof(build(deep))
    with pytest.raises(PprofLimitError, match="a sample with 50 locations.*max_stack_depth=49"):
        read_stacks(data, FunctionTable(), limits=Limits(max_stack_depth=49))
    assert len(next(iter(read_stacks(data, FunctionTable(), limits=Limits(max_stack_depth=50)).stacks))) == 50
    labelled = build(Spec("l", NOW, [(frames("a"), (1, 1, 1))], trace_id=5, span_id=6))
    with pytest.raises(PprofLimitError, match="a sample with 4 labels.*max_labels=2"):  # where labels are read
        read_stacks(encode_pprof(labelled), FunctionTable(), limits=Limits(max_labels=2), with_labels=True)
    with pytest.raises(PprofLimitError, match="max_labels"):
        read_pprof(encode_pprof(labelled), limits=Limits(max_labels=2))


def test_malformed_input_raises_only_pprof_error() -> None:
    data = encode_pprof(build(checkout_specs(1, NOW, MIN, slow_render=False)[0]))
    raw = gzip.decompress(data)
    for bad in (b"", b"\x1f\x8b", data[: len(data) // 2], b"\x0f" * 20, b"\x07\x01", b"\x08" + b"\xff" * 12,
                b"\x12\x7f", b"\x00\x01", b"\x0b\x01", b"\x32\x02\x41\x41"):
        try:
            read_stacks(bad, FunctionTable())
        except PprofError:
            pass
    # a sample naming a location that does not exist (go tool pprof refuses it too)
    with pytest.raises(PprofError, match="names location 99, which does not exist"):
        read_stacks(raw + b"\x12\x08\x0a\x01\x63\x12\x03\x01\x01\x01", FunctionTable())
    for i in range(0, len(raw), max(1, len(raw) // 300)):  # flipping any byte: a profile or a PprofError
        mutated = raw[:i] + bytes([raw[i] ^ 0xA5]) + raw[i + 1:]
        try:
            read_stacks(mutated, FunctionTable(), by_thread=True)
            read_pprof(mutated)
        except PprofError:
            pass


def test_read_stacks_matches_the_independent_decoder() -> None:
    specs = checkout_specs(3, NOW, MIN, slow_render=True)
    for spec in specs:
        data = encode_pprof(build(spec))
        table = FunctionTable()
        ps = read_stacks(data, table)
        got = {tuple(table.functions[k >> 24][0] for k in key): values for key, values in ps.stacks.items()}
        want: dict[tuple[str, ...], list[int]] = {}
        for names, values, _labels in stacks_by_function(decode_pprof(data)):
            key = tuple(reversed(names))
            acc = want.setdefault(key, [0, 0, 0])
            for i, v in enumerate(values):
                acc[i] += v
        assert got == want
        assert [t for t, _u in ps.sample_types] == ["samples", "cpu", "wall"]


# --------------------------------------------------------------------------- index and exporter


def test_exporter_indexes_every_profile_with_its_facts(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    specs = checkout_specs(10, NOW - 10 * MIN, MIN, slow_render=False)
    profiles = write(d, specs, service_name="shop")
    idx = ProfileIndex(d)
    rows = idx.query(Selector(), limit=100)
    assert [r["profile_id"] for r in rows] == [p.profile_id_hex for p in reversed(profiles)]  # newest first
    r = rows[0]
    assert r["route"] == "/checkout" and r["method"] == "POST" and r["service"] == "shop"
    assert r["status"] == 500 and r["triggers"] == ["slow"] and r["trace_id"] == format(specs[9].trace_id, "032x")
    assert r["samples"] == profiles[9].sample_count and r["cpu_ms"] == round(profiles[9].cpu_ns / 1e6, 3)
    assert r["duration_ms"] == specs[9].duration_ms
    assert r["file"] == profile_file_name(specs[9].start_ns, profiles[9].profile_id_hex)
    assert [e["profile_id"] for e in _log(d)] == [p.profile_id_hex for p in profiles]
    assert idx.count(parse_selector("status=5xx")) == 1


def test_l7_files_0600_in_a_0700_folder_the_exporter_creates(tmp_path: Any) -> None:
    """L7: profiles, index and log are private; a folder the exporter creates is 0700."""
    d = tmp_path / "new" / "profiles"
    old = os.umask(0o022)
    try:
        write(str(d), [_spec(1)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in os.listdir(d):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600, name
    # an existing folder keeps its own mode
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    write(str(shared), [_spec(2)])
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    assert all(stat.S_IMODE(os.stat(shared / n).st_mode) == 0o600 for n in os.listdir(shared))


def test_m5_retention_trims_files_rows_and_log_together(tmp_path: Any) -> None:
    """M5: the review's e9_index.py (max_files=2, 25 profiles): the index no longer grows."""
    d = str(tmp_path / "p")
    profiles = write(d, [_spec(i) for i in range(25)], max_files=2)
    kept = [p.profile_id_hex for p in profiles[-2:]]
    assert [PROFILE_FILE_RE.match(f).group(8) for f in _files(d)] == kept
    assert sorted(pid for pid, _f in _rows(d)) == sorted(kept)
    assert [e["profile_id"] for e in _log(d)] == kept
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_retention_keeps_profiles_with_a_reason_longer(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    specs = [_spec(i, ("slow",) if i % 5 == 0 else ("probability",)) for i in range(30)]
    profiles = write(d, specs, max_files=10)
    by_id = {p.profile_id_hex: s for p, s in zip(profiles, specs)}
    kept = [by_id[pid] for pid, _f in _rows(d)]
    assert len(kept) == 10
    # all 6 slow profiles survive (even the oldest); the 4 newest probability ones fill the rest
    assert sorted(s.name for s in kept if s.triggers == ("slow",)) == sorted(f"GET /p{i}" for i in range(0, 30, 5))
    assert sorted(s.name for s in kept if s.triggers == ("probability",)) == sorted(
        f"GET /p{i}" for i in (29, 28, 27, 26))


def test_retention_quotas_per_class(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    triggers = [("header",), ("error", "probability"), ("slow",), ("probability",)]
    specs = [_spec(i, triggers[i % 4]) for i in range(40)]
    write(d, specs, retention="probability=3,error=2,header=4")
    idx = ProfileIndex(d)
    classes: dict[str, list[str]] = {}
    for r in idx.query(Selector(), limit=100):
        classes.setdefault(r["keep_class"], []).append(r["name"])
    assert sorted(classes) == ["error", "header", "probability", "slow"]
    assert len(classes["probability"]) == 3 and len(classes["error"]) == 2 and len(classes["header"]) == 4
    assert len(classes["slow"]) == 10  # no quota: only max_files
    assert classes["probability"] == ["GET /p39", "GET /p35", "GET /p31"]  # the newest of each class
    assert len(_files(d)) == 19 and len(_log(d)) == 19
    # mistakes fail when the configuration is loaded, naming option, value and source
    with pytest.raises(ConfigError, match=r"invalid option retention='slo=3': unknown class 'slo'; classes: header"):
        Config.load({"retention": "slo=3"}, env={})
    with pytest.raises(ConfigError, match=r"retention='slow=-1' \(from OTELPROF_RETENTION\): slow='-1': counts must"):
        Config.load(env={"OTELPROF_RETENTION": "slow=-1"})
    assert Config.load(env={"OTELPROF_RETENTION": "Probability=5, slow=2"}).retention == {"probability": 5, "slow": 2}


def test_l6_retention_deletes_only_files_the_exporter_wrote(tmp_path: Any) -> None:
    """L6: the review's e8_file.py folder (foreign files, max_files=3, max_bytes=3000)."""
    d = tmp_path / "p"
    d.mkdir()
    foreign = {"teammate-baseline.pb.gz": b"\x1f\x8bXX" * 400, "0-important.pb.gz": b"keep me" * 300,
               "20200101T000000000000Z_notanid.pb.gz": b"x" * 900}
    for name, body in foreign.items():
        (d / name).write_bytes(body)
    outside = tmp_path / "outside-target.pb.gz"
    outside.write_bytes(b"outside")
    link_name = "20200101T000000000000Z_" + "ab" * 16 + ".pb.gz"  # our pattern, but a symlink
    os.symlink(outside, d / link_name)
    write(str(d), [_spec(i) for i in range(8)], max_files=3, max_bytes=3000)
    for name, body in foreign.items():
        assert (d / name).read_bytes() == body
    assert os.path.islink(d / link_name) and outside.read_bytes() == b"outside"
    ours = [n for n in _files(str(d)) if PROFILE_FILE_RE.match(n) and not os.path.islink(d / n)]
    assert len(ours) <= 3 and sum(os.path.getsize(d / n) for n in ours) <= 3000
    folder = ProfileFolder(str(d))
    folder.sync(force=True)
    s = folder.index.summary()
    assert s["profiles"] == len(ours) and s["foreign_files"] == 4  # 3 foreign names + the symlink


def test_legacy_index_jsonl_folder_is_imported(tmp_path: Any) -> None:
    """A folder written before the index existed: its index.jsonl is imported, files
    without a line are read, dangling lines and bad lines skipped."""
    d = tmp_path / "legacy"
    d.mkdir()
    profiles = [build(s) for s in checkout_specs(6, NOW - 6 * MIN, MIN, slow_render=False)]
    lines = []
    for i, p in enumerate(profiles):
        fname = profile_file_name(p.start_time_ns, p.profile_id_hex)
        (d / fname).write_bytes(encode_pprof(p))
        if i == 5:
            continue  # its line is missing: found by scanning the folder
        lines.append(json.dumps({"profile_id": p.profile_id_hex, "name": p.name, "trigger": "slow",
                                 "start_unix_nano": p.start_time_ns, "duration_ms": 1.5, "cpu_ms": 2.5,
                                 "samples": p.sample_count, "attributes": dict(p.attributes), "file": fname,
                                 "trace_id": p.link.trace_id_hex if p.link else None}))
    gone = "20200101T000000000000Z_" + "cd" * 16 + ".pb.gz"
    lines.append(json.dumps({"profile_id": "cd" * 16, "name": "removed", "file": gone}))
    lines += ["{not json", '{"profile_id": "x", "file": "../../etc/passwd"}']
    (d / INDEX_LOG).write_text("\n".join(lines) + "\n")
    folder = ProfileFolder(str(d))
    stats = folder.sync()
    assert stats.imported == 5 and stats.adopted == 1
    rows = {r["profile_id"]: r for r in folder.index.query(Selector(), limit=100)}
    assert set(rows) == {p.profile_id_hex for p in profiles}
    assert rows[profiles[0].profile_id_hex]["route"] == "/checkout" and rows[profiles[0].profile_id_hex]["cpu_ms"] == 2.5
    scanned = rows[profiles[5].profile_id_hex]
    assert scanned["samples"] == profiles[5].sample_count  # read from the pprof
    assert scanned["trace_id"] == profiles[5].link.trace_id_hex and scanned["name"] == profiles[5].name
    # a second exporter on this folder appends and indexes as usual
    write(str(d), [_spec(1)])
    assert folder.index.count(Selector()) == 7


def test_corrupt_and_foreign_files_are_skipped_and_counted(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    write(d, [_spec(i) for i in range(3)])
    bad = "20250101T000000000000Z_" + "ee" * 16 + ".pb.gz"
    with open(os.path.join(d, bad), "wb") as f:
        f.write(gzip.compress(b"\x0a\xff\xff\xff\xff\x0f garbage"))
    with open(os.path.join(d, "go-cpu.pb.gz"), "wb") as f:
        f.write(b"not ours")
    folder = ProfileFolder(d)
    folder.sync(force=True)
    summary = folder.index.summary()
    assert summary == {"profiles": 3, "bytes": summary["bytes"], "digests": 3,  # the exporter stored 3 digests
                       "digest_bytes": summary["digest_bytes"], "foreign_files": 1, "unreadable_files": 1}
    reasons = {f["file"]: f["reason"] for f in folder.index.skipped_files()}
    assert reasons["go-cpu.pb.gz"] == "foreign" and reasons[bad].startswith("unreadable:")
    # a merge over everything still works
    assert len(folder.merge(Selector()).profile_ids) == 3


def test_rows_of_files_deleted_by_hand_disappear(tmp_path: Any) -> None:
    d = str(tmp_path / "p")
    profiles = write(d, [_spec(i) for i in range(4)])
    os.unlink(os.path.join(d, profile_file_name(profiles[1].start_time_ns, profiles[1].profile_id_hex)))
    folder = ProfileFolder(d)
    assert folder.sync(force=True).removed_rows == 1
    assert folder.index.count(Selector()) == 3


def test_a_corrupt_database_is_rebuilt_from_the_log(tmp_path: Any, caplog: Any) -> None:
    d = str(tmp_path / "p")
    write(d, [_spec(i) for i in range(3)])
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(os.path.join(d, INDEX_DB + suffix))
        except FileNotFoundError:
            pass
    with open(os.path.join(d, INDEX_DB), "wb") as f:
        f.write(b"this is not a database" * 100)
    write(d, [_spec(10)])  # the exporter moves it aside and goes on
    assert any(n.startswith(INDEX_DB + ".corrupt-") for n in os.listdir(d))
    write(d, [_spec(11)])
    assert ProfileIndex(d).count(Selector()) == 5
    assert "was corrupt" in caplog.text


_WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path[:0] = [{tests!r}, {src!r}]
    from helpers.profile_folder import Spec, frames, write
    d, tag, n, max_files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    now = time.time_ns()
    specs = [Spec(name=f"{{tag}}-{{i}}", start_ns=now + i * 1000, route="/" + tag,
                  stacks=[(frames("main", tag), (1, 10**6, 10**6))]) for i in range(n)]
    write(d, specs, max_files=max_files)
""")


@pytest.mark.integration
@pytest.mark.parametrize("max_files", [1000, 25])
def test_two_writer_processes_and_a_reader_share_one_folder(tmp_path: Any, max_files: int) -> None:
    d = str(tmp_path / "p")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(tests=TESTS, src=SRC))
    os.makedirs(d, mode=0o700)
    n = 40
    procs = [subprocess.Popen([sys.executable, str(script), d, tag, str(n), str(max_files)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:  # the viewer's reads while both write
        folder = ProfileFolder(d)
        while not stop.is_set():
            try:
                folder.sync()
                folder.index.query(parse_selector("route=/a"), limit=10)
                folder.index.count(Selector())
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    finally:
        stop.set()
        reader.join(30)
    assert not errors, errors
    files = _files(d)
    rows = _rows(d)
    want = min(2 * n, max_files)
    assert len(files) == want and sorted(f for _p, f in rows) == files  # one row per file, across processes
    log = _log(d)
    assert len({e["profile_id"] for e in log}) == len(log)  # no line written twice or torn
    assert {e["profile_id"] for e in log} >= {pid for pid, _f in rows}
    assert len(log) <= want + max(1, want // 8)  # trimmed with the files
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    try:  # every row has its digest, and no digest outlived its row
        digests = conn.execute("SELECT count(*) FROM digests g JOIN profiles p ON p.id = g.ref").fetchone()[0]
        orphans = conn.execute("SELECT count(*) FROM digests WHERE ref NOT IN (SELECT id FROM profiles)").fetchone()[0]
        orphans += conn.execute("SELECT count(*) FROM digest_data WHERE ref NOT IN (SELECT ref FROM digests)"
                                ).fetchone()[0]
    finally:
        conn.close()
    assert digests == len(rows) and orphans == 0
    if max_files == 1000:
        idx = ProfileIndex(d)
        assert idx.count(parse_selector("route=/a")) == n and idx.count(parse_selector("route=/b")) == n
        folder = ProfileFolder(d, parallel=False)
        merged = folder.merge(parse_selector(""), limit=1000)
        assert folder.last_merge["from_store"] == 2 * n and merged.stacks.profiles == 2 * n


def test_flame_tree_beyond_max_nodes_keeps_exact_totals() -> None:
    from otelprof_middleware.store.aggregate import StackSet, flame_json

    spec = Spec("wide", NOW, [(frames("main", f"branch{i}", f"leaf{i}"), (i + 1, i + 1, i + 1)) for i in range(50)])
    table = FunctionTable()
    ss = StackSet(table)
    ss.add(read_stacks(encode_pprof(build(spec)), table))
    tree = flame_json(ss, max_nodes=40)
    assert tree["truncated_nodes"] > 0
    total = sum(i + 1 for i in range(50))
    assert tree["tree"]["v"] == [total] * 3 and tree["totals"] == [total] * 3
    stack = [tree["tree"]]
    count = 0
    while stack:  # every node's value is its children's plus its self value, even where cut
        node = stack.pop()
        count += 1
        kids = node.get("c", [])
        assert [sum(k["v"][i] for k in kids) + node.get("s", [0, 0, 0])[i] for i in range(3)] == node["v"]
        stack.extend(kids)
    assert count == 40
    # the per-function table still counts every function exactly
    names = [f["name"] for f in tree["functions"]]
    self_by = {names[r["f"]]: r["self"][0] for r in tree["top"]}
    assert self_by["leaf49"] == 50 and sum(self_by.values()) == total


_FORKER = textwrap.dedent("""
    import os, sys, threading, time
    sys.path[:0] = [{tests!r}, {src!r}]
    from helpers.profile_folder import Spec, build, frames
    from otelprof_middleware.config import Config
    from otelprof_middleware.export.file import FileExporter

    d = sys.argv[1]
    exporter = FileExporter(Config.load(dict(exporter="file", output_dir=d), env={{}}))
    stop = threading.Event()

    def keep_exporting():  # the parent writes profiles all the time, as a busy master would
        i = 0
        while not stop.is_set():
            exporter.export([build(Spec(f"parent-{{i}}", time.time_ns(), [(frames("main", "p"), (1, 1, 1))]))])
            i += 1

    t = threading.Thread(target=keep_exporting)
    t.start()
    children = []
    for n in range(12):
        time.sleep(0.005)
        pid = os.fork()
        if pid == 0:  # the child exports through the inherited exporter, then leaves
            exporter.export([build(Spec(f"child-{{n}}", time.time_ns(), [(frames("main", "c"), (1, 1, 1))]))])
            os._exit(0)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    stop.set()
    t.join()
    print(codes)
""")


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forking_while_the_exporter_writes_leaves_no_child_stuck(tmp_path: Any) -> None:
    """A process that forks while its file exporter writes (gunicorn --preload): every
    child can still export, and the index has every child's profile."""
    d = str(tmp_path / "p")
    script = tmp_path / "forker.py"
    script.write_text(_FORKER.format(tests=TESTS, src=SRC))
    r = subprocess.run([sys.executable, str(script), d], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([0] * 12)
    names = {row["name"] for row in ProfileIndex(d).query(parse_selector("name=child-*"), limit=100)}
    assert names == {f"child-{n}" for n in range(12)}


def test_a_reader_never_deletes_a_new_profile_that_reused_a_removed_ones_row_id(tmp_path: Any,
                                                                               monkeypatch: Any) -> None:
    """A reader's sync notes the rows, scans the folder, then writes.  Meanwhile another
    writer removed the newest profile (its row had the highest id) and added one, which
    SQLite gave that same id.  The reader must drop the row of the file that is gone, not
    whatever row has its old id now: the new profile kept its row and its digest (the rare
    failure of the two-writers test above: one row without digest)."""
    import otelprof_middleware.store.index as index_mod

    d = str(tmp_path / "p")
    write(d, [_spec(i) for i in range(3)])
    reader = ProfileIndex(d)
    reader.sync()
    conn = sqlite3.connect(os.path.join(d, INDEX_DB))
    real_scandir = os.scandir
    done = []

    def scandir_after_another_writer(path: Any) -> Any:
        if not done:
            done.append(True)
            rid, fname = conn.execute("SELECT id, file FROM profiles ORDER BY id DESC LIMIT 1").fetchone()
            conn.execute("DELETE FROM digests WHERE ref = ?", (rid,))
            conn.execute("DELETE FROM attributes WHERE ref = ?", (rid,))
            conn.execute("DELETE FROM profiles WHERE id = ?", (rid,))
            conn.commit()
            os.unlink(os.path.join(d, fname))
            write(d, [_spec(7)])  # the new profile: its row takes the free id
            assert conn.execute("SELECT max(id) FROM profiles").fetchone()[0] == rid
        return real_scandir(path)

    monkeypatch.setattr(index_mod.os, "scandir", scandir_after_another_writer)
    reader.sync(force=True)
    monkeypatch.setattr(index_mod.os, "scandir", real_scandir)
    assert done
    rows = _rows(d)
    assert sorted(f for _p, f in rows) == _files(d) and len(rows) == 3
    with_digest = conn.execute("SELECT count(*) FROM digests g JOIN profiles p ON p.id = g.ref").fetchone()[0]
    conn.close()
    assert with_digest == 3
