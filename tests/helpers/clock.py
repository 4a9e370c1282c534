"""A clock the test moves by hand (``clock.advance(60)``), for policies, limiters and
triggers that take ``clock=``."""

from __future__ import annotations


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
