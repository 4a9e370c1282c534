"""The shared safety primitives: log-once, the error firewall, fork hooks."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import weakref
from typing import Callable

import pytest

from otelprof_middleware._safety import Firewall, LogOnce, around_fork, at_fork_reinit


def test_log_once_logs_each_key_once(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(logging.getLogger("otelprof_middleware.test"))
    with caplog.at_level(logging.WARNING, logger="otelprof_middleware.test"):
        assert once("a", "problem %s", "A") is True
        assert once("a", "problem %s", "A") is False
        assert once("b", "other") is True
    assert [r.getMessage() for r in caplog.records] == ["problem A", "other"]


def test_log_once_every_period_counts_repeats(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    once = LogOnce(logging.getLogger("otelprof_middleware.test"), every=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="otelprof_middleware.test"):
        once("k", "down")
        for _ in range(3):
            now[0] += 10
            once("k", "down")
        now[0] = 61.0
        once("k", "down")
    assert [r.getMessage() for r in caplog.records] == ["down", "down (3 more since the last report)"]


def test_firewall_counts_logs_once_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    fw = Firewall(counted.append, LogOnce(logging.getLogger("otelprof_middleware.test")))
    with caplog.at_level(logging.WARNING, logger="otelprof_middleware.test"):
        for _ in range(2):
            try:
                raise RuntimeError("boom")
            except Exception:
                fw.report("begin", "otelprof: failed at start")
    assert counted == ["begin", "begin"]
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


def in_child(check: Callable[[], bool]) -> bool:
    """``check()`` evaluated in a forked child process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return got == b"1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_hook_runs_in_child_only_while_object_lives() -> None:
    class Thing:
        def __init__(self) -> None:
            self.reset = False
            at_fork_reinit(self.reinit)

        def reinit(self) -> None:
            self.reset = True

    alive = Thing()
    gone = Thing()
    del gone
    assert in_child(lambda: alive.reset) is True
    assert alive.reset is False  # the parent is untouched
    assert sys.getrefcount(alive) >= 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_around_fork_hooks_hold_across_the_fork_while_the_object_lives() -> None:
    events: list[tuple[str, str]] = []

    class Guard:
        def __init__(self, name: str) -> None:
            self.name = name
            self.lock = threading.Lock()
            around_fork(self.before, self.after)

        def before(self) -> None:
            self.lock.acquire()
            events.append(("before", self.name))

        def after(self) -> None:
            events.append(("after", self.name))
            self.lock.release()

    first, second = Guard("first"), Guard("second")
    gone = Guard("gone")
    del gone
    # the child inherited both locks as they were at the fork: held
    locks = (first.lock, second.lock)
    assert in_child(lambda: all(lock.locked() for lock in locks)) is True
    # newest first before the fork, the reverse after it; nothing for the object that is gone
    assert events == [("before", "second"), ("before", "first"), ("after", "first"), ("after", "second")]
    assert not first.lock.locked() and not second.lock.locked()
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None  # registering kept no strong reference
