"""Explore and Compare in headless Chromium, on a hand-built folder where a known
function got slower: ``/checkout``'s ``render_template`` takes about three times
as long in the last hour as in the hour before.

Each test selects, zooms and follows links the way a person would, checks what the
page's own script drew, and saves a screenshot (``$VIEWER_SCREENSHOT_DIR``; the
images in ``docs/img`` come from here).
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator
from urllib.parse import quote, unquote

import pytest

from helpers.browser import DevTools, needs_chromium
from helpers.profile_folder import Spec, checkout_specs, write
from helpers.viewer_client import viewer_factory  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, needs_chromium]

NOW = time.time_ns()
H = 3600 * 10**9
# "now-1h" is read when a test runs, NOW when the module was imported: each group lies in
# the last 29 minutes of its hour, so "from=now-2h until=now-1h" / "from=now-1h" split
# them the same way for a suite that reaches these tests up to 30 min after collecting them
BEFORE = checkout_specs(30, NOW - 2 * H + 31 * 60 * 10**9, 50 * 10**9, slow_render=False, seed=31)
AFTER = checkout_specs(30, NOW - H + 31 * 60 * 10**9, 50 * 10**9, slow_render=True, seed=32)
ITEMS = checkout_specs(20, NOW - 2 * H + 60 * 10**9, 2 * H // 20, slow_render=False, seed=33, route="/items/{id}")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("browser") / "profiles")
    write(d, BEFORE + AFTER + ITEMS, service_name="shop")
    return d


@pytest.fixture
def browser(tmp_path: Any) -> Iterator[DevTools]:
    dt = DevTools(str(tmp_path / "chromium"))
    try:
        yield dt
    finally:
        dt.close()


def started_beside(viewer_factory: Any, directory: str) -> Any:
    """The viewer as ``otelprof view profiles`` run in the folder's parent directory
    (the pages then name the folder ``./profiles``, as the screenshots in docs show)."""
    return viewer_factory(directory, relative_to=os.path.dirname(directory))


def _frame(dt: DevTools, name: str, graph: str = "#flame") -> dict[str, float]:
    return dt.center(f'{graph} g.frame[data-function="{name}"] rect')


def test_explore_select_route_zoom_and_open_a_request_from_the_scatter(shop: str, viewer_factory: Any,
                                                                       browser: DevTools) -> None:
    v = started_beside(viewer_factory, shop)
    dt = browser
    dt.open(f"{v.base}/explore?q={quote('from=now-24h')}")
    dt.wait_for("document.querySelectorAll('#selector-route option').length > 2", "the route picker")
    # pick a route: the selector and the URL follow, the merge is redone
    dt.eval("(() => { const s = document.getElementById('selector-route'); s.value = '/checkout';"
            " s.dispatchEvent(new Event('change')); })()")
    dt.wait_for("decodeURIComponent(location.search).includes('route=/checkout')", "the route in the URL")
    summary = dt.wait_for("(() => { const s = document.getElementById('merge-summary');"
                          " return s && /merged/.test(s.textContent) ? s.textContent : ''; })()", "the merge")
    assert summary.startswith(f"{len(BEFORE) + len(AFTER)} profiles merged") and "values per request" in summary
    assert dt.eval("document.getElementById('selector').value") == "from=now-24h route=/checkout"
    dt.wait_for("document.querySelectorAll('#flame g.frame').length >= 8", "the merged flame graph")
    top = dt.eval("Array.from(document.querySelectorAll('#top tbody tr')).map(r => r.dataset.function)")
    assert top[0] == "render_template"
    assert dt.eval("document.querySelector('#pyroscope .pyro-query').textContent") == (
        'process_cpu:cpu:nanoseconds:cpu:nanoseconds{span_name="/checkout"}')

    # zoom into the view function
    b = _frame(dt, "query_database")
    dt.click(b["x"], b["y"])
    assert dt.wait_for("(() => { const s = document.querySelector('#crumbs strong'); return s ? s.textContent : ''; })()",
                       "the zoom") == "query_database"
    assert dt.center('#flame g.frame[data-function="sqlite_step"] rect')["w"] > 1000  # fills the width now
    dt.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27})

    # the scatter: one point per request, 5xx in red; a click opens that request's profile
    points = dt.wait_for("document.querySelectorAll('#scatter circle.pt').length", "the scatter")
    assert points == len(BEFORE) + len(AFTER)
    assert dt.eval("document.querySelectorAll('#scatter circle.pt.s5xx').length") == sum(
        1 for s in BEFORE + AFTER if s.status == 500)
    dt.screenshot("viewer-explore.png", full_height=1150)
    slowest = dt.eval("(() => { let best = null, y = 1e9; document.querySelectorAll('#scatter circle.pt').forEach(c => {"
                      " const cy = +c.getAttribute('cy'); if (cy < y) { y = cy; best = c; } });"
                      " best.id = 'slowest'; return best.dataset.profileId; })()")
    p = dt.center("#slowest")
    dt.click(p["x"], p["y"])
    dt.wait_for(f"location.pathname === '/profile/{slowest}'", "the request's profile page")
    dt.wait_for("document.querySelectorAll('#flame g.frame').length > 3", "its flame graph")
    assert dt.eval("document.getElementById('profile-id').textContent") == slowest
    want = max(s.duration_ms for s in BEFORE + AFTER)
    assert dt.eval("document.querySelector('.meta').textContent").count(f"{want:.0f} ms") >= 1


def test_compare_shows_what_got_slower(shop: str, viewer_factory: Any, browser: DevTools) -> None:
    v = started_beside(viewer_factory, shop)
    dt = browser
    a, b = "route=/checkout from=now-2h until=now-1h", "route=/checkout from=now-1h"
    dt.open(f"{v.base}/compare?a={quote(a)}&b={quote(b)}")
    dt.wait_for("document.querySelectorAll('#flame g.frame').length >= 8", "the differential flame graph")
    change = dt.eval("document.getElementById('total-change').textContent")
    assert change.startswith("(+") and dt.eval("document.getElementById('total-change').className") == "worse"
    # the table ranks the function whose own time grew first
    first = dt.eval("(() => { const r = document.querySelector('#regressions tbody tr');"
                    " return [r.dataset.function, r.className]; })()")
    assert first == ["render_template", "clickable worse"]
    # red for more time in B, neutral for what did not change
    fill = dt.eval("document.querySelector('#flame g.frame[data-function=\"render_template\"] rect').getAttribute('fill')")
    assert fill.startswith("hsl(0,")
    steady = dt.eval("document.querySelector('#flame g.frame[data-function=\"sqlite_step\"] rect').getAttribute('fill')")
    assert not steady.startswith("hsl(0,") or "80%" in steady
    box = _frame(dt, "render_template")
    dt.mouse("mouseMoved", box["x"], box["y"])
    tip = dt.wait_for("(() => { const t = document.getElementById('tooltip'); return t.hidden ? '' : t.innerText; })()",
                      "a tooltip")
    assert "render_template" in tip and "CPU time A" in tip and "CPU time B" in tip and "change" in tip and "+" in tip
    dt.screenshot("viewer-compare.png", full_height=1000)

    # zoom, then the "my code" view: framework frames above the view disappear
    box = _frame(dt, "checkout_view")
    dt.click(box["x"], box["y"])
    assert dt.wait_for("document.querySelector('#crumbs strong').textContent", "zoom") == "checkout_view"
    dt.eval("document.getElementById('my-code').click()")
    dt.wait_for("location.search.includes('view=mycode')", "the my-code view")
    dt.wait_for("document.querySelectorAll('#flame g.frame').length >= 4", "the folded graph")
    names = dt.eval("Array.from(document.querySelectorAll('#flame g.frame')).map(g => g.dataset.function)")
    assert "handle_request" not in names and "middleware" not in names and "checkout_view" in names

    # a quick preset: fast against slow requests of the same route
    dt.eval("document.getElementById('preset-slow').click()")
    dt.wait_for("decodeURIComponent(location.search).includes('duration>')", "the preset")
    search = unquote(dt.eval("location.search").replace("+", " "))
    assert "duration<=" in search and "route=/checkout" in search


def test_profile_page_links_to_its_routes_typical_request(shop: str, viewer_factory: Any, browser: DevTools) -> None:
    v = started_beside(viewer_factory, shop)
    pid = v.json("/api/v1/profiles?q=route%3D/checkout&limit=1")["profiles"][0]["profile_id"]
    dt = browser
    dt.open(f"{v.base}/profile/{pid}")
    dt.wait_for("document.getElementById('compare-typical') !== null", "the compare link")
    b = dt.center("#compare-typical")
    dt.click(b["x"], b["y"])
    dt.wait_for("location.pathname === '/compare'", "the compare page")
    dt.wait_for("document.querySelectorAll('#flame g.frame').length >= 4", "the comparison")
    search = unquote(dt.eval("location.search").replace("+", " "))
    assert f"b=id={pid}" in search and "a=route=/checkout method=POST from=now-24h" in search
    assert dt.eval("document.getElementById('diff-summary').textContent").startswith(
        f"A: {len(BEFORE) + len(AFTER)} profiles · B: 1 profiles")


def test_list_page_status_column_sorting_and_pasted_ids(shop: str, viewer_factory: Any, browser: DevTools) -> None:
    v = started_beside(viewer_factory, shop)
    dt = browser
    dt.open(f"{v.base}/")
    dt.wait_for("document.querySelectorAll('#profiles tbody tr').length === 50", "the list")
    assert dt.eval("document.querySelectorAll('#profiles .status.s5xx').length") > 0
    dt.eval("document.querySelector('#profiles th[data-sort=\"duration\"]').click()")
    dt.wait_for("location.search.includes('sort=-duration')", "the sort")
    dt.wait_for("document.querySelector('#profiles th[data-sort=\"duration\"]').classList.contains('sorted')",
                "the rows sorted by duration")
    durations = dt.eval("Array.from(document.querySelectorAll('#profiles tbody tr td:nth-child(5)')).map(td => td.textContent)")
    assert [float(d.split()[0]) for d in durations] == sorted((float(d.split()[0]) for d in durations), reverse=True)
    assert durations[0] == f"{max(s.duration_ms for s in BEFORE + AFTER + ITEMS):.0f} ms"
    dt.screenshot("viewer-list.png", full_height=720)
    spec = AFTER[7]
    pasted = "0x" + format(spec.trace_id, "032x").upper()
    dt.eval(f"(() => {{ const s = document.getElementById('search'); s.value = {pasted!r};"
            " document.getElementById('apply').click(); })()")
    dt.wait_for("document.getElementById('open-match') !== null", "the single match")
    assert dt.eval("document.querySelectorAll('#profiles tbody tr').length") == 1
    dt.eval("document.getElementById('search').value = 'duraton>1s'; document.getElementById('apply').click()")
    err = dt.wait_for("(() => { const e = document.getElementById('selector-error'); return e ? e.textContent : ''; })()",
                      "the selector error")
    assert "bad selector term 'duraton>1s'" in err and "did you mean 'duration'?" in err


def test_a_stack_as_deep_as_max_stack_depth_is_drawn(tmp_path: Any, viewer_factory: Any, browser: DevTools) -> None:
    """L5 in the page: 2048 frames (max_stack_depth's maximum) are all drawn."""
    deep = Spec("deep", NOW, [(tuple((f"level_{i}", "/app/deep.py") for i in range(2048)), (3, 3 * 10**6, 3 * 10**6))],
                route="/deep")
    d = str(tmp_path / "p")
    (p,) = write(d, [deep])
    v = viewer_factory(d)
    dt = browser
    dt.open(f"{v.base}/profile/{p.profile_id_hex}")
    count = dt.wait_for("document.querySelectorAll('#flame g.frame').length", "the deep flame graph")
    assert count == 2049  # the root and 2048 frames
    assert dt.eval("document.querySelector('#flame g.frame[data-function=\"level_2047\"]') !== null")


def test_profile_page_explains_a_thin_profile(tmp_path: Any, viewer_factory: Any, browser: DevTools) -> None:
    """The profiler's own attributes (otelprof.*) are shown in a readable block, with a
    note when they explain why a profile has few samples."""
    spec = checkout_specs(1, NOW - 60 * 10**9, 1, slow_render=True, seed=41)[0]
    spec.attributes.update({"otelprof.sampler": "native", "otelprof.effective_hz": 25, "otelprof.governor_level": 2,
                            "otelprof.ticks_missed": 14, "otelprof.sample_hz": 100})
    d = str(tmp_path / "profiles")
    (p,) = write(d, [spec])
    v = started_beside(viewer_factory, d)
    dt = browser
    dt.open(f"{v.base}/profile/{p.profile_id_hex}", height=900)
    dt.wait_for("document.querySelectorAll('#flame g.frame').length >= 8", "the flame graph")
    facts = dt.eval("Object.fromEntries(Array.from(document.querySelectorAll('#profiler-facts [data-key]'))"
                    ".map(d => [d.dataset.key, d.innerText]))")
    assert facts["otelprof.governor_level"] == "Overhead governor level\n2"
    assert facts["otelprof.ticks_missed"] == "Sampler ticks missed\n14"
    assert facts["otelprof.effective_hz"] == "Effective sampling rate (Hz)\n25"
    assert facts["otelprof.sampler"] == "Sampler\nnative"
    note = dt.eval("document.getElementById('thin-note').textContent")
    assert "overhead governor lowered the sampling rate" in note and "14 sampler ticks were missed" in note
    # the profiler's attributes are not repeated among the request's own
    assert "otelprof.governor_level" not in dt.eval("document.getElementById('attributes').textContent")
    assert dt.eval("document.getElementById('status').textContent") == str(spec.status)
    # the folder as it was named where the viewer started; the whole path on hover
    assert dt.eval("document.getElementById('folder').textContent") == "./profiles"
    assert dt.eval("document.getElementById('folder').title") == os.path.realpath(d)
    fname = v.json(f"/api/v1/profiles/{p.profile_id_hex}")["file"]
    assert dt.eval("document.getElementById('pprof-command').textContent") == f"go tool pprof -http=: ./profiles/{fname}"
    assert dt.eval("document.getElementById('pprof-command').title") == os.path.join(os.path.realpath(d), fname)
    dt.screenshot("viewer-profile.png", full_height=900)
