"""Flask example: the application-factory pattern with OtelProf and OpenTelemetry."""
import hashlib
import os
import time

from flask import Flask, Response
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from otelprof_middleware.flask import OtelProf

prof = OtelProf()


def hash_rounds(n):
    data = b"otelprof"
    for _ in range(n):
        data = hashlib.sha256(data).digest()
    return data.hex()


def setup_tracing():
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        if os.environ.get("EXAMPLE_PRINT_SPANS") == "1":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)


def create_app():
    setup_tracing()
    app = Flask(__name__)
    # every option as OTELPROF_<NAME>; the environment (OTELPROF_*) fills the rest
    app.config["OTELPROF_OUTPUT_DIR"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
    app.config["OTELPROF_PROBABILITY"] = 0.01
    app.config["OTELPROF_HEADER_SECRET"] = os.environ.get("OTELPROF_HEADER_SECRET", "")
    FlaskInstrumentor().instrument_app(app)
    prof.init_app(app)

    @app.route("/cpu")
    def cpu():
        return {"digest": hash_rounds(150_000)}

    @app.route("/io")
    def io():
        time.sleep(0.2)
        return "slept 200 ms\n"

    @app.route("/stream")
    def stream():
        def chunks():
            for i in range(5):
                yield f"chunk {i}: {hash_rounds(20_000)[:16]}\n"
                time.sleep(0.05)
        return Response(chunks(), mimetype="text/plain")

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return {"item": item_id, "digest": hash_rounds(10_000)}

    return app


app = create_app()
