"""One request's turn in a session, the same for every kind that keeps sessions.

A turn starts by acquiring its session (or opening one for ``keep_session``) and ends in one of
two ways: committed (the new state is stored and the session released) or abandoned (nothing is
stored; a session the turn opened is discarded). A turn is committed only if its call's deadline
has not passed at commit time, so that a turn its client saw fail leaves the session as it was.
"""

from __future__ import annotations

import torch
from rnnserve.server.calls import call_expired
from rnnserve.server.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    SessionGoneReason,
    SessionNotFoundError,
    echo,
)
from rnnserve.server.identity import current_client
from rnnserve.server.serving.registry import ModelRegistry
from rnnserve.server.serving.runner import R, ServingKind, ServingModel
from rnnserve.server.serving.sessions import Session
from rnnserve.server.serving.store import SessionStoreBackend


async def begin_turn(registry: ModelRegistry, sessions: SessionStoreBackend,
                     serving: ServingKind[R], model: str, session_id: str, keep_session: bool
                     ) -> tuple[ServingModel[R], Session | None, bool]:
    """The model, the session (acquired, opened, or None) and whether this turn opened it.

    Errors: SessionNotFoundError (unknown, expired, ended, another client's, or made by a version
    no longer loaded), SessionBusyError, InvalidArgumentError (``model`` names another model than
    the session's), and the registry's model errors.
    """
    if session_id:
        session = await sessions.acquire(session_id, owner=current_client())
        try:
            if model and model != session.model:
                raise InvalidArgumentError(
                    "model", f"session {echo(session_id)} belongs to model {session.model!r}, "
                    f"not {echo(model)}")
            entry = registry.ready(session.model, serving)
            if entry.version != session.version:
                await sessions.remove_unloaded(session)
                raise SessionNotFoundError(session_id, SessionGoneReason.UNLOADED)
        except BaseException:
            await sessions.release(session)
            raise
        return entry, session, False
    entry = registry.ready(model, serving)
    if keep_session:
        return entry, await sessions.open(entry.name, entry.version, current_client()), True
    return entry, None, False


async def abandon_turn(sessions: SessionStoreBackend, session: Session | None, fresh: bool
                       ) -> None:
    """End a turn that stores nothing: the session stays as it was (one it opened is dropped)."""
    if session is None:
        return
    if fresh:
        await sessions.discard(session)
    else:
        await sessions.release(session)


async def commit_turn(sessions: SessionStoreBackend, session: Session | None, fresh: bool,
                      state: torch.Tensor, pending: object, added_tokens: int) -> None:
    """Store a finished turn's state in its session and release it.

    Errors: DeadlineExceededError when the call's deadline passed before the commit; then
    nothing is stored (the turn is abandoned), as its client was told it failed.
    """
    if session is None:
        return
    if call_expired():
        await abandon_turn(sessions, session, fresh)
        raise DeadlineExceededError("the turn's session state")
    await sessions.release(session, state, pending, added_tokens=added_tokens)
