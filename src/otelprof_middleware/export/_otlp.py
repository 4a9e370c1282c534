"""What OTLP/HTTP and OTLP/gRPC share: the request body and reading the response.

Both send the same serialized ``ExportProfilesServiceRequest`` (one dictionary per
batch) and get the same ``ExportProfilesServiceResponse`` back; only the
transport differs.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from ..encoding import encode_otlp_request
from ..profile import Profile
from .resource import SCOPE_NAME, SCOPE_VERSION
from .retry import Attempt

__all__ = ["encode_request", "parse_export_response", "rejected_to_profiles", "partial_success",
           "OTLP_PROFILES_PER_PROFILE"]

#: OTLP ``Profile`` messages we send per profile (CPU and wall): the unit of
#: ``rejected_profiles`` in a partial success
OTLP_PROFILES_PER_PROFILE = 2


def encode_request(profiles: Sequence[Profile], resource: Mapping[str, Union[str, int]]) -> bytes:
    """The serialized ``ExportProfilesServiceRequest`` for a batch."""
    req = encode_otlp_request(profiles, resource_attributes=resource, scope_name=SCOPE_NAME,
                              scope_version=SCOPE_VERSION)
    return req.SerializeToString()


def parse_export_response(body: bytes) -> tuple[int, str]:
    """``(rejected_profiles, error_message)`` of an ``ExportProfilesServiceResponse``
    (``(0, "")`` for an empty or unreadable body)."""
    if not body:
        return 0, ""
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceResponse,
    )

    try:
        resp = ExportProfilesServiceResponse.FromString(body)
    except Exception:
        return 0, ""
    if not resp.HasField("partial_success"):
        return 0, ""
    return int(resp.partial_success.rejected_profiles), resp.partial_success.error_message


def rejected_to_profiles(rejected_otlp: int, count: int) -> int:
    """Our profiles that lost data when the server rejected ``rejected_otlp`` OTLP
    profiles of a request holding ``count`` of ours (at least this many)."""
    if rejected_otlp <= 0:
        return 0
    return min(count, -(-rejected_otlp // OTLP_PROFILES_PER_PROFILE))


def partial_success(body: bytes, count: int) -> tuple[Optional[Attempt], str]:
    """For a successful answer: ``(attempt, warning)``.  ``attempt`` is a partial
    success when the server rejected profiles (else None: a plain success);
    ``warning`` is the server's message on a full success, if it sent one."""
    rejected, message = parse_export_response(body)
    if rejected:
        return Attempt(ok=True, rejected=rejected_to_profiles(rejected, count),
                       message=f"server rejected {rejected} OTLP profile(s): {message}",
                       status="partial_success"), ""
    return None, message
