"""Run an ASGI app under a real uvicorn server on 127.0.0.1 and an ephemeral port.

    with serve_in_thread(app) as base_url:                 # same process, own event loop
        httpx.get(base_url + "/x")

    with serve_in_subprocess("app_module:app", env={...}, app_dir=folder) as srv:
        httpx.get(srv.base_url + "/x")
    srv.returncode, srv.output                             # after a clean stop (SIGINT, lifespan shutdown)

Both bind the socket first (port 0) and hand it to uvicorn, so there is no race
for a port; both stop the server cleanly (lifespan shutdown runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Mapping, Optional

__all__ = ["serve_in_thread", "serve_in_subprocess", "SubprocessServer", "wait_http"]


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_in_thread(app: Any, *, timeout: float = 10.0, **uvicorn_options: Any) -> Iterator[str]:
    """uvicorn in a daemon thread of this process; yields ``http://127.0.0.1:<port>``."""
    import uvicorn

    sock = _bound_socket()
    port = sock.getsockname()[1]
    options = {"log_level": "warning", "lifespan": "on", "access_log": False}
    options.update(uvicorn_options)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start: {errors!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start in time")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def wait_http(url: str, timeout: float = 20.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Poll ``url`` until it answers (any status)."""
    import httpx

    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout}s: {last!r}")


class SubprocessServer:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.output = ""

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def stop(self, timeout: float = 20.0) -> str:
        """SIGINT (uvicorn's clean shutdown, lifespan included); returns the combined output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output = out or ""
        return self.output


@contextlib.contextmanager
def serve_in_subprocess(app_spec: str, *, env: Optional[Mapping[str, str]] = None, app_dir: Optional[str] = None,
                        health_path: str = "/", timeout: float = 20.0,
                        extra_args: tuple[str, ...] = ()) -> Iterator[SubprocessServer]:
    """``python -m uvicorn <app_spec> --fd <fd>`` on a pre-bound 127.0.0.1 socket."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    fd = sock.fileno()
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "uvicorn", app_spec, "--fd", str(fd), "--log-level", "warning",
           "--no-access-log", "--lifespan", "on", *extra_args]
    if app_dir:
        cmd[3:3] = ["--app-dir", app_dir]
    proc = subprocess.Popen(cmd, env=full_env, pass_fds=(fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sock.close()  # the child has its own copy
    server = SubprocessServer(proc, port)
    try:
        wait_http(server.base_url + health_path, timeout=timeout, proc=proc)
        yield server
    finally:
        if proc.returncode is None:
            server.stop()
