"""ProfilingMiddleware driven directly with ASGI messages (no server)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from otelprof_middleware.asgi import ProfilingMiddleware
from otelprof_middleware.integrations.asgi import HEADER_BOOST_HZ, HEADER_BOOST_SECONDS
from otelprof_middleware.policy import Policy
from otelprof_middleware.profiler import current_session


def http_scope(path: str = "/x", headers: Any = (), method: str = "GET") -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def receive(self) -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}


def plain_app(body: bytes = b"hello", headers: Any = ((b"content-type", b"text/plain"),), seen: Any = None):
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if seen is not None:
            seen.append(current_session())
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    return app


def run(mw: Any, scope: dict) -> Recorder:
    rec = Recorder()
    asyncio.run(mw(scope, rec.receive, rec.send))
    return rec


def test_not_profiled_request_gets_the_servers_send_untouched(profiler_factory: Any) -> None:
    # with no late trigger configured (they need the status of every request)
    profiler = profiler_factory(probability=0.0, slow_promotion=False, slow_route_arming=False,
                                tail_sampling_hz=0, error_profile_duration=0)
    got: dict = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        got["send"], got["receive"] = send, receive
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = ProfilingMiddleware(app, profiler=profiler)
    rec = Recorder()
    asyncio.run(mw(http_scope(), rec.receive, rec.send))
    assert got["send"] == rec.send and got["receive"] == rec.receive
    assert profiler.stats().get("profiles_started", 0) == 0


@pytest.mark.parametrize("kind", ["websocket", "lifespan-like-other"])
def test_non_http_scopes_pass_through(profiler_factory: Any, kind: str) -> None:
    profiler = profiler_factory(probability=1.0)
    got: dict = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        got["scope"], got["send"], got["receive"] = scope, send, receive

    mw = ProfilingMiddleware(app, profiler=profiler)
    scope = {"type": "websocket" if kind == "websocket" else "custom", "headers": [(b"x-enable-profiling", b"1")]}
    rec = Recorder()
    asyncio.run(mw(scope, rec.receive, rec.send))
    assert got["scope"] is scope and got["send"] == rec.send and got["receive"] == rec.receive
    assert profiler.stats().get("profiles_started", 0) == 0


def test_lifespan_messages_pass_and_flush_runs_off_loop_before_shutdown_complete(profiler_factory: Any,
                                                                                 monkeypatch: Any) -> None:
    profiler = profiler_factory(probability=0.0)
    events: list[Any] = []
    loop_thread: dict = {}

    def fake_flush(timeout: Any = None) -> bool:
        events.append(("flush", timeout, threading.get_ident() != loop_thread["id"]))
        return True

    monkeypatch.setattr(profiler, "shutdown", fake_flush)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                events.append(("app-shutdown",))
                await send({"type": "lifespan.shutdown.complete"})
                return

    mw = ProfilingMiddleware(app, profiler=profiler)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict:
        return inbox.pop(0)

    async def send(message: dict) -> None:
        events.append(("server", message["type"]))

    async def main() -> None:
        loop_thread["id"] = threading.get_ident()
        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(main())
    assert events == [
        ("server", "lifespan.startup.complete"),
        ("app-shutdown",),
        ("flush", profiler.config.shutdown_timeout, True),
        ("server", "lifespan.shutdown.complete"),
    ]


def test_header_trigger_adds_profile_id_and_keeps_body_and_headers(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0)
    seen: list = []
    mw = ProfilingMiddleware(plain_app(seen=seen), profiler=profiler)
    rec = run(mw, http_scope(headers=[("X-Enable-Profiling", "1")]))
    session = seen[0]
    assert session is not None
    start, body = rec.sent
    assert start["status"] == 200
    assert start["headers"] == [(b"content-type", b"text/plain"), (b"x-profile-id", session.profile_id_hex.encode())]
    assert body == {"type": "http.response.body", "body": b"hello", "more_body": False}
    assert session.finished and session.triggers == ("header",)
    assert session.attributes["http.response.status_code"] == 200
    assert session.attributes["http.request.method"] == "GET" and session.attributes["url.path"] == "/x"
    assert "otelprof.duration_ms" in session.attributes


def test_probability_trigger_does_not_expose_profile_id(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0)
    seen: list = []
    rec = run(ProfilingMiddleware(plain_app(seen=seen), profiler=profiler), http_scope())
    assert seen[0] is not None and seen[0].triggers == ("probability",)
    assert rec.sent[0]["headers"] == [(b"content-type", b"text/plain")]


@pytest.mark.parametrize("value, profiled", [("s3cret", True), ("1", False), ("true", False), ("", False),
                                             ("s3cret-and-more", False), (None, False)])
def test_header_secret(profiler_factory: Any, value: Any, profiled: bool) -> None:
    profiler = profiler_factory(probability=0.0, header_secret="s3cret")
    seen: list = []
    headers = [] if value is None else [("X-Enable-Profiling", value)]
    rec = run(ProfilingMiddleware(plain_app(seen=seen), profiler=profiler), http_scope(headers=headers))
    assert (seen[0] is not None) is profiled
    assert any(k == b"x-profile-id" for k, _ in rec.sent[0]["headers"]) is profiled


def test_custom_header_name(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0, header="X-Debug-Profile")
    seen: list = []
    run(ProfilingMiddleware(plain_app(seen=seen), profiler=profiler), http_scope(headers=[("X-Enable-Profiling", "1")]))
    run(ProfilingMiddleware(plain_app(seen=seen), profiler=profiler), http_scope(headers=[("x-debug-profile", "yes")]))
    assert seen[0] is None and seen[1] is not None


def test_header_rate_cap_is_exact(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0, max_header_profiles_per_minute=3)
    seen: list = []
    mw = ProfilingMiddleware(plain_app(seen=seen), profiler=profiler)
    for _ in range(12):
        run(mw, http_scope(headers=[("X-Enable-Profiling", "1")]))
    assert sum(s is not None for s in seen) == 3
    assert profiler.stats()["declined"].get("header_rate") == 9


def test_exception_propagates_unchanged_and_profile_is_marked(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0)
    boom = ValueError("boom")
    seen: list = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(current_session())
        raise boom

    mw = ProfilingMiddleware(app, profiler=profiler)
    rec = Recorder()
    with pytest.raises(ValueError) as info:
        asyncio.run(mw(http_scope(), rec.receive, rec.send))
    assert info.value is boom
    session = seen[0]
    assert session.finished and session.error == "ValueError"
    assert session.attributes["error.type"] == "ValueError"
    assert rec.sent == []


def test_cancellation_finishes_the_profile(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0)
    seen: list = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(current_session())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(3600)

    async def main() -> None:
        mw = ProfilingMiddleware(app, profiler=profiler)
        rec = Recorder()
        task = asyncio.ensure_future(mw(http_scope(), rec.receive, rec.send))
        while not rec.sent:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    session = seen[0]
    assert session.finished and session.attributes["otelprof.cancelled"] is True
    assert profiler.active_sessions == 0


def test_streaming_child_task_is_attached_at_send(profiler_factory: Any) -> None:
    """Starlette (ASGI spec < 2.4) streams the body from a child task."""
    profiler = profiler_factory(probability=1.0)
    seen: dict = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen["session"] = current_session()

        async def stream() -> None:
            seen["child"] = asyncio.current_task()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            seen["targets"] = [t.task for t in seen["session"].targets]
            await send({"type": "http.response.body", "body": b"x", "more_body": False})

        await asyncio.ensure_future(stream())

    run(ProfilingMiddleware(app, profiler=profiler), http_scope())
    assert seen["child"] in seen["targets"]


def test_header_requests_are_sampled_faster_then_decay(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=1.0, sample_hz=100)
    rates: list = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        s = current_session()
        rates.append(s.hz)
        if s.hz == HEADER_BOOST_HZ:  # the sampler ends the boost at its first tick past HEADER_BOOST_SECONDS
            deadline = time.monotonic() + 10
            while s.hz != 100 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert time.monotonic() - s.start_mono_ns / 1e9 >= HEADER_BOOST_SECONDS
        rates.append(s.hz)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = ProfilingMiddleware(app, profiler=profiler)
    run(mw, http_scope(headers=[("X-Enable-Profiling", "1")]))
    run(mw, http_scope())  # probability: no boost
    assert rates == [HEADER_BOOST_HZ, 100, 100, 100]


def test_header_boost_respects_the_governors_rate(profiler_factory: Any) -> None:
    """Security review L14: while the overhead governor has lowered the rate, a
    header-triggered request is sampled at that rate, not at the 1 kHz boost."""
    clock = [0.0]
    own = [0]
    proc = [0]
    profiler = profiler_factory(header_trust="any", probability=0.0, sample_hz=100, max_overhead=0.05)
    profiler.policy = Policy(profiler, clock=lambda: clock[0], governor_sources=(lambda: own[0], lambda: proc[0]),
                             start_threads=False)
    governor = profiler.policy.governor
    for _ in range(3):  # 30 % overhead for a few seconds: one step down
        clock[0] += 1.0
        proc[0] += 1_000_000_000
        own[0] += 300_000_000
        governor.update()
    assert governor.level >= 1 and not governor.declining
    rates: list = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        rates.append(current_session().hz)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(ProfilingMiddleware(app, profiler=profiler), http_scope(headers=[("X-Enable-Profiling", "1")]))
    assert rates == [governor.hz(100)] and rates[0] < 100


def test_route_from_scope(profiler_factory: Any) -> None:
    profiler = profiler_factory(probability=1.0)
    seen: list = []

    class Route:
        path = "/items/{item_id}"

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(current_session())
        scope["route"] = Route()  # what FastAPI's router does
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(ProfilingMiddleware(app, profiler=profiler), http_scope(path="/items/42"))
    s = seen[0]
    assert s.attributes["http.route"] == "/items/{item_id}" and s.name == "GET /items/{item_id}"
    assert s.attributes["url.path"] == "/items/42" and s.attributes["http.response.status_code"] == 201


def test_traceparent_link_when_no_span(profiler_factory: Any) -> None:
    profiler = profiler_factory(header_trust="any", probability=0.0)
    seen: list = []
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    run(ProfilingMiddleware(plain_app(seen=seen), profiler=profiler),
        http_scope(headers=[("X-Enable-Profiling", "1"), ("traceparent", tp)]))
    link = seen[0].link
    assert link.trace_id_hex == "4bf92f3577b34da6a3ce929d0e0e4736" and link.span_id_hex == "00f067aa0ba902b7"
    assert link.source == "traceparent"


def test_link_to_parent_of_an_instrumentation_send_span(profiler_factory: Any, otel_tracing: Any) -> None:
    """Older opentelemetry-instrumentation-asgi releases call ``send`` inside their
    ``http send`` child span: the link must be its parent, the SERVER span."""
    from opentelemetry import trace

    tracer, exporter = otel_tracing
    profiler = profiler_factory(header_trust="any", probability=0.0)
    seen: list = []

    async def inner(scope: dict, receive: Any, send: Any) -> None:  # our middleware sits outside this
        with tracer.start_as_current_span("GET /x", kind=trace.SpanKind.SERVER):
            async def otel_like_send(message: dict) -> None:
                with tracer.start_as_current_span("GET /x http send") as child:
                    child.set_attribute("asgi.event.type", message["type"])
                    await send(message)
            seen.append(current_session())
            await plain_app()(scope, receive, otel_like_send)

    run(ProfilingMiddleware(inner, profiler=profiler), http_scope(headers=[("X-Enable-Profiling", "1")]))
    server = [s for s in exporter.get_finished_spans() if s.name == "GET /x"][0]
    link = seen[0].link
    assert (link.trace_id, link.span_id, link.source) == (server.context.trace_id, server.context.span_id, "span")


def test_failing_sampler_leaves_the_response_alone(profiler_factory: Any, monkeypatch: Any) -> None:
    from otelprof_middleware import sampler as sampler_mod

    profiler = profiler_factory(probability=1.0)

    def broken_register(session: Any) -> None:
        raise RuntimeError("sampler is broken")

    monkeypatch.setattr(sampler_mod.get_sampler(), "register", broken_register)
    rec = run(ProfilingMiddleware(plain_app(), profiler=profiler), http_scope(headers=[("X-Enable-Profiling", "1")]))
    assert rec.sent == [{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
                        {"type": "http.response.body", "body": b"hello", "more_body": False}]
    assert profiler.stats()["dropped"].get("error") == 1


def test_failing_lifecycle_at_send_leaves_the_response_alone(profiler_factory: Any, monkeypatch: Any) -> None:
    from otelprof_middleware.integrations.lifecycle import RequestHandle

    profiler = profiler_factory(probability=1.0)

    def broken(self: Any) -> Any:
        raise RuntimeError("broken")

    monkeypatch.setattr(RequestHandle, "response_headers", broken)
    rec = run(ProfilingMiddleware(plain_app(), profiler=profiler), http_scope())
    assert rec.sent[0]["headers"] == [(b"content-type", b"text/plain")] and rec.sent[1]["body"] == b"hello"


def test_options_or_shared_profiler(profiler_factory: Any, tmp_path: Any) -> None:
    profiler = profiler_factory()
    assert ProfilingMiddleware(plain_app(), profiler=profiler).profiler is profiler
    own = ProfilingMiddleware(plain_app(), exporter="none", probability=0.5)
    try:
        assert own.profiler.config.probability == 0.5
    finally:
        own.profiler.shutdown(timeout=1)
    both = ProfilingMiddleware(plain_app(), profiler=profiler, probability=0.5)  # reported at lifespan start
    assert isinstance(both.config_error, TypeError)
    with pytest.raises(TypeError, match="pass either profiler= or options, not both"):
        both.profiler
