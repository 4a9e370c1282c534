"""The WSGI middleware: in-process behaviour, and gunicorn --preload with 2 workers."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from helpers.wsgi_servers import gunicorn_argv, start_server
from test_flask import HEADER, SECRET, functions_in, profile_by_id, read_index


def _call(app: Any, path: str = "/", headers: dict[str, str] | None = None) -> tuple[str, list, Any]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list, exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, hdrs
        return lambda data: None

    body = app(environ, start_response)
    return seen, body, environ


def test_stream_not_buffered_and_ends_at_close(profiler_factory: Any, profile_collector: Any) -> None:
    from otelprof_middleware.wsgi import ProfilingMiddleware

    profiler = profiler_factory(probability=0, min_samples=0, header_secret=SECRET)
    collected = profile_collector(profiler)
    produced: list[int] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen() -> Any:
            for i in range(3):
                produced.append(i)
                yield b"%d" % i
        return gen()

    mw = ProfilingMiddleware(app, profiler=profiler)
    seen, body, _ = _call(mw, "/s", HEADER)
    assert dict(seen["headers"])["X-Profile-Id"]
    it = iter(body)
    assert next(it) == b"0" and produced == [0]  # one chunk at a time
    assert profiler.active_sessions == 1
    assert list(it) == [b"1", b"2"]
    assert profiler.active_sessions == 1  # exhausted but not closed yet
    body.close()
    assert profiler.active_sessions == 0
    profiler.force_flush(5)
    assert collected.wait_for(1)
    assert collected.profiles[0].attributes["http.response.status_code"] == 200


def test_exceptions_propagate_unchanged(profiler_factory: Any, profile_collector: Any) -> None:
    from otelprof_middleware.wsgi import ProfilingMiddleware

    profiler = profiler_factory(probability=0, min_samples=0, header_secret=SECRET)
    collected = profile_collector(profiler)

    class AppError(Exception):
        pass

    def failing_app(environ: Any, start_response: Any) -> Any:
        raise AppError("in app")

    def failing_body(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])

        def gen() -> Any:
            yield b"a"
            raise AppError("in body")
        return gen()

    with pytest.raises(AppError, match="in app"):
        _call(ProfilingMiddleware(failing_app, profiler=profiler), "/", HEADER)
    _seen, body, _ = _call(ProfilingMiddleware(failing_body, profiler=profiler), "/", HEADER)
    with pytest.raises(AppError, match="in body"):
        list(body)
    body.close()
    profiler.force_flush(5)
    assert collected.wait_for(2)
    assert profiler.active_sessions == 0
    assert [p.attributes.get("otelprof.error") for p in collected.profiles] == ["AppError", "AppError"]


def test_unprofiled_request_returns_app_iterable(profiler_factory: Any) -> None:
    """With no late trigger configured, an unprofiled request is not touched at all."""
    from otelprof_middleware.wsgi import ProfilingMiddleware

    profiler = profiler_factory(probability=0, slow_promotion=False, slow_route_arming=False,
                                tail_sampling_hz=0, error_sample_rate=0)
    result = [b"x"]

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return result

    seen, body, _ = _call(ProfilingMiddleware(app, profiler=profiler), "/")
    assert body is result and "X-Profile-Id" not in dict(seen["headers"])


def test_watched_request_reports_status_and_ends(profiler_factory: Any) -> None:
    """With late triggers on (the default), an unprofiled request is still followed to
    its end, so the policy sees its status (500 arms error profiling for the route).
    A body the application produced in full (a list) ends the request when the
    application returns, and is handed back as it is; any other iterable at close()."""
    from otelprof_middleware.wsgi import ProfilingMiddleware

    profiler = profiler_factory(probability=0)
    listed = [b"x"]
    mw = ProfilingMiddleware(lambda e, sr: (sr("500 Internal Server Error", []), listed)[1], profiler=profiler)
    seen, body, environ = _call(mw, "/fails")
    handle = environ["otelprof.handle"]
    assert body is listed and seen["status"].startswith("500")
    assert handle.status == 500 and handle.finished
    armed = profiler.policy.state().armed_routes
    assert list(armed) == ["error:/fails"] and 9 < armed["error:/fails"] <= 10  # error_profile_duration

    def streamed(environ: Any, start_response: Any) -> Any:
        start_response("503 Service Unavailable", [])
        return iter([b"a", b"b"])

    seen, body, environ = _call(ProfilingMiddleware(streamed, profiler=profiler), "/later")
    handle = environ["otelprof.handle"]
    assert list(body) == [b"a", b"b"] and handle.status == 503
    assert not handle.finished  # iterated, not closed yet
    body.close()
    assert handle.finished
    assert set(profiler.policy.state().armed_routes) == {"error:/fails", "error:/later"}


def test_file_wrapper_kept(profiler_factory: Any, tmp_path: Any) -> None:
    from wsgiref.util import FileWrapper

    from otelprof_middleware.wsgi import ProfilingMiddleware

    profiler = profiler_factory(probability=0, header_secret=SECRET)
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc" * 10)

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(f, "rb"))

    def call(headers: dict[str, str]) -> Any:
        environ_extra = {"wsgi.file_wrapper": FileWrapper}
        mw = ProfilingMiddleware(app, profiler=profiler)

        def wrapped(environ: Any, start_response: Any) -> Any:
            environ.update(environ_extra)
            return mw(environ, start_response)
        return _call(wrapped, "/f", headers)[1]

    body = call(HEADER)
    assert type(body) is FileWrapper  # the server's sendfile fast path still applies
    assert b"".join(body) == b"abc" * 10
    assert profiler.active_sessions == 1
    body.close()
    assert profiler.active_sessions == 0


PRELOAD_APP = textwrap.dedent('''
    import os
    import time

    from otelprof_middleware.wsgi import ProfilingMiddleware


    def burn_in_worker():
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/work":
            burn_in_worker()
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


    # built in the master (--preload): the profiler exists before the fork
    application = ProfilingMiddleware(app, exporter="file", output_dir=os.environ["PROFILE_DIR"],
                                      probability=0, batch_timeout="50ms", max_concurrent_profiles=16,
                                      header_secret="s3cret")
    # the master profiles something too: its export worker must not be inherited
    with application.profiler.profile("master-startup"):
        burn_in_worker()
''')


@pytest.mark.integration
def test_gunicorn_preload_two_workers_both_export(tmp_path: Any) -> None:
    (tmp_path / "preload_app.py").write_text(PRELOAD_APP)
    profiles = tmp_path / "profiles"
    env = {"PROFILE_DIR": str(profiles)}
    by_pid: dict[str, list[str]] = {}
    with start_server(gunicorn_argv("preload_app:application", workers=2, preload=True),
                      cwd=tmp_path, env=env) as server:
        for _ in range(200):  # a loaded machine may hand many requests in a row to one worker
            status, headers, body = server.get("/work", headers={**HEADER, "Connection": "close"})
            assert status == 200
            by_pid.setdefault(body.decode(), []).append(headers["x-profile-id"])
            if len(by_pid) >= 2 and all(len(v) >= 2 for v in by_pid.values()):
                break
        assert len(by_pid) == 2, f"requests did not reach two workers: {by_pid}"
        wanted = [pid for ids in by_pid.values() for pid in ids]
        for profile_id in wanted:
            _line, decoded = profile_by_id(profiles, profile_id)
            assert "burn_in_worker" in functions_in(decoded)
    lines = read_index(profiles, len(wanted) + 1)
    ids = [line["profile_id"] for line in lines]
    assert len(ids) == len(set(ids)), "a profile was exported twice"
    names = [line["name"] for line in lines]
    assert names.count("master-startup") == 1, names
