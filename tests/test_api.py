"""The viewer's JSON API (``/api/v1``) over a hand-built folder.

Merged and differential values are checked against sums computed from the
synthetic stacks themselves, and the merged pprof is decoded with
``go tool pprof -raw``; the safety findings of the review that concern the viewer
(M6, L4, L5, L15) are reproduced here and show the fixed behaviour.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import socket
import time
from typing import Any

import pytest

from helpers.pprof_decode import GO_MISSING, run_go_pprof
from helpers.profile_folder import (
    Spec,
    build,
    checkout_specs,
    expected_paths,
    expected_stacks,
    frames,
    parse_go_raw,
    write,
)
from helpers.viewer_client import q, viewer_factory  # noqa: F401  (fixture)
from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.store.layout import INDEX_LOG, profile_file_name

NOW = time.time_ns()
H = 3600 * 10**9
BEFORE = checkout_specs(12, NOW - 2 * H + 60 * 10**9, H // 12, slow_render=False, seed=11)
AFTER = checkout_specs(9, NOW - H + 60 * 10**9, H // 9, slow_render=True, seed=12)
OTHER = checkout_specs(5, NOW - 2 * H + 60 * 10**9, H // 5, slow_render=False, seed=13, route="/items/{id}")
OTHER[0].profile_id = bytes.fromhex("ab" * 16)
OTHER[1].profile_id = bytes.fromhex("ab" + "cd" * 15)
A_SEL = "route=/checkout from=now-2h until=now-1h"
B_SEL = "route=/checkout from=now-1h"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("api") / "profiles")
    write(d, BEFORE + AFTER + OTHER, service_name="shop")
    return d


def _walk(tree: dict[str, Any], functions: list[dict[str, Any]], key: str = "v") -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    stack: list[tuple[dict[str, Any], tuple[str, ...]]] = [(tree, ())]
    while stack:
        n, path = stack.pop()
        if n["f"] >= 0:
            path = path + (functions[n["f"]]["name"],)
            out[path] = n[key]
        stack.extend((c, path) for c in n.get("c", []))
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return abs(a - b) <= 1e-3 * max(1.0, abs(b))


# --------------------------------------------------------------------------- list, count, metadata


def test_list_count_and_paging_newest_first(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    everything = sorted(BEFORE + AFTER + OTHER, key=lambda s: -s.start_ns)
    page = v.json(f"/api/v1/profiles?limit=10&q={q('')}")
    assert page["count"] == len(everything) and len(page["profiles"]) == 10
    assert [p["start_unix_nano"] for p in page["profiles"]] == [s.start_ns for s in everything[:10]]
    page2 = v.json("/api/v1/profiles?limit=10&offset=10")
    assert [p["start_unix_nano"] for p in page2["profiles"]] == [s.start_ns for s in everything[10:20]]
    slow = v.json(f"/api/v1/profiles?sort=-duration&limit=3&q={q('route=/checkout')}")
    assert [p["duration_ms"] for p in slow["profiles"]] == sorted((s.duration_ms for s in BEFORE + AFTER),
                                                                   reverse=True)[:3]
    assert v.json(f"/api/v1/count?q={q('status=5xx')}")["count"] == sum(
        1 for s in BEFORE + AFTER + OTHER if s.status == 500)
    first = page["profiles"][0]
    meta = v.json(f"/api/v1/profiles/{first['profile_id'][:10]}")
    assert meta["profile_id"] == first["profile_id"] and meta["route"] and meta["status"] in (200, 500)
    assert meta["service"] == "shop" and meta["attributes"]["http.route"] == meta["route"]
    assert page["folder"]["profiles"] == len(everything)
    routes = v.json("/api/v1/values/route")["values"]
    assert {r["value"]: r["count"] for r in routes} == {"/checkout": 21, "/items/{id}": 5}


def test_ids_in_any_pasted_form(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    spec = AFTER[3]
    pid = v.json(f"/api/v1/profiles?q={q('trace=' + format(spec.trace_id, '032x'))}")["profiles"][0]["profile_id"]
    trace = format(spec.trace_id, "032x")
    for text in (trace, "0x" + trace.upper(), f"00-{trace}-{format(spec.span_id, '016x')}-01", pid[:12], trace[:14],
                 format(spec.span_id, "016x")):
        assert v.json(f"/api/v1/resolve?id={q(text)}")["profile_id"] == pid, text
        assert v.json(f"/api/v1/profiles/{q(text)}")["profile_id"] == pid, text
    status, _h, body = v.request(f"/api/v1/resolve?id={q('ab')}")
    assert status == 409 and len(json.loads(body)["matches"]) == 2 and "give more digits" in json.loads(body)["error"]
    assert v.request("/api/v1/profiles/ffffffffffff")[0] == 404


@pytest.mark.parametrize("path,term", [
    ("/api/v1/profiles?q=duraton%3E1s", "duraton>1s"),
    ("/api/v1/count?q=from%3Dyesterday", "from=yesterday"),
    ("/api/v1/merge?q=status%3Dabc", "status=abc"),
    ("/api/v1/timeline?q=route%3E3", "route>3"),
    ("/api/v1/top?q=%22unclosed", '"unclosed'),
    ("/api/v1/diff?a=route%3D/checkout&b=trace%3Dzz", "trace=zz"),
])
def test_bad_selectors_are_a_400_naming_the_term(shop: str, viewer_factory: Any, path: str, term: str) -> None:
    v = viewer_factory(shop)
    status, headers, body = v.request(path)
    assert status == 400 and headers["content-type"].startswith("application/json")
    err = json.loads(body)
    assert err["term"] == term and term in err["error"] and err["error"].startswith("bad selector term")


def test_bad_parameters_are_a_400(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    for path, text in (("/api/v1/merge?format=svg", "bad format 'svg'"), ("/api/v1/merge?aggregate=max", "aggregate"),
                       ("/api/v1/merge?metric=memory", "bad metric 'memory'"), ("/api/v1/profiles?limit=0", "limit"),
                       ("/api/v1/profiles?sort=colour", "unknown sort"), ("/api/v1/merge?view=theirs", "bad view")):
        status, _h, body = v.request(path)
        assert status == 400 and text in json.loads(body)["error"], (path, body)
    assert v.request("/api/v1/nothing")[0] == 404


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize("aggregate", ["total", "average"])
def test_merge_equals_the_sum_of_the_selected_profiles(shop: str, viewer_factory: Any, aggregate: str) -> None:
    v = viewer_factory(shop)
    specs = [s for s in BEFORE + AFTER if s.route == "/checkout"]
    scale = 1.0 / len(specs) if aggregate == "average" else 1.0
    want = {k: [x * scale for x in vals] for k, vals in expected_paths(expected_stacks(specs)).items()}
    data = v.json(f"/api/v1/merge?q={q('route=/checkout')}&aggregate={aggregate}")
    assert data["merge"] == {"profiles": len(specs), "matched": len(specs), "limit": 1000, "truncated": False,
                             "skipped": []}
    assert [t["type"] for t in data["sample_types"]] == ["samples", "cpu", "wall"]
    got = _walk(data["tree"], data["functions"])
    assert got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    total = [sum(vals[i] for vals in expected_stacks(specs).values()) * scale for i in range(3)]
    assert _close(data["totals"], total) and _close(data["tree"]["v"], total)
    # the table: self values of every function add up to the totals
    assert _close([sum(r["self"][i] for r in data["top"]) for i in range(3)], total)
    assert data["pyroscope"]["query"] == 'process_cpu:cpu:nanoseconds:cpu:nanoseconds{span_name="/checkout"}'

    # d3-flame-graph JSON: value = the path's total for the chosen metric
    d3 = v.json(f"/api/v1/merge?q={q('route=/checkout')}&aggregate={aggregate}&format=d3&metric=wall")
    stack: list[tuple[dict[str, Any], tuple[str, ...]]] = [(c, ()) for c in d3["children"]]
    seen = 0
    while stack:
        n, path = stack.pop()
        path = path + (n["name"],)
        assert _close(n["value"], want[path][2]), path
        seen += 1
        stack.extend((c, path) for c in n["children"])
    assert seen == len(want) and _close(d3["value"], total[2])

    # collapsed stacks: one line per stack, integer values of the metric
    status, headers, body = v.request(f"/api/v1/merge?q={q('route=/checkout')}&aggregate={aggregate}"
                                      "&format=collapsed&metric=cpu")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert "attachment" in headers["content-disposition"]
    lines = dict(line.rsplit(" ", 1) for line in body.decode().splitlines())
    assert {tuple(k.split(";")): int(val) for k, val in lines.items()} == {
        k: int(round(vals[1] * scale)) for k, vals in expected_stacks(specs).items()}

    # speedscope: one sampled profile per type, weights sum to the totals
    sp = v.json(f"/api/v1/merge?q={q('route=/checkout')}&aggregate={aggregate}&format=speedscope")
    assert sp["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert [p["type"] for p in sp["profiles"]] == ["sampled"] * 3
    assert _close([sum(p["weights"]) for p in sp["profiles"]], total)
    names = [f["name"] for f in sp["shared"]["frames"]]
    sp_stacks = {tuple(names[i] for i in s): w for s, w in zip(sp["profiles"][1]["samples"], sp["profiles"][1]["weights"])}
    assert all(_close(sp_stacks[k], vals[1] * scale) for k, vals in expected_stacks(specs).items())


@pytest.mark.parametrize("aggregate", ["total", "average"])
def test_merged_pprof_decoded_by_go_tool_pprof(shop: str, viewer_factory: Any, tmp_path: Any, aggregate: str) -> None:
    v = viewer_factory(shop)
    status, headers, body = v.request(f"/api/v1/merge?q={q(B_SEL)}&format=pprof&aggregate={aggregate}")
    assert status == 200 and headers["content-type"] == "application/gzip"
    assert headers["content-disposition"] == 'attachment; filename="otelprof-merge.pb.gz"'
    path = tmp_path / "merged.pb.gz"
    path.write_bytes(body)
    out = run_go_pprof(["-raw"], str(path))
    if out is None:
        pytest.skip(GO_MISSING)
    types, got = parse_go_raw(out)
    assert types == ["samples", "cpu", "wall"]
    scale = 1.0 / len(AFTER) if aggregate == "average" else 1.0
    want = {k: [int(round(x * scale)) for x in vals] for k, vals in expected_stacks(AFTER).items()}
    assert got == want


# --------------------------------------------------------------------------- diff, top, timeline


def test_diff_per_request_against_independent_sums(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    data = v.json(f"/api/v1/diff?a={q(A_SEL)}&b={q(B_SEL)}")
    assert data["normalized"] is True and data["left_profiles"] == len(BEFORE) and data["right_profiles"] == len(AFTER)
    left = expected_paths(expected_stacks(BEFORE))
    right = expected_paths(expected_stacks(AFTER))
    got_l, got_r, got_d = (_walk(data["tree"], data["functions"], k) for k in ("l", "r", "d"))
    assert got_l.keys() == set(left) | set(right)
    for path in got_l:
        lv = [x / len(BEFORE) for x in left.get(path, [0, 0, 0])]
        rv = [x / len(AFTER) for x in right.get(path, [0, 0, 0])]
        assert _close(got_l[path], lv) and _close(got_r[path], rv), path
        assert _close(got_d[path], [b - a for a, b in zip(lv, rv)]), path
    # the culprit comes first: render_template's own time grew
    names = [data["functions"][r["f"]]["name"] for r in data["regressions"]]
    assert names[0] == "render_template"
    top = data["regressions"][0]
    want = (sum(v[1] for k, v in expected_stacks(AFTER).items() if k[-1] == "render_template") / len(AFTER)
            - sum(v[1] for k, v in expected_stacks(BEFORE).items() if k[-1] == "render_template") / len(BEFORE))
    assert _close(top["delta_self"][1], want) and want > 0
    raw = v.json(f"/api/v1/diff?a={q(A_SEL)}&b={q(B_SEL)}&normalize=0")
    assert _close(raw["left_totals"], [sum(x[i] for x in expected_stacks(BEFORE).values()) for i in range(3)])
    status, _h, body = v.request(f"/api/v1/diff?a={q(A_SEL)}&b={q(B_SEL)}&format=collapsed&metric=cpu")
    assert status == 200
    lines = {line.rsplit(" ", 2)[0]: line.rsplit(" ", 2)[1:] for line in body.decode().splitlines()}
    key = "handle_request;middleware;checkout_view;render_template"
    assert [int(x) for x in lines[key]] == [
        int(round(expected_stacks(BEFORE)[tuple(key.split(";"))][1] / len(BEFORE))),
        int(round(expected_stacks(AFTER)[tuple(key.split(";"))][1] / len(AFTER)))]


def test_top_functions(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    data = v.json(f"/api/v1/top?q={q(B_SEL)}&aggregate=average")
    rows = {r["name"]: r for r in data["functions"]}
    stacks = expected_stacks(AFTER)
    assert _close(rows["render_template"]["self"],
                  [sum(v[i] for k, v in stacks.items() if k[-1] == "render_template") / len(AFTER) for i in range(3)])
    assert _close(rows["checkout_view"]["total"],
                  [sum(v[i] for v in stacks.values()) / len(AFTER) for i in range(3)])
    assert rows["checkout_view"]["self"] == [0, 0, 0]
    assert data["functions"][0]["name"] == "render_template"  # most self CPU first


@pytest.mark.parametrize("step", [600, 3600])
def test_timeline_buckets_and_points(shop: str, viewer_factory: Any, step: int) -> None:
    v = viewer_factory(shop)
    data = v.json(f"/api/v1/timeline?q={q('route=/checkout')}&step={step}")
    assert data["step_s"] == step
    specs = BEFORE + AFTER
    buckets: dict[int, list[float]] = {}
    cpu: dict[int, float] = {}
    for s in specs:
        b = s.start_ns // (step * 10**9)
        buckets.setdefault(b, []).append(s.duration_ms)
        cpu[b] = cpu.get(b, 0.0) + sum(values[1] for _f, values in s.stacks) / 1e6
    assert [b["start_unix_nano"] // (step * 10**9) for b in data["buckets"]] == sorted(buckets)
    assert max(len(d) for d in buckets.values()) >= (2 if step == 600 else 9)  # several per bucket
    for b in data["buckets"]:
        key = b["start_unix_nano"] // (step * 10**9)
        durs = sorted(buckets[key])
        assert b["profiles"] == len(durs) and abs(b["cpu_ms"] - cpu[key]) < 1e-3
        # nearest rank: the value at rank ceil(q * n)
        assert b["p50_ms"] == durs[max(1, math.ceil(0.5 * len(durs))) - 1]
        assert b["p95_ms"] == durs[max(1, math.ceil(0.95 * len(durs))) - 1]
    assert len(data["points"]) == len(specs)
    assert {p["duration_ms"] for p in data["points"]} == {s.duration_ms for s in specs}
    assert [p["start_unix_nano"] for p in data["points"]] == sorted((s.start_ns for s in specs), reverse=True)


def test_profile_flame_and_my_code_view(shop: str, viewer_factory: Any) -> None:
    v = viewer_factory(shop)
    pid = v.json(f"/api/v1/profiles?q={q(B_SEL)}&limit=1")["profiles"][0]["profile_id"]
    full = v.json(f"/api/v1/profiles/{pid}/flame")
    assert full["download"] == f"/api/v1/profiles/{pid}/pprof"
    paths = _walk(full["tree"], full["functions"])
    assert ("handle_request", "middleware", "checkout_view", "query_database", "execute", "sqlite_step") in paths
    mine = v.json(f"/api/v1/profiles/{pid}/flame?view=mycode")
    mine_paths = _walk(mine["tree"], mine["functions"])
    # framework frames above the view are gone; the library call the view makes stays as a leaf
    assert set(mine_paths) == {("checkout_view",), ("checkout_view", "render_template"),
                               ("checkout_view", "parse_json_body"), ("checkout_view", "parse_json_body", "loads"),
                               ("checkout_view", "query_database"), ("checkout_view", "query_database", "execute")}
    assert mine["totals"] == full["totals"]
    assert mine_paths[("checkout_view", "query_database", "execute")] == paths[
        ("handle_request", "middleware", "checkout_view", "query_database", "execute")]
    merged = v.json(f"/api/v1/merge?q={q(B_SEL)}&view=mycode")
    assert merged["view"] == "mycode" and merged["totals"] == v.json(f"/api/v1/merge?q={q(B_SEL)}")["totals"]


# --------------------------------------------------------------------------- robustness and the review's findings


def test_corrupt_and_foreign_files_never_break_a_page(shop: str, tmp_path: Any, viewer_factory: Any) -> None:
    import shutil

    d = str(tmp_path / "copy")
    shutil.copytree(shop, d)
    bad = "20250101T000000000000Z_" + "ee" * 16 + ".pb.gz"
    with open(os.path.join(d, bad), "wb") as f:
        f.write(gzip.compress(b"\x0a\xff\xff\xff\xff\x0f garbage"))
    with open(os.path.join(d, INDEX_LOG), "a") as f:  # a forged line gives it a row before anything reads it
        f.write(json.dumps({"profile_id": "ee" * 16, "name": "POST /checkout", "file": bad,
                            "attributes": {"http.route": "/checkout"}, "start_unix_nano": NOW - 10**9}) + "\n")
    with open(os.path.join(d, "foreign.pb.gz"), "wb") as f:
        f.write(b"whatever")
    v = viewer_factory(d)
    folder = v.json("/api/v1/folder")
    assert folder["foreign_files"] == 1 and {s["file"] for s in folder["skipped_files"]} == {"foreign.pb.gz"}
    for page in ("/", "/explore", "/compare", f"/profile/{'ee' * 16}"):
        assert v.request(page)[0] == 200
    merged = v.json(f"/api/v1/merge?q={q('route=/checkout')}")
    assert merged["merge"]["profiles"] == len(BEFORE) + len(AFTER)
    assert [s["profile_id"] for s in merged["merge"]["skipped"]] == ["ee" * 16]
    assert "unreadable" not in json.dumps(merged["tree"])  # the bad file contributes nothing
    status, _h, body = v.request(f"/api/v1/profiles/{'ee' * 16}/flame")
    assert status == 422 and "unreadable profile" in json.loads(body)["error"]
    for path in ("/api/v1/profiles", f"/api/v1/timeline?q={q('route=/checkout')}", f"/api/v1/top?q={q('route=/checkout')}",
                 f"/api/v1/diff?a={q(A_SEL)}&b={q('route=/checkout')}"):
        assert v.request(path)[0] == 200, path


def test_m6_bomb_in_the_folder_is_refused_by_the_viewer(tmp_path: Any, viewer_factory: Any) -> None:
    d = tmp_path / "p"
    write(str(d), checkout_specs(2, NOW - H, 60 * 10**9, slow_render=False))
    bomb_name = "20250101T000000000000Z_" + "bb" * 16 + ".pb.gz"
    (d / bomb_name).write_bytes(gzip.compress(b"\x12\x00" * (8 * 1024 * 1024)))
    with open(d / INDEX_LOG, "a") as f:
        f.write(json.dumps({"profile_id": "bb" * 16, "name": "bomb", "file": bomb_name}) + "\n")
    v = viewer_factory(str(d))
    for _ in range(2):  # the second time the failure is remembered, not parsed again
        status, _h, body = v.request(f"/api/v1/profiles/{'bb' * 16}/flame")
        assert status == 422 and "limit max_samples=250,000" in json.loads(body)["error"]
    assert v.json("/api/v1/merge")["merge"]["skipped"][0]["profile_id"] == "bb" * 16


def test_l5_stacks_as_deep_as_max_stack_depth(tmp_path: Any, viewer_factory: Any) -> None:
    """L5: a legitimate 2048-frame stack (max_stack_depth's maximum) is served, not a 500."""
    deep = Spec("deep", NOW, [(tuple((f"level_{i}", "/app/deep.py") for i in range(2048)), (3, 3 * 10**6, 3 * 10**6))],
                route="/deep")
    d = str(tmp_path / "p")
    (p,) = write(d, [deep])
    v = viewer_factory(d)
    for path in (f"/api/v1/profiles/{p.profile_id_hex}/flame", f"/api/v1/merge?q={q('route=/deep')}",
                 f"/api/v1/merge?q={q('route=/deep')}&format=d3", f"/api/v1/diff?a={q('route=/deep')}&b={q('route=/deep')}"):
        status, _h, body = v.request(path)
        assert status == 200, (path, body[:200])
        import sys

        old = sys.getrecursionlimit()
        sys.setrecursionlimit(20000)
        try:
            data = json.loads(body)
        finally:
            sys.setrecursionlimit(old)
        node, depth = data.get("tree", data), 0
        while node.get("c") or node.get("children"):
            node = (node.get("c") or node.get("children"))[0]
            depth += 1
        assert depth == 2048, path


def test_l4_download_headers_carry_no_data_from_the_folder(tmp_path: Any, viewer_factory: Any) -> None:
    """L4: a file named to inject headers is never served, and downloads name the id only."""
    d = tmp_path / "p"
    (p,) = write(str(d), [Spec("x", NOW, [(frames("a"), (1, 1, 1))])])
    evil = 'x"\r\nSet-Cookie: pwned=1\r\nX-Injected: yes\r\n_' + "cd" * 16 + ".pb.gz"
    (d / evil).write_bytes(encode_pprof(build(Spec("y", NOW, [(frames("b"), (1, 1, 1))]))))
    v = viewer_factory(str(d))
    for path in (f"/api/v1/profiles/{'cd' * 16}/pprof", f"/api/v1/profiles/{p.profile_id_hex}/pprof", "/api/v1/profiles"):
        status, headers, _body = v.request(path)
        assert "set-cookie" not in headers and "x-injected" not in headers
    status, headers, body = v.request(f"/api/v1/profiles/{p.profile_id_hex}/pprof")
    assert status == 200 and headers["content-disposition"] == f'attachment; filename="{p.profile_id_hex}.pb.gz"'
    assert body == (d / profile_file_name(p.start_time_ns, p.profile_id_hex)).read_bytes()
    assert v.request(f"/api/v1/profiles/{'cd' * 16}/pprof")[0] == 404


def test_l15_idle_connections_time_out_and_concurrent_ones_are_capped(tmp_path: Any, viewer_factory: Any) -> None:
    """L15: idle sockets are closed after ``idle_timeout``; beyond ``max_connections`` a
    connection gets a 503 at once instead of a thread."""
    d = str(tmp_path / "p")
    write(d, [Spec("x", NOW, [(frames("a"), (1, 1, 1))])])
    v = viewer_factory(d, idle_timeout=0.5, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", v.port), timeout=30) for _ in range(4)]
    try:
        deadline = time.monotonic() + 30
        while v.server.active_connections < 4 and time.monotonic() < deadline:  # all 4 accepted, holding a slot
            time.sleep(0.02)
        extra = socket.create_connection(("127.0.0.1", v.port), timeout=30)
        reply = extra.recv(4096)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        assert v.server.rejected_connections == 1
        for s in idle:  # the server hangs up on idle clients by itself
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30
    while v.server.active_connections > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert v.json("/api/v1/count")["count"] == 1  # and serves normally again
