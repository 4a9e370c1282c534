"""Text from profiles on a terminal: :func:`safe` escapes control characters, so a
request path or function name cannot carry terminal escape sequences (used by the
CLI's output and the viewer's request log)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["safe"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def safe(value: Any) -> str:
    """``str(value)`` with control characters (C0, C1, DEL, bidi overrides) escaped."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)
