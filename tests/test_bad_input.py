"""Bad input never reaches the application as an error and never changes a response.

Odd requests (headers that are not text, broken or hostile ``traceparent`` values,
scopes and environs missing keys, strange statuses) go through the ASGI and WSGI
middlewares with profiling forced on (header trigger and probability 1), so the
profiling paths really run; the application's response must come out exactly as the
application produced it, and the profiler must keep counting instead of raising.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from otelprof_middleware.asgi import ProfilingMiddleware as ASGIMiddleware
from otelprof_middleware.tracecontext import parse_traceparent, trace_of_traceparent
from otelprof_middleware.wsgi import ProfilingMiddleware as WSGIMiddleware

BAD_TRACEPARENTS = [
    "",
    "garbage",
    "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # all-zero ids are invalid
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # trace id one hex short
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # span id one hex short
    "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # not hex
    "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "-x" * 5000,  # very long
    "\x00\x01\x02",
]

ODD_HEADERS = [
    [(b"x-enable-profiling", b"\xff\xfe\x00")],  # not UTF-8 (latin-1 decodes anything)
    [(b"x-enable-profiling", b"1" * 100_000)],  # very long
    [(b"x-enable-profiling", b"1"), (b"x-enable-profiling", b"0")],  # repeated
    [(b"x-enable-profiling", b" TRUE ")],
    [(b"host", b"\xff\xff"), (b"x-enable-profiling", b"1")],
]


@pytest.mark.parametrize("value", BAD_TRACEPARENTS)
def test_bad_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize("value", BAD_TRACEPARENTS + [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-" + flags for flags in ("00", "01", "02", "03", "0b", "ff")
] + ["00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields"])
def test_the_entry_fast_path_reads_traceparent_like_the_full_parser(value: str) -> None:
    link = parse_traceparent(value)
    assert trace_of_traceparent(value) == ((link.trace_id, link.sampled) if link is not None else None)


def test_good_traceparent_parses() -> None:
    link = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert link is not None and link.trace_id_hex == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert link.span_id_hex == "00f067aa0ba902b7" and link.sampled and link.source == "traceparent"


# ----------------------------------------------------------------------------- ASGI

RESPONSE_HEADERS = [(b"content-type", b"text/plain"), (b"x-app", b"\xff binary ok")]


async def _app(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 207, "headers": list(RESPONSE_HEADERS)})
    await send({"type": "http.response.body", "body": b"part1", "more_body": True})
    await send({"type": "http.response.body", "body": b"part2"})


def _run_asgi(mw: Any, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return sent


def _asgi_mw(profiler_factory: Any) -> Any:
    profiler = profiler_factory(probability=1.0, expose_profile_id=False, max_profiles_per_minute=10_000,
                                max_header_profiles_per_minute=10_000, excluded_urls="^never$")
    return ASGIMiddleware(_app, profiler=profiler), profiler


def _body(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("headers", ODD_HEADERS + [[(b"traceparent", tp.encode("latin-1"))] for tp in BAD_TRACEPARENTS])
def test_asgi_odd_headers_leave_the_response_alone(profiler_factory: Any, headers: list) -> None:
    mw, profiler = _asgi_mw(profiler_factory)
    scope = {"type": "http", "method": "GET", "path": "/x", "query_string": b"", "headers": headers}
    sent = _run_asgi(mw, scope)
    assert sent[0]["status"] == 207 and sent[0]["headers"] == RESPONSE_HEADERS
    assert _body(sent) == b"part1part2"
    assert profiler.force_flush(10)
    assert profiler.stats()["dropped"].get("error", 0) == 0


@pytest.mark.parametrize("scope", [
    {"type": "http"},  # nothing else at all
    {"type": "http", "path": None, "method": None, "headers": None, "query_string": None, "scheme": None},
    {"type": "http", "path": "/\udcff", "method": "BREW", "headers": [], "root_path": None},
    {"type": "http", "path": "/x", "headers": [(b"x-enable-profiling", b"1")], "server": None, "route": object()},
])
def test_asgi_scopes_missing_keys_leave_the_response_alone(profiler_factory: Any, scope: dict) -> None:
    mw, profiler = _asgi_mw(profiler_factory)
    sent = _run_asgi(mw, dict(scope))
    assert sent[0]["status"] == 207 and _body(sent) == b"part1part2"
    assert profiler.force_flush(10)


# ----------------------------------------------------------------------------- WSGI


def _wsgi_app(environ: dict, start_response: Any) -> Any:
    start_response("207 Multi-Status", [("Content-Type", "text/plain")])
    return [b"part1", b"part2"]


@pytest.mark.parametrize("environ", [
    {},  # nothing at all
    {"REQUEST_METHOD": None, "PATH_INFO": None, "HTTP_X_ENABLE_PROFILING": "1"},
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/\udcff", "HTTP_TRACEPARENT": BAD_TRACEPARENTS[-2],
     "HTTP_X_ENABLE_PROFILING": "\xff\xfe"},
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "HTTP_HOST": "\xff", "SERVER_PORT": object(),
     "HTTP_X_ENABLE_PROFILING": "1", "wsgi.file_wrapper": "not callable"},
])
def test_wsgi_odd_environs_leave_the_response_alone(profiler_factory: Any, environ: dict) -> None:
    profiler = profiler_factory(probability=1.0, max_profiles_per_minute=10_000, expose_profile_id=False)
    mw = WSGIMiddleware(_wsgi_app, profiler=profiler)
    seen: list[tuple[str, list]] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Any:
        seen.append((status, headers))
        return lambda data: None

    result = mw(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert body == b"part1part2"
    assert seen == [("207 Multi-Status", [("Content-Type", "text/plain")])]
    assert profiler.force_flush(10)


def test_wsgi_odd_status_line_is_passed_through(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0, max_profiles_per_minute=10_000, expose_profile_id=False)

    def app(environ: dict, start_response: Any) -> Any:
        start_response("not a status", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, profiler=profiler)
    seen: list[str] = []
    result = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda s, h, e=None: seen.append(s))
    assert b"".join(result) == b"ok"
    result.close()  # type: ignore[attr-defined]
    assert seen == ["not a status"]
    assert profiler.force_flush(10)
