"""The HTTP transport shared by the OTLP/HTTP and Pyroscope exporters (httpx).

One client per exporter, made lazily and made again (never closing the parent's)
after ``fork``.  A transport failure becomes an :class:`~.retry.Attempt`; its
message never holds a credential: header values and URL userinfo are scrubbed,
since httpx and h11 may quote either in an exception.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Union

import httpx

from .._redact import Scrubber
from .retry import Attempt

__all__ = ["HTTPTransport"]


class HTTPTransport:
    """POSTs with one lazily made httpx client; ``secrets`` are masked in messages."""

    def __init__(self, *, verify: Any = True, secrets: Iterable[str] = ()) -> None:
        self.verify = verify
        self.scrub = Scrubber(secrets)
        self._client: Optional[httpx.Client] = None
        self._pid = os.getpid()

    def client(self) -> httpx.Client:
        if self._pid != os.getpid():
            self.forget()
        if self._client is None:
            self._client = httpx.Client(verify=self.verify)
        return self._client

    def post(self, url: str, *, content: bytes, headers: Mapping[str, str], timeout: float,
             params: Optional[Mapping[str, str]] = None) -> Union[httpx.Response, Attempt]:
        """The response, or a retryable/final :class:`Attempt` for a transport failure."""
        try:
            return self.client().post(url, content=content, headers=dict(headers), params=params,
                                      timeout=httpx.Timeout(timeout))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Attempt(ok=False, retryable=False, message=self.scrub(f"{type(exc).__name__}: {exc}"),
                           status=type(exc).__name__)
        except httpx.TransportError as exc:  # connect/read/write errors, timeouts, disconnects
            return Attempt(ok=False, retryable=True, message=self.scrub(f"{type(exc).__name__}: {exc}"),
                           status=type(exc).__name__)

    def forget(self) -> None:
        """Drop the client without closing it (after fork it is the parent's)."""
        self._client = None
        self._pid = os.getpid()

    def close(self) -> None:
        c, self._client = self._client, None
        if c is not None and self._pid == os.getpid():
            try:
                c.close()
            except Exception:  # pragma: no cover
                pass
