"""Typed exceptions raised by the rnnserve client.

Every ``grpc.RpcError`` (sync or ``grpc.aio``) is translated into one of these at a single
boundary, :func:`translate_errors`, which both clients wrap around every call and around
every stream's iteration::

    RnnserveError                   any failed call; .code (grpc.StatusCode), .details (str)
     ├── InvalidArgumentError       INVALID_ARGUMENT   bad request field (the field is named)
     ├── NotFoundError              NOT_FOUND          unknown model, unknown/expired session
     ├── AbortedError               ABORTED            session busy with another request
     ├── ResourceExhaustedError     RESOURCE_EXHAUSTED admission limits reached
     ├── UnavailableError           UNAVAILABLE        server down or model not ready
     ├── DeadlineExceededError      DEADLINE_EXCEEDED  the call's timeout passed
     ├── UnauthenticatedError       UNAUTHENTICATED    missing or bad token
     ├── PermissionDeniedError      PERMISSION_DENIED  token not allowed to do this
     ├── FailedPreconditionError    FAILED_PRECONDITION
     ├── UnimplementedError         UNIMPLEMENTED      server too old for this call
     ├── InternalError              INTERNAL           server bug (details carry a request id)
     └── CancelledError             CANCELLED          the call was cancelled

Status codes without a subclass (UNKNOWN, ALREADY_EXISTS, OUT_OF_RANGE, DATA_LOSS) are raised
as a plain :class:`RnnserveError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc


class RnnserveError(Exception):
    """A failed rnnserve call: ``code`` is the gRPC status, ``details`` the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name

    def __reduce__(self) -> tuple:
        return (type(self), (self.details, self.code))


class InvalidArgumentError(RnnserveError):
    """The request was malformed; the details name the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(RnnserveError):
    """Unknown model, or unknown, expired or evicted session."""

    code = grpc.StatusCode.NOT_FOUND


class AbortedError(RnnserveError):
    """The session is busy with another request."""

    code = grpc.StatusCode.ABORTED


class ResourceExhaustedError(RnnserveError):
    """The server's admission limits were reached (or a message was too large)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(RnnserveError):
    """The server cannot be reached, or the model is not ready yet (retried automatically)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(RnnserveError):
    """The call's deadline passed before the server answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(RnnserveError):
    """The server requires credentials that were missing or invalid."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(RnnserveError):
    """The credentials are valid but not allowed to make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPreconditionError(RnnserveError):
    """The system is not in a state where the call can run."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(RnnserveError):
    """The server does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(RnnserveError):
    """The server failed; the details carry a request id to look up in its log."""

    code = grpc.StatusCode.INTERNAL


class CancelledError(RnnserveError):
    """The call was cancelled (by the client or the server)."""

    code = grpc.StatusCode.CANCELLED


_BY_CODE: dict[grpc.StatusCode, type[RnnserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AbortedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnauthenticatedError,
        PermissionDeniedError,
        FailedPreconditionError,
        UnimplementedError,
        InternalError,
        CancelledError,
    )
}


def from_rpc_error(error: grpc.RpcError) -> RnnserveError:
    """Build the typed exception for a sync or aio ``grpc.RpcError``."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, RnnserveError)
    return cls(details or "", code)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` inside the block as a :class:`RnnserveError`.

    A plain (sync) context manager, so it works in coroutines and async generators too.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
