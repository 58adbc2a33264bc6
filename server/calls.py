"""The current call's deadline, as the serving logic sees it (no gRPC here).

The RPC boundary (``rpc/status.py``) binds, for the task that serves a call, an object that
tells whether the call's deadline (the client's, or the server's default one) has passed. The
serving logic asks it at *commit time*: a turn whose deadline passed before its session state
was stored is not stored, and is reported DEADLINE_EXCEEDED, so a turn reported as failed never
changed its session. Without a bound (a direct call in a test or a tool) nothing expires.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class Bound(Protocol):
    """Anything that can tell whether it has passed (``asyncio.Timeout`` is one)."""

    def expired(self) -> bool: ...


call_bound: ContextVar[Bound | None] = ContextVar("rnnserve_call_bound", default=None)
"""The bound of the call the current task serves (set by the RPC boundary)."""


def call_expired() -> bool:
    """Whether the current call's deadline has passed."""
    bound = call_bound.get()
    return bound is not None and bound.expired()
