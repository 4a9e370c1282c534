"""Request policy: should this request be profiled, and why."""

from .limits import RateLimiter
from .policy import Policy
from .request import Decision, RequestInfo

__all__ = ["Decision", "Policy", "RateLimiter", "RequestInfo"]
