"""Keeping secrets out of messages: URLs without their userinfo, values masked.

Credentials reach this library in three shapes: a password in an endpoint URL
(``https://user:password@host``), header values (``Authorization: Bearer ...``)
and secret options (``header_secret``, ``pyroscope_token`` ...).  None of them may
appear in a log line, an exception, a ``ConfigError``, ``repr(Config)`` or
``stats()``.  This module imports nothing from the package, so the configuration
and the exporters can both use it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "redact_url", "mask_key_values", "Scrubber"]

MASK = "***"

# scheme://userinfo@ anywhere in a text
_USERINFO_RE = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")


def redact_url(url: str) -> str:
    """``url`` without userinfo and with query values masked, for messages."""
    try:
        parts = urlsplit(url if "://" in url else "//" + url)
    except ValueError:  # e.g. a broken IPv6 literal: keep only what follows the userinfo
        return url.rpartition("@")[2]
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        (item.split("=", 1)[0] + "=" + MASK) if "=" in item else item for item in parts.query.split("&") if item
    )
    out = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return out if "://" in url else out.lstrip("/")


def mask_key_values(raw: Any) -> Any:
    """Keys kept, values masked: for header-like options in error messages."""
    if isinstance(raw, Mapping):
        return {str(k): MASK for k in raw}
    if isinstance(raw, str):
        return ",".join(part.split("=", 1)[0] + "=" + MASK if "=" in part else MASK
                        for part in raw.split(","))
    return MASK


class Scrubber:
    """Replaces known secret values and URL userinfo in free text (exception
    messages from HTTP and gRPC libraries may quote a header value or a URL)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < 3:
                continue
            # as given, as quoted by repr() of a str or of bytes (h11 quotes an illegal
            # header value as b'...'), and its long words (a token after "Bearer ")
            forms.update((secret, repr(secret)[1:-1], repr(secret.encode("utf-8", "replace"))[2:-1]))
            forms.update(word for word in secret.split() if len(word) >= 8)
        # longest first, so that a secret containing another is masked whole
        self.secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _USERINFO_RE.sub(r"\g<scheme>", text) if "@" in text else text
