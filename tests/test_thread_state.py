"""What a thread is doing now (native ``thread_state``), and the watcher that reads it
at a given moment without the GIL (``watch_at`` / ``watched``): the light ticks bill
a request's wall time from these (sampler.py, ``_WhereNow``)."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from otelprof_middleware import native_sampler

LIB = native_sampler.load()[0]
needs_native = pytest.mark.skipif(LIB is None or not hasattr(LIB, "watch_at"),
                                  reason="native sampler unavailable here")

RUNS, BLOCKED, GIL, IDLE_LOOP = 0, 1, 2, 3


def _spin(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1


def _sleep(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(1.0)  # (none of them wakes while a test reads)


def _event(stop: threading.Event) -> None:
    stop.wait()


def _recv(stop: threading.Event) -> None:
    a, b = socket.socketpair()
    with a, b:
        while not stop.is_set():
            select.select([a], [], [], 1.0)


def _idle_loop(stop: threading.Event) -> None:
    async def main() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)

    asyncio.run(main())


@pytest.fixture
def threads() -> Iterator[Callable[[Callable[[threading.Event], None]], int]]:
    """``start(body) -> native id`` of a thread running ``body(stop)``."""
    stop = threading.Event()
    started: list[threading.Thread] = []

    def start(body: Callable[[threading.Event], None]) -> int:
        t = threading.Thread(target=body, args=(stop,), daemon=True)
        t.start()
        started.append(t)
        assert t.native_id is not None
        return t.native_id

    yield start
    stop.set()
    for t in started:
        t.join(5)


def _states_seen(read: Callable[[], Any], times: int = 20) -> set[int]:
    return {read()[0] for _ in range(times)}


@needs_native
def test_each_kind_of_wait_reads_as_its_state(threads: Any) -> None:
    LIB.learn_gil()
    spinning, sleeping, waiting, polling, looping = (threads(b) for b in (_spin, _sleep, _event, _recv, _idle_loop))
    time.sleep(0.2)
    # (read with the GIL held, as a tick does: the spinning thread then waits for it,
    # or is between bytecodes)
    assert _states_seen(lambda: LIB.thread_state(spinning)) <= {RUNS, GIL}
    assert _states_seen(lambda: LIB.thread_state(sleeping)) == {BLOCKED}
    assert _states_seen(lambda: LIB.thread_state(waiting)) == {BLOCKED}  # a futex, not the GIL's
    assert _states_seen(lambda: LIB.thread_state(polling)) == {BLOCKED}  # select(): its own I/O
    assert _states_seen(lambda: LIB.thread_state(looping)) == {IDLE_LOOP}  # epoll_wait: nothing to run
    assert LIB.thread_state(2**31 - 1)[0] == -1  # no such thread


@needs_native
def test_a_thread_state_carries_its_time_on_and_waiting_for_a_cpu(threads: Any) -> None:
    spinning = threads(_spin)
    state, run0, wait0 = LIB.thread_state(spinning)
    time.sleep(0.1)
    state, run1, wait1 = LIB.thread_state(spinning)
    assert run1 - run0 > 10_000_000  # it ran (sharing the GIL with this thread's sleep)
    assert wait1 >= wait0 >= 0


@needs_native
def test_the_watcher_reads_at_the_moment_asked_without_the_gil(threads: Any) -> None:
    sleeping, looping = threads(_sleep), threads(_idle_loop)
    time.sleep(0.1)
    at = time.monotonic_ns() + 50_000_000
    assert LIB.watch_at(at, [sleeping, looping])
    assert LIB.watched(at) is None  # not read yet
    # the GIL held past the moment: the watcher reads all the same
    end = time.monotonic_ns() + 100_000_000
    while time.monotonic_ns() < end:
        pass
    reading = LIB.watched(at)
    assert reading is not None
    read_at, states = reading
    assert at <= read_at < end
    assert states[sleeping][0] == BLOCKED and states[looping][0] == IDLE_LOOP
    assert LIB.watched(at) is None  # handed out once


@needs_native
def test_a_new_request_replaces_the_one_pending(threads: Any) -> None:
    sleeping = threads(_sleep)
    first = time.monotonic_ns() + 30_000_000
    second = first + 30_000_000
    assert LIB.watch_at(first, [sleeping])
    assert LIB.watch_at(second, [sleeping])
    time.sleep(0.12)
    assert LIB.watched(first) is None  # (a tick that came early asked again for later)
    read_at, states = LIB.watched(second)
    assert read_at >= second and set(states) == {sleeping}


@needs_native
def test_the_watcher_runs_again_in_a_forked_child() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    at = time.monotonic_ns() + 1_000_000
    assert LIB.watch_at(at, [threading.get_native_id()])
    time.sleep(0.05)
    assert LIB.watched(at) is not None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = b"0"
        try:
            me = threading.get_native_id()
            at = time.monotonic_ns() + 1_000_000
            if LIB.watch_at(at, [me]):
                time.sleep(0.05)
                reading = LIB.watched(at)
                ok = b"1" if reading is not None and me in reading[1] else b"0"
        finally:
            os.write(w, ok)
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
