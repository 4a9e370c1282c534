"""OpenTelemetry tracing for the example: an SDK TracerProvider and the Django
instrumentation.  Spans are printed to the console when EXAMPLE_PRINT_SPANS=1.
Skipped under ``opentelemetry-instrument`` (which instruments Django itself)."""
import os


def setup_tracing():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        if os.environ.get("EXAMPLE_PRINT_SPANS") == "1":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    if not DjangoInstrumentor().is_instrumented_by_opentelemetry:
        DjangoInstrumentor().instrument()
