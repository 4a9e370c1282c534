"""The bundled local viewer (``python -m otelprof_middleware.viewer``).

Profiles are made by the real Profiler with the ``file`` exporter; the viewer
server runs on an ephemeral 127.0.0.1 port and is driven over HTTP.  The flame
tree is cross-checked against the independent test decoder
(``helpers.pprof_decode``).  The browser tests load the pages in headless
Chromium (Debian package ``chromium``) and check the DOM the page's own script
rendered; they are skipped when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import base64
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
from typing import Any, Iterator

import pytest

from helpers.pprof_decode import decode_pprof, stacks_by_function
from otelprof_middleware import Profiler, SpanLink
from otelprof_middleware.viewer import make_server
from otelprof_middleware.viewer.pprof_reader import PprofError, flame_tree, read_pprof

CHROMIUM = "/usr/bin/chromium"
NO_CHROMIUM = ("headless Chromium not installed at /usr/bin/chromium "
               "(apt-get install -y chromium): browser tests of the viewer skipped")

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
SAMPLE_BOUND_S = 30.0  # safety bound only: the loops below end as soon as a sample is seen


# --------------------------------------------------------------------------- workload


def _sampled(session: Any, func: Any) -> bool:
    """True once the session holds a sample whose stack contains ``func``'s code."""
    code = func.__code__
    try:
        entries = list(session.stacks.entries.values())
    except RuntimeError:  # the sampler changed the dict while we copied it
        return False
    return any(code in rec[3] for rec in entries)


def viewer_test_spin_cpu(session: Any) -> int:
    x = 0
    deadline = time.monotonic() + SAMPLE_BOUND_S
    while not _sampled(session, viewer_test_spin_cpu) and time.monotonic() < deadline:
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


