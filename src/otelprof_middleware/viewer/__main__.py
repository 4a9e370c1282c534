"""``otelprof view [DIR] [--host 127.0.0.1] [--port 8765] [--open]`` (also
``python -m otelprof_middleware.viewer``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Optional, Sequence

from .._version import __version__
from .server import DEFAULT_HOST, DEFAULT_PORT, serve


def main(argv: Optional[Sequence[str]] = None, prog: str = "otelprof view") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Browse the profiles written by the otelprof-middleware 'file' exporter: lists, flame graphs, "
                    "merged (Explore) and differential (Compare) views.",
    )
    parser.add_argument(
        "directory", nargs="?", default=os.environ.get("OTELPROF_OUTPUT_DIR") or "profiles",
        help="the exporter's output_dir (default: $OTELPROF_OUTPUT_DIR or ./profiles)",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"otelprof-middleware {__version__}")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    try:
        serve(args.directory, args.host, args.port, open_browser=args.open, verbose=args.verbose)
    except OSError as e:
        hint = ""
        if e.errno == errno.EADDRINUSE:
            hint = " (is another viewer running? --port 0 picks a free port)"
        elif e.errno == errno.EACCES:
            hint = " (ports below 1024 need privileges; --port 0 picks a free port)"
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {e.strerror or e}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m otelprof_middleware.viewer"))
