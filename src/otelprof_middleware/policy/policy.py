"""Should this request be profiled?  One policy object per profiler, shared by
every integration.

Order of evaluation:

1. exclusions (``excluded_urls``) — never profiled;
2. the custom gate ``should_profile(info)`` — True forces, False vetoes, None defers;
3. candidate triggers: the ``X-Enable-Profiling`` header (authenticated with
   ``header_secret`` when set, rate-limited by ``max_header_profiles_per_minute``),
   then ``probability`` (decided from the trace id when there is one);
4. budgets: ``max_concurrent_profiles`` and ``max_profiles_per_minute``.

Declines are counted per reason in ``Profiler.stats()["declined"]``.
"""

from __future__ import annotations

import hmac
import random
import re
import threading
from typing import TYPE_CHECKING, Optional

from .limits import RateLimiter
from .request import Decision, RequestInfo

if TYPE_CHECKING:
    from ..profiler import Profiler

__all__ = ["Policy", "TRUTHY"]

TRUTHY = frozenset({"1", "true", "yes", "on"})
_TRACE_ID_MAX = (1 << 64) - 1


class Policy:
    def __init__(self, profiler: "Profiler") -> None:
        self.profiler = profiler
        cfg = profiler.config
        self.config = cfg
        self.header_name = cfg.header.lower()
        self._secret = cfg.header_secret.encode() if cfg.header_secret else None
        self._excluded = [re.compile(p) for p in cfg.excluded_urls]
        self.header_limiter = RateLimiter(cfg.max_header_profiles_per_minute)
        self.profile_limiter = RateLimiter(cfg.max_profiles_per_minute)
        self._random = random.Random()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pieces
    def excluded(self, info: RequestInfo) -> bool:
        if not self._excluded:
            return False
        target = info.url or info.path
        return any(p.search(target) for p in self._excluded)

    def header_requests(self, info: RequestInfo) -> bool:
        """True when the request carries a valid profiling header."""
        value = info.header(self.header_name)
        if value is None:
            return False
        value = value.strip()
        if self._secret is not None:
            return hmac.compare_digest(value.encode(), self._secret)
        return value.lower() in TRUTHY

    def probability_hit(self, info: RequestInfo, probability: float) -> bool:
        """Trace-id ratio when there is a trace (same trace, same answer in every
        service), random otherwise."""
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        link = info.link
        if link is not None and link.trace_id:
            return (link.trace_id & _TRACE_ID_MAX) < probability * (_TRACE_ID_MAX + 1)
        with self._lock:
            return self._random.random() < probability

    # ------------------------------------------------------------------ decision
    def decide(self, info: RequestInfo) -> Decision:
        stats = self.profiler.counters
        if not self.profiler.enabled:
            return Decision.no("disabled")
        if self.excluded(info):
            stats.declined("excluded")
            return Decision.no("excluded")

        forced: Optional[bool] = None
        gate = self.config.should_profile
        if gate is not None:
            try:
                forced = gate(info)
            except Exception:
                forced = None
                stats.incr("should_profile_errors")
        if forced is False:
            stats.declined("custom")
            return Decision.no("custom")

        triggers: list[str] = []
        header = self.header_requests(info)
        if forced:
            triggers.append("custom")
        if header:
            if self.header_limiter.try_acquire():
                triggers.append("header")
            else:
                stats.declined("header_rate")
        if not triggers:
            link = info.link
            unsampled = link is not None and not link.sampled and not self.config.profile_unsampled_traces
            if not unsampled and self.probability_hit(info, self.config.probability):
                triggers.append("probability")
        if not triggers:
            return Decision(False, declined="not_selected", header_requested=header)
        return self.admit(triggers, header_requested=header)

    def admit(self, triggers: list[str], header_requested: bool = False) -> Decision:
        """Apply the global budgets to a request some trigger selected."""
        stats = self.profiler.counters
        if self.profiler.active_sessions >= self.config.max_concurrent_profiles:
            stats.declined("concurrency")
            if "header" in triggers:
                self.header_limiter.refund()
            return Decision(False, declined="concurrency", header_requested=header_requested)
        if "header" not in triggers and "custom" not in triggers and not self.profile_limiter.try_acquire():
            stats.declined("rate")
            return Decision(False, declined="rate", header_requested=header_requested)
        expose = self.config.expose_profile_id
        if expose is None:
            expose = "header" in triggers
        return Decision(True, tuple(triggers), header_requested=header_requested, expose_profile_id=expose)
