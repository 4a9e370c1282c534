"""A small FastAPI service profiled per request by otelprof-middleware.

    uvicorn app:app --app-dir examples/fastapi_app          # or: python examples/fastapi_app/demo.py

Endpoints: ``/cpu`` (CPU-heavy async endpoint), ``/io`` (waits on ``asyncio.sleep``),
``/sync`` (a ``def`` endpoint: FastAPI runs it in its thread pool), ``/stream``
(a ``StreamingResponse`` whose generator does the work), ``/error`` (raises),
``/health``.

OpenTelemetry tracing is set up here (SDK ``TracerProvider`` + the FastAPI
instrumentation), so profiles are linked to the SERVER span of each request.  The
profiler is configured from the environment (``OTELPROF_*`` variables; defaults:
``file`` exporter into ``./profiles``, 1% of requests), and a request sent with
``X-Enable-Profiling: <secret>`` is profiled: the secret is
``OTELPROF_HEADER_SECRET``, else ``change-me``; the app prints the ``curl`` that
asks for a profile.  Set ``DEMO_PRINT_SPANS=1`` to print finished spans.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otelprof_middleware.asgi import ProfilingMiddleware


def _setup_tracing() -> None:
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # the host process configured tracing already
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "fastapi-demo")}))
    if os.environ.get("DEMO_PRINT_SPANS"):
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


_setup_tracing()

app = FastAPI(title="otelprof FastAPI demo")


def checksum_rounds(rounds: int) -> str:
    """CPU work: repeated hashing in pure Python."""
    digest = b"otelprof"
    for i in range(rounds):
        digest = hashlib.sha256(digest + i.to_bytes(4, "little")).digest()
        digest = bytes(b ^ 0x5A for b in digest)
    return digest.hex()


def count_primes(limit: int) -> int:
    """CPU work: trial division."""
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


@app.get("/cpu")
async def cpu(n: int = 30000) -> dict:
    return {"primes": count_primes(n)}


@app.get("/io")
async def io(ms: int = 50) -> dict:
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@app.get("/sync")
def sync(rounds: int = 20000) -> dict:
    return {"checksum": checksum_rounds(rounds)}


async def report_lines(chunks: int):
    for i in range(chunks):
        yield f"chunk {i}: {checksum_rounds(3000)}\n".encode()
        await asyncio.sleep(0)


@app.get("/stream")
async def stream(chunks: int = 5) -> StreamingResponse:
    return StreamingResponse(report_lines(chunks), media_type="text/plain")


@app.get("/error")
async def error() -> dict:
    count_primes(30000)
    raise RuntimeError("demo failure")


# The profiler reads its other options from OTELPROF_* variables.  Without OTel
# middleware ordering worries: FastAPIInstrumentor always wraps the whole stack, so
# the SERVER span is current when our middleware runs.
HEADER_SECRET = os.environ.get("OTELPROF_HEADER_SECRET") or "change-me"
app.add_middleware(ProfilingMiddleware, header_secret=HEADER_SECRET)
FastAPIInstrumentor.instrument_app(app)


def print_curl() -> None:
    """The curl line for this server: its address from the uvicorn command line."""
    args, host, port = sys.argv[1:], "127.0.0.1", "8000"
    for flag, value in zip(args, args[1:] + [""]):
        if flag == "--port":
            port = value
        elif flag == "--host" and value not in ("0.0.0.0", "::"):
            host = value
    if "--fd" not in args:  # (the demo serves on a socket it made, and prints its own line)
        print(f"otelprof example: ask for a profile with\n"
              f"  curl -i -H 'X-Enable-Profiling: {HEADER_SECRET}' http://{host}:{port}/cpu", flush=True)


print_curl()
