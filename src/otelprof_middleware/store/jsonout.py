"""JSON text for trees of any depth.

``json.dumps`` recurses once per nesting level and fails past ~1000 levels, but a
flame tree may be 2048 frames deep (``max_stack_depth``) and each frame is two
levels (a dict and its ``children`` list).  :func:`dumps` uses ``json.dumps``
when it can and otherwise writes the text with an explicit stack.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

__all__ = ["dumps"]

_enc = json.JSONEncoder(separators=(",", ":"), default=str)  # ASCII: lone surrogates stay escaped


def dumps(obj: Any) -> str:
    """Compact JSON of ``obj`` (dicts, lists, tuples, str, numbers, bool, None), at any depth."""
    try:
        return _enc.encode(obj)
    except RecursionError:
        return "".join(_iter(obj))


def _iter(obj: Any) -> Iterator[str]:
    leaf = _enc.encode
    # a stack of iterators over (prefix, value) pairs, plus each container's closing bracket
    stack: list[tuple[Iterator[tuple[str, Any]], str]] = []

    def open_(value: Any) -> str | None:
        if isinstance(value, dict):
            stack.append((((("," if i else "") + leaf(str(k)) + ":", v)
                           for i, (k, v) in enumerate(value.items())), "}"))
            return "{"
        if isinstance(value, (list, tuple)):
            stack.append(((("," if i else "", v) for i, v in enumerate(value)), "]"))
            return "["
        return None

    start = open_(obj)
    if start is None:
        yield leaf(obj)
        return
    yield start
    while stack:
        it, close = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            yield close
            continue
        prefix, value = item
        yield prefix
        start = open_(value)
        yield start if start is not None else leaf(value)
