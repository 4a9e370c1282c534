"""Read-only access to the OpenTelemetry trace context.

We never ``attach``/``detach`` contexts (that breaks across generators, tasks and
threads); we only read the current span, or parse an incoming ``traceparent``.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from opentelemetry import trace as _trace

from .profile import SpanLink

__all__ = ["current_link", "current_span", "parse_traceparent", "set_span_attributes"]

_TRACEPARENT = re.compile(r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$")
_TRACEPARENT_MAX = 512  # later versions may append fields; nothing legitimate is this long


def current_span() -> Any:
    """The current OpenTelemetry span if it is valid, else None."""
    try:
        span = _trace.get_current_span()
        if span.get_span_context().is_valid:
            return span
    except Exception:
        pass
    return None


def link_from_span(span: Any) -> Optional[SpanLink]:
    try:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return SpanLink(
            trace_id=ctx.trace_id,
            span_id=ctx.span_id,
            sampled=bool(ctx.trace_flags & 0x01),
            source="span",
            span_name=str(getattr(span, "name", "") or ""),
        )
    except Exception:
        return None


def current_link() -> Optional[SpanLink]:
    """A link to the current span, or None when there is no valid span."""
    span = current_span()
    return link_from_span(span) if span is not None else None


def parse_traceparent(value: Optional[str]) -> Optional[SpanLink]:
    """A link from a W3C ``traceparent`` header (its trace id and parent span id)."""
    if not value:
        return None
    if not isinstance(value, str) or len(value) > _TRACEPARENT_MAX:
        return None
    m = _TRACEPARENT.match(value.lower())
    # W3C Trace Context: version ff is invalid; version 00 has exactly four fields
    if not m or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return SpanLink(trace_id, span_id, sampled=bool(int(m.group(4), 16) & 1), source="traceparent")


def set_span_attributes(span: Any, attributes: dict[str, Any]) -> None:
    """Set attributes on a recording span; never raises."""
    try:
        if span is not None and span.is_recording():
            span.set_attributes(attributes)
    except Exception:
        pass
