"""The session store interface the serving logic talks to, and the choice between two stores.

``memory`` (the default) keeps sessions in this process (:class:`~rnnserve.server.serving.sessions.
SessionStore`); ``redis://HOST:PORT/DB`` or ``rediss://...`` keeps them in Redis
(:mod:`rnnserve.server.serving.redis_store`), where every worker of every replica can continue every
session. Both hand out :class:`~rnnserve.server.serving.sessions.Session` objects whose ``state`` is a
tensor and whose ``pending`` is the value the next step starts from (a character index for a
char model, a tensor for a forecaster: :data:`Pending`).

Errors (all from :mod:`rnnserve.server.errors`): ``SessionNotFoundError`` (gone, with the
reason), ``SessionBusyError`` (another request holds it: ABORTED), ``ResourceExhaustedError``
(caps), ``SessionStoreUnavailableError`` (Redis unreachable: UNAVAILABLE).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.sessions import Session, SessionStore
from rnnserve.server.settings import ServerSettings

Pending = int | float | torch.Tensor
"""The value the next step starts from: a character index, or a forecaster's last point."""


class SessionStoreBackend(Protocol):
    """What the serving logic needs from a session store (every call may await the network)."""

    shared: bool  # True when other processes see the same sessions

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def open(self, model: str, version: int, owner: str = "") -> Session:
        """A new session, already held by the caller (its first request runs)."""
    async def acquire(self, session_id: str, owner: str | None = None) -> Session:
        """Hold a session for one request: NOT_FOUND if gone (or, with ``owner``, another
        client's), ABORTED if held elsewhere."""
    async def release(self, session: Session, state: torch.Tensor | None = None,
                      pending: Pending | None = None, added_tokens: int = 0) -> None:
        """Let go of a session, storing its new state (None keeps the old one)."""
    async def discard(self, session: Session) -> None:
        """Forget a session whose first request failed."""
    async def end(self, session_id: str, owner: str | None = None) -> Session:
        """EndSession: remove and return the session (NOT_FOUND, ABORTED as acquire)."""
    async def remove_unloaded(self, session: Session) -> None:
        """Remove a held session whose model version is no longer served."""
    def drop_model_version(self, model: str, version: int) -> int:
        """Registry callback: remove every session of an unloaded version (where it can)."""
    async def sweep(self) -> int:
        """Periodic upkeep (expiry, health); returns the sessions expired."""
    def __len__(self) -> int: ...


class MemorySessionStore:
    """The in-process store behind the async interface (no await ever blocks)."""

    shared = False

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.memory = SessionStore(settings.session_ttl_s, settings.max_sessions, metrics,
                                   max_per_owner=settings.max_sessions_per_client)

    def __len__(self) -> int:
        return len(self.memory)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def open(self, model: str, version: int, owner: str = "") -> Session:
        return self.memory.open(model, version, owner)

    async def acquire(self, session_id: str, owner: str | None = None) -> Session:
        return self.memory.acquire(session_id, owner)

    async def release(self, session: Session, state: torch.Tensor | None = None,
                      pending: Pending | None = None, added_tokens: int = 0) -> None:
        self.memory.release(session, state, pending, added_tokens)  # type: ignore[arg-type]

    async def discard(self, session: Session) -> None:
        self.memory.discard(session)

    async def end(self, session_id: str, owner: str | None = None) -> Session:
        return self.memory.end(session_id, owner)

    async def remove_unloaded(self, session: Session) -> None:
        self.memory.release(session)
        self.memory.drop_model_version(session.model, session.version)

    def drop_model_version(self, model: str, version: int) -> int:
        return self.memory.drop_model_version(model, version)

    async def sweep(self) -> int:
        return self.memory.expire()


def make_session_store(settings: ServerSettings, metrics: Metrics) -> SessionStoreBackend:
    """The store ``settings.session_store`` names (``memory`` or a Redis URL)."""
    url = settings.session_store
    if url == "memory":
        return MemorySessionStore(settings, metrics)
    from rnnserve.server.serving.redis_store import RedisSessionStore

    return RedisSessionStore(settings, metrics)


def wall_clock() -> float:
    """Seconds since the epoch: timestamps other processes can read (the store's records)."""
    return time.time()
