"""The selector language against a hand-built folder: every key, operator and time
form selects exactly what a plain Python filter over the same specs selects, and
every mistake names the bad term."""

from __future__ import annotations

import calendar
import time
from typing import Callable

import pytest

from helpers.profile_folder import Spec, frames, write
from otelprof_middleware.store.index import ProfileIndex
from otelprof_middleware.store.selector import SelectorError, parse_selector, parse_time

NOW = time.time()
NOW_NS = int(NOW * 1e9)
MIN = 60 * 10**9
ROUTES = ["/checkout", "/items/{id}", "/api/v1/users", "/health"]
METHODS = ["GET", "POST"]
STATUSES = [200, 201, 404, 500, 503, None]
TRIGGERS = [("probability",), ("slow",), ("error", "probability"), ("header",), ("high_cpu", "slow")]


def _specs() -> list[Spec]:
    out = []
    for i in range(60):
        route = ROUTES[i % 4]
        method = METHODS[i % 2]
        cpu_units = i % 7 + 1
        out.append(Spec(
            name=f"{method} {route}" if i % 5 else f"job-{i}",
            start_ns=NOW_NS - (60 - i) * MIN,  # one a minute, the last one a minute ago
            route=route if i % 5 else "",
            method=method, status=STATUSES[i % 6], triggers=TRIGGERS[i % 5], duration_ms=float(10 * (i + 1)),
            stacks=[(frames("main", "work"), (cpu_units, cpu_units * 10**6, cpu_units * 2 * 10**6))],
            trace_id=(0x4BF92F3577B34DA6A3CE929D0E0E0000 + i) if i % 3 else 0, span_id=0x00F067AA0BA90000 + i,
            attributes={"tenant.id": ["acme", "globex", "initech"][i % 3], "batch": i, "region": "eu west"},
            profile_id=bytes([i]) * 16,
        ))
    return out


SPECS = _specs()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ProfileIndex:
    d = str(tmp_path_factory.mktemp("sel") / "p")
    write(d, SPECS, service_name="shop")
    return ProfileIndex(d)


def _names(index: ProfileIndex, selector: str) -> list[str]:
    return sorted(r["profile_id"] for r in index.query(parse_selector(selector, now=NOW), limit=1000))


def _want(pred: Callable[[int, Spec], bool]) -> list[str]:
    return sorted(s.profile_id.hex() for i, s in enumerate(SPECS) if pred(i, s))


def _route(s: Spec) -> str:
    return s.route


