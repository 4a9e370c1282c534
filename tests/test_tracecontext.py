"""The request path's span check (``tracecontext.current_context().get(SPAN_KEY)``
+ ``span_or_none``) answers what OpenTelemetry's ``get_current_span`` answers, with
the default runtime context and with any other one."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otelprof_middleware import tracecontext


def fast_span() -> Any:
    value = tracecontext.current_context().get(tracecontext.SPAN_KEY)
    return tracecontext.span_or_none(value) if value is not None else None


def public_span() -> Optional[Any]:
    span = trace.get_current_span()
    return None if span is trace.INVALID_SPAN else span


def test_agrees_with_get_current_span() -> None:
    tracer = TracerProvider().get_tracer("t")
    assert fast_span() is None and public_span() is None  # no span: the common case
    with tracer.start_as_current_span("outer") as outer:
        assert fast_span() is outer is public_span()
        with tracer.start_as_current_span("inner") as inner:
            assert fast_span() is inner is public_span()
        with trace.use_span(trace.INVALID_SPAN):
            assert fast_span() is None and public_span() is None
        token = otel_context.attach(otel_context.set_value(tracecontext.SPAN_KEY, "not a span"))
        try:  # get_current_span's rule: anything but a Span is no span
            assert fast_span() is None and public_span() is None
        finally:
            otel_context.detach(token)
    assert fast_span() is None


def test_default_runtime_context_is_read_with_its_own_context_variable() -> None:
    """The fast path: the context variable's own ``get`` (a C call, no Python frame)."""
    getter, key = tracecontext.context_reader()
    assert type(getter).__name__ == "builtin_function_or_method"
    assert key == tracecontext.SPAN_KEY


def test_another_runtime_context_uses_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    class Custom(ContextVarsRuntimeContext):  # a subclass is "another" runtime context
        pass

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", Custom())
    getter, key = tracecontext.context_reader()
    assert getter is otel_context.get_current
    tracer = TracerProvider().get_tracer("t")
    assert getter().get(key) is None
    with tracer.start_as_current_span("s") as span:
        assert tracecontext.span_or_none(getter().get(key)) is span is public_span()
