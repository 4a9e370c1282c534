"""Request policy: should this request be profiled, and why (see docs/triggers.md)."""

from .limits import RateLimiter
from .policy import TRIGGERS, Policy, policy_for
from .request import Decision, RequestInfo

__all__ = ["Decision", "Policy", "RateLimiter", "RequestInfo", "TRIGGERS", "policy_for"]
