"""The names in a profile folder, defined once for the exporter, the viewer and the CLI.

A folder written by the ``file`` exporter holds

* ``<YYYYmmddTHHMMSSffffff>Z_<32 hex profile id>.pb.gz``: one gzip'd pprof per
  profile (:data:`PROFILE_FILE_RE`; retention deletes only names of this shape);
* ``index.sqlite3`` (+ its ``-wal``/``-shm``): the index every reader queries;
* ``index.jsonl``: one JSON line per profile, a log people can ``tail``/``jq``; it
  is trimmed with the files and re-imported if the database is lost.
"""

from __future__ import annotations

import re
import time

__all__ = ["INDEX_DB", "INDEX_LOG", "PROFILE_FILE_RE", "profile_file_name", "file_stamp_ns", "is_profile_file"]

INDEX_DB = "index.sqlite3"
INDEX_LOG = "index.jsonl"
PROFILE_FILE_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{6})Z_([0-9a-f]{32})\.pb\.gz$")


def profile_file_name(start_time_ns: int, profile_id_hex: str) -> str:
    """``20261129T101500123456Z_<id>.pb.gz`` (UTC start time, microseconds)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start_time_ns // 1_000_000_000))
    return f"{stamp}{(start_time_ns // 1000) % 1_000_000:06d}Z_{profile_id_hex}.pb.gz"


def is_profile_file(name: str) -> bool:
    return PROFILE_FILE_RE.match(name) is not None


def file_stamp_ns(name: str) -> int:
    """The start time encoded in an exporter file name (0 if it has none)."""
    import calendar

    m = PROFILE_FILE_RE.match(name)
    if not m:
        return 0
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups()[:7])
    try:
        return (calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000 + us) * 1000
    except (ValueError, OverflowError):
        return 0
