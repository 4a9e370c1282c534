"""Window profiles (windows.py): aggregates of short requests and the continuous profile.

Unit level: sessions are fed samples by hand (no clock, no sampler timing), so the
counts are exact.  Through real servers: tests/test_windows_server.py.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

from otelprof_middleware import ConfigError, Profiler
from otelprof_middleware.encoding.otlp import encode_otlp_request
from otelprof_middleware.encoding.pprof import encode_pprof
from otelprof_middleware.profile import SpanLink
from otelprof_middleware.testing import InMemoryProfileExporter

from helpers.pprof_decode import decode_pprof


def code_a() -> Any:
    return sys._getframe().f_code


def code_b() -> Any:
    return sys._getframe().f_code


def short_request(profiler: Profiler, name: str, span: int, samples: int, *, triggers: tuple[str, ...] = ("probability",),
                  route: str = "") -> Any:
    """A finished request with exactly ``samples`` samples (1 ms CPU, 2 ms wall each)."""
    link = SpanLink(trace_id=0xABC0 + span, span_id=span, span_name="GET " + (route or name))
    attrs = {"http.request.method": "GET"}
    if route:
        attrs["http.route"] = route
    session = profiler.start_session(f"GET {route or name}", link=link, triggers=triggers, attributes=attrs,
                                     attach=False)
    assert session is not None
    for i in range(samples):
        session.stacks.add("MainThread", (code_a() if i % 2 == 0 else code_b(),), (0,), 1_000_000, 2_000_000)
    profiler.finish_session(session)
    return session


def identities(st: dict) -> None:
    assert st["profiles_started"] + st["window_profiles"] == (
        st["active_sessions"] + st["profiles_discarded"] + st["profiles_aggregated"] + st["profiles_pending"]
        + st["profiles_collected"] + sum(st["dropped"].values())), st


def make(profiler_factory: Any, **options: Any) -> tuple[Profiler, InMemoryProfileExporter]:
    exp = InMemoryProfileExporter()
    options.setdefault("min_samples", 5)
    profiler = profiler_factory(exporters=[exp], **options)
    return profiler, exp


def test_short_sampled_requests_go_into_one_profile_per_route_with_their_own_links(profiler_factory: Any) -> None:
    profiler, exp = make(profiler_factory, aggregate_window=3600)
    sessions = [short_request(profiler, "a", span=10 + i, samples=1 + i % 4, route="/a/{id}") for i in range(6)]
    sessions += [short_request(profiler, "b", span=50 + i, samples=2, route="/b") for i in range(3)]
    none = short_request(profiler, "c", span=99, samples=0, route="/c")  # nothing to keep: too short
    long = short_request(profiler, "d", span=98, samples=5, route="/d")  # long enough: a profile of its own
    kept = short_request(profiler, "e", span=97, samples=1, route="/e", triggers=("slow",))  # kept for a reason
    # the window is still open: no aggregate yet ("GET /d", a profile of its own, may be out
    # already: the export worker builds the first profile it gets at once, racing this line)
    assert [p.name for p in exp.profiles if "otelprof.window" in p.attributes] == []
    assert profiler.force_flush(10)
    by_name = {p.name: p for p in exp.profiles}
    assert set(by_name) == {"GET /a/{id}", "GET /b", "GET /d"}
    agg = by_name["GET /a/{id}"]
    assert agg.link is None and agg.attributes["otelprof.window"] == "aggregate"
    assert agg.attributes["otelprof.requests"] == 6 and agg.attributes["http.route"] == "/a/{id}"
    assert agg.triggers == ("probability",)
    # every sample carries its own request's span; per span, the request's own numbers
    for s in sessions[:6]:
        assert s.aggregate_id == agg.profile_id
        mine = [x for x in agg.samples if x.link == s.link]
        assert sum(x.count for x in mine) == s.stacks.ticks
        assert sum(x.cpu_ns for x in mine) == s.stacks.ticks * 1_000_000
        assert sum(x.wall_ns for x in mine) == s.stacks.ticks * 2_000_000
    assert agg.sample_count == sum(1 + i % 4 for i in range(6))
    # the requests' stacks are interned once for the whole window (one interner for all its
    # parts): each frame is one location, and every sample still stands on its own frame
    assert len(set(agg.locations)) == len(agg.locations) == 2
    leaf = {name: 0 for name in ("code_a", "code_b")}
    for x in agg.samples:
        (loc,) = agg.stacks[x.stack_index]
        leaf[agg.functions[agg.locations[loc].function_index].name] += x.count
    assert leaf == {"code_a": sum((1 + i % 4 + 1) // 2 for i in range(6)),
                    "code_b": sum((1 + i % 4) // 2 for i in range(6))}
    assert by_name["GET /b"].sample_count == 6 and by_name["GET /b"].attributes["otelprof.requests"] == 3
    assert none.aggregate_id is None and long.aggregate_id is None and kept.aggregate_id is None
    st = profiler.stats()
    assert st["profiles_aggregated"] == 9 and st["window_profiles"] == 2
    assert st["dropped"] == {"too_short": 2}  # the request without samples, and the one kept for a reason
    assert st["profiles_collected"] == 3 and st["exporters"]["memory"]["exported"] == 3
    identities(st)


def test_aggregate_encodes_a_link_per_sample_in_otlp_and_pprof(profiler_factory: Any) -> None:
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceRequest,
    )

    profiler, exp = make(profiler_factory, aggregate_window=3600)
    sessions = [short_request(profiler, "a", span=100 + i, samples=1 + i % 3, route="/a") for i in range(5)]
    assert profiler.force_flush(10)
    (agg,) = exp.profiles
    req = ExportProfilesServiceRequest.FromString(
        encode_otlp_request([agg], resource_attributes={"service.name": "t"}, scope_version="0").SerializeToString())
    d = req.dictionary
    cpu_by_span: dict[str, int] = {}
    for prof in req.resource_profiles[0].scope_profiles[0].profiles:
        st = d.string_table
        kind = st[prof.sample_type.type_strindex]
        for sample in prof.samples:
            assert sample.link_index > 0  # every sample here was taken for a request
            link = d.link_table[sample.link_index]
            if kind == "samples":  # the CPU profile: values are CPU ns
                cpu_by_span[link.span_id.hex()] = cpu_by_span.get(link.span_id.hex(), 0) + sum(sample.values)
            names = {st[d.attribute_table[i].key_strindex]: d.attribute_table[i].value.string_value
                     for i in sample.attribute_indices}
            assert names["span_name"] == "GET /a" and names["http.route"] == "/a"
    assert cpu_by_span == {s.link.span_id_hex: s.stacks.ticks * 1_000_000 for s in sessions}
    decoded = decode_pprof(encode_pprof(agg))
    types = [t for t, _ in decoded.sample_types]
    pprof_by_span: dict[tuple[str, str], int] = {}
    for sample in decoded.samples:
        key = (sample.labels["span_id"], sample.labels["trace_id"])
        pprof_by_span[key] = pprof_by_span.get(key, 0) + sample.values[types.index("samples")]
    assert pprof_by_span == {(s.link.span_id_hex, s.link.trace_id_hex): s.stacks.ticks for s in sessions}


def test_window_ends_on_its_own(profiler_factory: Any) -> None:
    profiler, exp = make(profiler_factory, aggregate_window=0.2, batch_timeout=0)
    short_request(profiler, "a", span=1, samples=2, route="/a")
    assert exp.wait_for(1, timeout=30)  # no flush asked for: the window's end sends it
    (agg,) = exp.profiles
    assert agg.attributes["otelprof.requests"] == 1
    # the next request opens a new window, with a new profile id
    s2 = short_request(profiler, "a", span=2, samples=1, route="/a")
    assert s2.aggregate_id not in (None, agg.profile_id)
    assert profiler.force_flush(10)
    assert [p.attributes["otelprof.requests"] for p in exp.profiles] == [1, 1]


def test_caps_bound_memory_and_count_what_did_not_fit(profiler_factory: Any) -> None:
    profiler, exp = make(profiler_factory, aggregate_window=3600, aggregate_max_routes=2, window_max_stacks=10)
    short_request(profiler, "r1", span=1, samples=2, route="/1")
    short_request(profiler, "r2", span=2, samples=2, route="/2")
    late = short_request(profiler, "r3", span=3, samples=2, route="/3")  # a third route: over the cap
    assert late.aggregate_id is None
    # each request adds 2 distinct entries (two stacks), counted over all routes of the
    # window: 4 held already, 3 more requests fit in 10, the 4th does not
    fits = [short_request(profiler, "r1", span=10 + i, samples=2, route="/1") for i in range(4)]
    assert [s.aggregate_id is not None for s in fits] == [True, True, True, False]
    assert profiler.force_flush(10)
    st = profiler.stats()
    assert st["dropped"]["window_full"] == 2 and st["profiles_aggregated"] == 5
    assert sorted(p.attributes["otelprof.requests"] for p in exp.profiles) == [1, 4]
    identities(st)


def test_shutdown_flushes_the_open_window(profiler_factory: Any) -> None:
    profiler, exp = make(profiler_factory, aggregate_window=3600)
    short_request(profiler, "a", span=1, samples=2, route="/a")
    assert profiler.shutdown(10)
    assert [p.attributes["otelprof.window"] for p in exp.profiles] == ["aggregate"]
    identities(profiler.stats())


def test_off_when_window_is_zero_or_min_samples_is_one(profiler_factory: Any) -> None:
    for options in ({"aggregate_window": 0}, {"min_samples": 1, "aggregate_window": 10}):
        profiler, exp = make(profiler_factory, **options)
        s = short_request(profiler, "a", span=1, samples=0 if options.get("min_samples") == 1 else 2, route="/a")
        assert s.aggregate_id is None
        assert profiler.force_flush(10)
        assert profiler.stats()["dropped"] == {"too_short": 1} and exp.profiles == []


def in_child(body: Any) -> bytes:
    """Run ``body() -> bytes`` in a forked child; what it returned (or its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.write(w, body())
            code = 0
        except BaseException as exc:
            os.write(w, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_after_fork_starts_without_the_parents_window(profiler_factory: Any) -> None:
    profiler, exp = make(profiler_factory, aggregate_window=3600)
    short_request(profiler, "a", span=1, samples=2, route="/a")

    def child() -> bytes:
        s = short_request(profiler, "a", span=2, samples=1, route="/a")
        profiler.force_flush(10)
        ok = [p.attributes.get("otelprof.requests") for p in exp.profiles] == [1] and s.aggregate_id is not None
        return b"ok" if ok else repr([p.attributes for p in exp.profiles]).encode()

    assert in_child(child) == b"ok"
    assert profiler.force_flush(10)
    assert [p.attributes["otelprof.requests"] for p in exp.profiles] == [1]  # the parent's own request only


@pytest.mark.parametrize("option, value", [("aggregate_window", -1), ("aggregate_max_routes", 0),
                                           ("window_max_stacks", 1), ("continuous_hz", 1001),
                                           ("continuous_window", 0.5)])
def test_bad_values_fail_at_start_up(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        Profiler(exporters=[], **{option: value})



# --------------------------------------------------------------------------- continuous mode


class Sink:
    """A continuous sink that keeps what the sampler gives it."""

    def __init__(self, hz: int) -> None:
        self.hz = hz
        self.max_depth = 64
        self.native = False
        self.rolls = 0
        self.samples: list[tuple[str, Any, int, int, Any]] = []
        self.extra_links: dict[int, SpanLink] = {}

    def roll(self, now_ns: int) -> None:
        self.rolls += 1

    def links(self) -> dict[int, SpanLink]:
        return dict(self.extra_links)

    def record(self, thread_name: str, codes: Any, lastis: Any, cpu_ns: int, wall_ns: int, link: Any) -> None:
        self.samples.append((thread_name, codes, cpu_ns, wall_ns, link))

    def link_at(self, thread_id: int, mono_ns: int, addrs: Any) -> Any:
        return None

    def sampled_by(self, sampler: str, cpu_timer: str) -> None:
        self.sampler = (sampler, cpu_timer)


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_one_walk_per_thread_and_tick_feeds_both_the_session_and_the_continuous_profile(native: bool) -> None:
    import threading

    from otelprof_middleware import native_sampler
    from otelprof_middleware import sampler as sampler_mod
    from otelprof_middleware.session import Session

    if native and native_sampler.load()[0] is None:
        pytest.skip("native sampler unavailable here")
    s = sampler_mod.Sampler(background=False)
    link = SpanLink(trace_id=7, span_id=8, span_name="GET /x")
    session = Session("GET /x", hz=100, max_depth=64, max_duration=60, max_samples=1000, link=link, native=native)
    s.register(session)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="request-worker", daemon=True)
    worker.start()
    session.attach_thread(worker.ident, "request-worker")  # (the ticking thread itself is never sampled)
    sink = Sink(100)
    sink.native = native
    assert s.set_continuous(sink)
    assert not s.set_continuous(Sink(50))  # one continuous sink per process
    threads = len(threading.enumerate())
    t0 = time.monotonic_ns()  # both are due one interval after they started
    for i in range(1, 11):
        s.tick(t0 + i * 10_000_000)
    assert len(threading.enumerate()) == threads
    # read once per tick for both consumers: pure Python reads all threads at once, the
    # native walk reads each thread but this one (the worker is not read a second time)
    assert s.stack_reads == (10 if not native else 10 * (threads - 1))
    assert session.stacks.ticks == 10
    mine = [x for x in sink.samples if x[0] == "request-worker"]
    assert len(mine) == 10 and all(x[4] == link for x in mine)  # the session's span, in its thread
    others = [x for x in sink.samples if x[0] != "request-worker"]
    assert threading.current_thread().name not in {x[0] for x in sink.samples}  # the ticking thread: never
    assert all(x[4] is None for x in others)
    assert sink.rolls == 10
    s.set_continuous(None)
    s.tick(t0 + 20 * 10_000_000)
    assert len(sink.samples) == len(mine) + len(others)  # stopped
    s.unregister(session)
    s.release_idle_timers()  # this private sampler's parked timer (it outlived the test and broke a later one)
    stop.set()
    worker.join()


def spin_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_continuous_profile_covers_background_threads_and_work_outside_requests(profiler_factory: Any) -> None:
    import threading

    from otelprof_middleware.sampler import get_sampler

    exp = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exp], continuous_hz=100, continuous_window=3600)
    stop = threading.Event()
    cpu = {}

    def background() -> None:
        while not stop.is_set():
            spin_cpu(0.01)
        cpu["ns"] = time.thread_time_ns()

    t = threading.Thread(target=background, name="bg-worker", daemon=True)
    t.start()
    sampler = get_sampler()
    start = sampler.ticks
    deadline = time.monotonic() + 120
    while sampler.ticks < start + 30 and time.monotonic() < deadline:  # enough ticks, however slow the machine
        time.sleep(0.02)
    stop.set()
    t.join()
    assert profiler.force_flush(30)
    (cont,) = [p for p in exp.profiles if p.attributes.get("otelprof.window") == "continuous"]
    assert cont.link is None and cont.period_ns == 10_000_000
    bg = [x for x in cont.samples if x.thread_name == "bg-worker"]
    assert bg and sum(x.count for x in bg) >= 5
    bg_cpu = sum(x.cpu_ns for x in bg)
    assert 0 < bg_cpu <= cpu["ns"]  # measured on the thread's clock: never more than it used
    names = {cont.functions[cont.locations[cont.stacks[x.stack_index][0]].function_index].name for x in bg}
    assert "spin_cpu" in names
    st = profiler.stats()
    assert st["window_profiles"] == 1 and st["profiles_started"] == 0
    identities(st)
    # a second flush opens a new window: a new id, later samples only
    assert profiler.shutdown(10)
    probe = Sink(10)
    assert sampler.set_continuous(probe)  # shutdown let go of continuous sampling: free for another one
    sampler.set_continuous(None, only=probe)
    ids = [p.profile_id for p in exp.profiles]
    assert len(ids) == len(set(ids)) and len(ids) >= 1


