"""Who is calling: the client identity an authenticated call carries (no gRPC here).

The auth interceptor (``rpc/auth.py``) sets it for the task that serves the call; the
serving logic reads it, e.g. to cap the sessions one client may hold. Without auth it is ``""``.
An identity is a stable, non-reversible name of the bearer token, never the token itself.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

_CLIENT: ContextVar[str] = ContextVar("rnnserve_client_identity", default="")


def current_client() -> str:
    """The identity of the client this task serves ('' when auth is off)."""
    return _CLIENT.get()


def set_current_client(identity: str) -> None:
    """Bind ``identity`` to the current task (each gRPC call runs in its own task)."""
    _CLIENT.set(identity)


def token_identity(token: str) -> str:
    """A stable name for a bearer token: ``client-`` and 12 hex digits of its SHA-256."""
    return "client-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]
