"""The request's deadline, carried by a context variable so every stage spends what is left.

A door starts the countdown (the HTTP middleware does it per request); without one, each
stage gets the engine's whole `request_timeout_s`.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("cvserve_request_deadline", default=None)


def start_deadline(seconds: float) -> Token[float | None]:
    return _DEADLINE.set(time.monotonic() + seconds)


def reset_deadline(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


def time_left(default_s: float) -> float:
    """Seconds until the current deadline, or `default_s` when none was started."""
    at = _DEADLINE.get()
    if at is None:
        return default_s
    return at - time.monotonic()