def _pure_work(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def _chatty_work(n: int, sock: Any) -> int:
    x = 0
    for i in range(n):
        x += i
        if i % 200 == 199:
            sock.send(b"x")  # (lets the GIL go)
    return x


def test_continuous_profile_puts_cpu_where_it_was_spent_when_code_releases_the_gil(profiler_factory: Any) -> None:
    """One thread alternating ~8 ms of pure Python with ~2 ms of Python that sends a
    byte on a socket every 200 additions (letting the GIL go each time): the
    continuous profile's CPU shares are the truth (the thread's CPU clock around each
    call) within 7 points.  Billing each tick's CPU to the stack of that moment (what
    the continuous mode did before it used the threads' CPU timers) gave about 53 / 47
    for a truth of 78 / 22: the ticks see a thread where it lets the GIL go."""
    import socket
    import threading

    from otelprof_middleware import native_sampler

    if native_sampler.load()[0] is None:
        pytest.skip("native sampler unavailable here")
    exp = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exp], continuous_hz=200, continuous_window=3600)
    a, b = socket.socketpair()

    def drain() -> None:
        while b.recv(65536):
            pass

    threading.Thread(target=drain, daemon=True).start()

    def sized(fn: Any, ms: float, *args: Any) -> int:
        t0 = time.thread_time_ns()
        fn(200_000, *args)
        return max(200, int(200_000 * ms * 1e6 / max(1, time.thread_time_ns() - t0)))

    truth = {"_pure_work": 0, "_chatty_work": 0}

    def worker() -> None:
        n_pure, n_chatty = sized(_pure_work, 8.0), sized(_chatty_work, 2.0, a)
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            t0 = time.thread_time_ns()
            _pure_work(n_pure)
            t1 = time.thread_time_ns()
            _chatty_work(n_chatty, a)
            truth["_pure_work"] += t1 - t0
            truth["_chatty_work"] += time.thread_time_ns() - t1

    t = threading.Thread(target=worker, name="gil-worker")
    t.start()
    t.join(60)
    assert profiler.force_flush(30)
    a.close()
    (cont,) = [p for p in exp.profiles if p.attributes.get("otelprof.window") == "continuous"]
    assert cont.attributes["otelprof.sampler"] == "native"
    got = dict.fromkeys(truth, 0)
    for x in cont.samples:
        if x.thread_name != "gil-worker":
            continue
        names = {cont.functions[cont.locations[i].function_index].name for i in cont.stacks[x.stack_index]}
        for fn in got:
            if any(n.endswith(fn) for n in names):
                got[fn] += x.cpu_ns
    total, real = sum(got.values()), sum(truth.values())
    assert 0.7 * real < total < 1.3 * real, (got, truth)  # (the samples hold the thread's CPU)
    share, true_share = got["_pure_work"] / total, truth["_pure_work"] / real
    assert abs(share - true_share) <= 0.07, (round(share, 3), round(true_share, 3))


