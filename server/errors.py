"""The server's domain errors: one tree, mapped to gRPC status codes in one table (rpc/status.py).

    RnnserveError
    ├── InvalidArgumentError        a request field is wrong (names the field)
    ├── NotFoundError
    │   ├── ModelNotFoundError
    │   ├── NoDefaultModelError     the request names no model and none of its kind is loaded
    │   └── SessionNotFoundError    unknown, expired or evicted (the message says which)
    ├── SessionBusyError            the session is serving another request
    ├── ResourceExhaustedError      an admission limit is reached
    ├── ModelNotReadyError          the model is loading or failed to load
    ├── ModelLoadError              an admin load/reload was refused (the old version serves on)
    ├── SessionStoreUnavailableError  the shared session store (Redis) does not answer
    └── CancelledError              the client went away or the deadline passed
        └── DeadlineExceededError   the deadline passed before the result was committed

Nothing outside this tree reaches a client with its message: any other exception becomes INTERNAL
with a generic message and a request id, and its traceback goes to the log only.
"""

from __future__ import annotations

from enum import StrEnum

ECHO_CHARS = 48


def echo(value: str) -> str:
    """``repr(value)`` for a message, cut to ECHO_CHARS characters: a client's long id or name
    is never sent back whole (it could exceed gRPC's metadata limit)."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return repr(value[:ECHO_CHARS]) + f"… ({len(value)} characters)"


class RnnserveError(Exception):
    """Base of every error the server reports to a client on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(RnnserveError):
    """A request field is out of range or malformed."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFoundError(RnnserveError):
    """Something the request names does not exist."""


class ModelNotFoundError(NotFoundError):
    def __init__(self, name: str, known: list[str]) -> None:
        hint = ", ".join(sorted(known)) or "none loaded"
        super().__init__(f"model: no model named {echo(name)} (available: {hint})")
        self.name = name


class NoDefaultModelError(NotFoundError):
    def __init__(self, what: str, known: list[str]) -> None:
        hint = ", ".join(sorted(known)) or "none"
        super().__init__(f"model: no {what} is loaded to serve as the default (models: {hint})")


class SessionGoneReason(StrEnum):
    """Why a session id no longer resolves."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    EXPIRED_OR_EVICTED = "expired_or_evicted"  # Redis store: its expiry and eviction look alike
    EVICTED = "evicted"
    ENDED = "ended"
    UNLOADED = "unloaded"


_REASON_TEXT = {
    SessionGoneReason.UNKNOWN: "is unknown to this server (never issued, or the server restarted)",
    SessionGoneReason.EXPIRED: "expired after being idle longer than the session TTL",
    SessionGoneReason.EXPIRED_OR_EVICTED: "expired after being idle longer than the session TTL, "
    "or was evicted by the session store's memory policy",
    SessionGoneReason.EVICTED: "was evicted (least recently used) to stay under the session cap",
    SessionGoneReason.ENDED: "was ended by EndSession",
    SessionGoneReason.UNLOADED: "belongs to a model version that is no longer loaded",
}


class SessionNotFoundError(NotFoundError):
    def __init__(self, session_id: str, reason: SessionGoneReason) -> None:
        super().__init__(f"session_id: session {echo(session_id)} {_REASON_TEXT[reason]}")
        self.reason = reason


class SessionBusyError(RnnserveError):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session_id: session {echo(session_id)} is busy with another request; retry when "
            "it ends"
        )


class ResourceExhaustedError(RnnserveError):
    """An admission limit is reached; the client may retry later."""


class ModelNotReadyError(RnnserveError):
    def __init__(self, name: str, state: str, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(f"model {echo(name)} is not ready ({state}){extra}")


class ModelLoadError(RnnserveError):
    """A model version could not be loaded; whatever served before still serves."""

    def __init__(self, name: str, version: int, reason: str, serving: int = 0) -> None:
        still = f"; version {serving} keeps serving" if serving else ""
        super().__init__(f"model {name!r} version {version} was refused: {reason}{still}")


class SessionStoreUnavailableError(RnnserveError):
    """The shared session store cannot be reached: session requests fail, stateless ones work."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"session store unavailable ({detail}); requests with session_id or keep_session "
            "fail until it is back, requests without a session are served"
        )


class CancelledError(RnnserveError):
    """The request was cancelled by its client or its deadline."""


class DeadlineExceededError(CancelledError):
    """The call's deadline passed before its result was committed; nothing was stored."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the deadline passed before {what} was committed; nothing was stored")
