"""Delivery under faults: the fault matrix of issue 16 against our own receivers.

* one deadline per attempt (connect, send, every read) and a cap on the answer, for
  OTLP/HTTP, OTLP/gRPC and Pyroscope; ``retry_timeout`` bounds the attempt in flight;
* priorities: a promised profile is never dropped for lack of space while a cheaper
  one is queued; drops are counted by reason and priority;
* fast recovery: a backend that refuses connections is probed every second, and
  the backlog drains at once when it answers (recovery within 2 s);
* exact counts: every profile is delivered once or counted under one drop reason,
  and the identities of ``stats()`` balance;
* logging: each cause once per minute with a count, a summary line on recovery.

Timing assertions are behavioural, with wide margins: a trickled answer that would
take 40 s must end near a 1 s deadline; a backoff of at least 15 s must be cut short
by a probe (the promise, within about 1 s, is checked exactly with injected clocks).  Where a sequence of waits matters, the clock and the waits are injected.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Optional

import pytest

from otelprof_middleware.export.base import ExportResult, NetworkExporter, Prepared
from otelprof_middleware.export.channel import LAG_RETRIES, ExportChannel
from otelprof_middleware.export.otlp_http import OTLPHTTPExporter
from otelprof_middleware.export.priority import Priority, TieredQueue, priority_of
from otelprof_middleware.export.pyroscope import PyroscopeExporter
from otelprof_middleware.export.retry import Attempt, RetryPolicy, run_with_retry
from otelprof_middleware.export.settings import BatchSettings, OTLPTarget, PyroscopeTarget
from otelprof_middleware.profile import Profile, ProfileBuilder, SpanLink
from otelprof_middleware.stats import Stats

from helpers.otlp_receiver import OTLPReceiver
from helpers.pyroscope_receiver import PyroscopeReceiver
from helpers.wsgi_servers import free_port as dead_port  # a free port nothing listens on

TRIGGERS = {"promised": ("header",), "kept": ("slow",), "sampled": ("probability",)}


# ----------------------------------------------------------------------------- helpers


def synthetic(name: str, kind: str = "sampled", n_samples: int = 2) -> Profile:
    p = Profile(name=name, start_time_ns=time.time_ns(), duration_ns=10_000_000, period_ns=10_000_000,
                link=SpanLink(0x1234, 0x99, span_name=name), triggers=TRIGGERS[kind],
                keep_if_empty=kind == "promised")
    b = ProfileBuilder(p)
    root = b.location(b.function("main", "/app/main.py", 1), 10)
    for i in range(n_samples):
        b.add(b.stack([b.location(b.function(f"fn{i}", "/app/m.py", i + 1), i + 2), root]), "MainThread", count=1,
              cpu_ns=10_000_000, wall_ns=10_000_000)
    return p


def start(profiler: Any, name: str, kind: str) -> Any:
    """A session of the given priority (no thread attached: it samples nothing)."""
    session = profiler.start_session(name, triggers=TRIGGERS[kind], link=None, attach=False)
    assert session is not None
    if kind == "promised":
        session.keep_if_empty = True  # what the request path does when X-Profile-Id goes out
    return session


def identities(st: dict) -> None:
    """The identities ``docs/delivery.md`` promises (once nothing is moving)."""
    assert st["profiles_started"] + st["window_profiles"] == (
        st["active_sessions"] + st["profiles_discarded"] + st["profiles_aggregated"] + st["profiles_pending"]
        + st["profiles_collected"] + sum(st["dropped"].values())), st
    for name, e in st["exporters"].items():
        assert st["profiles_collected"] == e["exported"] + sum(e["dropped"].values()) + e["queued"] + e["in_flight"], \
            (name, st)
    for level in [st] + list(st["exporters"].values()):  # by priority: a breakdown of the same drops
        by_reason: dict[str, int] = {}
        for counts in level["dropped_by_priority"].values():
            for reason, n in counts.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        for reason, n in by_reason.items():
            assert n <= level["dropped"].get(reason, 0), level


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def transport(url: str = "http://127.0.0.1:9/") -> Any:
    """The OTLP/HTTP exporter's HTTP transport (one deadline per attempt, answer cap)."""
    return OTLPHTTPExporter(OTLPTarget(endpoint=url)).http


class Blocking:
    """A plain exporter whose calls wait for ``release`` (the worker holds one profile)."""

    name = "blocking"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.exported: list[Profile] = []

    def export(self, profiles: Any) -> ExportResult:
        self.started.set()
        self.release.wait(30)
        self.exported.extend(profiles)
        return ExportResult(exported=len(profiles))

    def shutdown(self) -> None:
        self.release.set()


# ----------------------------------------------------------------------------- 1. one deadline per attempt


@pytest.mark.parametrize("fault", ["trickle", "trickle-body", "hang"])
def test_an_otlp_http_attempt_ends_at_its_deadline_whatever_the_server_trickles(fault):
    # the trickled answer is ~250 bytes at 0.2 s each: about 50 s without a deadline
    with OTLPReceiver(fault=fault, trickle_interval=0.2) as rx:
        exporter = OTLPHTTPExporter(OTLPTarget(endpoint=rx.url))
        (req,), _ = exporter.prepare([synthetic("a")])
        t0 = time.monotonic()
        attempt = exporter.send(req, 1.0)
        took = time.monotonic() - t0
        assert not attempt.ok and attempt.retryable and attempt.timed_out, attempt
        assert 0.95 <= took < 5.0, took
        assert "no complete answer within" in attempt.message
        assert rx.wait_for(1) and not rx.requests[0].acked


