"""Follow a request's work into thread pools and helper event loops.

While a profiled request hands work to another thread (Starlette/FastAPI ``def``
endpoints and ``run_in_threadpool`` via AnyIO worker threads; ``asyncio.to_thread``
and ``loop.run_in_executor`` via ``concurrent.futures.ThreadPoolExecutor``;
Django's ``sync_to_async``), that thread is attached to the request's session for
exactly as long as the work runs, then detached.

A request that is only *watched* (the late triggers may promote it while it
runs) is followed too: each hand-off is recorded on the request
(:func:`follow_hops`, given a weak reference so that a request an integration
dropped is freed), so a promotion attaches the pool thread the request is
working in at that moment, and later hand-offs are attached as they start.

Coroutines run to completion in a helper thread's own event loop
(``executor.submit(asyncio.run, coro)``: asgiref's ``async_to_sync``, which
serves a Django ``async def`` view under WSGI) are attached as a *task*, so their
frames are sampled while they wait too; the thread that waits for them
(``CurrentThreadExecutor.run_until_future``) is detached meanwhile, so its waiting
is not counted twice.

:func:`install` patches ``anyio.to_thread.run_sync``, ``ThreadPoolExecutor.submit``
and asgiref's ``CurrentThreadExecutor`` once per process.  The wrappers cost two
``ContextVar.get`` when no request is profiled or watched in the caller's context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from typing import Any, Callable, Coroutine, Optional, Protocol, TypeVar

from .._safety import LogOnce
from ..profiler import current_session
from ..session import Session

__all__ = ["install", "bind_current_session", "follow_hops", "unfollow_hops"]

T = TypeVar("T")

_installed = False
_lock = threading.Lock()
#: the firewall of the hooks: a failure in our bookkeeping never stops the work itself
_log = LogOnce()


class HopTarget(Protocol):
    """A watched request: wraps a function that runs for it in another thread."""

    def bind_hop(self, fn: Callable[..., T]) -> Callable[..., T]: ...


_WatchedRef = Callable[[], Optional[HopTarget]]
_WATCHED: contextvars.ContextVar[Optional[_WatchedRef]] = contextvars.ContextVar("otelprof_watched", default=None)

#: ``follow_hops(weakref.ref(request)) -> token``: record the thread-pool hand-offs of
#: this context for ``request`` (watched, not profiled yet); undo with :func:`unfollow_hops`
follow_hops: Callable[[_WatchedRef], "contextvars.Token[Optional[_WatchedRef]]"] = _WATCHED.set
#: undo :func:`follow_hops` (raises ValueError from another context: see :func:`unfollow_hops`)
reset_hops = _WATCHED.reset


def unfollow_hops(token: "contextvars.Token[Optional[_WatchedRef]]") -> None:
    try:
        _WATCHED.reset(token)
    except ValueError:  # ended in another context
        pass


def bind_current_session(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap ``fn`` so the thread that runs it is attached to the caller's session
    (or recorded on the caller's watched request) meanwhile."""
    session = current_session()
    if session is None:
        ref = _WATCHED.get()
        request = ref() if ref is not None else None
        return fn if request is None else request.bind_hop(fn)

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


async def _as_task_of(session: Session, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` with the task running it attached to ``session``."""
    try:
        if not session.finished:
            session.attach_current()
    except Exception:
        _log("threads-task", "otelprof: could not follow work into a helper event loop", exc=True)
    return await coro


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
        if fn is asyncio.run and args and asyncio.iscoroutine(args[0]):
            session = current_session()
            if session is not None:  # a helper event loop: sample the coroutine as a task
                return original(self, fn, _as_task_of(session, args[0]), *args[1:], **kwargs)
        return original(self, bind_current_session(fn), *args, **kwargs)

    submit._otelprof_wrapped = True  # type: ignore[attr-defined]
    cls.submit = submit


def _patch_executor() -> None:
    _wrap_submit(concurrent.futures.ThreadPoolExecutor)


def _patch_asgiref() -> None:
    """asgiref's ``CurrentThreadExecutor`` (not a ThreadPoolExecutor) runs ``sync_to_async``
    work in the thread blocked in ``async_to_sync``: Django under ASGI when a sync-only
    middleware (e.g. OpenTelemetry's) sits outside an async one sends sync views there;
    Django under WSGI runs ``async def`` views through it."""
    try:
        from asgiref.current_thread_executor import CurrentThreadExecutor
    except ImportError:
        return
    _wrap_submit(CurrentThreadExecutor)
    original = CurrentThreadExecutor.run_until_future
    if getattr(original, "_otelprof_wrapped", False):
        return

    @functools.wraps(original)
    def run_until_future(self: Any, future: Any) -> None:
        session = current_session()
        ident = threading.get_ident()
        try:
            if session is None or not _thread_attached(session, ident):
                return original(self, future)
            # the thread now waits for work sampled where it runs (a task, a pool thread);
            # work it runs meanwhile is attached by the submit hook above
            session.detach_thread(ident)
        except Exception:
            _log("threads-wait", "otelprof: could not follow a thread waiting for a helper loop", exc=True)
            return original(self, future)
        try:
            return original(self, future)
        finally:
            if not session.finished:
                session.attach_thread(ident)

    run_until_future._otelprof_wrapped = True  # type: ignore[attr-defined]
    CurrentThreadExecutor.run_until_future = run_until_future  # type: ignore[method-assign]


def _thread_attached(session: Session, ident: int) -> bool:
    return any(t.thread_id == ident and t.task is None for t in session.targets)


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
