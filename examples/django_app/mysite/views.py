import asyncio
import hashlib
import time

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse


def hash_rounds(n):
    data = b"otelprof"
    for _ in range(n):
        data = hashlib.sha256(data).digest()
    return data.hex()


def cpu(request):
    """~100 ms of CPU."""
    return JsonResponse({"digest": hash_rounds(150_000)})


def io(request):
    """Mostly waiting (wall time, little CPU)."""
    time.sleep(0.2)
    return HttpResponse("slept 200 ms\n")


def stream(request):
    """A streamed body: the profile lasts until the last chunk."""
    def chunks():
        for i in range(5):
            yield f"chunk {i}: {hash_rounds(20_000)[:16]}\n"
            time.sleep(0.05)
    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def async_view(request):
    await asyncio.sleep(0.05)
    return JsonResponse({"digest": hash_rounds(50_000)})


def item(request, item_id):
    return JsonResponse({"item": item_id, "digest": hash_rounds(10_000)})