def test_a_pyroscope_attempt_ends_at_its_deadline():
    with PyroscopeReceiver(fault="trickle", trickle_interval=0.2) as rx:
        exporter = PyroscopeExporter(PyroscopeTarget(endpoint=rx.url))
        (req,), _ = exporter.prepare([synthetic("a")])
        t0 = time.monotonic()
        attempt = exporter.send(req, 1.0)
        assert attempt.timed_out and attempt.retryable, attempt
        assert 0.95 <= time.monotonic() - t0 < 5.0


def test_a_grpc_attempt_ends_at_its_deadline():
    pytest.importorskip("grpc")
    from otelprof_middleware.export.otlp_grpc import OTLPGRPCExporter

    from helpers.grpc_receiver import GRPCReceiver

    block = threading.Event()
    with GRPCReceiver(block=block) as rx:
        exporter = OTLPGRPCExporter(OTLPTarget(endpoint=rx.url, protocol="grpc"))
        (req,), _ = exporter.prepare([synthetic("a")])
        t0 = time.monotonic()
        attempt = exporter.send(req, 1.0)
        block.set()
        assert attempt.status == "gRPC DEADLINE_EXCEEDED" and attempt.timed_out and attempt.retryable, attempt
        assert 0.95 <= time.monotonic() - t0 < 5.0
        exporter.shutdown()


def assert_post_times_out(port: int, content: bytes, status: str) -> None:
    """A POST to 127.0.0.1:``port`` with a 1 s deadline ends as ``status`` at about 1 s."""
    t0 = time.monotonic()
    result = transport().post(f"http://127.0.0.1:{port}/x", content=content, headers={}, timeout=1.0)
    assert isinstance(result, Attempt) and result.timed_out and result.status == status, result
    assert 0.95 <= time.monotonic() - t0 < 5.0


def test_sending_to_a_server_that_never_reads_ends_at_the_deadline():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True).start()
    try:
        # far more than the socket buffers hold: the write blocks once they are full
        assert_post_times_out(srv.getsockname()[1], b"x" * (64 * 1024 * 1024), "WriteTimeout")
    finally:
        srv.close()
        for c in accepted:
            c.close()


def test_connecting_is_bounded_by_the_deadline_too():
    # a listening socket whose accept queue is full: further connection attempts get no answer
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(srv.getsockname())
        pytest.skip("this kernel completes connections beyond the accept queue")
    except OSError:
        pass
    finally:
        probe.close()
    try:
        assert_post_times_out(srv.getsockname()[1], b"x", "ConnectTimeout")
    finally:
        srv.close()
        for c in fillers:
            c.close()


def test_an_endless_answer_is_cut_at_the_size_cap_and_the_export_still_counts():
    with OTLPReceiver(fault="huge") as rx:
        http = transport(rx.url)
        http.max_response_bytes = 256 * 1024
        reply = http.post(rx.url, content=b"x", headers={}, timeout=10)
        assert not isinstance(reply, Attempt) and reply.status == 200 and reply.truncated
        assert len(reply.body) == 256 * 1024
        exporter = OTLPHTTPExporter(OTLPTarget(endpoint=rx.url))
        (req,), _ = exporter.prepare([synthetic("a")])
        assert exporter.send(req, 10).ok  # 2xx: accepted; the answer was just too long to read


def test_retry_timeout_bounds_the_attempt_in_flight():
    """Exact, with a fake clock: a retry gets only what is left of the budget."""
    now = [0.0]
    timeouts: list[float] = []

    def send(timeout: float) -> Attempt:
        timeouts.append(timeout)
        now[0] += timeout  # the attempt hangs to its deadline
        return Attempt(ok=False, retryable=True, timed_out=True, status="ReadTimeout")

    def wait(seconds: float, _failed: Attempt) -> float:
        now[0] += seconds
        return seconds

    policy = RetryPolicy(export_timeout=3.0, retry_timeout=3.5, initial_backoff=0.0001, max_backoff=0.0001)
    attempt, n = run_with_retry(send, policy, wait=wait, clock=lambda: now[0])
    assert n == 2 and not attempt.ok and "retry budget (3.5 s) exhausted" in attempt.message
    assert timeouts[0] == 3.0 and timeouts[1] == pytest.approx(0.5)
    assert now[0] == pytest.approx(3.5)  # never past the budget


def test_retry_timeout_bounds_a_hanging_batch_end_to_end():
    stats = Stats()
    with OTLPReceiver(fault="hang") as rx:
        exporter = OTLPHTTPExporter(OTLPTarget(endpoint=rx.url), retry_policy=RetryPolicy(
            export_timeout=1.0, retry_timeout=1.5, initial_backoff=0.01, max_backoff=0.01))
        ch = ExportChannel(exporter, stats, batch=BatchSettings(batch_size=1, batch_timeout=0))
        assert ch.offer(synthetic("a"), 100)
        assert ch.wait_idle(time.monotonic() + 20)
        wait_until(lambda: stats.snapshot()["export_duration"]["count"] == 1)  # (recorded right after)
    snap = stats.snapshot()
    assert snap["exporters"]["otlp"]["dropped"] == {"export_failed": 1}
    assert snap["exporters"]["otlp"]["requests"] == 2  # a second, shorter attempt fitted in the budget
    assert snap["export_duration"]["max"] < 4.0  # 1.5 s budget (two 1 s attempts would be 2 s+)


