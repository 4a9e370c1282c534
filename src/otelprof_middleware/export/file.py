"""The file exporter: one gzip'd pprof per profile plus an ``index.jsonl`` line.

Files are written to a temporary name and renamed, so a reader never sees half
a file; index lines are appended with one ``write`` each.  Retention keeps at
most ``max_files`` profiles and ``max_bytes`` bytes, removing the oldest first.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

from ..encoding import encode_pprof
from .base import ExportResult

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile

__all__ = ["FileExporter", "profile_summary"]

INDEX_NAME = "index.jsonl"


def profile_summary(profile: "Profile") -> dict[str, Any]:
    """The JSON-friendly facts about a profile (the index line, minus the file name)."""
    link = profile.link if profile.link is not None and profile.link.is_valid else None
    return {
        "profile_id": profile.profile_id_hex,
        "trace_id": link.trace_id_hex if link else None,
        "span_id": link.span_id_hex if link else None,
        "link_source": link.source if link else None,
        "name": profile.name,
        "trigger": ",".join(profile.triggers),
        "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(profile.start_time_ns / 1e9))
        + f".{(profile.start_time_ns // 1_000_000) % 1000:03d}Z",
        "start_unix_nano": profile.start_time_ns,
        "duration_ms": round(profile.duration_ns / 1e6, 3),
        "cpu_ms": round(profile.cpu_ns / 1e6, 3),
        "wall_ms": round(profile.wall_ns / 1e6, 3),
        "samples": profile.sample_count,
        "top": [{"function": n, "value": v} for n, v in profile.top_self(3)],
        "attributes": dict(profile.attributes),
    }


class FileExporter:
    name = "file"

    def __init__(self, config: "Config") -> None:
        self.dir = os.path.abspath(config.output_dir)
        self.max_files = config.max_files
        self.max_bytes = config.max_bytes
        self._lock = threading.Lock()
        self._files: list[tuple[str, int]] | None = None  # oldest first

    def _scan(self) -> list[tuple[str, int]]:
        found = []
        try:
            for entry in os.scandir(self.dir):
                if entry.name.endswith(".pb.gz") and entry.is_file():
                    found.append((entry.name, entry.stat().st_size))
        except FileNotFoundError:
            pass
        found.sort()  # names start with the UTC time
        return found

    def export(self, profiles: Sequence["Profile"]) -> ExportResult:
        os.makedirs(self.dir, exist_ok=True)
        done = 0
        with self._lock:
            if self._files is None:
                self._files = self._scan()
            for profile in profiles:
                data = encode_pprof(profile)
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(profile.start_time_ns / 1e9))
                stamp += f"{(profile.start_time_ns // 1000) % 1_000_000:06d}Z"
                fname = f"{stamp}_{profile.profile_id_hex}.pb.gz"
                path = os.path.join(self.dir, fname)
                tmp = os.path.join(self.dir, f".{fname}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
                line = profile_summary(profile)
                line["file"] = fname
                encoded = (json.dumps(line, separators=(",", ":"), default=str) + "\n").encode()
                fd = os.open(os.path.join(self.dir, INDEX_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, encoded)
                finally:
                    os.close(fd)
                self._files.append((fname, len(data)))
                done += 1
            self._enforce_retention()
        return ExportResult(exported=done)

    def _enforce_retention(self) -> None:
        assert self._files is not None
        total = sum(size for _, size in self._files)
        while self._files and (len(self._files) > self.max_files or total > self.max_bytes):
            name, size = self._files.pop(0)
            total -= size
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass

    def after_fork(self) -> None:
        # the parent's worker may have held the lock at fork time: it would stay
        # locked forever here; the file list is rescanned on the next export
        self._lock = threading.Lock()
        self._files = None

    def shutdown(self) -> None:
        pass
