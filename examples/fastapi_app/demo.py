"""Demo: run the example FastAPI app under uvicorn, profile a few requests, show one.

    python examples/fastapi_app/demo.py [--output-dir profiles] [--keep-running]

1. starts ``uvicorn app:app`` on 127.0.0.1 (a free port) with the default ``file``
   exporter writing into ``--output-dir`` (default ``./profiles``);
2. sends a few requests with ``X-Enable-Profiling: <secret>`` (a secret made for
   this run, given to the app as ``OTELPROF_HEADER_SECRET``) and a W3C
   ``traceparent``, and prints the ``curl`` that does the same;
3. stops the server cleanly (profiles in flight are flushed at lifespan shutdown);
4. prints where the profiles are and a ``go tool pprof -top``-style summary of one.

The ``/error`` response carries no ``X-Profile-Id``: FastAPI renders its 500 page
outside the middleware.  Its profile (status 500, ``error.type``) is found in the
index by the request's trace id, as the demo shows.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REQUESTS = [
    ("/cpu?n=60000", "async CPU work"),
    ("/sync?rounds=30000", "def endpoint (thread pool)"),
    ("/io?ms=80", "awaits asyncio.sleep"),
    ("/stream?chunks=8", "StreamingResponse generator"),
    ("/error", "raises RuntimeError"),
]


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def main() -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.environ.get("OTELPROF_OUTPUT_DIR", "profiles"))
    parser.add_argument("--keep-running", action="store_true", help="leave the server up until Ctrl-C")
    args = parser.parse_args()
    output_dir = os.path.abspath(args.output_dir)

    sock = _free_socket()
    port = sock.getsockname()[1]
    secret = os.environ.get("OTELPROF_HEADER_SECRET") or secrets.token_urlsafe(12)
    env = dict(os.environ, OTELPROF_OUTPUT_DIR=output_dir, OTELPROF_HEADER_SECRET=secret, PYTHONUNBUFFERED="1")
    env.setdefault("OTELPROF_EXPORTER", "file")
    cmd = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", HERE, "--fd", str(sock.fileno()),
           "--log-level", "warning", "--lifespan", "on"]
    log = tempfile.NamedTemporaryFile("w+", prefix="otelprof-demo-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),), stdout=log, stderr=subprocess.STDOUT)
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/health", timeout=2)
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    print("the demo server did not start:\n" + log.read(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(f"uvicorn serving examples/fastapi_app/app.py on {base}; ask for a profile with\n"
              f"  curl -i -H 'X-Enable-Profiling: {secret}' {base}/cpu\n")
        chosen = None
        unnamed: dict[str, str] = {}  # trace id -> path, for responses without X-Profile-Id
        with httpx.Client(base_url=base, timeout=30) as client:
            for path, what in REQUESTS:
                trace_id = secrets.token_hex(16)
                headers = {"X-Enable-Profiling": secret, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
                r = client.get(path, headers=headers)
                pid = r.headers.get("x-profile-id", "-")
                print(f"GET {path:22} -> {r.status_code}  X-Profile-Id: {pid}  trace_id: {trace_id}  ({what})")
                if chosen is None and r.status_code == 200 and pid != "-":
                    chosen = pid
                if pid == "-":
                    unnamed[trace_id] = path
        if args.keep_running:
            print(f"\nserver still running on {base}; Ctrl-C to stop")
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # clean stop: lifespan shutdown flushes the profiles
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    print(f"(server log, with the /error traceback: {log.name})")
    log.close()
    from otelprof_middleware.cli import main as cli_main, read_index

    entries = read_index(output_dir)
    print(f"\n{len(entries)} profile(s) in {output_dir} (one .pb.gz per profile + index.jsonl)")
    if not entries:
        return 1
    for entry in entries:  # a 500 rendered outside the middleware: find its profile by trace id
        path = unnamed.get(entry.get("trace_id", ""))
        if path is not None:
            status = (entry.get("attributes") or {}).get("http.response.status_code")
            print(f"GET {path} had no X-Profile-Id (FastAPI renders the 500 outside the middleware); "
                  f"by its trace id: profile {entry['profile_id']} (status {status})")
    print("\n--- python -m otelprof_middleware summary " + os.path.relpath(output_dir) + " --profile-id " + str(chosen))
    rc = cli_main(["summary", output_dir, "--profile-id", chosen or "", "--top", "12"])
    print("\nMore: python -m otelprof_middleware summary " + os.path.relpath(output_dir) + " --list"
          "\n      python -m otelprof_middleware view " + os.path.relpath(output_dir) + " --open   (flame graphs)"
          "\n      go tool pprof -top <file.pb.gz>   (or -http=127.0.0.1:0 for a flame graph)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