def test_shutdown_interrupts_the_attempt_in_flight(profiler_factory):
    with OTLPReceiver(fault="hang") as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, export_timeout=60, min_samples=0,
                                    batch_size=1, batch_timeout=0)
        profiler.finish_session(start(profiler, "stuck", "kept"))
        assert rx.wait_for(1)
        t0 = time.monotonic()
        assert profiler.shutdown(timeout=0.5) is False
        assert time.monotonic() - t0 < 3.0  # not the 60 s export_timeout
        st = profiler.stats()
        assert st["exporters"]["otlp"]["dropped"] == {"shutdown": 1}
        assert st["exporters"]["otlp"]["in_flight"] == 0
        identities(st)
        time.sleep(0.3)  # the interrupted attempt's late result changes nothing
        assert profiler.stats()["exporters"]["otlp"]["dropped"] == {"shutdown": 1}


# ----------------------------------------------------------------------------- 2. priorities


def test_tiered_queue_hands_out_by_priority_and_evicts_the_newest_cheapest():
    q = TieredQueue()
    for name, p in [("s1", Priority.SAMPLED), ("k1", Priority.KEPT), ("s2", Priority.SAMPLED),
                    ("p1", Priority.PROMISED), ("k2", Priority.KEPT), ("s3", Priority.SAMPLED)]:
        q.push(name, p, 10)
    assert len(q) == 6 and q.bytes == 60 and q.counts() == {"sampled": 3, "kept": 2, "promised": 1}
    assert q.evict_below(Priority.KEPT) == ("s3", 10, Priority.SAMPLED)  # the newest sampled one
    assert q.evict_below(Priority.SAMPLED) is None  # nothing is cheaper than sampled
    assert q.count_below(Priority.PROMISED) == 4 and q.bytes_below(Priority.KEPT) == 20
    assert list(q) == ["p1", "k1", "k2", "s1", "s2"]
    assert q.pop() == ("p1", 10, Priority.PROMISED)
    assert [q.pop()[0] for _ in range(len(q))] == ["k1", "k2", "s1", "s2"]
    assert [p.label for p in Priority] == ["sampled", "kept", "promised"]
    assert q.bytes == 0 and not q


def test_priority_of_sessions_and_profiles():
    assert priority_of(synthetic("a", "promised")) is Priority.PROMISED
    assert priority_of(synthetic("a", "kept")) is Priority.KEPT
    assert priority_of(synthetic("a", "sampled")) is Priority.SAMPLED
    for triggers, expected in [(("probability", "error"), Priority.KEPT), (("on_demand",), Priority.SAMPLED),
                               ((), Priority.SAMPLED), (("high_cpu",), Priority.KEPT), (("manual",), Priority.KEPT)]:
        p = synthetic("x")
        p.triggers = triggers
        assert priority_of(p) is expected, triggers


def test_a_full_channel_makes_room_for_dearer_profiles_only():
    stats = Stats()
    blocking = Blocking()
    ch = ExportChannel(blocking, stats, batch=BatchSettings(queue_size=3))
    assert ch.offer(synthetic("in-flight", "sampled"), 10)
    assert blocking.started.wait(5)
    for name in ("s1", "s2", "s3"):
        assert ch.offer(synthetic(name, "sampled"), 10)
    assert not ch.offer(synthetic("s4", "sampled"), 10)  # full of equals: the newcomer goes
    assert ch.offer(synthetic("k1", "kept"), 10)  # evicts s3
    assert ch.offer(synthetic("p1", "promised"), 10)  # evicts s2
    assert ch.offer(synthetic("p2", "promised"), 10)  # evicts s1
    assert ch.offer(synthetic("p3", "promised"), 10)  # no sampled left: evicts k1
    assert not ch.offer(synthetic("p4", "promised"), 10)  # full of promised ones: dropped, counted as such
    assert ch.queued_by_priority() == {"sampled": 0, "kept": 0, "promised": 3}
    snap = stats.snapshot()["exporters"]["blocking"]
    assert snap["dropped"] == {"queue_full": 6}
    assert snap["dropped_by_priority"] == {"sampled": {"queue_full": 4}, "kept": {"queue_full": 1},
                                           "promised": {"queue_full": 1}}
    blocking.release.set()
    assert ch.wait_idle(time.monotonic() + 10)
    assert [p.name for p in blocking.exported] == ["in-flight", "p1", "p2", "p3"]


def test_max_queue_bytes_evicts_as_many_cheaper_profiles_as_needed():
    stats = Stats()
    blocking = Blocking()
    ch = ExportChannel(blocking, stats, batch=BatchSettings(queue_size=100, max_queue_bytes=1000))
    assert ch.offer(synthetic("in-flight"), 10)
    assert blocking.started.wait(5)
    for i in range(4):
        assert ch.offer(synthetic(f"s{i}"), 250)
    assert ch.offer(synthetic("k", "kept"), 600)  # the three newest sampled ones (750 bytes) make room
    assert ch.queued_bytes == 850 and ch.queued_by_priority() == {"sampled": 1, "kept": 1, "promised": 0}
    # bigger than the whole budget: as before, one such profile is taken when the queue is (made) empty
    assert ch.offer(synthetic("p-big", "promised"), 1001)
    assert not ch.offer(synthetic("s-late"), 10)  # nothing cheaper than itself to evict
    assert ch.queued_by_priority() == {"sampled": 0, "kept": 0, "promised": 1}
    assert stats.snapshot()["exporters"]["blocking"]["dropped_by_priority"] == {
        "sampled": {"queue_full": 5}, "kept": {"queue_full": 1}}
    blocking.release.set()


