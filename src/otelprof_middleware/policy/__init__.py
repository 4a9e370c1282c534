"""Request policy: should this request be profiled, and why (see docs/triggers.md).

:class:`Policy` composes the entry decision (:mod:`.decide`), the late triggers
(:mod:`.tail`, with :mod:`.watchdog`), armed routes and windows (:mod:`.triggers`),
the high-CPU trigger (:mod:`.cpu`) and the overhead governor (:mod:`.governor`).
"""

from .decide import TRIGGERS, Screen
from .limits import ConcurrencySlots, ProfileBudget, WindowLimiter
from .policy import OpenWindow, Policy, PolicyState
from .request import Decision, PolicyHost, ProfilableRequest, RequestInfo
from .tail import TailState, TailTicket

__all__ = ["ConcurrencySlots", "Decision", "OpenWindow", "Policy", "PolicyHost", "PolicyState", "ProfilableRequest",
           "ProfileBudget", "RequestInfo", "Screen", "TRIGGERS", "TailState", "TailTicket", "WindowLimiter"]
