"""The bundled local profile viewer.

With the ``file`` exporter, profiles land in a folder (``output_dir``, default
``profiles``) as ``*.pb.gz`` files, indexed in ``index.sqlite3``.  This viewer
serves that folder on http://127.0.0.1:8765/: the list of profiles, one
profile's flame graph, merged flame graphs of a selection (Explore), differential
flame graphs of two selections (Compare), and a JSON API::

    otelprof view profiles --open

It uses only the standard library and ships its page (plain JS and CSS, no
external network) in ``static/``.  The data layer is :mod:`otelprof_middleware.store`.
"""

from __future__ import annotations

from .server import API_PREFIX, DEFAULT_HOST, DEFAULT_PORT, ViewerServer, make_server, serve

__all__ = ["make_server", "serve", "ViewerServer", "DEFAULT_HOST", "DEFAULT_PORT", "API_PREFIX"]
