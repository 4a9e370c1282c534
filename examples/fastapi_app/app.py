"""A small FastAPI service profiled per request by otelprof-middleware.

    uvicorn app:app --app-dir examples/fastapi_app          # or: python examples/fastapi_app/demo.py

Endpoints: ``/cpu`` (CPU-heavy async endpoint), ``/io`` (waits on ``asyncio.sleep``),
``/sync`` (a ``def`` endpoint: FastAPI runs it in its thread pool), ``/stream``
(a ``StreamingResponse`` whose generator does the work), ``/error`` (raises),
``/health``.

OpenTelemetry tracing is set up here (SDK ``TracerProvider`` + the FastAPI
instrumentation), so profiles are linked to the SERVER span of each request.  The
profiler is configured from the environment (``OTELPROF_*`` variables; defaults:
``file`` exporter into ``./profiles``, 1% of requests, and any request sent with
``X-Enable-Profiling: 1``).  Set ``DEMO_PRINT_SPANS=1`` to print finished spans.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

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


# The profiler reads its options from OTELPROF_* variables.  Without OTel
# middleware ordering worries: FastAPIInstrumentor always wraps the whole stack, so
# the SERVER span is current when our middleware runs.
app.add_middleware(ProfilingMiddleware)
FastAPIInstrumentor.instrument_app(app)
