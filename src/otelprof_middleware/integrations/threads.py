"""Follow a request's work into thread pools.

While a profiled request hands work to another thread (Starlette/FastAPI ``def``
endpoints and ``run_in_threadpool`` via AnyIO worker threads; ``asyncio.to_thread``
and ``loop.run_in_executor`` via ``concurrent.futures.ThreadPoolExecutor``;
Django's ``sync_to_async``), that thread is attached to the request's session for
exactly as long as the work runs, then detached.

:func:`install` patches ``anyio.to_thread.run_sync`` and
``ThreadPoolExecutor.submit`` once per process.  The wrappers cost one
``ContextVar.get`` when no profile is running in the caller's context.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from typing import Any, Callable, TypeVar

from ..profiler import current_session

__all__ = ["install", "bind_current_session"]

T = TypeVar("T")

_installed = False
_lock = threading.Lock()


def bind_current_session(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap ``fn`` so the thread that runs it is attached to the caller's session meanwhile."""
    session = current_session()
    if session is None:
        return fn

    @functools.wraps(fn)
    def run_attached(*args: Any, **kwargs: Any) -> T:
        if session.finished:
            return fn(*args, **kwargs)
        ident = session.attach_thread()
        try:
            return fn(*args, **kwargs)
        finally:
            session.detach_thread(ident)

    return run_attached


def install() -> None:
    """Patch the thread-pool entry points (idempotent)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        _patch_executor()
        _patch_anyio()
        _patch_asgiref()
        _installed = True


def _wrap_submit(cls: Any) -> None:
    """Make ``cls.submit(fn, ...)`` run ``fn`` attached to the caller's session."""
    original = cls.submit
    if getattr(original, "_otelprof_wrapped", False):
        return

    @functools.wraps(original)
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return original(self, bind_current_session(fn), *args, **kwargs)

    submit._otelprof_wrapped = True  # type: ignore[attr-defined]
    cls.submit = submit


def _patch_executor() -> None:
    _wrap_submit(concurrent.futures.ThreadPoolExecutor)


def _patch_asgiref() -> None:
    """asgiref's ``CurrentThreadExecutor`` (not a ThreadPoolExecutor) runs ``sync_to_async``
    work in the thread blocked in ``async_to_sync``: Django under ASGI when a sync-only
    middleware (e.g. OpenTelemetry's) sits outside an async one sends sync views there."""
    try:
        from asgiref.current_thread_executor import CurrentThreadExecutor
    except ImportError:
        return
    _wrap_submit(CurrentThreadExecutor)


def _patch_anyio() -> None:
    try:
        import anyio.to_thread as to_thread
    except ImportError:
        return
    original = to_thread.run_sync
    if getattr(original, "_otelprof_wrapped", False):
        return

    @functools.wraps(original)
    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await original(bind_current_session(func), *args, **kwargs)

    run_sync._otelprof_wrapped = True  # type: ignore[attr-defined]
    to_thread.run_sync = run_sync  # type: ignore[assignment]
