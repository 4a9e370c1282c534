"""A viewer server on an ephemeral 127.0.0.1 port, driven over plain HTTP."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from otelprof_middleware.viewer import make_server


class Viewer:
    def __init__(self, directory: str, **options: Any) -> None:
        self.server = make_server(directory, "127.0.0.1", 0, **options)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sync(self) -> None:
        self.server.folder.sync(force=True)

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=bool(headers and "Host" in headers))
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, path: str, status: int = 200) -> Any:
        got, _headers, body = self.request(path)
        assert got == status, (path, got, body[:500])
        return json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def q(selector: str) -> str:
    return quote(selector, safe="")


@pytest.fixture
def viewer_factory() -> Iterator[Any]:
    made: list[Viewer] = []

    def make(directory: str, **options: Any) -> Viewer:
        v = Viewer(directory, **options)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()