def test_promised_profiles_are_never_dropped_while_cheaper_ones_are_queued(profiler_factory):
    blocking = Blocking()
    profiler = profiler_factory(exporters=[blocking], queue_size=4, min_samples=0)
    profiler.finish_session(start(profiler, "in-flight", "sampled"))
    assert blocking.started.wait(5)
    wait_until(lambda: profiler.stats()["exporters"]["blocking"]["in_flight"] == 1)
    kinds = ["sampled"] * 6 + ["promised", "kept", "sampled", "promised", "promised", "kept", "promised"]
    for i, kind in enumerate(kinds):
        profiler.finish_session(start(profiler, f"{kind}-{i}", kind))
    wait_until(lambda: profiler.stats()["profiles_pending"] == 0)
    st = profiler.stats()
    # 4 places: the four promised ones; the kept and sampled ones made room or were turned away
    assert st["exporters"]["blocking"]["queued_by_priority"] == {"sampled": 0, "kept": 0, "promised": 4}
    assert st["dropped_by_priority"].get("promised", {}) == {}
    assert st["exporters"]["blocking"]["dropped_by_priority"].get("promised", {}) == {}
    dropped = sum(st["dropped"].values()) + sum(st["exporters"]["blocking"]["dropped"].values())
    assert dropped == len(kinds) - 4 and set(st["dropped"]) | set(st["exporters"]["blocking"]["dropped"]) == {
        "queue_full"}
    blocking.release.set()
    assert profiler.force_flush(10)
    names = [p.name for p in blocking.exported]
    assert names[0] == "in-flight" and sorted(names[1:]) == sorted(
        f"promised-{i}" for i, k in enumerate(kinds) if k == "promised")
    identities(profiler.stats())


# ----------------------------------------------------------------------------- 3. fast recovery


class FlakyBackend(NetworkExporter):
    """A network exporter that refuses connections until ``up`` (no sockets involved)."""

    name = "flaky"
    destination = "http://backend:4318/v1development/profiles"

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(retry_policy=policy)
        self.up = False
        self.sent: list[list[str]] = []
        self.attempt_times: list[float] = []
        self.clock: Any = time.monotonic

    def encode(self, profiles: Any) -> tuple[int, Any]:
        return 10 * len(profiles), None

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:
        return Prepared(profiles=profiles, body=b"x" * 10 * len(profiles), size=10 * len(profiles))

    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        self.attempt_times.append(self.clock())
        if not self.up:
            return Attempt(ok=False, retryable=True, status="ConnectError",
                           message="ConnectError: [Errno 111] Connection refused")
        self.sent.append([p.name for p in prepared.profiles])
        return Attempt(ok=True)

    def probe(self, timeout: float) -> Optional[bool]:
        return self.up


