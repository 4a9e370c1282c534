"""The local profile store: a folder written by the ``file`` exporter, and the reads
the viewer and the CLI make of it.

* :mod:`.layout`: file names in a folder (the index, the log, the exporter's pattern);
* :mod:`.index`: the SQLite index (one write lock for all writers, retention,
  import of ``index.jsonl``, selector queries, timeline);
* :mod:`.selector`: the selector language shared by the API, the CLI and the pages;
* :mod:`.digest`: each profile's digest (its stacks and values in the compact form
  merges read, stored with its row by the exporter) and the digest reader;
* :mod:`.pprof`: the bounded pprof reader;
* :mod:`.aggregate`: merged, differential and "my code" views and their formats;
* :mod:`.folder`: :class:`~.folder.ProfileFolder`, the one reader the viewer and the
  CLI share (safe file reads, merges from digests, the in-memory digest layer,
  helper processes);
* :mod:`.outputs`: merges and diffs written in each output format.
"""

from __future__ import annotations

import importlib
from typing import Any

# Submodules load on first use: the file exporter (in the application's process)
# needs only .index, .layout and .digest, not the reader, the merges or the protobuf schema.
_WHERE = {
    "ProfileFolder": "folder", "MergeResult": "folder", "ProfileIndex": "index", "Retention": "index",
    "INDEX_DB": "layout", "INDEX_LOG": "layout", "Limits": "pprof", "PprofError": "pprof",
    "PprofLimitError": "pprof", "read_pprof": "pprof", "Selector": "selector", "SelectorError": "selector",
    "parse_selector": "selector",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
