"""The process-wide sampler, sessions and Profiler.profile(): what ends up in profiles.

Tests check behaviour (which frames, which shares, which markers), never how
long something took.  CPU-burning threads stop on a flag set by the test.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import json
import os
import sys
import threading
import time
import weakref

import pytest

from otelprof_middleware.sampler import get_sampler
from otelprof_middleware.stacks import HAVE_THREAD_CPU, line_of, qualname, thread_cpu_ns

from helpers.pprof_decode import decode_pprof, stacks_by_function

needs_thread_cpu = pytest.mark.skipif(not HAVE_THREAD_CPU, reason="per-thread CPU clocks unavailable")


def native_expected() -> bool:
    """The native sampler must work on Linux unless the build was switched off."""
    return sys.platform.startswith("linux") and os.environ.get("OTELPROF_BUILD_NATIVE", "1") not in ("0", "false")


@pytest.fixture(params=["native", "python"])
def sampler_kind(request):
    """Run a test with CPU samples from the native CPU timers and from the pure-Python sampler."""
    if request.param == "native":
        from otelprof_middleware import native_sampler

        lib, reason = native_sampler.load()
        if lib is None:
            if native_expected():
                pytest.fail(f"native sampler unavailable on Linux: {reason}")
            pytest.skip(f"native sampler unavailable: {reason}")
    return request.param


# --------------------------------------------------------------------------- workloads
# Each function burns CPU in its own frame (no Python calls inside the loop), so it
# is the leaf of every sample taken while it runs.


def hot_a(n):
    x = 0
    for i in range(n):
        x += i
    return x


def hot_b(n):
    x = 0
    for i in range(n):
        x += i
    return x


def burn_mix(stop, counts):
    """Calls hot_a on 7 and hot_b on 3 of every 10 iterations (identical bodies)."""
    i = 0
    while not stop[0]:
        if i % 10 < 7:
            hot_a(1500)
            counts[0] += 1
        else:
            hot_b(1500)
            counts[1] += 1
        i += 1


def burn_x(stop):
    x = 0
    while not stop[0]:
        for i in range(1000):
            x += i
    return x


def burn_y(stop):
    x = 0
    while not stop[0]:
        for i in range(1000):
            x += i
    return x


def sleepy(stop):
    while not stop[0]:
        time.sleep(0.005)


def leaf_spin(stop, depth_out):
    depth = 0
    f = sys._getframe()
    while f is not None:
        depth += 1
        f = f.f_back
    depth_out.append(depth)
    x = 0
    while not stop[0]:
        x += 1
    return x


def recurse(stop, n, depth_out):
    if n == 0:
        return leaf_spin(stop, depth_out)
    return recurse(stop, n - 1, depth_out)


def spin_for(seconds):
    """CPU-burn the calling thread for about ``seconds`` (only ever used to make
    sure some samples exist, never asserted on)."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(500):
            x += i
    return x