def test_a_refusing_backend_is_probed_every_second_and_retried_as_soon_as_it_answers(caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    now = [100.0]
    backend = FlakyBackend(RetryPolicy(export_timeout=1, retry_timeout=600, initial_backoff=20, max_backoff=30))
    backend.clock = lambda: now[0]
    waits: list[float] = []
    queued = threading.Event()

    def wait(seconds: float) -> bool:  # no real sleeping: the fake clock moves
        queued.wait(10)  # (the outage lasts until the test has queued everything)
        waits.append(seconds)
        now[0] += seconds
        if now[0] >= 107.5:
            backend.up = True  # the backend answers again at t = 107.5
        return True

    stats = Stats()
    ch = ExportChannel(backend, stats, batch=BatchSettings(batch_size=2, batch_timeout=0), wait=wait,
                       clock=lambda: now[0])
    for i in range(5):
        assert ch.offer(synthetic(f"p{i}"), 10)
    queued.set()
    assert ch.wait_idle(time.monotonic() + 20)
    # the first attempt failed at t=100; the backoff (10-20 s) was cut into 1 s probes
    assert waits[:8] == [1.0] * 8
    assert backend.attempt_times[0] == 100.0 and backend.attempt_times[1] == 108.0  # within 1 s of t=107.5
    assert sorted(n for batch in backend.sent for n in batch) == [f"p{i}" for i in range(5)]
    assert stats.snapshot()["exporters"]["flaky"]["exported"] == 5
    summary = ("otelprof: flaky exporter delivered 5 queued profile(s) to http://backend:4318/v1development/profiles "
               "after 8 s of connection refused")  # (logged by the worker once the backlog is sent)
    wait_until(lambda: summary in [r.getMessage() for r in caplog.records], timeout=10,
               what=str([r.getMessage() for r in caplog.records]))


def test_a_client_that_lags_behind_the_probe_is_retried_a_step_apart_not_after_the_backoff():
    """A probe connects, but the retries it lets through still fail before reaching the
    backend for a few steps (gRPC's channel reconnects on its own schedule; on a loaded CI
    machine more than one step behind): they go out one probe step apart, a bounded number
    of times, instead of the first lagging failure sending the batch back into a 20-30 s
    backoff."""
    now = [100.0]
    backend = FlakyBackend(RetryPolicy(export_timeout=1, retry_timeout=600, initial_backoff=20, max_backoff=30))
    backend.clock = lambda: now[0]
    lagging = [3]  # failed sends after the backend is back

    def send(prepared: Prepared, timeout: float) -> Attempt:
        backend.attempt_times.append(now[0])
        if not backend.up or lagging[0] > 0:
            if backend.up:
                lagging[0] -= 1
            return Attempt(ok=False, retryable=True, status="UNAVAILABLE", message="UNAVAILABLE: connection lag")
        backend.sent.append([p.name for p in prepared.profiles])
        return Attempt(ok=True)

    backend.send = send  # type: ignore[method-assign]
    up_at = [103.5]

    def channel(batch_size: int) -> ExportChannel:
        def wait(seconds: float) -> bool:  # no real sleeping: the fake clock moves
            now[0] += seconds
            if now[0] >= up_at[0]:
                backend.up = True
            return True

        return ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=batch_size, batch_timeout=0),
                             wait=wait, clock=lambda: now[0])

    ch = channel(5)
    for i in range(5):
        assert ch.offer(synthetic(f"p{i}"), 10)
    assert ch.wait_idle(time.monotonic() + 20)
    assert backend.attempt_times[:5] == [100.0, 104.0, 105.0, 106.0, 107.0], backend.attempt_times
    assert sorted(n for batch in backend.sent for n in batch) == [f"p{i}" for i in range(5)]

    # bounded: a backend that accepts connections but never an export gets the backoff again
    now[0] = 200.0
    backend.attempt_times.clear()
    backend.up = False
    lagging[0] = 1_000_000
    up_at[0] = 203.5
    assert channel(1).offer(synthetic("late"), 10)
    wait_until(lambda: len(backend.attempt_times) >= LAG_RETRIES + 3, timeout=10, what=str(backend.attempt_times))
    times = backend.attempt_times
    assert times[:LAG_RETRIES + 2] == [200.0] + [204.0 + i for i in range(LAG_RETRIES + 1)], times
    assert times[LAG_RETRIES + 2] - times[LAG_RETRIES + 1] >= 10, times  # then the whole backoff


def test_the_recovery_line_counts_the_outage_from_its_first_attempt_and_names_the_latest_cause(caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    now = [0.0]
    backend = FlakyBackend(RetryPolicy(export_timeout=10, retry_timeout=600, initial_backoff=1, max_backoff=1))
    backend.up = True  # (probes connect: plain backoff)
    answers = [Attempt(ok=False, retryable=True, timed_out=True, status="ReadTimeout", message="ReadTimeout: ..."),
               Attempt(ok=False, retryable=True, status="ConnectError", message="ConnectError: [Errno 111] "
                       "Connection refused")]

    def send(prepared: Prepared, timeout: float) -> Attempt:
        if answers:
            attempt = answers.pop(0)
            now[0] += 10.0 if attempt.timed_out else 0.0  # the first attempt hangs to its deadline
            return attempt
        return Attempt(ok=True)

    backend.send = send  # type: ignore[method-assign]

    def wait(seconds: float) -> bool:
        now[0] += seconds
        return True

    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=1, batch_timeout=0), wait=wait,
                       clock=lambda: now[0])
    ch.offer(synthetic("a"), 10)
    assert ch.wait_idle(time.monotonic() + 10)
    wait_until(lambda: any("queued profile(s)" in r.getMessage() for r in caplog.records))
    (line,) = [r.getMessage() for r in caplog.records if "queued profile(s)" in r.getMessage()]
    assert 10.5 <= now[0] <= 12.0  # the 10 s attempt, then the backoff waits (a timed-out attempt's counts)
    assert line.endswith(f"after {now[0]:.0f} s of connection refused"), line


def test_retry_after_is_honoured_exactly_even_when_probing_would_say_otherwise():
    backend = FlakyBackend(RetryPolicy(retry_timeout=600))
    backend.up = True  # probes connect...
    answers = [Attempt(ok=False, retryable=True, retry_after=7.0, status="HTTP 429", message="HTTP 429")]

    def send(prepared: Prepared, timeout: float) -> Attempt:
        return answers.pop(0) if answers else Attempt(ok=True)

    backend.send = send  # type: ignore[method-assign]
    waits: list[float] = []
    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=1, batch_timeout=0),
                       wait=lambda s: waits.append(s) or True)
    ch.offer(synthetic("a"), 10)
    assert ch.wait_idle(time.monotonic() + 10)
    assert waits == [7.0]  # ... but the server said when


def test_a_backend_that_answers_but_fails_gets_the_plain_backoff():
    backend = FlakyBackend(RetryPolicy(retry_timeout=600, initial_backoff=4, max_backoff=4))
    backend.up = True
    answers = [Attempt(ok=False, retryable=True, status="HTTP 503", message="HTTP 503")]
    backend.send = lambda prepared, timeout: answers.pop(0) if answers else Attempt(ok=True)  # type: ignore
    waits: list[float] = []
    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=1, batch_timeout=0),
                       wait=lambda s: waits.append(s) or True)
    ch.offer(synthetic("a"), 10)
    assert ch.wait_idle(time.monotonic() + 10)
    assert len(waits) == 1 and 2 <= waits[0] <= 4  # one wait: reachable, so no probing