def test_continuous_samples_of_a_profiled_request_carry_its_link(profiler_factory: Any) -> None:
    exp = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exp], continuous_hz=100, continuous_window=3600, sample_hz=100,
                                min_samples=0)
    link = SpanLink(trace_id=0x1234, span_id=0x5678, span_name="job")
    session = profiler.start_session("job", link=link, triggers=("manual",))
    from otelprof_middleware.sampler import get_sampler

    sampler = get_sampler()
    start = sampler.ticks
    deadline = time.monotonic() + 120
    while sampler.ticks < start + 20 and time.monotonic() < deadline:
        spin_cpu(0.005)
    profiler.finish_session(session)
    assert profiler.shutdown(30)  # shutdown flushes the open continuous window
    by_kind = {p.attributes.get("otelprof.window", "request"): p for p in exp.profiles}
    assert set(by_kind) == {"continuous", "request"}
    linked = [x for x in by_kind["continuous"].samples if x.link == link]
    assert linked and all(x.thread_name == "MainThread" for x in linked)
    assert by_kind["request"].sample_count > 0


def test_span_registry_links_threads_and_tasks_to_their_root_span(otel_tracing: Any) -> None:
    import asyncio

    from otelprof_middleware.windows import SpanRegistry

    tracer, _exp = otel_tracing
    reg = SpanRegistry()
    assert reg.install()
    import threading

    with tracer.start_as_current_span("root") as root:
        with tracer.start_as_current_span("child"):
            got = reg.links()[threading.get_ident()]
            assert got.span_id == root.get_span_context().span_id  # the root, not the child
    assert threading.get_ident() not in reg.links()

    seen = {}

    async def request() -> None:
        with tracer.start_as_current_span("async-root") as span:
            seen["span"] = span.get_span_context().span_id
            seen["links"] = reg.links()

    asyncio.run(request())
    assert seen["links"][threading.get_ident()].span_id == seen["span"]
    assert reg.tasks == {} and reg.threads == {}