class BackgroundThread:
    """Runs ``target(stop, *args)`` in a thread until ``stop()``."""

    def __init__(self, target, *args, name="bg"):
        self.flag = [False]
        self.started = threading.Event()

        def run():
            self.started.set()
            target(self.flag, *args)

        self.thread = threading.Thread(target=run, name=name, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(5)
        return self

    def stop(self):
        self.flag[0] = True
        self.thread.join(10)
        assert not self.thread.is_alive()

    def __exit__(self, *exc):
        self.stop()

    @property
    def ident(self):
        return self.thread.ident


def profile_thread(profiler, ident, name, seconds, session_name="t"):
    """A session attached to thread ``ident`` for about ``seconds``; returns it finished."""
    session = profiler.start_session(session_name, attach=False, link=None)
    assert session is not None
    session.attach_thread(ident, name)
    time.sleep(seconds)
    profiler.finish_session(session)
    return session


def short(name):
    """``test_x.<locals>.work`` -> ``work`` (function names are qualified names)."""
    return name.rsplit(".", 1)[-1]


def frame_names(profile, stack, qualified=False):
    names = [profile.functions[profile.locations[i].function_index].name for i in stack]
    return names if qualified else [short(n) for n in names]


def samples_with_names(profile, qualified=False):
    """(names leaf first, sample) for every sample of a Profile model."""
    return [(frame_names(profile, profile.stacks[s.stack_index], qualified), s) for s in profile.samples]


def source_line(func, text):
    """The line number of the first line of ``func`` containing ``text``."""
    lines, first = inspect.getsourcelines(func)
    for i, line in enumerate(lines):
        if text in line:
            return first + i
    raise AssertionError(f"{text!r} not in {func}")


def function_names(profile):
    """Short names of every function in the profile."""
    return {short(f.name) for f in profile.functions}


# --------------------------------------------------------------------------- (a) CPU shares


@needs_thread_cpu
def test_cpu_shares_match_the_work_split(profiler_factory, tmp_path, sampler_kind):
    out = tmp_path / "profiles"
    profiler = profiler_factory(exporter="file", output_dir=str(out), sample_hz=100,
                                native_sampler=sampler_kind == "native")
    counts = [0, 0]
    with BackgroundThread(burn_mix, counts, name="mixer") as bg:
        # ~2 s of the mixer's CPU, however long a loaded machine takes to give it: the
        # samples' count, not the wall time, sets the statistical error of the shares
        session = profiler.start_session("mix", attach=False, link=None)
        session.attach_thread(bg.ident, "mixer")
        cpu0 = thread_cpu_ns(bg.ident)
        deadline = time.monotonic() + 30
        while thread_cpu_ns(bg.ident) - cpu0 < 2_000_000_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        profiler.finish_session(session)
    assert profiler.force_flush(10)

    (line,) = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert line["profile_id"] == session.profile_id_hex
    decoded = decode_pprof((out / line["file"]).read_bytes())
    types = [t for t, _ in decoded.sample_types]
    cpu_i = types.index("cpu")

    cpu = {"hot_a": 0, "hot_b": 0}
    for names, values, labels in stacks_by_function(decoded):
        assert labels.get("thread_name") == "mixer"
        for fn in cpu:
            if fn in names:
                cpu[fn] += values[cpu_i]
    total = cpu["hot_a"] + cpu["hot_b"]
    assert line["samples"] >= 50, line  # ~200 expected: enough for a 10-point tolerance
    assert total > 0
    share_a = cpu["hot_a"] / total
    truth_a = counts[0] / (counts[0] + counts[1])  # 0.7 by construction
    assert abs(truth_a - 0.7) < 0.01
    assert abs(share_a - truth_a) <= 0.10, (cpu, counts)
    assert line["attributes"]["otelprof.sampler"] == sampler_kind if "attributes" in line else True


# --------------------------------------------------------------------------- (b) wall vs CPU


@needs_thread_cpu
def test_sleeping_thread_has_wall_time_but_almost_no_cpu(profiler_factory):
    profiler = profiler_factory(exporter="none")
    with BackgroundThread(sleepy, name="sleeper") as bg:
        session = profile_thread(profiler, bg.ident, "sleeper", 0.6, "sleep")
    profile = session.to_profile()
    assert profile.sample_count > 0
    assert "sleepy" in function_names(profile)
    # the sampled wall time covers most of the session ...
    assert profile.wall_ns >= 0.5 * session.duration_ns
    # ... and the thread used (almost) no CPU in it
    assert profile.cpu_ns < 0.10 * profile.wall_ns, (profile.cpu_ns, profile.wall_ns)


@needs_thread_cpu
def test_busy_thread_cpu_is_accounted_exactly(profiler_factory, sampler_kind):
    """The counterpart of the sleeping test: a spinning thread's profile holds the
    CPU its clock advanced while attached, the part after the last sample
    included (billed to the last stack at the end).  What the profile may lack is
    only what ran outside the attachment (at most the wall time of attaching and
    of finishing: one thread cannot use more CPU than wall) and, with the native
    sampler, its own signal handler's CPU.  Holds however loaded the machine is."""
    profiler = profiler_factory(exporter="none", native_sampler=sampler_kind == "native")
    sampler = get_sampler()
    with BackgroundThread(burn_x, name="spinner") as bg:
        session = profiler.start_session("spin", attach=False, link=None)
        t0 = time.monotonic_ns()
        cpu0 = thread_cpu_ns(bg.ident)
        handler0 = sampler.cpu_ns_self
        session.attach_thread(bg.ident, "spinner")
        t1 = time.monotonic_ns()
        time.sleep(0.5)
        tf = time.monotonic_ns()
        profiler.finish_session(session)
        cpu1 = thread_cpu_ns(bg.ident)
        t2 = time.monotonic_ns()
        own = sampler.cpu_ns_self - handler0  # sampler thread + handlers: an upper bound of the handlers
    profile = session.to_profile()
    assert profile.sample_count > 0
    assert {"burn_x"} <= function_names(profile)
    actual = cpu1 - cpu0
    sampled = profile.cpu_ns
    assert 0 < sampled <= actual
    unaccounted_wall = (t1 - t0) + (t2 - tf)
    slack = own if sampler_kind == "native" else 0
    assert actual - sampled <= unaccounted_wall + slack, (actual, sampled, unaccounted_wall, slack)
    assert profile.attributes["otelprof.sampler"] == sampler_kind


def nap(stop):
    while not stop[0]:
        time.sleep(0.005)


@pytest.mark.parametrize("workload", [burn_x, nap], ids=["spinning", "sleeping"])
def test_one_threads_wall_is_the_time_it_was_attached(profiler_factory, sampler_kind, workload):
    """The known truth for wall time: one thread attached for half a second has half a
    second of wall in its profile, whether it spins or sleeps.  At 20 Hz (50 ms ticks)
    the two faults this catches are an interval wide: CPU counted as wall twice (the
    CPU timer's samples lag the wall tick) and the off-CPU wall after the last tick
    left out.  The bounds are the attachment's own edges, so load does not matter."""
    profiler = profiler_factory(exporter="none", sample_hz=20, native_sampler=sampler_kind == "native")
    with BackgroundThread(workload, name="worker") as bg:
        t0 = time.monotonic_ns()
        session = profiler.start_session("wall", attach=False, link=None)
        session.attach_thread(bg.ident, "worker")
        t1 = time.monotonic_ns()
        time.sleep(0.5)
        tf = time.monotonic_ns()
        profiler.finish_session(session)
        t2 = time.monotonic_ns()
    profile = session.to_profile()
    assert profile.sample_count > 0
    # at least the time it was surely attached, at most the whole start..finish span;
    # 1 ms of slack: a tick reads the wall clock and the thread's CPU clock a few
    # microseconds apart (the faults above are 50 ms wide)
    slack = 1_000_000
    assert (tf - t1) - slack <= profile.wall_ns <= (t2 - t0) + slack, (tf - t1, profile.wall_ns, t2 - t0)


# --------------------------------------------------------------------------- (c) deep stacks


def test_deep_recursion_keeps_leaf_and_root_frames(profiler_factory):
    max_depth = 64
    profiler = profiler_factory(exporter="none", max_stack_depth=max_depth)
    depth_out: list[int] = []
    with BackgroundThread(recurse, 500, depth_out, name="deep") as bg:
        deadline = time.monotonic() + 10
        while not depth_out and time.monotonic() < deadline:  # wait until the leaf runs
            time.sleep(0.01)
        assert depth_out
        session = profile_thread(profiler, bg.ident, "deep", 0.3, "deep")
    profile = session.to_profile()
    total_depth = depth_out[0]
    assert total_depth > 500

    stacks = [names for names, _ in samples_with_names(profile, qualified=True)]
    assert stacks
    for names in stacks:
        assert len(names) == max_depth
        assert names[0] == "leaf_spin"  # the leaf is kept
        assert names[1:max_depth - 2] == ["recurse"] * (max_depth - 3)  # then the innermost callers
        omitted = total_depth - (max_depth - 1)
        assert names[max_depth - 2] == f"<{omitted} frames omitted>"
        assert names[-1] == qualname(threading.Thread._bootstrap.__code__)  # the root is kept (3.10: no qualname)

    # line numbers: each frame at the line it is executing
    recurse_call = source_line(recurse, "return recurse(")
    leaf_call = source_line(recurse, "return leaf_spin(")
    leaf_lines = {source_line(leaf_spin, "while not stop[0]:"), source_line(leaf_spin, "x += 1")}
    root_line = source_line(threading.Thread._bootstrap, "self._bootstrap_inner()")
    for s in profile.samples:
        locs = [profile.locations[i] for i in profile.stacks[s.stack_index]]
        assert locs[0].line in leaf_lines
        assert locs[1].line == leaf_call
        assert {loc.line for loc in locs[2:max_depth - 2]} == {recurse_call}
        assert locs[max_depth - 2].line == 0  # the gap marker has no line
        assert locs[-1].line == root_line


# --------------------------------------------------------------------------- (d) isolation


def test_concurrent_sessions_on_two_threads_do_not_mix(profiler_factory):
    profiler = profiler_factory(exporter="none")
    sessions = {}
    barrier = threading.Barrier(3)
    stops = {"x": [False], "y": [False]}

    def job(key, fn):
        with profiler.profile(f"job-{key}") as session:
            sessions[key] = session
            barrier.wait(5)  # both profiles are running
            fn(stops[key])

    threads = [threading.Thread(target=job, args=("x", burn_x), name="worker-x"),
               threading.Thread(target=job, args=("y", burn_y), name="worker-y")]
    for t in threads:
        t.start()
    barrier.wait(5)
    time.sleep(0.5)
    for s in stops.values():
        s[0] = True
    for t in threads:
        t.join(10)

    px, py = sessions["x"].to_profile(), sessions["y"].to_profile()
    assert px.sample_count > 0 and py.sample_count > 0
    assert "burn_x" in function_names(px) and "burn_y" not in function_names(px)
    assert "burn_y" in function_names(py) and "burn_x" not in function_names(py)
    assert {s.thread_name for s in px.samples} == {"worker-x"}
    assert {s.thread_name for s in py.samples} == {"worker-y"}


def test_session_only_sees_its_attached_thread(profiler_factory):
    """A busy thread nobody attached never shows up in a session of another thread."""
    profiler = profiler_factory(exporter="none")
    with BackgroundThread(burn_y, name="unrelated"):
        with profiler.profile("mine") as session:
            spin_for(0.3)
    profile = session.to_profile()
    assert profile.sample_count > 0
    assert "spin_for" in function_names(profile)
    assert "burn_y" not in function_names(profile)
    assert {s.thread_name for s in profile.samples} == {threading.current_thread().name}


# --------------------------------------------------------------------------- (e) idle sampler


def test_sampler_is_idle_without_sessions(profiler_factory):
    profiler = profiler_factory(exporter="none")
    sampler = get_sampler()
    with profiler.profile("short"):
        spin_for(0.1)
    assert profiler.active_sessions == 0
    if sampler.active_sessions:  # a session of some other, leaked profiler
        pytest.fail(f"{sampler.active_sessions} sessions still registered with the sampler")
    before = sampler.ticks
    assert before > 0  # it did tick while the session ran
    time.sleep(0.3)
    assert sampler.ticks == before  # no session: no ticks
    assert sampler.running  # parked, not gone

    with profiler.profile("again"):  # and it wakes up for the next session
        spin_for(0.1)
    assert sampler.ticks > before


# --------------------------------------------------------------------------- (f) caps


def test_max_profile_duration_truncates_and_marks(profiler_factory):
    profiler = profiler_factory(exporter="none", sample_hz=100, max_profile_duration="200ms")
    with profiler.profile("long") as session:
        spin_for(0.6)
    profile = session.to_profile()
    assert profile.truncated == "max_duration"
    assert profile.attributes["otelprof.truncated"] == "max_duration"
    assert 0 < profile.sample_count <= 0.2 * 100 + 5


def test_max_samples_truncates_and_marks(profiler_factory):
    profiler = profiler_factory(exporter="none", sample_hz=100, max_samples=10)
    with profiler.profile("many") as session:
        spin_for(0.5)
    profile = session.to_profile()
    assert profile.truncated == "max_samples"
    assert profile.attributes["otelprof.truncated"] == "max_samples"
    assert profile.sample_count == 10  # one thread: one sample per tick


def test_untruncated_profile_is_not_marked(profiler_factory):
    profiler = profiler_factory(exporter="none")
    with profiler.profile("ok") as session:
        spin_for(0.1)
    profile = session.to_profile()
    assert profile.truncated == ""
    assert "otelprof.truncated" not in profile.attributes


# --------------------------------------------------------------------------- (g) API forms


def test_decorated_function_is_profiled(profiler_factory, profile_collector):
    profiler = profiler_factory(exporter="none")
    collected = profile_collector(profiler)

    @profiler.profile("decorated", tenant="a")
    def decorated_work(x):
        spin_for(0.15)
        return x * 2

    assert decorated_work(21) == 42
    assert decorated_work.__name__ == "decorated_work"
    assert profiler.force_flush(5)
    (p,) = collected.profiles
    assert p.name == "decorated"
    assert p.attributes["tenant"] == "a"
    assert p.triggers == ("manual",)
    assert {"decorated_work", "spin_for"} <= function_names(p)


def test_decorator_without_name_uses_the_qualname(profiler_factory, profile_collector):
    profiler = profiler_factory(exporter="none", min_samples=0)
    collected = profile_collector(profiler)

    @profiler.profile()
    def unnamed_job():
        spin_for(0.1)

    unnamed_job()
    unnamed_job()
    assert profiler.force_flush(5)
    assert [p.name for p in collected.profiles] == [unnamed_job.__qualname__] * 2  # one per call


async def async_burn(seconds):
    return spin_for(seconds)


def test_async_function_is_profiled(profiler_factory, profile_collector, sampler_kind):
    profiler = profiler_factory(exporter="none", native_sampler=sampler_kind == "native")
    collected = profile_collector(profiler)

    @profiler.profile("async-work")
    async def async_work():
        await async_burn(0.15)
        await asyncio.sleep(0.15)  # suspended: wall time of the awaiting chain
        return "done"

    assert asyncio.iscoroutinefunction(async_work)
    assert asyncio.run(async_work()) == "done"
    assert profiler.force_flush(5)
    (p,) = collected.profiles
    assert p.name == "async-work"
    stacks = samples_with_names(p)
    running = [names for names, s in stacks if "async_burn" in names]
    assert running, stacks
    # cut at the task's coroutine (the decorator's async_wrapper, ours: folded into nothing
    # above it); CPU sampled while only our own frames ran (the session starting inside the
    # wrapper) is one "<otelprof>" frame, never our function names
    ours = [names for names, _ in stacks if "<otelprof>" in names]
    assert all(names == ["<otelprof>"] for names in ours), ours
    assert all(names[-1] == "async_work" for names, _ in stacks if names not in ours), stacks
    assert not any("async_wrapper" in names for names, _ in stacks)
    assert not any("run_until_complete" in names for names, _ in stacks)  # no event-loop frames
    suspended = [s for names, s in stacks if names and names[0] == "sleep" and "async_work" in names]
    assert suspended, [(names, s.count, s.cpu_ns, s.wall_ns) for names, s in stacks]
    # the 150 ms await is wall time of the awaiting chain, without CPU; a sample may rarely
    # catch the task *running* inside sleep() before it suspends (a few µs of Python code):
    # at most one such sample (one interval of CPU at the default 100 Hz), never more
    # (`all(cpu_ns == 0)` failed once in ~10 full runs: the python variant, fresh-clone CI)
    assert sum(s.wall_ns for s in suspended) >= 100_000_000, suspended
    assert sum(s.cpu_ns for s in suspended) <= 15_000_000, suspended
    assert sum(1 for s in suspended if s.cpu_ns) <= 1, suspended


def test_nested_profile_does_not_start_a_second_profile(profiler_factory, profile_collector):
    profiler = profiler_factory(exporter="none")
    collected = profile_collector(profiler)

    @profiler.profile("inner-decorated")
    def inner():
        spin_for(0.1)

    with profiler.profile("outer") as outer:
        with profiler.profile("inner-block") as nested:
            assert nested is outer
            spin_for(0.1)
        inner()
    assert profiler.force_flush(5)
    assert [p.name for p in collected.profiles] == ["outer"]
    assert profiler.stats()["profiles_started"] == 1
    assert "inner" in function_names(collected.profiles[0])


def test_nested_profile_in_a_worker_thread_joins_the_outer_profile(profiler_factory, profile_collector):
    """Work handed to a thread with a copied context (as thread pools do) is sampled
    for the outer profile while a nested profile() block runs there."""
    profiler = profiler_factory(exporter="none")
    collected = profile_collector(profiler)

    def worker_job():
        with profiler.profile("worker") as s:
            assert s is not None
            burn_in_worker()

    def burn_in_worker():
        spin_for(0.2)

    with profiler.profile("outer") as outer:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(worker_job,), name="pool-worker")
        t.start()
        t.join(10)
        assert not any(tg.thread_id == t.ident for tg in outer.targets)  # detached again
    assert profiler.force_flush(5)
    (p,) = collected.profiles
    assert p.name == "outer"
    worker_samples = [(names, s) for names, s in samples_with_names(p) if s.thread_name == "pool-worker"]
    assert any("burn_in_worker" in names for names, _ in worker_samples)


