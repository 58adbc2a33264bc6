"""Sessions: hidden states kept between requests, with an idle TTL, an LRU cap and accounting.

A session's *text* is everything sent and generated in it. Its state is the model's hidden state
after every character of that text but the last, plus that last character (``pending``), which is
the next step's input: exactly where d2l's ``predict_ch8`` stands after its warm-up. Continuing
with more text therefore gives what one stateless call on the whole text would give.

States stay on the model's device, as one contiguous tensor per session, ``(S, L, H)`` with S = 2
for an LSTM's ``(h, c)`` and 1 otherwise, so that an idle session costs little beyond its bytes.
A session pins the model version that made its state.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from rnnserve.server.errors import (
    ResourceExhaustedError,
    SessionBusyError,
    SessionGoneReason,
    SessionNotFoundError,
)
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)

TOMBSTONES = 65536  # recently removed ids remembered, to tell "expired"/"evicted" from "unknown"


def new_session_id() -> str:
    """An unguessable, server-made session id: 128 random bits as 32 hex digits.

    Hex, not URL-safe base64: an id must never begin with ``-`` (the CLI's ``--session ID`` would
    read it as an option) and must survive any shell, URL or metadata field unquoted.
    """
    return secrets.token_hex(16)


@dataclass(eq=False)
class Session:
    """One client's conversation with one model version."""

    id: str
    model: str
    version: int
    state: torch.Tensor | None = None  # (S, L, H) on the model's device; None until first request
    pending: int | torch.Tensor = 0  # the next step's input: the text's last character index
    # (charlm), or the last predicted point, (F,) in the model's space (forecast)
    total_tokens: int = 0
    created_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    owner: str = ""  # client identity (bearer token hash) when auth is on

    @property
    def state_bytes(self) -> int:
        if self.state is None:
            return 0
        return self.state.numel() * self.state.element_size()