def test_recovery_starts_within_two_seconds_of_the_collector_answering_again(profiler_factory, caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    rx = OTLPReceiver()
    port = dead_port()
    rx.bind_port = port
    # a long backoff: without probing, the first retry would come 15-30 s after a failure
    profiler = profiler_factory(exporter="otlp", endpoint=f"http://127.0.0.1:{port}/v1development/profiles",
                                min_samples=0, retry_initial_backoff=30, retry_max_backoff=60, retry_timeout=300,
                                batch_size=10, batch_timeout=60)
    for i in range(25):
        profiler.finish_session(start(profiler, f"job{i}", "kept"))
    profiler.force_flush(0.1)  # send the first batch now (it fails: nothing listens)
    wait_until(lambda: profiler.stats()["exporters"]["otlp"]["requests"] >= 1)
    time.sleep(1.5)  # well into the backoff
    rx.start()
    back = time.monotonic()
    try:
        assert rx.wait_for(1, timeout=20, accepted_only=True)
        first = rx.accepted[0].received_at - back
        assert first < 10.0, first  # the promise is 2 s (a probe each second); the backoff was >= 15 s
        # the backlog drains at once: the last partial batch does not wait out batch_timeout (60 s)
        wait_until(lambda: len(rx.acked_ids()) == 25, timeout=20, what=str(profiler.stats()))
        assert len(set(rx.acked_ids())) == 25
        assert profiler.force_flush(10)  # (the collector acks a batch before we have read its answer)
        st = profiler.stats()
        assert st["exporters"]["otlp"]["exported"] == 25 and st["dropped_total"] == 0
        wait_until(lambda: any("queued profile(s)" in r.getMessage() for r in caplog.records))
        (line,) = [r.getMessage() for r in caplog.records if "queued profile(s)" in r.getMessage()]
        assert line.startswith("otelprof: otlp exporter delivered 25 queued profile(s) to http://127.0.0.1:")
        assert "s of connection refused" in line
    finally:
        rx.stop()


def test_grpc_recovery_starts_within_two_seconds_of_the_collector_answering_again(profiler_factory):
    pytest.importorskip("grpc")
    from helpers.grpc_receiver import GRPCReceiver

    port = dead_port()
    profiler = profiler_factory(exporter="otlp", protocol="grpc", endpoint=f"http://127.0.0.1:{port}", min_samples=0,
                                retry_initial_backoff=30, retry_max_backoff=60, retry_timeout=300, batch_size=10,
                                batch_timeout=0.05)
    for i in range(5):
        profiler.finish_session(start(profiler, f"job{i}", "kept"))
    wait_until(lambda: profiler.stats()["exporters"]["otlp"]["requests"] >= 1)
    time.sleep(3)  # long enough for grpcio's own reconnect backoff to grow
    rx = GRPCReceiver(port=port).start()
    back = time.monotonic()
    try:
        assert rx.wait_for(1, timeout=30)
        assert rx.requests[0].received_at - back < 10.0  # the backoff was >= 15 s; probes run every second
        assert profiler.force_flush(10)
        assert profiler.stats()["exporters"]["otlp"]["exported"] == 5
    finally:
        rx.stop()


def test_pyroscope_throttling_with_retry_after_then_delivery(profiler_factory):
    with PyroscopeReceiver(push_statuses=[429, 429], retry_after="0.3") as rx:
        profiler = profiler_factory(exporter="pyroscope", pyroscope_endpoint=rx.url, min_samples=0, batch_size=3,
                                    batch_timeout=0.05, retry_timeout=30)
        for i in range(3):
            profiler.finish_session(start(profiler, f"job{i}", "kept"))
        assert profiler.force_flush(20)
        pushes = [r for r in rx.requests if r.path == "/push.v1.PusherService/Push"]
        assert [r.status for r in pushes] == [429, 429, 200]
        assert all(b.received_at - a.received_at >= 0.29 for a, b in zip(pushes, pushes[1:]))  # Retry-After: 0.3
        st = profiler.stats()
        assert st["exporters"]["pyroscope"]["exported"] == 3 and st["dropped_total"] == 0
        identities(st)


def test_the_backlog_drains_oldest_kept_for_a_reason_first():
    now = [0.0]
    backend = FlakyBackend(RetryPolicy(retry_timeout=600, initial_backoff=20, max_backoff=30))
    queued = threading.Event()

    def wait(seconds: float) -> bool:
        queued.wait(10)
        now[0] += seconds
        backend.up = now[0] >= 3
        return True

    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=2, batch_timeout=0), wait=wait,
                       clock=lambda: now[0])
    ch.offer(synthetic("first-sampled", "sampled"), 10)  # goes out at once and fails: the outage begins
    wait_until(lambda: backend.attempt_times)
    for name, kind in [("s1", "sampled"), ("k1", "kept"), ("s2", "sampled"), ("p1", "promised"), ("k2", "kept")]:
        ch.offer(synthetic(name, kind), 10)
    queued.set()
    assert ch.wait_idle(time.monotonic() + 10)
    sent_order = [n for batch in backend.sent for n in batch]
    assert sent_order == ["first-sampled", "p1", "k1", "k2", "s1", "s2"]


# ----------------------------------------------------------------------------- 4. exact counts under every fault