def test_profile_block_never_raises_into_the_caller_and_records_errors(profiler_factory, profile_collector):
    profiler = profiler_factory(exporter="none", min_samples=0)
    collected = profile_collector(profiler)
    with pytest.raises(KeyError):
        with profiler.profile("fails"):
            spin_for(0.05)
            raise KeyError("x")
    assert profiler.force_flush(5)
    (p,) = collected.profiles
    assert p.attributes["otelprof.error"] == "KeyError"


# --------------------------------------------------------------------------- (h) what the profile says about its sampling


def test_profile_records_the_rates_it_was_sampled_at(profiler_factory):
    """A header-style boost (1 kHz, then the base rate) and a governor step both show
    in ``otelprof.rates``, with the governor's level; effective Hz and missed ticks too."""
    profiler = profiler_factory(exporter="none", sample_hz=100)
    session = profiler.start_session("rates", hz=1000, link=None)  # as a header-triggered request starts
    session.return_to(100, 0.05)  # the boost ends 50 ms after the start
    spin_for(0.15)
    session.set_rate(50, governor_level=1)  # what the overhead governor does
    spin_for(0.15)
    profiler.finish_session(session)
    p = session.to_profile()
    rates = p.attributes["otelprof.rates"]
    parts = [r.split(" ")[0] for r in rates.split(", ")]
    assert parts[0] == "1000Hz" and "100Hz" in parts and parts[-1] == "50Hz", rates
    assert rates.split(", ")[-1].startswith("50Hz (governor 1) ")
    assert p.attributes["otelprof.governor_level"] == 1
    assert p.period_ns == 20_000_000  # the last rate's interval
    assert p.attributes["otelprof.effective_hz"] > 0
    assert isinstance(p.attributes["otelprof.ticks_missed"], int)
    assert p.attributes["otelprof.sampler"] in ("native", "python")


