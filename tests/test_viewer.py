"""The bundled local viewer (``otelprof view``) on profiles made by the real Profiler.

Profiles come from the real Profiler with the ``file`` exporter; the viewer server
runs on an ephemeral 127.0.0.1 port and is driven over HTTP.  The flame tree is
cross-checked against the independent test decoder (``helpers.pprof_decode``).
The browser tests load the pages in headless Chromium (Debian package
``chromium``) and check the DOM the page's own script rendered; they are skipped
when ``/usr/bin/chromium`` is absent.  Explore and Compare are driven in
``test_viewer_browser.py``; the API's selectors and merges in ``test_api.py``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from helpers.browser import DevTools, chromium, needs_chromium
from helpers.pprof_decode import decode_pprof, stacks_by_function
from helpers.viewer_client import viewer_factory  # noqa: F401  (fixture)
from otelprof_middleware import Profiler, SpanLink
from otelprof_middleware.store.aggregate import StackSet, flame_json
from otelprof_middleware.store.layout import INDEX_DB, INDEX_LOG
from otelprof_middleware.store.pprof import FunctionTable, PprofError, read_pprof, read_stacks

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
SAMPLE_BOUND_S = 30.0  # safety bound only: the loops below end as soon as a sample is seen


# --------------------------------------------------------------------------- workload


def _sampled(session: Any, func: Any, cpu: bool = False) -> bool:
    """True once the session holds a sample whose stack contains ``func``'s code
    (with ``cpu``: a sample with CPU time, not only a wall-time observation)."""
    code = func.__code__
    try:
        entries = list(session.stacks.entries.values())
    except RuntimeError:  # the sampler changed the dict while we copied it
        return False
    return any(code in rec[3] and (rec[1] > 0 or not cpu) for rec in entries)


def viewer_test_spin_cpu(session: Any) -> int:
    x = 0
    deadline = time.monotonic() + SAMPLE_BOUND_S
    while not _sampled(session, viewer_test_spin_cpu, cpu=True) and time.monotonic() < deadline:
        for i in range(20000):
            x += i * i % 7
    return x


def viewer_test_wait_io(session: Any) -> None:
    ev = threading.Event()
    deadline = time.monotonic() + SAMPLE_BOUND_S
    while not _sampled(session, viewer_test_wait_io) and time.monotonic() < deadline:
        ev.wait(0.005)


def viewer_test_handler(session: Any) -> None:
    viewer_test_spin_cpu(session)
    viewer_test_wait_io(session)


def nightly_viewer_step(session: Any) -> None:
    viewer_test_spin_cpu(session)


def _make_profiles(out: str) -> dict[str, Any]:
    profiler = Profiler(exporter="file", output_dir=out, sample_hz=250)
    try:
        link = SpanLink(trace_id=TRACE_ID, span_id=SPAN_ID, span_name="GET /viewer-test/{id}")
        s1 = profiler.start_session("GET /viewer-test/{id}", link=link, triggers=("header", "probability"),
                                    attributes={"http.route": "/viewer-test/{id}", "tenant": "acme <b>"})
        assert s1 is not None
        viewer_test_handler(s1)
        assert profiler.finish_session(s1)
        s2 = profiler.start_session("nightly-viewer-job", link=None, triggers=("manual",))
        assert s2 is not None
        nightly_viewer_step(s2)
        assert profiler.finish_session(s2)
        assert profiler.force_flush(timeout=10)
    finally:
        profiler.shutdown(timeout=10)
    with open(os.path.join(out, "index.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert [e["name"] for e in lines] == ["GET /viewer-test/{id}", "nightly-viewer-job"]
    return {"request": lines[0], "job": lines[1]}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = str(tmp_path_factory.mktemp("viewer") / "profiles")
    return out, _make_profiles(out)


@pytest.fixture
def work_dir(profile_dir: tuple[str, dict[str, Any]], tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """A private copy of the profiles that a test may damage."""
    src, entries = profile_dir
    dst = str(tmp_path / "copy")
    shutil.copytree(src, dst)
    return dst, entries


def _pprof_path(directory: str, entry: dict[str, Any]) -> str:
    return os.path.join(directory, entry["file"])


def _walk(node: dict[str, Any], path: tuple[str, ...], functions: list[dict[str, Any]],
          out: dict[tuple[str, ...], list[int]]) -> None:
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        if n["f"] >= 0:
            p = p + (functions[n["f"]]["name"],)
            acc = out.setdefault(p, [0] * len(n["v"]))
            for i, v in enumerate(n["v"]):
                acc[i] += v
        children = n.get("c", [])
        child_sum = [sum(c["v"][i] for c in children) for i in range(len(n["v"]))]
        self_values = n.get("s", [0] * len(n["v"]))
        assert [a + b for a, b in zip(child_sum, self_values)] == n["v"], "a node's value != children + self"
        stack.extend((c, p) for c in children)


# --------------------------------------------------------------------------- HTTP tests


@pytest.mark.integration
def test_list_is_newest_first_with_index_fields(profile_dir: Any, viewer_factory: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    data = v.json("/api/v1/profiles")
    got = data["profiles"]
    assert [p["profile_id"] for p in got] == [entries["job"]["profile_id"], entries["request"]["profile_id"]]
    assert data["count"] == 2 and data["folder"]["profiles"] == 2
    assert data["folder"]["foreign_files"] == 0 and data["folder"]["unreadable_files"] == 0
    req = got[1]
    assert req["name"] == "GET /viewer-test/{id}" and req["route"] == "/viewer-test/{id}"
    assert req["trigger"] == "header,probability" and req["triggers"] == ["header", "probability"]
    assert req["trace_id"] == format(TRACE_ID, "032x") and req["span_id"] == format(SPAN_ID, "016x")
    user_attrs = {k: v for k, v in req["attributes"].items() if not k.startswith("otelprof.")}
    assert user_attrs == {"http.route": "/viewer-test/{id}", "tenant": "acme <b>"}
    assert req["attributes"]["otelprof.sampler"] in ("native", "python")  # how it was sampled
    assert req["samples"] == entries["request"]["samples"] and req["cpu_ms"] == entries["request"]["cpu_ms"]
    assert req["keep_class"] == "header"
    assert got[0]["trace_id"] is None


@pytest.mark.integration
@pytest.mark.parametrize("by_thread", [False, True])
def test_flame_tree_totals_equal_pprof_totals(profile_dir: Any, viewer_factory: Any, by_thread: bool) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    for key in ("request", "job"):
        entry = entries[key]
        detail = v.json(f"/api/v1/profiles/{entry['profile_id']}/flame" + ("?by_thread=1" if by_thread else ""))
        with open(_pprof_path(directory, entry), "rb") as f:
            decoded = decode_pprof(f.read())  # the independent test decoder
        types = [t["type"] for t in detail["sample_types"]]
        assert types == [t for t, _ in decoded.sample_types] == ["samples", "cpu", "wall"]
        totals = [sum(s.values[i] for s in decoded.samples) for i in range(3)]
        assert totals[0] > 0
        assert detail["totals"] == totals
        assert detail["tree"]["v"] == totals  # the root
        assert totals[0] == entry["samples"]
        assert abs(totals[1] / 1e6 - entry["cpu_ms"]) <= 0.001
        # every self value lands in exactly one function of the top table
        assert [sum(r["self"][i] for r in detail["top"]) for i in range(3)] == totals
        # every call path's value equals what the independent decoder sums for that path
        from_tree: dict[tuple[str, ...], list[int]] = {}
        _walk(detail["tree"], (), detail["functions"], from_tree)
        from_pprof: dict[tuple[str, ...], list[int]] = {}
        for names, values, _labels in stacks_by_function(decoded):
            root_first = tuple(reversed(names))
            for depth in range(1, len(root_first) + 1):
                acc = from_pprof.setdefault(root_first[:depth], [0, 0, 0])
                for i in range(3):
                    acc[i] += values[i]
        assert from_tree == from_pprof
        if by_thread:
            assert [c["name"] for c in detail["tree"]["c"]] == ["thread: MainThread"]
        assert detail["profile"]["profile_id"] == entry["profile_id"]
        assert detail["download"] == f"/api/v1/profiles/{entry['profile_id']}/pprof"

    detail = v.json(f"/api/v1/profiles/{entries['request']['profile_id']}/flame")
    names = {fn["name"] for fn in detail["functions"]}
    assert {"viewer_test_handler", "viewer_test_spin_cpu", "viewer_test_wait_io"} <= names
    top = {detail["functions"][r["f"]]["name"]: r for r in detail["top"]}
    # the handler calls both: its total covers theirs
    for i in range(3):
        assert top["viewer_test_handler"]["total"][i] >= (top["viewer_test_spin_cpu"]["total"][i]
                                                         + top["viewer_test_wait_io"]["total"][i])
    assert detail["labels"]["trace_id"] == [format(TRACE_ID, "032x")]
    assert detail["labels"]["span_id"] == [format(SPAN_ID, "016x")]


@pytest.mark.integration
def test_download_returns_the_exact_file(profile_dir: Any, viewer_factory: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    entry = entries["request"]
    status, headers, body = v.request(f"/api/v1/profiles/{entry['profile_id']}/pprof")
    assert status == 200
    with open(_pprof_path(directory, entry), "rb") as f:
        assert body == f.read()
    assert headers["content-type"] == "application/gzip"
    assert headers["content-disposition"] == f'attachment; filename="{entry["profile_id"]}.pb.gz"'
    status, headers, body = v.request(f"/api/v1/profiles/{entry['profile_id']}/pprof", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.integration
def test_pages_and_static_files_are_served_with_a_strict_policy(profile_dir: Any, viewer_factory: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    for path in ("/", f"/profile/{entries['job']['profile_id']}", f"/profile/{entries['job']['profile_id'][:8]}",
                 "/explore", "/compare?a=x"):
        status, headers, body = v.request(path)
        assert status == 200 and headers["content-type"].startswith("text/html"), path
        assert b'src="/static/pages.js"' in body
        assert "default-src 'self'" in headers["content-security-policy"]
    for name, ctype in (("common.js", "text/javascript"), ("flame.js", "text/javascript"),
                        ("pages.js", "text/javascript"), ("viewer.css", "text/css")):
        status, headers, body = v.request(f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(ctype) and body
        # the page must not reach the network: no absolute http(s) URLs in the assets
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", body), name
        assert b"innerHTML" not in body and b"insertAdjacentHTML" not in body, name


@pytest.mark.integration
def test_path_traversal_is_refused(work_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = work_dir
    secret = tmp_path / "secret.pb.gz"
    secret.write_bytes(b"TOP-SECRET-OUTSIDE")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-OUTSIDE")
    # an index line pointing outside the folder, and a symlinked profile pointing outside
    evil_id = "ab" * 16
    link_id = "cd" * 16
    with open(os.path.join(directory, INDEX_LOG), "a") as f:
        f.write(json.dumps({"profile_id": evil_id, "name": "evil", "file": "../secret.pb.gz"}) + "\n")
    os.symlink(str(secret), os.path.join(directory, f"20200101T000000000000Z_{link_id}.pb.gz"))
    v = viewer_factory(directory)
    paths = [
        "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static/%2e%2e%2fserver.py",
        "/static/..%5cserver.py", "/static/%2e%2e/%2e%2e/secret.txt", "/../secret.txt", "/%2e%2e/secret.txt",
        "/static//etc/passwd", "//etc/passwd", "/static/%00", "/static/viewer.css%00.js",
        "/api/v1/profiles/../../secret.txt", "/static/" + "%2e%2e/" * 12 + "etc/passwd",
        "/static/%c0%ae%c0%ae/server.py", "/index.jsonl", f"/{INDEX_DB}",
        f"/api/v1/profiles/{evil_id}", f"/api/v1/profiles/{evil_id}/pprof", f"/api/v1/profiles/{link_id}",
        f"/api/v1/profiles/{link_id}/pprof", f"/api/v1/profiles/{link_id}/flame", "/api/v1/profiles/..%2f..%2fsecret",
        "/secret.txt",
    ]
    for path in paths:
        status, _headers, body = v.request(path)
        assert status in (400, 403, 404), (path, status)
        assert b"TOP-SECRET" not in body and b"root:" not in body and b"def _route" not in body, path
    listed = v.json("/api/v1/profiles")
    assert {p["profile_id"] for p in listed["profiles"]} == {entries["job"]["profile_id"],
                                                            entries["request"]["profile_id"]}
    assert listed["folder"]["foreign_files"] == 1  # the symlink: counted, never followed
    assert b"TOP-SECRET" not in v.request("/api/v1/profiles")[2]


@pytest.mark.integration
def test_missing_or_unreadable_profile_answers_404_or_422_not_500(work_dir: Any, viewer_factory: Any) -> None:
    directory, entries = work_dir
    v = viewer_factory(directory)
    gone = entries["job"]
    assert v.request(f"/api/v1/profiles/{gone['profile_id']}/flame")[0] == 200  # cached from here on
    os.unlink(_pprof_path(directory, gone))
    v.sync()
    for path in (f"/api/v1/profiles/{gone['profile_id']}", f"/api/v1/profiles/{gone['profile_id']}/pprof",
                 f"/api/v1/profiles/{gone['profile_id']}/flame", "/api/v1/profiles/" + "0" * 32,
                 "/api/v1/profiles/not-an-id", "/profile/zz", "/nothing-here"):
        status, headers, body = v.request(path)
        assert status == 404, (path, status)
        if path.startswith("/api/"):
            assert "error" in json.loads(body)
    listed = {p["profile_id"] for p in v.json("/api/v1/profiles")["profiles"]}
    assert listed == {entries["request"]["profile_id"]}
    # a garbled pprof file is reported as unreadable, not as a server error
    with open(_pprof_path(directory, entries["request"]), "wb") as f:
        f.write(gzip.compress(b"\x0a\xff\xff\xff\xff\x0f garbage"))
    status, _headers, body = v.request(f"/api/v1/profiles/{entries['request']['profile_id']}/flame")
    assert status == 422 and "unreadable" in json.loads(body)["error"]


@pytest.mark.integration
def test_garbled_index_lines_and_a_lost_database(work_dir: Any, viewer_factory: Any) -> None:
    """Without its database, a folder is indexed again from index.jsonl; garbled lines are
    skipped and a profile whose line is lost is found by reading its file."""
    directory, entries = work_dir
    for name in os.listdir(directory):
        if name.startswith(INDEX_DB):
            os.unlink(os.path.join(directory, name))
    index = os.path.join(directory, INDEX_LOG)
    with open(index, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    garbage = [b"{not json\n", b"[1, 2, 3]\n", b'{"profile_id": 5}\n', b'{"profile_id": "zz-not-hex"}\n',
               b"\xff\xfe\x00binary\n", b'"just a string"\n', b"\n"]
    # the job's own line is lost (cut in half): its file must still be listed
    with open(index, "wb") as f:
        f.write(garbage[0] + lines[0] + b"".join(garbage[1:]) + lines[1][: len(lines[1]) // 2] + b"\n")
    v = viewer_factory(directory)
    data = v.json("/api/v1/profiles")
    by_id = {p["profile_id"]: p for p in data["profiles"]}
    assert set(by_id) == {entries["request"]["profile_id"], entries["job"]["profile_id"]}
    assert by_id[entries["request"]["profile_id"]]["name"] == "GET /viewer-test/{id}"
    adopted = by_id[entries["job"]["profile_id"]]
    assert adopted["samples"] == entries["job"]["samples"]  # read from its pprof
    assert adopted["start_unix_nano"] // 1000 == entries["job"]["start_unix_nano"] // 1000
    detail = v.json(f"/api/v1/profiles/{entries['job']['profile_id']}/flame")
    assert detail["tree"]["v"][0] == entries["job"]["samples"]


@pytest.mark.integration
def test_read_only_http_never_touches_profiles_and_checks_host(work_dir: Any, viewer_factory: Any) -> None:
    directory, entries = work_dir

    def snapshot() -> dict[str, bytes]:
        out = {}
        for n in os.listdir(directory):
            if n.endswith(".pb.gz") or n == INDEX_LOG:
                with open(os.path.join(directory, n), "rb") as f:
                    out[n] = f.read()
        return out

    before = snapshot()
    v = viewer_factory(directory)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = v.request(f"/api/v1/profiles/{entries['job']['profile_id']}", method=method, body=b"x")
        assert status == 405 and "GET" in headers["allow"]
    for path in ("/api/v1/profiles", "/api/v1/merge", "/api/v1/diff?a=&b=", "/api/v1/folder?sync=1"):
        assert v.request(path)[0] == 200
    assert snapshot() == before  # profiles and the log are never changed by the viewer
    # DNS rebinding: a foreign Host header is refused on a loopback-bound viewer
    assert v.request("/api/v1/profiles", headers={"Host": "attacker.example:8765"})[0] == 403
    assert v.request("/api/v1/profiles", headers={"Host": f"localhost:{v.port}"})[0] == 200
    assert v.request("/api/v1/profiles", headers={"Host": f"[::1]:{v.port}"})[0] == 200


@pytest.mark.integration
def test_missing_folder_lists_nothing(tmp_path: Any, viewer_factory: Any) -> None:
    v = viewer_factory(str(tmp_path / "does-not-exist"))
    data = v.json("/api/v1/profiles")
    assert data["profiles"] == [] and data["folder"]["exists"] is False and data["count"] == 0
    assert v.json("/api/v1/merge")["merge"]["profiles"] == 0
    assert v.request("/")[0] == 200
    assert not os.path.exists(tmp_path / "does-not-exist")  # the viewer creates nothing


@pytest.mark.integration
def test_new_profiles_appear_without_a_restart(tmp_path: Any, viewer_factory: Any) -> None:
    out = str(tmp_path / "live")
    v = viewer_factory(out, sync_interval=0.05)
    assert v.json("/api/v1/count")["count"] == 0
    profiler = Profiler(exporter="file", output_dir=out, min_samples=0)
    try:
        with profiler.profile("late-arrival"):
            pass
        assert profiler.force_flush(timeout=10)
    finally:
        profiler.shutdown(timeout=10)
    deadline = time.monotonic() + 30  # a bound: the background indexer runs every 50 ms here
    while v.json("/api/v1/count")["count"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert v.json("/api/v1/profiles")["profiles"][0]["name"] == "late-arrival"


@pytest.mark.integration
@pytest.mark.parametrize("command", [["-m", "otelprof_middleware.viewer"], ["-m", "otelprof_middleware", "view"]])
def test_command_line_serves_the_folder(profile_dir: Any, command: list[str]) -> None:
    directory, entries = profile_dir
    proc = subprocess.Popen([sys.executable, *command, directory, "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        conn.request("GET", "/api/v1/profiles")
        r = conn.getresponse()
        assert r.status == 200
        assert {p["profile_id"] for p in json.loads(r.read())["profiles"]} == {
            entries["job"]["profile_id"], entries["request"]["profile_id"]}
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


# --------------------------------------------------------------------------- reader unit tests


def test_reader_reads_raw_and_gzip_alike(profile_dir: Any) -> None:
    directory, entries = profile_dir
    with open(_pprof_path(directory, entries["request"]), "rb") as f:
        data = f.read()
    raw = gzip.decompress(data)
    assert read_pprof(raw).totals() == read_pprof(data).totals()
    table = FunctionTable()
    assert read_stacks(raw, table).stacks == read_stacks(data, table).stacks
    with pytest.raises(PprofError):
        read_pprof(gzip.compress(b"\x00" * 4096), max_bytes=1024)  # decompression is capped


def test_reader_handles_unpacked_fields_and_inlined_lines() -> None:
    def varint(n: int) -> bytes:
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    def field(num: int, payload: bytes | int) -> bytes:
        if isinstance(payload, int):
            return varint(num << 3) + varint(payload)
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    strings = ["", "samples", "count", "outer", "inner", "leaf", "a.py"]
    prof = b"".join(field(6, s.encode()) for s in strings)
    prof += field(1, field(1, 1) + field(2, 2))
    prof += b"".join(field(5, field(1, fid) + field(2, name) + field(4, 6)) for fid, name in ((1, 3), (2, 4), (3, 5)))
    # location 1: leaf; location 2: inner inlined into outer (callee first)
    prof += field(4, field(1, 1) + field(4, field(1, 3) + field(2, 30)))
    prof += field(4, field(1, 2) + field(4, field(1, 2) + field(2, 20)) + field(4, field(1, 1) + field(2, 10)))
    prof += field(2, field(1, 1) + field(1, 2) + field(2, 5))  # unpacked location ids and value
    prof += field(2, field(1, varint(2)) + field(2, varint(3)))  # packed
    table = FunctionTable()
    ps = read_stacks(prof, table)
    ss = StackSet(table, ps.sample_types)
    ss.add(ps)
    tree = flame_json(ss)
    names = [f["name"] for f in tree["functions"]]
    outer = tree["tree"]["c"]
    assert [names[n["f"]] for n in outer] == ["outer"] and outer[0]["v"] == [8]
    inner = outer[0]["c"][0]
    assert names[inner["f"]] == "inner" and inner["v"] == [8] and inner["s"] == [3]
    assert names[inner["c"][0]["f"]] == "leaf" and inner["c"][0]["v"] == [5] and inner["c"][0]["line"] == 30
    assert read_pprof(prof).locations[2] == [(2, 20), (1, 10)]


# --------------------------------------------------------------------------- browser tests


@pytest.mark.integration
@needs_chromium
def test_browser_renders_list_and_flame_graph(profile_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)

    listing = chromium(["--dump-dom", v.base + "/"], str(tmp_path / "ud1"))
    assert listing.returncode == 0, listing.stderr[-2000:]
    dom = listing.stdout
    rows = re.findall(r'<tr class="clickable[^"]*" data-profile-id="([0-9a-f]{32})"', dom)
    assert rows == [entries["job"]["profile_id"], entries["request"]["profile_id"]], dom[-3000:]
    assert "GET /viewer-test/{id}" in dom and "nightly-viewer-job" in dom
    assert format(TRACE_ID, "032x")[:8] in dom and "1–2 of 2 profiles" in dom

    # the selector is applied from the URL: only the job's row remains
    filtered = chromium(["--dump-dom", v.base + "/?q=nightly"], str(tmp_path / "ud1b"))
    rows = re.findall(r'data-profile-id="([0-9a-f]{32})"', filtered.stdout)
    assert rows == [entries["job"]["profile_id"]]
    # a pasted traceparent finds the request and offers to open it
    tp = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    found = chromium(["--dump-dom", v.base + "/?q=" + tp], str(tmp_path / "ud1c"))
    assert re.findall(r'data-profile-id="([0-9a-f]{32})"', found.stdout) == [entries["request"]["profile_id"]]
    assert 'id="open-match"' in found.stdout

    entry = entries["request"]
    page = chromium(["--dump-dom", f"{v.base}/profile/{entry['profile_id']}"], str(tmp_path / "ud2"))
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    m = re.search(r'<svg[^>]*id="flame".*?</svg>', dom, re.S)
    assert m, dom[-3000:]
    flame = m.group(0)
    # function names drawn by the flame graph code: as frames and as their text labels (the CPU
    # view: viewer_test_wait_io only waits, so it shows in the wall view below, not here)
    for fn in ("viewer_test_handler", "viewer_test_spin_cpu"):
        assert f'data-function="{fn}"' in flame, fn
    assert re.search(r"<text[^>]*>viewer_test_handler</text>", flame)
    assert '<button type="button" data-metric="cpu" class="active">CPU time</button>' in dom
    assert format(TRACE_ID, "032x") in dom and format(SPAN_ID, "016x") in dom
    assert f'href="/api/v1/profiles/{entry["profile_id"]}/pprof"' in dom
    assert "acme &lt;b&gt;" in dom and "<b>" not in dom  # attribute shown as text, not markup
    top_rows = re.findall(r'<tr class="clickable" data-function="([^"]+)"', dom)
    assert "viewer_test_spin_cpu" in top_rows and "viewer_test_handler" in top_rows
    # the download hint names the whole path, and the route's typical request is one click away
    assert f"go tool pprof -http=: {os.path.realpath(directory)}/{entry['file']}" in dom
    assert 'id="compare-typical"' in dom

    # a wall-time view from the URL draws the waiting function too
    wall = chromium(["--dump-dom", f"{v.base}/profile/{entry['profile_id']}?metric=wall"], str(tmp_path / "ud3"))
    assert '<button type="button" data-metric="wall" class="active">Wall time</button>' in wall.stdout
    assert 'data-function="viewer_test_wait_io"' in wall.stdout

    # a missing profile shows a message, not a blank page
    gone = chromium(["--dump-dom", f"{v.base}/profile/{'0' * 32}"], str(tmp_path / "ud4"))
    assert 'id="load-error"' in gone.stdout and "was not found" in gone.stdout


@pytest.mark.integration
@needs_chromium
def test_browser_tooltip_zoom_and_metric_switch(profile_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    entry = entries["request"]
    dt = DevTools(str(tmp_path / "ud"))
    try:
        dt.open(f"{v.base}/profile/{entry['profile_id']}")
        dt.wait_for("document.querySelectorAll('#flame g.frame').length > 3", "the flame graph")

        def box(fn: str) -> dict[str, float]:
            return dt.eval(
                f"(() => {{ const g = document.querySelector('#flame g.frame[data-function=\"{fn}\"] rect');"
                "g.scrollIntoView({block: 'center'}); const r = g.getBoundingClientRect();"
                "return {x: r.left + Math.min(r.width / 2, 20), y: r.top + r.height / 2, w: r.width}; })()")

        # hover: the tooltip names the function, its file:line, value and percentage
        b = box("viewer_test_spin_cpu")
        dt.mouse("mouseMoved", b["x"], b["y"])
        tip = dt.wait_for("(() => { const t = document.getElementById('tooltip');"
                          " return t.hidden ? '' : t.innerText; })()", "a tooltip")
        assert "viewer_test_spin_cpu" in tip and "test_viewer.py:" in tip and "%" in tip and "CPU time" in tip

        # click: zoom into the handler; the breadcrumbs show it and its callee fills the width
        width_before = box("viewer_test_spin_cpu")["w"]
        b = box("viewer_test_handler")
        dt.click(b["x"], b["y"])
        crumbs = dt.wait_for("(() => { const s = document.querySelector('#crumbs strong');"
                             " return s ? s.textContent : ''; })()", "breadcrumbs")
        assert crumbs == "viewer_test_handler"
        assert box("viewer_test_spin_cpu")["w"] >= width_before - 0.5  # sub-pixel rounding of the SVG
        assert dt.eval("document.querySelector('#flame g.ancestor') !== null")

        # metric switch: wall time becomes the active button and the top table follows
        dt.eval("document.querySelector('#metric button[data-metric=\"wall\"]').click()")
        assert dt.eval("document.querySelector('#metric button.active').dataset.metric") == "wall"
        assert "metric=wall" in dt.eval("location.search")
        heads = dt.eval("Array.from(document.querySelectorAll('#top tbody tr')).map(r => r.dataset.function)")
        assert "viewer_test_wait_io" in heads

        # Escape resets the zoom
        dt.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape",
                                           "windowsVirtualKeyCode": 27})
        assert dt.wait_for("(() => { const s = document.querySelector('#crumbs strong');"
                           " return s && s.textContent === 'all'; })()", "the zoom reset")
    finally:
        dt.close()


def test_pages_name_the_folder_as_seen_from_where_the_viewer_started(tmp_path: Any, viewer_factory: Any,
                                                                      monkeypatch: Any) -> None:
    from otelprof_middleware.viewer.server import display_path

    base = tmp_path / "work"
    d = base / "profiles"
    d.mkdir(parents=True)
    real = os.path.realpath(d)
    assert display_path(real, str(base)) == "./profiles"
    assert display_path(os.path.realpath(base), str(base)) == "."
    monkeypatch.setenv("HOME", str(tmp_path))
    assert display_path(real, str(tmp_path / "elsewhere")) == "~/work/profiles"
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert display_path(real, str(tmp_path / "elsewhere")) == real
    v = viewer_factory(str(d), relative_to=str(base))
    info = v.json("/api/v1/folder")
    assert info["display"] == "./profiles" and info["directory"] == real