MODES = ["ok", "trickle", "hang", "reset", "garbage", "429-retry-after", "503", "outage", "400", "budget-exhausted"]


@pytest.mark.parametrize("mode", MODES)
def test_fault_matrix_every_profile_is_delivered_once_or_counted_once(profiler_factory, mode):
    rx = OTLPReceiver()
    rx.bind_port = dead_port()
    budget = 1.2 if mode == "budget-exhausted" else 60
    profiler = profiler_factory(exporter="otlp", endpoint=f"http://127.0.0.1:{rx.bind_port}/v1development/profiles",
                                min_samples=0, export_timeout=0.5, retry_timeout=budget, retry_initial_backoff=0.05,
                                retry_max_backoff=0.2, batch_size=2, batch_timeout=0.05, queue_size=8)
    fault = {"trickle": "trickle", "hang": "hang", "reset": "reset", "garbage": "garbage",
             "budget-exhausted": "hang"}.get(mode)
    rx.fault = fault
    rx.trickle_interval = 0.2
    if mode == "429-retry-after":
        rx.statuses, rx.retry_after = [429, 429], "0.3"
    elif mode == "503":
        rx.statuses = [503, 503, 503]
    elif mode == "400":
        rx.statuses = [400, 400]
    if mode != "outage":
        rx.start()
    try:
        kinds = (["promised"] * 3 + ["kept"] * 4 + ["sampled"] * 13)
        ids: dict[str, str] = {}
        for i, kind in enumerate(kinds):
            s = start(profiler, f"{kind}-{i}", kind)
            ids[s.profile_id_hex] = kind
            profiler.finish_session(s)
        if mode == "outage":  # the collector is down for a while, then comes back on its port
            wait_until(lambda: profiler.stats()["exporters"]["otlp"]["requests"] >= 2)
            rx.start()
        elif mode == "budget-exhausted":  # hangs until a batch has spent its retry budget
            wait_until(lambda: profiler.stats()["exporters"]["otlp"]["dropped"].get("export_failed", 0) >= 2)
            rx.set_fault(None)
        elif mode != "ok":  # the fault is met at least twice, then the collector recovers
            wait_until(lambda: len(rx.requests) >= 2, what=f"{mode}: {profiler.stats()}")
            rx.set_fault(None)
        assert profiler.shutdown(timeout=30) or mode in ("400", "budget-exhausted"), profiler.stats()
        st = profiler.stats()
        acked = rx.acked_ids()
    finally:
        rx.stop()
    identities(st)
    otlp = st["exporters"]["otlp"]
    assert len(acked) == len(set(acked)), "a profile was delivered twice"
    assert set(acked) <= set(ids)
    assert otlp["exported"] == len(acked)  # what we count as delivered is what the collector acknowledged
    assert st["profiles_started"] == len(ids) == len(acked) + st["dropped_total"]  # delivered or counted, once
    # each profile not delivered is one drop, of its own priority (exactly)
    for kind in ("promised", "kept", "sampled"):
        lost = sum(1 for pid, k in ids.items() if k == kind and pid not in acked)
        counted = sum(st["dropped_by_priority"].get(kind, {}).values()) + sum(
            otlp["dropped_by_priority"].get(kind, {}).values())
        assert lost == counted, (kind, st)
    # the queue (8) overflowed while the collector misbehaved: promises made room, never lost it
    for level in (st["dropped_by_priority"], otlp["dropped_by_priority"]):
        assert "queue_full" not in level.get("promised", {}), st
    promised = {pid for pid, kind in ids.items() if kind == "promised"}
    if mode == "400":  # final: the two requests that met it are dropped, whatever their priority
        refused = [p.profile_id.hex() for r in rx.requests[:2] if r.message is not None
                   for rp in r.message.resource_profiles for sp in rp.scope_profiles for p in sp.profiles[::2]]
        assert [r.status for r in rx.requests[:2]] == [400, 400] and refused and not set(refused) & set(acked)
        assert set(otlp["dropped"]) <= {"export_failed", "queue_full"}
        assert otlp["dropped"]["export_failed"] == len(refused)
    elif mode == "budget-exhausted":
        assert otlp["dropped"]["export_failed"] >= 2, st  # the batch(es) given up after 1.2 s
        assert set(otlp["dropped"]) <= {"export_failed", "queue_full"}
    else:  # recovered: nothing kept for a reason is lost, and no promise is broken
        assert set(otlp["dropped"]) <= {"queue_full"} and set(st["dropped"]) <= {"queue_full"}, st
        assert promised <= set(acked)
        assert {pid for pid, kind in ids.items() if kind == "kept"} <= set(acked)
    if mode == "429-retry-after":
        times = [r.received_at for r in rx.requests]
        assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29  # Retry-After: 0.3, honoured


# ----------------------------------------------------------------------------- 5. logging


