"""The bundled local profile viewer.

With the ``file`` exporter, profiles land in a folder (``output_dir``, default
``profiles``) as ``*.pb.gz`` files plus an ``index.jsonl``.  This viewer serves
that folder on http://127.0.0.1:8765/ with a list of profiles and, per profile,
an interactive flame graph and a top-functions table::

    python -m otelprof_middleware.viewer profiles --open

It uses only the standard library and ships its page (plain JS and CSS, no
external network) in ``static/``.
"""

from __future__ import annotations

from .server import DEFAULT_HOST, DEFAULT_PORT, ProfileStore, ViewerServer, make_server, serve

__all__ = ["make_server", "serve", "ViewerServer", "ProfileStore", "DEFAULT_HOST", "DEFAULT_PORT"]