def test_span_registry_gives_a_cpu_sample_the_span_of_its_moment(otel_tracing: Any) -> None:
    """A CPU sample is drained after it was taken, often once its thread serves the
    next request: it gets the span that was running when it was taken (a thread's
    current one or one that ended since), or its task's span when its stack holds the
    task's outermost frame (also after the task's span ended), and none when no span
    of that moment is known."""
    import asyncio
    import threading

    from otelprof_middleware.windows import SpanRegistry

    lib = native_sampler_lib()
    tracer, _exp = otel_tracing
    reg = SpanRegistry(lib.frame_address)
    assert reg.install()
    tid = threading.get_ident()
    before_any = time.monotonic_ns()
    with tracer.start_as_current_span("first") as first:
        in_first = time.monotonic_ns()
    with tracer.start_as_current_span("second") as second:
        in_second = time.monotonic_ns()
        assert reg.link_at(tid, in_second, ()).span_id == second.get_span_context().span_id
        assert reg.link_at(tid, in_first, ()).span_id == first.get_span_context().span_id  # (ended before)
        assert reg.link_at(tid, before_any, ()) is None
    between = time.monotonic_ns()
    assert reg.link_at(tid, in_second, ()).span_id == second.get_span_context().span_id  # (ended since)
    assert reg.link_at(tid, between, ()) is None
    assert reg.link_at(tid + 1, in_second, ()) is None  # another thread

    seen: dict[str, Any] = {}

    async def request() -> None:
        with tracer.start_as_current_span("async-root") as span:
            frame = asyncio.current_task().get_coro().cr_frame  # type: ignore[union-attr]
            seen["addr"] = addr = lib.frame_address(frame)
            seen["now"] = now = time.monotonic_ns()
            seen["span"] = span.get_span_context().span_id
            seen["hit"] = reg.link_at(tid, now, (1, addr, 2))
            seen["miss"] = reg.link_at(tid, now, (1, 2))

    asyncio.run(request())
    assert seen["hit"].span_id == seen["span"]
    assert seen["miss"] is None  # (not the task's stack, and no thread span of that moment)
    later = reg.link_at(tid, seen["now"], (1, seen["addr"], 2))  # drained after the request ended
    assert later is not None and later.span_id == seen["span"]
    assert reg.link_at(tid, time.monotonic_ns(), (1, seen["addr"], 2)) is None  # (that frame's memory, reused later)