CASES: list[tuple[str, Callable[[int, Spec], bool]]] = [
    ("", lambda i, s: True),
    ("route=/checkout", lambda i, s: s.route == "/checkout"),
    ("route=/checkout|/health", lambda i, s: s.route in ("/checkout", "/health")),
    ("route!=/checkout", lambda i, s: s.route != "/checkout"),
    ("route=/api/*", lambda i, s: s.route.startswith("/api/")),
    ("route~ITEMS", lambda i, s: "items" in s.route),
    ("method=post", lambda i, s: bool(s.route) and s.method == "POST"),
    ('name="GET /items/{id}"', lambda i, s: s.name == "GET /items/{id}"),
    ("name=job-*", lambda i, s: s.name.startswith("job-")),
    ("service=shop", lambda i, s: True),
    ("service=other", lambda i, s: False),
    ("status=5xx", lambda i, s: s.status is not None and 500 <= s.status < 600),
    ("status=404", lambda i, s: s.status == 404),
    ("status>=404", lambda i, s: s.status is not None and s.status >= 404),
    ("status<300", lambda i, s: s.status is not None and s.status < 300),
    ("status!=5xx", lambda i, s: s.status is None or not 500 <= s.status < 600),
    ("status=4xx|5xx", lambda i, s: s.status is not None and s.status >= 400),
    ("trigger=slow", lambda i, s: "slow" in s.triggers),
    ("trigger=error|header", lambda i, s: bool({"error", "header"} & set(s.triggers))),
    ("trigger!=probability", lambda i, s: "probability" not in s.triggers),
    ("duration>250ms", lambda i, s: s.duration_ms > 250),
    ("duration>=0.25s", lambda i, s: s.duration_ms >= 250),
    ("duration<100", lambda i, s: s.duration_ms < 100),
    ("cpu>5ms", lambda i, s: (i % 7 + 1) > 5),
    ("wall<=4ms", lambda i, s: 2 * (i % 7 + 1) <= 4),
    ("samples=3", lambda i, s: i % 7 + 1 == 3),
    ("tenant.id=acme", lambda i, s: s.attributes["tenant.id"] == "acme"),
    ("attr.batch>50", lambda i, s: s.attributes["batch"] > 50),
    ("attr.batch=7", lambda i, s: s.attributes["batch"] == 7),
    ('attr.region="eu west"', lambda i, s: True),
    ("tenant.id~NIT", lambda i, s: "nit" in s.attributes["tenant.id"]),
    ("tenant.id!=acme", lambda i, s: s.attributes["tenant.id"] != "acme"),
    ("from=now-10m", lambda i, s: s.start_ns >= NOW_NS - 10 * MIN),
    ("from=now-30m until=now-20m", lambda i, s: NOW_NS - 30 * MIN <= s.start_ns < NOW_NS - 20 * MIN),
    (f"from={int(NOW) - 600}", lambda i, s: s.start_ns >= (int(NOW) - 600) * 10**9),
    (f"until={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(NOW - 1800))}",
     lambda i, s: s.start_ns < calendar.timegm(time.gmtime(NOW - 1800)) * 10**9),
    ("route=/checkout status=5xx trigger=probability",
     lambda i, s: s.route == "/checkout" and s.status is not None and s.status >= 500 and "probability" in s.triggers),
    ("trace=4bf92f3577b34da6a3ce929d0e0e0007", lambda i, s: s.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E0007),
    ("trace=0x4BF92F3577B34DA6A3CE929D0E0E0007", lambda i, s: s.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E0007),
    ("trace=00-4bf92f3577b34da6a3ce929d0e0e0007-00f067aa0ba90007-01",
     lambda i, s: s.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E0007),
    ("trace=4bf92f35", lambda i, s: bool(s.trace_id)),
    ("span=00f067aa0ba9000a", lambda i, s: bool(s.trace_id) and s.span_id == 0x00F067AA0BA9000A),
    ("id=0707", lambda i, s: i == 7),
    ("0x4bf92f3577b34da6a3ce929d0e0e0008", lambda i, s: s.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E0008),
    ("00-4bf92f3577b34da6a3ce929d0e0e0008-00f067aa0ba90008-01",
     lambda i, s: s.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E0008),
    ("0a0a0a0a", lambda i, s: i == 10),
    ("checkout", lambda i, s: "checkout" in s.name or "checkout" in s.route),
]


@pytest.mark.parametrize("selector,pred", CASES, ids=[c[0] or "(empty)" for c in CASES])
def test_selector_selects_what_a_python_filter_selects(index: ProfileIndex, selector: str,
                                                       pred: Callable[[int, Spec], bool]) -> None:
    want = _want(pred)
    assert _names(index, selector) == want
    assert index.count(parse_selector(selector, now=NOW)) == len(want)


def test_sorting_and_paging(index: ProfileIndex) -> None:
    rows = index.query(parse_selector(""), limit=5, sort="-duration")
    assert [r["duration_ms"] for r in rows] == [600.0, 590.0, 580.0, 570.0, 560.0]
    page2 = index.query(parse_selector(""), limit=5, offset=5, sort="-duration")
    assert [r["duration_ms"] for r in page2] == [550.0, 540.0, 530.0, 520.0, 510.0]
    newest = index.query(parse_selector(""), limit=3)
    assert [r["profile_id"] for r in newest] == [SPECS[i].profile_id.hex() for i in (59, 58, 57)]
    with pytest.raises(ValueError, match="unknown sort 'colour'"):
        index.query(parse_selector(""), sort="colour")