def test_a_rate_never_lowered_has_no_governor_level(profiler_factory):
    profiler = profiler_factory(exporter="none", sample_hz=100)
    with profiler.profile("plain") as session:
        spin_for(0.05)
    p = session.to_profile()
    assert "otelprof.governor_level" not in p.attributes
    assert p.attributes["otelprof.rates"].startswith("100Hz 0-")


def _hold_gil(seconds: float) -> int:
    """One C call that keeps the GIL for about ``seconds`` (no bytecode runs meanwhile)."""
    n = 200_000
    while True:
        t0 = time.thread_time()
        sum(range(n))
        if time.thread_time() - t0 >= seconds:
            return n
        n *= 2


def test_ticks_the_sampler_could_not_take_are_counted(profiler_factory):
    """A thread holding the GIL for a long C call keeps the sampler thread out: those
    ticks are late, and the profile says how many (a thin profile is not an idle one)."""
    profiler = profiler_factory(exporter="none", sample_hz=200, native_sampler=False)
    with profiler.profile("held") as session:
        _hold_gil(0.2)
    p = session.to_profile()
    assert p.attributes["otelprof.ticks_missed"] >= 10, p.attributes
    assert p.cpu_ns >= 150_000_000  # the CPU is all there nonetheless (measured, not inferred)


