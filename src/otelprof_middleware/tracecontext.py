"""Read-only access to the OpenTelemetry trace context.

We never ``attach``/``detach`` contexts (that breaks across generators, tasks and
threads); we only read the current span, or parse an incoming ``traceparent``.

Every request asks "is there a span?", and most answer no:
``current_context().get(SPAN_KEY)`` answers that with two C calls (OpenTelemetry's
own context variable and a dict lookup) instead of four Python frames
(``get_current_span`` → ``get_value`` → ``get_current`` → the runtime context),
when OpenTelemetry runs its default contextvars runtime context;
:func:`span_or_none` applies ``get_current_span``'s rules to whatever it finds.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from opentelemetry import context as _context
from opentelemetry import trace as _trace

from .profile import SpanLink

__all__ = ["current_link", "current_span", "link_from_span", "parse_traceparent", "trace_of_traceparent",
           "set_span_attributes", "current_context", "SPAN_KEY", "span_or_none", "context_reader"]

_TRACEPARENT = re.compile(r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$")
# the canonical version-00 shape (any case, as parse_traceparent accepts)
_CANONICAL = re.compile(r"00-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}")
_NO_SPAN_ID = "0" * 16
_SAMPLED_LAST_DIGIT = frozenset("13579bdfBDF")  # an odd flags byte: the sampled bit is set
_TRACEPARENT_MAX = 512  # later versions may append fields; nothing legitimate is this long


def context_reader() -> tuple[Callable[[], Mapping[str, Any]], Any]:
    """(the current OpenTelemetry context getter, the key of its span): the context
    variable's own ``get`` with the default runtime context, else the public API."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        runtime = getattr(_context, "_RUNTIME_CONTEXT", None)
        var = getattr(runtime, "_current_context", None)
        if type(runtime) is ContextVarsRuntimeContext and var is not None:
            return var.get, _SPAN_KEY
        return _context.get_current, _SPAN_KEY
    except Exception:  # another OpenTelemetry layout
        return (lambda: {"span": _trace.get_current_span()}), "span"


#: ``current_context().get(SPAN_KEY)``: what OpenTelemetry's current context holds as
#: its span (None for most requests: no span); give anything else to :func:`span_or_none`
current_context, SPAN_KEY = context_reader()


def span_or_none(value: Any) -> Any:
    """What ``get_current_span`` would make of ``value`` (the context's entry), with
    the invalid span as None."""
    if value is None or not isinstance(value, _trace.Span) or value is _trace.INVALID_SPAN:
        return None
    return value


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


def trace_of_traceparent(value: str) -> Optional[tuple[int, bool]]:
    """``(trace id, sampled)`` of a ``traceparent`` header, or None when it is not
    valid: what an entry decision needs, without building a link (it runs for every
    request that comes with a ``traceparent`` and no span).  The canonical version-00
    shape is checked with one anchored match; any other shape gets the full rules."""
    if len(value) == 55 and _CANONICAL.fullmatch(value) is not None:
        trace_id = int(value[3:35], 16)
        if not trace_id or value[36:52] == _NO_SPAN_ID:
            return None
        return trace_id, value[54] in _SAMPLED_LAST_DIGIT
    link = parse_traceparent(value)
    return (link.trace_id, link.sampled) if link is not None else None


def set_span_attributes(span: Any, attributes: dict[str, Any]) -> None:
    """Set attributes on a recording span; never raises."""
    try:
        if span is not None and span.is_recording():
            span.set_attributes(attributes)
    except Exception:
        pass