class Viewer:
    def __init__(self, directory: str) -> None:
        self.server = make_server(directory, "127.0.0.1", 0)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=bool(headers and "Host" in headers))
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, path: str) -> Any:
        status, _headers, body = self.request(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def viewer_factory() -> Iterator[Any]:
    made: list[Viewer] = []

    def make(directory: str) -> Viewer:
        v = Viewer(directory)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


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
    data = v.json("/api/profiles")
    got = data["profiles"]
    assert [p["profile_id"] for p in got] == [entries["job"]["profile_id"], entries["request"]["profile_id"]]
    assert data["skipped_lines"] == 0 and data["available"] == 2
    req = got[1]
    assert req["name"] == "GET /viewer-test/{id}"
    assert req["trigger"] == "header,probability"
    assert req["trace_id"] == format(TRACE_ID, "032x") and req["span_id"] == format(SPAN_ID, "016x")
    user_attrs = {k: v for k, v in req["attributes"].items() if not k.startswith("otelprof.")}
    assert user_attrs == {"http.route": "/viewer-test/{id}", "tenant": "acme <b>"}
    assert req["attributes"]["otelprof.sampler"] in ("native", "python")  # how it was sampled
    assert req["available"] is True and req["orphan"] is False
    assert req["samples"] == entries["request"]["samples"] and req["cpu_ms"] == entries["request"]["cpu_ms"]
    assert got[0]["trace_id"] is None


@pytest.mark.integration
@pytest.mark.parametrize("by_thread", [False, True])
def test_flame_tree_totals_equal_pprof_totals(profile_dir: Any, viewer_factory: Any, by_thread: bool) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    for key in ("request", "job"):
        entry = entries[key]
        detail = v.json(f"/api/profiles/{entry['profile_id']}" + ("?by_thread=1" if by_thread else ""))
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
        assert detail["download"] == f"/api/profiles/{entry['profile_id']}/pprof"

    detail = v.json(f"/api/profiles/{entries['request']['profile_id']}")
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
    status, headers, body = v.request(f"/api/profiles/{entry['profile_id']}/pprof")
    assert status == 200
    with open(_pprof_path(directory, entry), "rb") as f:
        assert body == f.read()
    assert headers["content-type"] == "application/gzip"
    assert entry["file"] in headers["content-disposition"] and "attachment" in headers["content-disposition"]
    status, headers, body = v.request(f"/api/profiles/{entry['profile_id']}/pprof", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.integration
def test_pages_and_static_files_are_served_with_a_strict_policy(profile_dir: Any, viewer_factory: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    for path in ("/", f"/profile/{entries['job']['profile_id']}"):
        status, headers, body = v.request(path)
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'src="/static/viewer.js"' in body
        assert "default-src 'self'" in headers["content-security-policy"]
    for name, ctype in (("viewer.js", "text/javascript"), ("viewer.css", "text/css")):
        status, headers, body = v.request(f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(ctype) and body
        # the page must not reach the network: no absolute http(s) URLs in the assets
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", body), name


@pytest.mark.integration
def test_path_traversal_is_refused(work_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = work_dir
    secret = tmp_path / "secret.pb.gz"
    secret.write_bytes(b"TOP-SECRET-OUTSIDE")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-OUTSIDE")
    # an index line pointing outside the folder, and a symlinked profile pointing outside
    evil_id = "ab" * 16
    link_id = "cd" * 16
    with open(os.path.join(directory, "index.jsonl"), "a") as f:
        f.write(json.dumps({"profile_id": evil_id, "name": "evil", "file": "../secret.pb.gz"}) + "\n")
    os.symlink(str(secret), os.path.join(directory, f"20200101T000000000000Z_{link_id}.pb.gz"))
    v = viewer_factory(directory)
    paths = [
        "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static/%2e%2e%2fserver.py",
        "/static/..%5cserver.py", "/static/%2e%2e/%2e%2e/secret.txt", "/../secret.txt", "/%2e%2e/secret.txt",
        "/static//etc/passwd", "//etc/passwd", "/static/%00", "/static/viewer.js%00.css", "/api/profiles/../../secret.txt",
        "/static/" + "%2e%2e/" * 12 + "etc/passwd", "/static/%c0%ae%c0%ae/server.py", "/index.jsonl",
        f"/api/profiles/{evil_id}", f"/api/profiles/{evil_id}/pprof", f"/api/profiles/{link_id}",
        f"/api/profiles/{link_id}/pprof", "/api/profiles/..%2f..%2fsecret", "/secret.txt",
    ]
    for path in paths:
        status, _headers, body = v.request(path)
        assert status in (400, 403, 404), (path, status)
        assert b"TOP-SECRET" not in body and b"root:" not in body and b"def _route" not in body, path
    listed = v.json("/api/profiles")["profiles"]
    evil = [p for p in listed if p["profile_id"] == evil_id][0]
    assert evil["available"] is False and evil["file"] is None  # the index's path is never followed
    assert b"TOP-SECRET" not in v.request("/api/profiles")[2]


@pytest.mark.integration
def test_missing_or_unreadable_profile_answers_404_or_422_not_500(work_dir: Any, viewer_factory: Any) -> None:
    directory, entries = work_dir
    v = viewer_factory(directory)
    gone = entries["job"]
    assert v.request(f"/api/profiles/{gone['profile_id']}")[0] == 200  # cached from here on
    os.unlink(_pprof_path(directory, gone))
    for path in (f"/api/profiles/{gone['profile_id']}", f"/api/profiles/{gone['profile_id']}/pprof",
                 "/api/profiles/" + "0" * 32, "/api/profiles/not-an-id", "/profile/zz", "/nothing-here"):
        status, headers, body = v.request(path)
        assert status == 404, (path, status)
        if path.startswith("/api/"):
            assert "error" in json.loads(body)
    listed = {p["profile_id"]: p for p in v.json("/api/profiles")["profiles"]}
    assert listed[gone["profile_id"]]["available"] is False
    assert listed[entries["request"]["profile_id"]]["available"] is True
    # a garbled pprof file is reported as unreadable, not as a server error
    with open(_pprof_path(directory, entries["request"]), "wb") as f:
        f.write(gzip.compress(b"\x0a\xff\xff\xff\xff\x0f garbage"))
    status, _headers, body = v.request(f"/api/profiles/{entries['request']['profile_id']}")
    assert status == 422 and "unreadable" in json.loads(body)["error"]


@pytest.mark.integration
def test_garbled_index_lines_are_skipped(work_dir: Any, viewer_factory: Any) -> None:
    directory, entries = work_dir
    index = os.path.join(directory, "index.jsonl")
    with open(index, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    garbage = [b"{not json\n", b"[1, 2, 3]\n", b'{"profile_id": 5}\n', b'{"profile_id": "zz-not-hex"}\n',
               b"\xff\xfe\x00binary\n", b'"just a string"\n', b"\n", b'{"profile_id": "' + b"a" * 20]
    # the job's own line is lost (garbled): its file must still be listed as an orphan
    with open(index, "wb") as f:
        f.write(garbage[0] + lines[0] + b"".join(garbage[1:-1]) + lines[1][: len(lines[1]) // 2] + b"\n" + garbage[-1])
    v = viewer_factory(directory)
    data = v.json("/api/profiles")
    assert data["skipped_lines"] == 8  # 7 garbage lines with content + the half line
    by_id = {p["profile_id"]: p for p in data["profiles"]}
    assert set(by_id) == {entries["request"]["profile_id"], entries["job"]["profile_id"]}
    assert by_id[entries["request"]["profile_id"]]["name"] == "GET /viewer-test/{id}"
    orphan = by_id[entries["job"]["profile_id"]]
    assert orphan["orphan"] is True and orphan["available"] is True and orphan["file"] == entries["job"]["file"]
    assert orphan["start_unix_nano"] // 1000 == entries["job"]["start_unix_nano"] // 1000  # from the file name
    detail = v.json(f"/api/profiles/{entries['job']['profile_id']}")
    assert detail["tree"]["v"][0] == entries["job"]["samples"]
    # a line appended later is picked up without a restart, even glued to the torn last line
    with open(index, "ab") as f:
        f.write(lines[1])
    data = v.json("/api/profiles")
    by_id = {p["profile_id"]: p for p in data["profiles"]}
    assert by_id[entries["job"]["profile_id"]]["name"] == "nightly-viewer-job"
    assert by_id[entries["job"]["profile_id"]]["orphan"] is False
    assert data["skipped_lines"] == 8


@pytest.mark.integration
def test_read_only_and_host_checked(work_dir: Any, viewer_factory: Any) -> None:
    directory, entries = work_dir
    before = sorted(os.listdir(directory))
    v = viewer_factory(directory)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = v.request(f"/api/profiles/{entries['job']['profile_id']}", method=method, body=b"x")
        assert status == 405 and "GET" in headers["allow"]
    assert sorted(os.listdir(directory)) == before
    # DNS rebinding: a foreign Host header is refused on a loopback-bound viewer
    assert v.request("/api/profiles", headers={"Host": "attacker.example:8765"})[0] == 403
    assert v.request("/api/profiles", headers={"Host": f"localhost:{v.port}"})[0] == 200
    assert v.request("/api/profiles", headers={"Host": f"[::1]:{v.port}"})[0] == 200


@pytest.mark.integration
def test_missing_folder_lists_nothing(tmp_path: Any, viewer_factory: Any) -> None:
    v = viewer_factory(str(tmp_path / "does-not-exist"))
    data = v.json("/api/profiles")
    assert data["profiles"] == [] and data["directory_exists"] is False
    assert v.request("/")[0] == 200


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
        conn.request("GET", "/api/profiles")
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


def test_reader_rejects_bad_input_with_pprof_error_only(profile_dir: Any) -> None:
    directory, entries = profile_dir
    with open(_pprof_path(directory, entries["request"]), "rb") as f:
        data = f.read()
    raw = gzip.decompress(data)
    assert read_pprof(raw).totals() == read_pprof(data).totals()  # raw and gzip'd
    for bad in (b"", b"\x1f\x8b", data[: len(data) // 2], raw[: len(raw) // 2], b"\x0f" * 20, b"\x07\x01"):
        try:
            read_pprof(bad)
        except PprofError:
            pass
    with pytest.raises(PprofError):
        read_pprof(gzip.compress(b"\x00" * 4096), max_bytes=1024)  # decompression is capped
    # flipping bytes anywhere gives a profile or a PprofError, never another exception
    for i in range(0, len(raw), max(1, len(raw) // 300)):
        mutated = raw[:i] + bytes([raw[i] ^ 0xA5]) + raw[i + 1:]
        try:
            flame_tree(read_pprof(mutated))
        except PprofError:
            pass


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
    tree = flame_tree(read_pprof(prof))
    names = [f["name"] for f in tree["functions"]]
    outer = tree["tree"]["c"]
    assert [names[n["f"]] for n in outer] == ["outer"] and outer[0]["v"] == [8]
    inner = outer[0]["c"][0]
    assert names[inner["f"]] == "inner" and inner["v"] == [8] and inner["s"] == [3]
    assert names[inner["c"][0]["f"]] == "leaf" and inner["c"][0]["v"] == [5] and inner["c"][0]["line"] == 30


# --------------------------------------------------------------------------- browser tests


def _chromium(args: list[str], user_data: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={user_data}",
           "--window-size=1280,1000", "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=NO_CHROMIUM)


@pytest.mark.integration
@needs_chromium
def test_browser_renders_list_and_flame_graph(profile_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)

    listing = _chromium(["--dump-dom", v.base + "/"], str(tmp_path / "ud1"))
    assert listing.returncode == 0, listing.stderr[-2000:]
    dom = listing.stdout
    rows = re.findall(r'<tr class="clickable[^"]*" data-profile-id="([0-9a-f]{32})"', dom)
    assert rows == [entries["job"]["profile_id"], entries["request"]["profile_id"]], dom[-3000:]
    assert "GET /viewer-test/{id}" in dom and "nightly-viewer-job" in dom
    assert format(TRACE_ID, "032x")[:8] in dom and "2 shown of 2 profiles" in dom

    # the filters are applied from the URL: only the job's row remains
    filtered = _chromium(["--dump-dom", v.base + "/?q=nightly"], str(tmp_path / "ud1b"))
    rows = re.findall(r'data-profile-id="([0-9a-f]{32})"', filtered.stdout)
    assert rows == [entries["job"]["profile_id"]]

    entry = entries["request"]
    page = _chromium(["--dump-dom", f"{v.base}/profile/{entry['profile_id']}"], str(tmp_path / "ud2"))
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
    assert f'href="/api/profiles/{entry["profile_id"]}/pprof"' in dom
    assert "acme &lt;b&gt;" in dom and "<b>" not in dom  # attribute shown as text, not markup
    top_rows = re.findall(r'<tr class="clickable" data-function="([^"]+)"', dom)
    assert "viewer_test_spin_cpu" in top_rows and "viewer_test_handler" in top_rows

    # a wall-time view from the URL draws the waiting function too
    wall = _chromium(["--dump-dom", f"{v.base}/profile/{entry['profile_id']}?metric=wall"], str(tmp_path / "ud3"))
    assert '<button type="button" data-metric="wall" class="active">Wall time</button>' in wall.stdout
    assert 'data-function="viewer_test_wait_io"' in wall.stdout

    # a missing profile shows a message, not a blank page
    gone = _chromium(["--dump-dom", f"{v.base}/profile/{'0' * 32}"], str(tmp_path / "ud4"))
    assert 'id="load-error"' in gone.stdout and "was not found" in gone.stdout

    shot_dir = os.environ.get("VIEWER_SCREENSHOT_DIR") or str(tmp_path)
    for name, url in (("viewer-list.png", v.base + "/"), ("viewer-profile.png", f"{v.base}/profile/{entry['profile_id']}")):
        path = os.path.join(shot_dir, name)
        shot = _chromium([f"--screenshot={path}", url], str(tmp_path / ("ud-" + name)))
        assert shot.returncode == 0, shot.stderr[-2000:]
        with open(path, "rb") as f:
            png = f.read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# --- interaction through the DevTools protocol over a pipe (no websocket library needed)


class _DevTools:
    def __init__(self, user_data: str) -> None:
        import fcntl

        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # move the child's ends above 9, so that they never are fd 3 or 4 themselves
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = high
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={user_data}", "--window-size=1280,1000",
               "--remote-debugging-pipe", "about:blank"]

        # the protocol pipe is fd 3 (commands) and fd 4 (replies); bash moves our pipe ends there
        shell = (f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-')
        self.proc = subprocess.Popen(["/bin/bash", "-c", shell, *cmd], pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.session = ""

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
             timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                import select

                left = deadline - time.monotonic()
                assert left > 0, f"no DevTools reply to {method}"
                ready, _, _ = select.select([self._from_child], [], [], left)
                if ready:
                    chunk = os.read(self._from_child, 1 << 16)
                    assert chunk, "Chromium closed the DevTools pipe"
                    self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def eval(self, expr: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait_for(self, expr: str, what: str) -> Any:
        deadline = time.monotonic() + 30  # a bound, not a timing assertion
        while time.monotonic() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never showed {what}")

    def mouse(self, kind: str, x: float, y: float) -> None:
        params: dict[str, Any] = {"type": kind, "x": x, "y": y}
        if kind in ("mousePressed", "mouseReleased"):
            params.update(button="left", clickCount=1)
        self.send("Input.dispatchMouseEvent", params)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.mark.integration
@needs_chromium
def test_browser_tooltip_zoom_and_metric_switch(profile_dir: Any, viewer_factory: Any, tmp_path: Any) -> None:
    directory, entries = profile_dir
    v = viewer_factory(directory)
    entry = entries["request"]
    dt = _DevTools(str(tmp_path / "ud"))
    try:
        target = dt.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        dt.session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        dt.send("Page.enable")
        dt.send("Page.navigate", {"url": f"{v.base}/profile/{entry['profile_id']}"})
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
        dt.mouse("mousePressed", b["x"], b["y"])
        dt.mouse("mouseReleased", b["x"], b["y"])
        crumbs = dt.wait_for("(() => { const s = document.querySelector('#crumbs strong');"
                             " return s ? s.textContent : ''; })()", "breadcrumbs")
        assert crumbs == "viewer_test_handler"
        assert box("viewer_test_spin_cpu")["w"] >= width_before
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

        shot = dt.send("Page.captureScreenshot", {"format": "png"})
        png = base64.b64decode(shot["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        shot_dir = os.environ.get("VIEWER_SCREENSHOT_DIR")
        if shot_dir:
            with open(os.path.join(shot_dir, "viewer-interaction.png"), "wb") as f:
                f.write(png)
    finally:
        dt.close()
