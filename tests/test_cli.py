"""The ``otelprof`` command line over hand-built folders: query, top, merge, diff and
summary with the viewer's selectors; ``go tool pprof -diff_base`` on two merges;
the review's CLI findings (L2 path following, L3 terminal escapes) and the
newcomer's (program names, ``--version``, ``--list``, id forms, helpful errors)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from helpers.pprof_decode import GO_MISSING, run_go_pprof
from helpers.profile_folder import Spec, checkout_specs, expected_stacks, frames, parse_go_raw, write
from otelprof_middleware._version import __version__ as VERSION
from otelprof_middleware.cli import main, safe
from otelprof_middleware.store.layout import INDEX_LOG

NOW = time.time_ns()
H = 3600 * 10**9
BEFORE = checkout_specs(10, NOW - 2 * H + 60 * 10**9, H // 10, slow_render=False, seed=21)
# "from=now-1h" is read when a test runs, NOW when the module was imported: AFTER starts
# 30 min after NOW - 1h (and ends 17 min before NOW), so the split holds for a suite that
# reaches these tests up to 30 min after collecting them (a loaded CI machine)
AFTER = checkout_specs(8, NOW - H + 30 * 60 * 10**9, H // 32, slow_render=True, seed=22)
IO_SPEC = Spec("GET /sleepy", NOW - 1000, [(frames("sleepy_view", "wait_for_io"), (15, 0, 150 * 10**6))],
               route="/sleepy", trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7,
               profile_id=bytes.fromhex("5eed" * 8))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("cli") / "profiles")
    write(d, BEFORE + AFTER + [IO_SPEC], service_name="shop")
    return d


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        rc = main(list(argv), out=out)
    finally:
        sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


def run_process(*argv: str, console: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    if console:
        exe = os.path.join(os.path.dirname(sys.executable), "otelprof")
        if not os.path.exists(exe):
            pytest.skip("the otelprof console script is not installed next to this Python")
        cmd = [exe, *argv]
    else:
        cmd = [sys.executable, "-m", "otelprof_middleware", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- query, top, merge, diff


def test_query_text_json_jsonl_and_count(shop: str) -> None:
    rc, out, _ = run("query", "-d", shop, "route=/checkout", "status=5xx")
    want = [s for s in BEFORE + AFTER if s.status == 500]
    assert rc == 0 and out.splitlines()[0].split()[:3] == ["start", "duration", "status"]
    assert len(out.splitlines()) == 1 + len(want) and all(" 500 " in line for line in out.splitlines()[1:])
    rc, out, _ = run("query", "-d", shop, "--format", "json", "--limit", "3", "--sort=-duration", "route=/checkout")
    data = json.loads(out)
    assert data["count"] == len(BEFORE + AFTER)
    assert [p["duration_ms"] for p in data["profiles"]] == sorted((s.duration_ms for s in BEFORE + AFTER),
                                                                   reverse=True)[:3]
    rc, out, _ = run("query", "-d", shop, "--format", "jsonl", "name=GET /sleepy")  # one shell word with a space
    (line,) = out.splitlines()
    assert json.loads(line)["profile_id"] == "5eed" * 8
    rc, out, _ = run("query", "-d", shop, "--count", "from=now-1h")
    assert rc == 0 and out.strip() == str(len(AFTER) + 1)
    rc, out, err = run("query", "-d", shop, "duraton>1s")
    assert rc == 1 and "bad selector term 'duraton>1s'" in err and "did you mean 'duration'?" in err


def test_top_is_the_merge_of_the_selection(shop: str) -> None:
    rc, out, _ = run("top", "-d", shop, "--format", "json", "--aggregate", "average", "route=/checkout", "from=now-1h")
    data = json.loads(out)
    rows = {r["name"]: r for r in data["functions"]}
    stacks = expected_stacks(AFTER)
    want = sum(v[1] for k, v in stacks.items() if k[-1] == "render_template") / len(AFTER)
    assert abs(rows["render_template"]["self"][1] - want) < 1e-3 and data["merge"]["profiles"] == len(AFTER)
    rc, out, _ = run("top", "-d", shop, "-n", "3", "route=/checkout")
    lines = out.splitlines()
    assert rc == 0 and lines[1] == "Type: cpu" and "render_template" in lines[4] and len(lines) == 2 + 2 + 3


@pytest.mark.parametrize("fmt", ["json", "collapsed", "d3", "speedscope"])
def test_merge_text_formats_to_stdout(shop: str, fmt: str) -> None:
    rc, out, _ = run("merge", "-d", shop, "--format", fmt, "--metric", "wall", "from=now-1h", "route=/checkout")
    assert rc == 0
    stacks = expected_stacks(AFTER)
    if fmt == "collapsed":
        got = {tuple(k.split(";")): int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}
        assert got == {k: v[2] for k, v in stacks.items()}
    else:
        data = json.loads(out)
        total = sum(v[2] for v in stacks.values())
        if fmt == "json":
            assert data["totals"][2] == total
        elif fmt == "d3":
            assert data["value"] == total
        else:
            assert sum(data["profiles"][2]["weights"]) == total


def test_merge_pprof_needs_a_file_and_go_tool_pprof_diff_base_works(shop: str, tmp_path: Any) -> None:
    a, b = tmp_path / "before.pb.gz", tmp_path / "after.pb.gz"
    assert run("merge", "-d", shop, "--aggregate", "average", "-o", str(a), "route=/checkout", "until=now-1h")[0] == 0
    assert run("merge", "-d", shop, "--aggregate", "average", "-o", str(b), "route=/checkout", "from=now-1h")[0] == 0
    out = run_go_pprof(["-raw"], str(b))
    if out is None:
        pytest.skip(GO_MISSING)
    _types, got = parse_go_raw(out)
    assert got == {k: [int(round(x / len(AFTER))) for x in v] for k, v in expected_stacks(AFTER).items()}
    # go tool pprof -diff_base: the base is subtracted; what remains is the per-request change
    diff = run_go_pprof(["-raw", "-diff_base", str(a)], str(b))
    assert diff is not None
    _types, raw = parse_go_raw(diff)
    net: dict[tuple[str, ...], int] = {}
    for k, v in raw.items():
        net[k] = net.get(k, 0) + v[1]
    key = ("handle_request", "middleware", "checkout_view", "render_template")
    want = (int(round(expected_stacks(AFTER)[key][1] / len(AFTER)))
            - int(round(expected_stacks(BEFORE)[key][1] / len(BEFORE))))
    assert net[key] == want and want > 0
    top = run_go_pprof(["-top", "-diff_base", str(a)], str(b))
    assert top is not None
    rows = top.splitlines()
    header = next(i for i, line in enumerate(rows) if "flat%" in line)
    assert rows[header + 1].split()[-1] == "render_template"  # the biggest flat change comes first


def test_diff_text_json_and_collapsed(shop: str) -> None:
    a, b = "route=/checkout until=now-1h", "route=/checkout from=now-1h"
    rc, out, _ = run("diff", "-d", shop, "-a", a, "-b", b, "-n", "4")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("A: route=/checkout until=now-1h  (10 profiles)")
    assert lines[1].startswith("B: route=/checkout from=now-1h  (8 profiles)")
    assert lines[2].startswith("Type: cpu, per request: A ") and "change +" in lines[2]
    assert lines[4].split()[-1] == "render_template"  # its own time grew: listed first
    assert "render_template" in out
    rc, out, _ = run("diff", "-d", shop, "-a", a, "-b", b, "--format", "json")
    data = json.loads(out)
    assert data["left_profiles"] == 10 and data["right_profiles"] == 8
    assert data["functions"][data["regressions"][0]["f"]]["name"] == "render_template"
    rc, out, _ = run("diff", "-d", shop, "-a", a, "-b", b, "--format", "collapsed", "--no-normalize", "--metric", "cpu")
    got = {tuple(k.split(";")): (int(x), int(y)) for k, x, y in (line.rsplit(" ", 2) for line in out.splitlines())}
    key = ("handle_request", "middleware", "checkout_view", "render_template")
    assert got[key] == (expected_stacks(BEFORE)[key][1], expected_stacks(AFTER)[key][1])


# --------------------------------------------------------------------------- summary (issue 15 item 5, newcomer 14)


def test_summary_picks_a_sample_type_with_data_and_says_so(shop: str) -> None:
    rc, out, _ = run("summary", shop, "--profile-id", "5eed5eed")
    assert rc == 0
    assert "Type: wall (no CPU samples in this profile: showing wall; --type cpu to force)" in out
    assert "wait_for_io" in out and "(no samples of this type)" not in out
    rc, out, _ = run("summary", shop, "--profile-id", "5eed5eed", "--type", "cpu")
    assert "Type: cpu" in out and "(no samples of this type)" in out


def test_summary_accepts_ids_in_any_form(shop: str) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for args in (["--profile-id", "5eed" * 8], ["--profile-id", "0x5EED5EED5EED"], ["--trace-id", "0x" + trace],
                 ["--trace-id", f"00-{trace}-00f067aa0ba902b7-01"], ["--trace-id", trace[:10]]):
        rc, out, err = run("summary", shop, *args)
        assert rc == 0, (args, err)
        assert out.startswith("Profile: " + "5eed" * 8), args
    rc, _out, err = run("summary", shop, "--profile-id", "ffffffffff")
    assert rc == 1 and "no profile matches 'ffffffffff'" in err and "unique prefix" in err


def test_summary_list_only_lists(shop: str) -> None:
    rc, out, _ = run("summary", shop, "--list")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(BEFORE) + len(AFTER) + 1
    assert all(line.split()[0].endswith(".pb.gz") for line in lines)
    assert "flat%" not in out and "Type:" not in out
    assert lines[-1].split()[0].endswith("5eed" * 8 + ".pb.gz")  # oldest first, newest last


def test_summary_of_a_file_and_helpful_errors(shop: str, tmp_path: Any, monkeypatch: Any) -> None:
    name = [n for n in os.listdir(shop) if n.endswith("5eed" * 8 + ".pb.gz")][0]
    rc, out, _ = run("summary", os.path.join(shop, name), "--top", "2")
    assert rc == 0 and out.startswith("File: ") and "wait_for_io" in out
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OTELPROF_OUTPUT_DIR", raising=False)
    for argv in (["summary"], ["query"], ["top"]):
        rc, _out, err = run(*argv)
        assert rc == 1
        assert f"no profile folder at {tmp_path / 'profiles'}" in err and "OTELPROF_OUTPUT_DIR" in err
        assert "file exporter" in err
    big = tmp_path / "big.pb.gz"
    with open(big, "wb") as f:
        f.truncate(11 * 1024 * 1024)
    rc, _out, err = run("summary", str(big))
    assert rc == 1 and "more than the 10,485,760 bytes a profile may have" in err


# --------------------------------------------------------------------------- the review's CLI findings


def test_l2_index_lines_never_lead_outside_the_folder(tmp_path: Any) -> None:
    """L2: index lines naming ../ paths, absolute paths or /dev/zero are never followed."""
    d = tmp_path / "p"
    write(str(d), [Spec("ok", NOW, [(frames("a"), (1, 1, 1))])])
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    with open(d / INDEX_LOG, "a") as f:
        for pid, target in (("aa" * 16, "../secret.txt"), ("bb" * 16, "/dev/zero"),
                            ("cc" * 16, "../../../../../../etc/hostname"), ("dd" * 16, str(secret))):
            f.write(json.dumps({"profile_id": pid, "name": "evil", "file": target, "start_unix_nano": NOW + 10**9}) + "\n")
    rc, out, _ = run("summary", str(d), "--list")
    assert rc == 0 and len(out.splitlines()) == 1 and "evil" not in out
    for pid in ("aa", "bb", "cc", "dd"):
        rc, out, err = run("summary", str(d), "--profile-id", pid * 16)
        assert rc == 1 and "no profile matches" in err and "TOP-SECRET" not in out + err
    rc, out, _ = run("summary", str(d))  # the newest readable profile, not an evil line
    assert rc == 0 and "Profile: " in out and "evil" not in out


def test_l3_no_terminal_control_characters_from_profile_data(tmp_path: Any) -> None:
    """L3: a request path carrying ESC/OSC sequences reaches the output escaped."""
    evil = "GET /\x1b]0;owned\x07\x1b[2J\x1b[1;1H\u202e"
    spec = Spec(evil, NOW, [(((("\x1b[31mred_fn", "/app/\x1b[2Jx.py")),), (2, 2 * 10**6, 2 * 10**6))],
                route="/\x1b[2J", trace_id=7, span_id=9)
    d = str(tmp_path / "p")
    write(d, [spec])
    outputs = []
    for argv in (["summary", d, "--list"], ["summary", d], ["query", "-d", d], ["top", "-d", d],
                 ["diff", "-d", d, "-a", "from=now-1d", "-b", "from=now-1d"]):
        rc, out, err = run(*argv)
        assert rc == 0, (argv, err)
        outputs.append(out)
    text = "".join(outputs)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;owned\\x07" in text and "\\x1b[31mred_fn" in text and "\\u202e" in text
    assert safe("a\x00b\x9bc\td") == "a\\x00b\\x9bc\\x09d"


# --------------------------------------------------------------------------- program names, version, ports (newcomer 21)


@pytest.mark.integration
def test_help_names_the_program_and_version() -> None:
    r = run_process("--help", console=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: otelprof ")
    for cmd in ("summary", "query", "top", "merge", "diff", "view"):
        assert cmd in r.stdout
    r = run_process("--help")
    assert r.stdout.startswith("usage: python -m otelprof_middleware ")
    r = run_process("view", "--help", console=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: otelprof view ")
    r = subprocess.run([sys.executable, "-m", "otelprof_middleware.viewer", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.startswith("usage: python -m otelprof_middleware.viewer ")
    r = run_process("summary", "--help")
    assert "{cpu,wall,samples}" in r.stdout and "{," not in r.stdout
    r = run_process("--version", console=True)
    assert r.returncode == 0 and r.stdout.strip() == f"otelprof-middleware {VERSION}"


@pytest.mark.integration
def test_view_on_a_busy_port_suggests_port_zero(tmp_path: Any) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        r = run_process("view", str(tmp_path), "--port", str(port), console=True)
        assert r.returncode == 2
        assert f"otelprof view: cannot listen on 127.0.0.1:{port}" in r.stderr and "--port 0" in r.stderr
    finally:
        busy.close()