@pytest.mark.parametrize("kind", ["thread", "task"])
def test_continuous_cpu_of_short_requests_carries_their_spans(profiler_factory: Any, otel_tracing: Any,
                                                             kind: str) -> None:
    """Requests of 2 ms CPU, each in its own server span, for ~1.5 s (in a thread, one
    after the other, or as asyncio tasks on one loop), no per-request profile: nearly
    all the CPU the continuous profile has in them carries a span, and only spans of
    those requests.  (Samples are drained after they were taken, mostly once their
    request is over: before the registry remembered ended spans, 30 % of a thread's and
    none of a task's carried one.)"""
    import asyncio
    import threading

    from opentelemetry.trace import SpanKind

    native_sampler_lib()
    tracer, _exp = otel_tracing
    exp = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exp], continuous_hz=100, continuous_window=3600)
    spans: set[int] = set()

    def request_work() -> None:
        spin_cpu(0.002)

    def one() -> None:
        with tracer.start_as_current_span("GET /short", kind=SpanKind.SERVER) as span:
            spans.add(span.get_span_context().span_id)
            request_work()

    from otelprof_middleware.sampler import get_sampler

    def until_sampled() -> float:
        # a thread is sampled from the first continuous tick after it started (a loop
        # that never idles can starve the sampler thread of the GIL: docs/sampling.md)
        ticks, deadline = get_sampler().ticks, time.monotonic() + 30
        while get_sampler().ticks < ticks + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return time.monotonic() + 1.5

    if kind == "thread":
        def worker() -> None:
            end = until_sampled()
            while time.monotonic() < end:
                one()

        t = threading.Thread(target=worker, name="short-worker")
        t.start()
        t.join(60)
    else:
        async def request() -> None:
            one()

        async def main() -> None:
            end = until_sampled()
            while time.monotonic() < end:
                await asyncio.create_task(request())

        t = threading.Thread(target=lambda: asyncio.run(main()), name="short-worker")
        t.start()
        t.join(60)
    assert profiler.force_flush(30)
    (cont,) = [p for p in exp.profiles if p.attributes.get("otelprof.window") == "continuous"]
    linked = unlinked = 0
    for x in cont.samples:
        names = {cont.functions[cont.locations[i].function_index].name for i in cont.stacks[x.stack_index]}
        if x.thread_name != "short-worker" or not any(n.endswith("request_work") for n in names):
            continue
        if x.link is None:
            unlinked += x.cpu_ns
        else:
            assert x.link.span_id in spans
            linked += x.cpu_ns
    assert linked > 0 and linked >= 0.9 * (linked + unlinked), (linked, unlinked)


def native_sampler_lib() -> Any:
    from otelprof_middleware import native_sampler

    lib = native_sampler.load()[0]
    if lib is None:
        pytest.skip("native sampler unavailable here")
    return lib


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_continuous_mode_restarts_in_a_forked_child(profiler_factory: Any) -> None:
    exp = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exp], continuous_hz=100, continuous_window=3600)
    from otelprof_middleware.sampler import get_sampler

    def child() -> bytes:
        sampler = get_sampler()  # a new sampler, its thread started again for the continuous profile
        start = sampler.ticks
        deadline = time.monotonic() + 60
        while sampler.ticks < start + 10 and time.monotonic() < deadline:
            spin_cpu(0.005)
        profiler.force_flush(10)
        conts = [p for p in exp.profiles if p.attributes.get("otelprof.window") == "continuous"]
        ok = len(conts) == 1 and any(x.thread_name == "MainThread" for x in conts[0].samples)
        return b"ok" if ok else repr((sampler.ticks, [p.attributes for p in exp.profiles])).encode()

    assert in_child(child) == b"ok"
