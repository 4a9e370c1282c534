"""What integrations tell the policy about a request, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..profile import SpanLink

__all__ = ["RequestInfo", "Decision"]


def _no_headers(name: str) -> Optional[str]:
    return None


@dataclass
class RequestInfo:
    """A framework-neutral description of one request.

    ``header`` is a case-insensitive accessor (``info.header("x-enable-profiling")``)
    so integrations need not copy all headers.  ``url`` is the full URL used for
    exclusions (matched with ``re.search``, like the OpenTelemetry instrumentations).
    """

    method: str = "GET"
    path: str = "/"
    url: str = ""
    route: Optional[str] = None
    header: Callable[[str], Optional[str]] = _no_headers
    link: Optional[SpanLink] = None


@dataclass(frozen=True)
class Decision:
    """Whether to profile a request, and why (``triggers``) or why not (``declined``).
    Immutable, so the common "no" answers are shared objects (no allocation per request)."""

    profile: bool
    triggers: tuple[str, ...] = ()
    declined: str = ""
    header_requested: bool = False
    expose_profile_id: bool = False
    hz: Optional[int] = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def no(cls, reason: str, header_requested: bool = False) -> "Decision":
        key = (reason, header_requested)
        d = _NO.get(key)
        if d is None:
            d = _NO[key] = cls(False, declined=reason, header_requested=header_requested)
        return d


_NO: dict[tuple[str, bool], Decision] = {}