def test_each_cause_is_logged_once_per_minute_with_a_count(caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    now = [0.0]
    causes = ["HTTP 503", "HTTP 503", "ConnectError", "HTTP 503", "HTTP 503", "ConnectError"]
    backend = FlakyBackend(RetryPolicy(retry_timeout=600, initial_backoff=1, max_backoff=1))
    backend.up = True

    def send(prepared: Prepared, timeout: float) -> Attempt:
        if not causes:
            return Attempt(ok=True)
        cause = causes.pop(0)
        return Attempt(ok=False, retryable=True, status=cause, message=f"{cause}: detail")

    backend.send = send  # type: ignore[method-assign]

    def wait(seconds: float) -> bool:
        now[0] += 15 if len(causes) != 2 else 61  # the 5th failure comes more than a minute after the 1st
        return True

    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=1, batch_timeout=0), wait=wait,
                       clock=lambda: now[0])
    ch.offer(synthetic("a"), 10)
    assert ch.wait_idle(time.monotonic() + 10)
    lines = [r.getMessage() for r in caplog.records if "could not deliver" in r.getMessage()]
    # failures at t = 0 (503), 15 (503), 30 (refused), 45 (503), 106 (503), 121 (refused)
    assert [line.split(" to http://backend:4318/v1development/profiles: ")[1] for line in lines] == [
        "HTTP 503: detail; retrying for up to 600 s",
        "ConnectError: detail; retrying for up to 600 s",
        "HTTP 503: detail; retrying for up to 600 s (2 more since the last report)",
        "ConnectError: detail; retrying for up to 600 s",
    ]


def test_a_cause_of_drops_is_logged_once_per_minute_whatever_its_details(caplog):
    """Two batches given up for the same cause after a different number of attempts
    (so their messages differ): one line, not two."""
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    backend = FlakyBackend(RetryPolicy(retry_timeout=10))
    backend.up = True

    def send(prepared: Prepared, timeout: float) -> Attempt:  # batch a: 4 s apart (3 attempts), b: 6 s (2)
        delay = 4.0 if prepared.profiles[0].name == "a" else 6.0
        return Attempt(ok=False, retryable=True, retry_after=delay, status="HTTP 503", message="HTTP 503")

    backend.send = send  # type: ignore[method-assign]
    ch = ExportChannel(backend, Stats(), batch=BatchSettings(batch_size=1, batch_timeout=0), wait=lambda s: True)
    for name in ("a", "b"):
        ch.offer(synthetic(name), 10)
    assert ch.wait_idle(time.monotonic() + 10)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == ["otelprof: flaky exporter dropped 1 profile(s) (export_failed) for "
                     "http://backend:4318/v1development/profiles: HTTP 503; retry budget (10 s) exhausted after "
                     "3 attempt(s)"], drops


def test_drops_of_each_cause_are_logged_not_only_the_first(profiler_factory, caplog):
    caplog.set_level(logging.WARNING, logger="otelprof_middleware")
    with OTLPReceiver(statuses=[400, 413, 400]) as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0, batch_size=1, batch_timeout=0)
        for i in range(3):
            profiler.finish_session(start(profiler, f"p{i}", "kept"))
            assert profiler.force_flush(10)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 2 and "HTTP 400" in lines[0] and "HTTP 413" in lines[1], lines


# ----------------------------------------------------------------------------- 6. counting


def test_too_short_sessions_are_dropped_when_submitted_and_never_queued(profiler_factory):
    blocking = Blocking()
    profiler = profiler_factory(exporters=[blocking], min_samples=1, queue_size=1)
    profiler.finish_session(start(profiler, "promised-empty", "promised"))  # kept although empty
    assert blocking.started.wait(5)
    for i in range(5):
        assert profiler.finish_session(start(profiler, f"empty{i}", "sampled")) is False
    st = profiler.stats()
    assert st["dropped"] == {"too_short": 5} and st["dropped_by_priority"] == {"sampled": {"too_short": 5}}
    assert st["profiles_pending"] == 0  # never took a place in the queue: no queue_full either
    blocking.release.set()
    assert profiler.force_flush(10)
    identities(profiler.stats())


def test_a_session_being_finished_when_shutdown_starts_is_waited_for(profiler_factory, monkeypatch):
    """The Flask dev server case: the request thread is finishing its profile when the
    exit flush runs.  Shutdown waits for it (within its budget) instead of losing it."""
    from otelprof_middleware.testing import InMemoryProfileExporter

    exporter = InMemoryProfileExporter()
    profiler = profiler_factory(exporters=[exporter], min_samples=0)
    session = start(profiler, "finishing", "promised")
    entered, go_on = threading.Event(), threading.Event()
    real = session.detach_all

    def slow_detach() -> None:  # the request thread, between "finished" and "queued"
        entered.set()
        go_on.wait(10)
        real()

    monkeypatch.setattr(session, "detach_all", slow_detach)
    t = threading.Thread(target=profiler.finish_session, args=(session,), daemon=True)
    t.start()
    assert entered.wait(5)
    threading.Timer(0.3, go_on.set).start()  # it completes while shutdown is waiting
    assert profiler.shutdown(timeout=10) is True
    assert [p.name for p in exporter.profiles] == ["finishing"]
    st = profiler.stats()
    assert st["dropped_total"] == 0
    identities(st)


def test_shutdown_is_idempotent_and_concurrent_calls_share_one_result(profiler_factory):
    blocking = Blocking()
    profiler = profiler_factory(exporters=[blocking], min_samples=0)
    profiler.finish_session(start(profiler, "stuck", "kept"))
    assert blocking.started.wait(5)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(profiler.shutdown(timeout=0.5))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [False, False, False]
    assert profiler.shutdown(timeout=0) is False  # and later calls return the same, at once
    st = profiler.stats()
    assert st["exporters"]["blocking"]["dropped"] == {"shutdown": 1}  # counted once
    blocking.release.set()
