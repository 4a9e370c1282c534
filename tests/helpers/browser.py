"""Headless Chromium for the viewer's page tests (Debian package ``chromium``).

``chromium(...)`` runs one command (``--dump-dom``, ``--screenshot``); :class:`DevTools`
drives a page through the DevTools protocol over a pipe (no websocket library):
navigate, evaluate, wait for a condition, move and click the mouse, screenshot.
Screenshots go to ``$VIEWER_SCREENSHOT_DIR`` when it is set (the docs' images
are made that way: ``VIEWER_SCREENSHOT_DIR=docs/img pytest tests/test_viewer_browser.py``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from typing import Any, Optional

import pytest

CHROMIUM = "/usr/bin/chromium"
NO_CHROMIUM = ("headless Chromium not installed at /usr/bin/chromium "
               "(apt-get install -y chromium): browser tests of the viewer skipped")
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=NO_CHROMIUM)


def chromium(args: list[str], user_data: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={user_data}",
           "--window-size=1280,1000", "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)




class DevTools:
    def __init__(self, user_data: str) -> None:
        import fcntl


        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # move the child's ends above 9, so that they never are fd 3 or 4 themselves
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = high
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={user_data}", "--window-size=1280,1000",
               "--remote-debugging-pipe", "about:blank"]

        # the protocol pipe is fd 3 (commands) and fd 4 (replies); bash moves our pipe ends there
        shell = (f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-')
        self.proc = subprocess.Popen(["/bin/bash", "-c", shell, *cmd], pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.session = ""

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
             timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                assert left > 0, f"no DevTools reply to {method}"
                ready, _, _ = select.select([self._from_child], [], [], left)
                if ready:
                    chunk = os.read(self._from_child, 1 << 16)
                    assert chunk, "Chromium closed the DevTools pipe"
                    self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def eval(self, expr: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait_for(self, expr: str, what: str) -> Any:
        deadline = time.monotonic() + 30  # a bound, not a timing assertion
        while time.monotonic() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never showed {what}")

    def mouse(self, kind: str, x: float, y: float) -> None:
        params: dict[str, Any] = {"type": kind, "x": x, "y": y}
        if kind in ("mousePressed", "mouseReleased"):
            params.update(button="left", clickCount=1)
        self.send("Input.dispatchMouseEvent", params)

    def open(self, url: str, width: int = 1280, height: int = 1000) -> None:
        """A new tab on ``url`` (waits for the load event's navigation to start)."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        self.send("Page.navigate", {"url": url})

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def center(self, selector: str) -> dict[str, float]:
        """The middle of the first element matching ``selector``, scrolled into view."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                        "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        "return {x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height}; })()")
        assert box, f"no element {selector}"
        return box  # type: ignore[no-any-return]

    def screenshot(self, name: str, *, full_height: Optional[int] = None) -> bytes:
        """A PNG of the page (``full_height``: of its top that many pixels); saved as
        ``$VIEWER_SCREENSHOT_DIR/name`` when that is set."""
        params: dict[str, Any] = {"format": "png"}
        if full_height:
            self.eval("window.scrollTo(0, 0)")
            width = self.eval("document.documentElement.clientWidth")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": full_height,
                                                            "scale": 1})
        png = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        out = os.environ.get("VIEWER_SCREENSHOT_DIR")
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, name), "wb") as f:
                f.write(png)
        return png

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_child)
        os.close(self._from_child)


