"""Flask example: the application-factory pattern with OtelProf and OpenTelemetry.

Prints the one ``curl`` that asks the server for a profile, with the header secret
it uses (``OTELPROF_HEADER_SECRET``, else ``change-me``)."""
import hashlib
import os
import sys
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
    # the header asks for a profile when its value is the secret (without one: only in debug mode)
    app.config["OTELPROF_HEADER_SECRET"] = os.environ.get("OTELPROF_HEADER_SECRET") or "change-me"
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


def print_curl(app):
    """The curl line for this server: its port from the ``flask run`` (-p) or gunicorn (-b) command line."""
    args, host, port = sys.argv[1:], "127.0.0.1", "5000" if "run" in sys.argv else "8000"
    for flag, value in zip(args, args[1:] + [""]):
        if flag in ("-p", "--port"):
            port = value
        elif flag in ("-b", "--bind"):
            host, _, port = value.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    print(f"otelprof example: ask for a profile with\n"
          f"  curl -i -H 'X-Enable-Profiling: {app.config['OTELPROF_HEADER_SECRET']}' http://{host}:{port}/cpu",
          flush=True)


app = create_app()
print_curl(app)