def test_a_stack_of_only_our_frames_is_one_otelprof_frame():
    """CPU sampled while only the profiler's code ran on a request's thread (its session
    starting before any user frame) is shown as ``<otelprof>``, never as our internal
    function names; a stack with a user frame keeps the user frame as its leaf."""
    from otelprof_middleware import session as ours
    from otelprof_middleware.stacks import StackTable

    table = StackTable()
    own_codes = (ours.Session.__init__.__code__, ours.Target.__init__.__code__)
    table.add("t", own_codes, (0, 0), 7_000_000, 7_000_000)
    assert table.summary().top_frame == "<otelprof>"
    table.add("t", (own_codes[0], hot_a.__code__), (0, 0), 9_000_000, 9_000_000)
    assert table.summary().top_frame.endswith("hot_a")


def test_line_of_matches_f_lineno_and_is_remembered_per_code_object():
    """``line_of`` (offsets -> line numbers for every profile) is remembered for the
    process: the same answer as ``frame.f_lineno`` the first and the second time.  An
    entry keeps its code object alive, so no other code object can take its id while it
    is remembered, and the memory is bounded: enough other entries let it go."""
    seen = []

    def probe():
        f = sys._getframe(1)
        seen.append((f.f_code, f.f_lasti, f.f_lineno))

    def subject():
        probe()
        x = 1
        probe()
        for _ in range(2):
            x += 1
            probe()
        return x

    subject()
    assert len(seen) == 4
    for code, lasti, lineno in seen:
        first = line_of(code, lasti)
        assert first == lineno
        assert line_of(code, lasti) == first
    assert len({line_of(c, i) for c, i, _ in seen}) == 3

    code = compile("x = 1\ny = 2\n", "<line_of test>", "exec")
    second = next(start for start, _end, line in code.co_lines() if line == 2)
    assert line_of(code, second) == 2
    ref = weakref.ref(code)
    del code
    gc.collect()
    assert ref() is not None  # remembered: its id cannot be another code object's meanwhile
    other = compile("z = 3\n", "<line_of test 2>", "exec")
    for lasti in range(200_000):  # (many other entries: the remembered ones are let go)
        line_of(other, lasti)
        if ref() is None:
            break
    gc.collect()
    assert ref() is None
