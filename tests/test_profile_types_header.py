"""A trigger header asks for extra profile types (issue 14): ``X-Enable-Profiling:
alloc,lock`` (no secret, header honoured) or ``<secret>; types=alloc,lock``.

* only the types ``header_profile_types`` (or ``profile_types``) allows are added;
  unknown and refused ones are logged once and left out, the profile still starts;
* the header rules still hold (a wrong secret asks for nothing, ``header_trust``);
* the types come with the header's profile only: a request profiled by another
  trigger, or a plain ``1``, gets the configured types;
* the hooks ``header_profile_types`` names are installed at start (a lock made
  before its hook is never profiled), none of them for a default config.
Through the WSGI and the ASGI middleware.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any, Callable

import pytest

from otelprof_middleware import Profiler
from otelprof_middleware.config import Config, ConfigError
from otelprof_middleware.profile import Profile
from otelprof_middleware.profiletypes import alloc, gcwatch
from otelprof_middleware.testing import InMemoryProfileExporter

from helpers.extra_types import hold_elsewhere
from test_profile_types import NONE, _hooks_state

HEADER = "X-Enable-Profiling"
CHUNK = 16 * 1024


def _types(profile: Profile) -> tuple[str, str]:
    """(what the profile measures, its sample types with values).  A profile with
    no type beyond cpu and wall has no ``otelprof.profile_types`` attribute."""
    present = sorted({t for s in profile.samples for t, v in s.values.items() if v})
    return str(profile.attributes.get("otelprof.profile_types", "cpu,wall")), ",".join(present)


KEPT: list[bytes] = []


def _work(lock: Any, keep: bool = False) -> None:
    """Allocates (and keeps it, if asked), waits for ``lock`` (held by a thread
    outside the request), collects."""
    chunks = [bytes(CHUNK) for _ in range(200)]  # 200 distinct addresses
    if keep:
        KEPT.extend(chunks)
    del chunks  # freed before the request ends, unless kept
    hold_elsewhere(lock, 0.02)
    with lock:
        pass
    import gc
    gc.collect()


def _wsgi(profiler: Profiler, lock: Any) -> Callable[[dict[str, str]], None]:
    from otelprof_middleware.wsgi import ProfilingMiddleware

    def app(environ: Any, start_response: Any) -> Any:
        _work(lock, "HTTP_X_KEEP" in environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = ProfilingMiddleware(app, profiler=profiler)

    def call(headers: dict[str, str]) -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/w", "SCRIPT_NAME": "", "QUERY_STRING": "",
                   "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
        for k, v in headers.items():
            environ["HTTP_" + k.upper().replace("-", "_")] = v
        body = mw(environ, lambda status, hdrs, exc_info=None: (lambda data: None))
        assert b"".join(body) == b"ok"
        getattr(body, "close", lambda: None)()
    return call


def _asgi(profiler: Profiler, lock: Any) -> Callable[[dict[str, str]], None]:
    from otelprof_middleware.asgi import ProfilingMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        _work(lock)  # blocking on purpose: the task's own thread waits
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ProfilingMiddleware(app, profiler=profiler)

    def call(headers: dict[str, str]) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": "/a", "raw_path": b"/a", "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        asyncio.run(mw(scope, receive, send))
        assert sent[-1]["body"] == b"ok"
    return call


MIDDLEWARES = {"wsgi": _wsgi, "asgi": _asgi}


def _setup(make: Any, **options: Any) -> tuple[Profiler, InMemoryProfileExporter, Callable[[dict[str, str]], None]]:
    exporter = InMemoryProfileExporter()
    options.setdefault("probability", 0)
    profiler = Profiler(exporters=[exporter], min_samples=0, **options)
    lock = threading.Lock()  # made once the profiler installed its hooks: a profiled lock if "lock" is allowed
    return profiler, exporter, make(profiler, lock)


def _one(profiler: Profiler, exporter: InMemoryProfileExporter, call: Any, headers: dict[str, str]) -> Any:
    before = len(exporter.profiles)
    call(headers)
    assert profiler.force_flush(30)
    assert len(exporter.profiles) == before + 1, headers
    return exporter.profiles[-1]


@pytest.mark.parametrize("kind", sorted(MIDDLEWARES))
def test_the_header_adds_the_allowed_types_it_names(kind: str, caplog: Any) -> None:
    profiler, exporter, call = _setup(MIDDLEWARES[kind], header_trust="any", header_profile_types="lock,gc")
    try:
        assert _hooks_state() == {"lock": True, "gc": True, "alloc": False}  # installed at start
        # the short form: the types alone ask for the profile
        p = _one(profiler, exporter, call, {HEADER: "lock,gc"})
        assert _types(p)[0] == "cpu,wall,lock,gc"
        assert "lock_wait" in _types(p)[1] and p.attributes["otelprof.gc_collections"] >= 1
        assert "otelprof.alloc_sample_interval" not in p.attributes
        # "1; types=..." asks for one; unknown names and refused types are logged once, left out
        caplog.set_level(logging.WARNING, logger="otelprof_middleware")
        for _ in range(2):
            p = _one(profiler, exporter, call, {HEADER: "1; types=Lock, bogus, alloc, cpu"})
            assert _types(p)[0] == "cpu,wall,lock" and "lock_wait" in _types(p)[1]
            assert "alloc_space" not in _types(p)[1] and "otelprof.gc_ms" not in p.attributes
        logs = [r.getMessage() for r in caplog.records]
        assert sum("unknown profile types" in m and "'bogus'" in m for m in logs) == 1, logs
        assert sum("'alloc' profile type" in m and "header_profile_types" in m for m in logs) == 1, logs
        # a plain "1": the configured types (cpu, wall) only
        p = _one(profiler, exporter, call, {HEADER: "1"})
        assert _types(p)[0] == "cpu,wall" and "lock_wait" not in _types(p)[1]
        assert "otelprof.gc_ms" not in p.attributes
        # a value that is neither yes nor a type list asks for nothing
        started = profiler.stats()["profiles_started"]
        call({HEADER: "bogus"})
        assert profiler.stats()["profiles_started"] == started
    finally:
        profiler.shutdown(5)
    assert _hooks_state() == NONE


@pytest.mark.parametrize("kind", sorted(MIDDLEWARES))
def test_with_a_secret_the_types_follow_it_and_a_wrong_secret_asks_nothing(kind: str) -> None:
    profiler, exporter, call = _setup(MIDDLEWARES[kind], header_secret="s3;cret", header_profile_types="lock")
    try:
        p = _one(profiler, exporter, call, {HEADER: "s3;cret; types=lock"})  # the last ";" splits
        assert _types(p)[0] == "cpu,wall,lock" and "lock_wait" in _types(p)[1]
        p = _one(profiler, exporter, call, {HEADER: "s3;cret"})
        assert _types(p)[0] == "cpu,wall"
        started = profiler.stats()["profiles_started"]
        for value in ("wrong; types=lock", "lock", "1; types=lock", "s3; types=lock"):
            call({HEADER: value})
        assert profiler.stats()["profiles_started"] == started
        assert profiler.stats()["declined"]["header_ignored"] >= 4
    finally:
        profiler.shutdown(5)


def test_header_rules_still_apply_to_the_types() -> None:
    # a plain WSGI app has no debug mode: with the default header_trust the header asks nothing
    profiler, exporter, call = _setup(_wsgi, header_profile_types="lock")
    try:
        call({HEADER: "lock"})
        call({HEADER: "1; types=lock"})
        assert profiler.stats()["profiles_started"] == 0
    finally:
        profiler.shutdown(5)
    profiler, exporter, call = _setup(_wsgi, header_trust="off", header_profile_types="lock")
    try:
        call({HEADER: "lock"})
        assert profiler.stats()["profiles_started"] == 0
    finally:
        profiler.shutdown(5)


def test_another_triggers_profile_does_not_get_the_header_types() -> None:
    # probability profiles every request; the header's budget is used up, so the header
    # request is profiled by probability alone, with the configured types
    profiler, exporter, call = _setup(_wsgi, header_trust="any", header_profile_types="lock", probability=1.0,
                                      max_header_profiles_per_minute=0)
    try:
        p = _one(profiler, exporter, call, {HEADER: "lock"})
        assert p.triggers == ("probability",)
        assert _types(p)[0] == "cpu,wall" and "lock_wait" not in _types(p)[1]
    finally:
        profiler.shutdown(5)


def test_types_already_configured_stay_and_the_default_installs_nothing() -> None:
    profiler, exporter, call = _setup(_wsgi, header_trust="any", profile_types="gc")
    try:
        assert _hooks_state() == {"lock": False, "gc": True, "alloc": False}
        p = _one(profiler, exporter, call, {HEADER: "gc,lock"})  # lock: not allowed (no hook either)
        assert _types(p)[0] == "cpu,wall,gc" and "lock_wait" not in _types(p)[1]
    finally:
        profiler.shutdown(5)
    profiler, exporter, call = _setup(_wsgi, header_trust="any")
    try:
        assert _hooks_state() == NONE
        p = _one(profiler, exporter, call, {HEADER: "alloc,lock,gc"})
        assert _types(p)[0] == "cpu,wall"
    finally:
        profiler.shutdown(5)
    assert not gcwatch.installed()


@pytest.mark.skipif(alloc.available()[0] is None, reason="the C extension's allocation hook is not built")
def test_the_header_asks_for_allocations_and_heap() -> None:
    profiler, exporter, call = _setup(_wsgi, header_trust="any", header_profile_types="heap",
                                      alloc_sample_interval=4096)
    try:
        lib = alloc.available()[0]
        assert lib.alloc_installed() == (False, True)  # armed at start, wraps the allocator while sampling
        p = _one(profiler, exporter, call, {HEADER: "heap"})  # heap implies alloc
        assert _types(p)[0] == "cpu,wall,alloc,heap"
        assert "alloc_space" in _types(p)[1]
        freed = sum(s.values.get("inuse_space", 0) for s in p.samples)
        assert freed < 0.5 * 200 * sys.getsizeof(bytes(CHUNK)), freed  # its chunks were freed at once
        # what the request kept alive is its heap (the extension watches frees for the header's heap)
        KEPT.clear()
        p = _one(profiler, exporter, call, {HEADER: "heap", "X-Keep": "1"})
        kept = sum(s.values.get("inuse_space", 0) for s in p.samples)
        assert kept > 0.5 * len(KEPT) * sys.getsizeof(bytes(CHUNK)), (kept, len(KEPT))
        p = _one(profiler, exporter, call, {HEADER: "1"})
        assert "alloc_space" not in _types(p)[1] and "otelprof.alloc_sample_interval" not in p.attributes
    finally:
        profiler.shutdown(5)


def test_header_profile_types_is_validated() -> None:
    assert Config.load({}, env={}).header_profile_types == ()
    assert Config.load({"header_profile_types": "heap,cpu"}, env={}).header_profile_types == ("alloc", "heap")
    assert Config.load({}, env={"OTELPROF_HEADER_PROFILE_TYPES": "gc"}).header_profile_types == ("gc",)
    with pytest.raises(ConfigError, match=r"header_profile_types.*'alock'.*did you mean 'lock'"):
        Config.load({"header_profile_types": "alock"}, env={})