class SessionStore:
    """Owns every session: lookup, TTL expiry, LRU eviction past a cap, byte accounting."""

    def __init__(
        self,
        ttl_s: float,
        max_sessions: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        max_per_owner: int = 0,
    ) -> None:
        self._ttl = ttl_s
        self._cap = max_sessions
        self._metrics = metrics
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, SessionGoneReason] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._max_per_owner = max_per_owner  # 0 = no per-client cap
        self._owned: dict[str, int] = {}
        metrics.set_session_age_functions(self.oldest_age, self.max_idle)

    def __len__(self) -> int:
        return len(self._sessions)

    # --- lifecycle -----------------------------------------------------------------------------
    def open(self, model: str, version: int, owner: str = "") -> Session:
        """Create a new, busy session (its first request is running) and return it."""
        if owner and self._max_per_owner and self._owned.get(owner, 0) >= self._max_per_owner:
            self._metrics.rejected.labels(model, "sessions_per_client").inc()
            raise ResourceExhaustedError(
                f"keep_session: this client holds its maximum of {self._max_per_owner} "
                "sessions; end one (EndSession) or retry later"
            )
        while len(self._sessions) >= self._cap:
            if not self._evict_one():
                self._metrics.rejected.labels(model, "sessions").inc()
                raise ResourceExhaustedError(
                    f"keep_session: the session cap ({self._cap}) is reached and every session "
                    "is busy; retry later"
                )
        now = self._clock()
        session = Session(
            id=new_session_id(), model=model, version=version,
            created_at=now, last_used=now, busy=True, owner=owner,
        )
        self._sessions[session.id] = session
        if owner:
            self._owned[owner] = self._owned.get(owner, 0) + 1
        self._metrics.sessions_active.labels(model).inc()
        return session

    def acquire(self, session_id: str, owner: str | None = None) -> Session:
        """Take a session for one request: NOT_FOUND if gone, ABORTED if already busy.

        With ``owner`` given (the caller's identity), a session opened by another client is
        NOT_FOUND as if it did not exist: only its owner may use or end it.
        """
        session = self._sessions.get(session_id)
        if session is not None and owner is not None and session.owner != owner:
            raise SessionNotFoundError(session_id, SessionGoneReason.UNKNOWN)
        if session is not None and self._is_expired(session):
            self._remove(session, SessionGoneReason.EXPIRED)
            session = None
        if session is None:
            reason = self._gone.get(session_id, SessionGoneReason.UNKNOWN)
            raise SessionNotFoundError(session_id, reason)
        if session.busy:
            raise SessionBusyError(session_id)
        session.busy = True
        self._sessions.move_to_end(session_id)
        return session

    def release(self, session: Session, state: torch.Tensor | None = None,
                pending: int | None = None, added_tokens: int = 0) -> None:
        """End a request on the session, storing its new state (None keeps the old one)."""
        session.busy = False
        session.last_used = self._clock()
        if session.id not in self._sessions:  # removed while busy (e.g. its version unloaded)
            return
        if state is not None and pending is not None:
            session.state, session.pending = state, pending
            session.total_tokens += added_tokens
        self._account(session)
        if session.id in self._sessions:
            self._sessions.move_to_end(session.id)

    def discard(self, session: Session) -> None:
        """Forget a session whose first request failed: it never existed for the client."""
        if self._sessions.pop(session.id, None) is not None:
            self._metrics.sessions_active.labels(session.model).dec()
            self._unaccount(session)
            self._disown(session)

    def end(self, session_id: str, owner: str | None = None) -> Session:
        """EndSession: remove and return the session (NOT_FOUND if gone or another owner's,
        ABORTED if busy)."""
        session = self.acquire(session_id, owner)
        self._remove(session, SessionGoneReason.ENDED)
        return session

    def drop_model_version(self, model: str, version: int) -> int:
        """Remove every session of a model version that is being unloaded."""
        doomed = [s for s in self._sessions.values() if s.model == model and s.version == version]
        for session in doomed:
            self._remove(session, SessionGoneReason.UNLOADED)
        return len(doomed)

    # --- expiry and eviction -------------------------------------------------------------------
    def expire(self) -> int:
        """Remove every idle session past the TTL; returns how many.

        Sessions are kept in order of last use, so the scan stops at the first idle one that is
        still fresh: sweeping costs what it removes, not what is held.
        """
        expired = []
        for session in self._sessions.values():
            if session.busy:
                continue
            if not self._is_expired(session):
                break
            expired.append(session)
        for session in expired:
            self._remove(session, SessionGoneReason.EXPIRED)
        return len(expired)

    def _is_expired(self, session: Session) -> bool:
        return not session.busy and self._clock() - session.last_used > self._ttl

    def _evict_one(self) -> bool:
        for session in self._sessions.values():  # least recently used first
            if not session.busy:
                self._remove(session, SessionGoneReason.EVICTED)
                return True
        return False

    def _remove(self, session: Session, reason: SessionGoneReason) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        self._gone[session.id] = reason
        if len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)
        m = self._metrics
        m.sessions_active.labels(session.model).dec()
        m.sessions_removed.labels(session.model, reason.value).inc()
        m.session_lifetime.labels(reason.value).observe(self._clock() - session.created_at)
        self._unaccount(session)
        self._disown(session)
        logger.debug("session %s removed: %s", session.id, reason.value)

    # --- accounting ----------------------------------------------------------------------------
    def _disown(self, session: Session) -> None:
        if session.owner:
            left = self._owned.get(session.owner, 0) - 1
            if left > 0:
                self._owned[session.owner] = left
            else:
                self._owned.pop(session.owner, None)

    def _account(self, session: Session) -> None:
        new = session.state_bytes
        old = self._bytes.get(session.id, 0)
        if new != old:
            self._bytes[session.id] = new
            self._metrics.session_state_bytes.labels(session.model).inc(new - old)

    def _unaccount(self, session: Session) -> None:
        old = self._bytes.pop(session.id, 0)
        if old:
            self._metrics.session_state_bytes.labels(session.model).dec(old)

    @property
    def state_bytes(self) -> int:
        return sum(self._bytes.values())

    def oldest_age(self) -> float:
        if not self._sessions:
            return 0.0
        return self._clock() - min(s.created_at for s in self._sessions.values())

    def max_idle(self) -> float:
        for session in self._sessions.values():
            return self._clock() - session.last_used
        return 0.0