def test_id_resolution(index: ProfileIndex) -> None:
    assert index.resolve("0707") == [SPECS[7].profile_id.hex()]
    assert index.resolve("0x" + SPECS[7].profile_id.hex().upper()) == [SPECS[7].profile_id.hex()]
    assert index.resolve("00-4bf92f3577b34da6a3ce929d0e0e0008-00f067aa0ba90008-01") == [SPECS[8].profile_id.hex()]
    assert len(index.resolve("4bf92f35")) == 2  # many traces: ambiguous
    assert index.resolve("ffffffff") == [] and index.resolve("not an id") == []


@pytest.mark.parametrize("selector,term,problem", [
    ("duraton>1s", "duraton>1s", "unknown key 'duraton' (did you mean 'duration'?)"),
    ("route=/a statsu=5xx", "statsu=5xx", "did you mean 'status'?"),
    ("from=yesterday", "from=yesterday", "bad time 'yesterday': use now, now-1h"),
    ("from>now-1h", "from>now-1h", "from takes one value after '='"),
    ("status=abc", "status=abc", "bad status 'abc'"),
    ("status>5xx", "status>5xx", "a status class (5xx) takes '=' or '!='"),
    ("cpu>12xs", "cpu>12xs", "bad time '12xs'"),
    ("trace=xyz", "trace=xyz", "'xyz' is not a hex id"),
    ("span=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "span=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     "a traceparent names a trace"),
    ("route>5", "route>5", "route takes '=', '!=' or '~'"),
    ('name="GET /x', 'name="GET /x', "a double quote is not closed"),
    ("route=", "route=", "no value after '='"),
    ("trigger=Slow!", "trigger=Slow!", "bad trigger name"),
    ("samples>many", "samples>many", "samples takes a whole number"),
    ("from=now until=now-1h", "from=now until=now-1h", "until is not after from"),
])
def test_errors_name_the_bad_term(selector: str, term: str, problem: str) -> None:
    with pytest.raises(SelectorError) as e:
        parse_selector(selector)
    assert e.value.term == term
    assert problem in str(e.value)
    assert str(e.value).startswith(f"bad selector term {term!r}: ")


def test_time_forms() -> None:
    now = 1_800_000_000.0
    assert parse_time("now", now) == int(now * 1e9)
    assert parse_time("now-1h", now) == int((now - 3600) * 1e9)
    assert parse_time("now-1.5d", now) == int((now - 1.5 * 86400) * 1e9)
    assert parse_time("1764410400", now) == 1764410400 * 10**9
    assert parse_time("1764410400123", now) == 1764410400123 * 10**6
    assert parse_time("2026-11-29T10:00:00Z", now) == calendar.timegm((2026, 11, 29, 10, 0, 0)) * 10**9
    assert parse_time("2026-11-29T12:00:00+02:00", now) == calendar.timegm((2026, 11, 29, 10, 0, 0)) * 10**9
    assert parse_time("2026-11-29T10:00:00.250Z", now) == calendar.timegm((2026, 11, 29, 10, 0, 0)) * 10**9 + 250_000_000
    assert parse_time("2026-11-29", now) == calendar.timegm((2026, 11, 29, 0, 0, 0)) * 10**9
    for bad in ("2026-11-29T10:00:00", "tomorrow", "now-1y", "12"):
        with pytest.raises(ValueError):
            parse_time(bad, now)


def test_pyroscope_query() -> None:
    q = parse_selector("service=shop route=/checkout method=post from=now-1h").pyroscope("cpu")
    assert q["query"] == 'process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name="shop", span_name="POST /checkout"}'
    assert q["from"] == "now-1h" and q["until"] == "now" and "note" not in q
    q = parse_selector("route=/api/* status=5xx").pyroscope("wall")
    assert q["query"] == 'process_cpu:wall:nanoseconds:cpu:nanoseconds{span_name=~"/api/.*"}'
    assert "status" in q["note"]
