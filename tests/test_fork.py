"""Fork safety: a child process starts its own export worker and sampler lazily,
inherits none of the parent's queued profiles, and nothing is exported twice --
with ``os.fork`` directly and with ``gunicorn --preload -w 2``."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from helpers.otlp_receiver import OTLPReceiver
from helpers.wsgi_servers import gunicorn_argv, start_server


def _profiles(rx: OTLPReceiver) -> list[tuple[str, str, int, int]]:
    """(name, profile id, process.pid, sample count) per exported profile (CPU halves)."""
    out = []
    for m in rx.messages:
        strings = m.dictionary.string_table
        for rp in m.resource_profiles:
            pid = next(kv.value.int_value for kv in rp.resource.attributes if kv.key == "process.pid")
            for sp in rp.scope_profiles:
                for prof in sp.profiles[::2]:
                    name = ""
                    for i in prof.attribute_indices:
                        kv = m.dictionary.attribute_table[i]
                        if strings[kv.key_strindex] == "otelprof.name":
                            name = kv.value.string_value
                    samples = sum(s.values[0] for s in prof.samples if s.values)
                    out.append((name, prof.profile_id.hex(), pid, samples))
    return out


def busy(seconds: float) -> int:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += sum(range(300))
    return x


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_os_fork_child_exports_its_own_profiles_only(profiler_factory):
    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, min_samples=0, sample_hz=200,
                                    batch_size=100, batch_timeout=60)
        with profiler.profile("parent-before-fork"):
            busy(0.1)
        # the parent's profile sits in its queue (60 s batch timeout) while we fork
        assert profiler.stats()["queue_pending"] == 1
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                st = profiler.stats()
                ok = st["queue_pending"] == 0  # nothing inherited
                with profiler.profile("child"):
                    busy(0.2)  # the sampler thread must start afresh in the child
                ok = ok and profiler.shutdown(timeout=10)
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert profiler.shutdown(timeout=10)
        got = _profiles(rx)
        assert sorted(n for n, *_ in got) == ["child", "parent-before-fork"]  # each exactly once
        by_name = {n: (pid_, samples) for n, _id, pid_, samples in got}
        assert by_name["parent-before-fork"][0] == os.getpid()
        assert by_name["child"][0] == pid
        assert by_name["child"][1] > 0  # the child's sampler ran


APP = '''
import os
from otelprof_middleware import Profiler

profiler = Profiler()
with profiler.profile("preload"):   # in the gunicorn master, before the workers fork
    sum(range(10000))

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/ready":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with profiler.profile(path.strip("/")):
        sum(range(10000))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
'''

CONF = '''
def post_worker_init(worker):
    import app as appmod
    with appmod.profiler.profile("boot"):   # every worker profiles something of its own
        sum(range(10000))
'''


@pytest.mark.integration
def test_gunicorn_preload_two_workers_deliver_without_duplicates(tmp_path: Any):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "gconf.py").write_text(CONF)
    with OTLPReceiver() as rx:
        env = {"OTELPROF_EXPORTER": "otlp", "OTELPROF_ENDPOINT": rx.url, "OTELPROF_MIN_SAMPLES": "0",
               "OTELPROF_BATCH_TIMEOUT": "60", "OTELPROF_BATCH_SIZE": "100"}
        server = start_server(gunicorn_argv("app:app", workers=2, preload=True, extra=["-c", "gconf.py"]),
                              cwd=tmp_path, env=env)
        pids = set()
        try:
            for i in range(6):
                status, _, body = server.get(f"/req{i}")
                assert status == 200
                pids.add(int(body))
        finally:
            output = server.stop(timeout=30)
        got = _profiles(rx)
        ids = [pid_ for _n, pid_, _p, _s in got]
        assert len(ids) == len(set(ids)), "a profile was exported twice"
        names = sorted(n for n, *_ in got)
        assert names == sorted(["preload", "boot", "boot"] + [f"req{i}" for i in range(6)]), (names, output)
        boot_pids = {p for n, _i, p, _s in got if n == "boot"}
        preload_pids = {p for n, _i, p, _s in got if n == "preload"}
        assert len(boot_pids) == 2  # both workers delivered
        assert preload_pids == {server.proc.pid}  # only the master sent its own profile
        assert pids <= boot_pids
