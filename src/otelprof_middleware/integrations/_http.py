"""HTTP helpers shared by every adapter: one URL shape, header names, and one rule
for adding response headers.  No framework imports."""

from __future__ import annotations

from typing import Callable, Optional
from urllib.parse import quote

__all__ = ["full_url", "environ_key", "headers_to_add"]

#: the port a URL leaves out for its scheme
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_PATH_SAFE = "/;=,:@!$&'()*+~"


def full_url(scheme: Optional[str], host: Optional[str], server_name: Optional[str], server_port: object,
             path: str, query: Optional[str]) -> str:
    """``scheme://host/path?query`` as the OpenTelemetry WSGI instrumentation spells
    it, for ``excluded_urls``: the ``Host`` header when there is one, else the server
    name with its port unless it is the scheme's default; the path percent-quoted
    (any text, lone surrogates included: never raises)."""
    scheme = scheme or "http"
    if not host:
        host = server_name or "localhost"
        port = str(server_port or "")
        if port and port != DEFAULT_PORTS.get(scheme):
            host += ":" + port
    url = f"{scheme}://{host}{quote(path, safe=_PATH_SAFE, errors='surrogatepass')}"
    return url + "?" + query if query else url


def environ_key(header: str) -> str:
    """The WSGI/CGI environ key of a request header (``X-Enable-Profiling`` →
    ``HTTP_X_ENABLE_PROFILING``)."""
    return "HTTP_" + header.upper().replace("-", "_")


def headers_to_add(extra: list[tuple[str, str]], present: Callable[[str], bool]) -> list[tuple[str, str]]:
    """The one de-duplication rule of every adapter: a header of ``extra`` is added
    unless the response already has one of that name (``present(name)``, any case)."""
    return [(k, v) for k, v in extra if not present(k)]
