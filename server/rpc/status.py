"""The RPC boundary: domain errors → gRPC status codes (one table), request ids, metrics, logs.

Every servicer method is wrapped by :func:`rpc_method`. A domain error becomes its status code
with its message (which names the offending field); anything else becomes INTERNAL with a
generic message and the request id, while the traceback goes to the log only. Each call ends
with one log line (request id, method, model, status, duration) and its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from rnnserve.server import errors
from rnnserve.server.calls import Bound, call_bound
from rnnserve.server.metrics import Metrics

logger = logging.getLogger("rnnserve.requests")

STATUS_TABLE: tuple[tuple[type[errors.RnnserveError], grpc.StatusCode], ...] = (
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.SessionBusyError, grpc.StatusCode.ABORTED),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (errors.SessionStoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (errors.RnnserveError, grpc.StatusCode.UNAVAILABLE),  # e.g. shutting down
)

REQUEST_ID_KEY = "x-request-id"
REPLICA_KEY = "x-rnnserve-replica"
"""``<replica name>/<worker pid>``: initial metadata on every rnnserve response (a unary call's
error carries it in the trailing metadata only), so the spread over replicas is visible."""

_replica: list[str] = [""]


def set_replica(name: str) -> None:
    """Name this process for :data:`REPLICA_KEY` (the composition root calls it at start)."""
    _replica[0] = name


def replica() -> str:
    """The value this process sends as :data:`REPLICA_KEY`."""
    return _replica[0]
DEFAULT_PROTOCOL = "rnnserve"
"""The ``protocol`` label of rnnserve.v1 calls (a servicer's ``protocol`` attribute overrides it)."""

FIELD_LIMITS = {"model": 64, "name": 64, "session_id": 128, "model_name": 64}
"""Longest value of every id/name field of any request (characters). Model names match
``NAME_RE`` (64 at most); session ids are server-made (24)."""

SERVER_DEADLINE: ContextVar[Bound | None] = ContextVar(
    "rnnserve_server_deadline", default=None
)
"""The default deadline the server put on the current call (set by the deadline interceptor)."""


def check_fields(request: Any) -> None:
    """INVALID_ARGUMENT for any id/name field of ``request`` past its limit (never echoed)."""
    for field, limit in FIELD_LIMITS.items():
        value = getattr(request, field, None)
        if isinstance(value, str) and len(value) > limit:
            raise errors.InvalidArgumentError(
                field, f"has {len(value)} characters, more than the limit of {limit}")


def status_of(error: errors.RnnserveError) -> grpc.StatusCode:
    """The status code of a domain error (first matching row of the table)."""
    for kind, code in STATUS_TABLE:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN  # pragma: no cover - the base class row matches everything


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's x-request-id if it sent a sane one, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 64 \
                and value.isprintable():
            return value
    return os.urandom(8).hex()  # 16 hex digits, as before (a uuid4 costs 5x more)


DEADLINE_SKEW_S = 0.25
"""A client's deadline fires on its own clock, and its cancel (RST_STREAM) can reach the server
before the server's copy of that deadline (counted from when the headers arrived) runs out: a
cancellation this close to the call's deadline is counted as DEADLINE_EXCEEDED, not CANCELLED."""


class CallDeadline:
    """Whether a call's deadline passed: the client's own, or the server's default one."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def expired(self, skew: float = 0.0) -> bool:
        """Whether the deadline passed, or is less than ``skew`` seconds away."""
        remaining = self._context.time_remaining()
        bound = SERVER_DEADLINE.get()
        return (remaining is not None and remaining <= skew) or (
            bound is not None and bound.expired())


class CallRecord:
    """What one call did, for its log line and metrics."""

    def __init__(self, method: str, model: str, rid: str, protocol: str = DEFAULT_PROTOCOL
                 ) -> None:
        self.method, self.model, self.rid, self.protocol = method, model, rid, protocol
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()

    def fail(self, code: grpc.StatusCode) -> None:
        self.code = code

    def cancelled(self, context: grpc.aio.ServicerContext) -> None:
        expired = CallDeadline(context).expired(skew=DEADLINE_SKEW_S)
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    def finish(self, metrics: Metrics) -> None:
        seconds = time.perf_counter() - self.started
        code = self.code.name
        metrics.child(metrics.requests, self.method, self.model, code, self.protocol).inc()
        metrics.child(metrics.request_duration, self.method, self.model, self.protocol
                      ).observe(seconds)
        if logger.isEnabledFor(logging.INFO):  # the extra dict costs even when not logged
            logger.info(
                "%s %s model=%s status=%s duration_ms=%.2f", self.rid, self.method,
                self.model or "-", code, seconds * 1000,
                extra={"request_id": self.rid, "method": self.method, "model": self.model,
                       "status": code, "duration_ms": round(seconds * 1000, 3)},
            )


async def _abort(context: grpc.aio.ServicerContext, record: CallRecord, exc: BaseException) -> None:
    if isinstance(exc, errors.RnnserveError):
        code = status_of(exc)
        record.fail(code)
        await context.abort(code, exc.message)
    record.fail(grpc.StatusCode.INTERNAL)
    logger.error("%s %s failed", record.rid, record.method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL,
                        f"internal error; request id {record.rid} (details are in the server log)")


class _Boundary:
    """One call's record, in-flight gauge, error sorting, log line and metrics
    (``async with _Boundary(...) as record``; a class, not a generator: it runs on every call)."""

    __slots__ = ("_servicer", "_method", "_context", "_in_flight", "record")

    def __init__(self, servicer: Any, method: str, request: Any,
                 context: grpc.aio.ServicerContext) -> None:
        self._servicer, self._method, self._context = servicer, method, context
        self.record = CallRecord(method, servicer.model_label(request), request_id(context),
                                 getattr(servicer, "protocol", DEFAULT_PROTOCOL))
        self._in_flight = servicer.metrics.child(servicer.metrics.in_flight, method)

    async def __aenter__(self) -> CallRecord:
        call_bound.set(CallDeadline(self._context))  # the serving logic checks it at commit time
        self._in_flight.inc()
        return self.record

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        try:
            if kind is None or issubclass(kind, grpc.aio.AbortError):
                return False
            if issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
                # a client that goes away while we wait raises CancelledError; one that goes
                # away while gRPC is sending a stream's last message closes the stream at its
                # yield (GeneratorExit)
                self.record.cancelled(self._context)
                return False
            if issubclass(kind, Exception):  # the boundary sorts every error
                assert exc is not None
                await _abort(self._context, self.record, exc)  # raises AbortError
            return False
        finally:
            self._in_flight.dec()
            self.record.finish(self._servicer.metrics)


def rpc_method(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a servicer method (unary coroutine or server-streaming async generator).

    The servicer must have ``metrics: Metrics`` and ``model_label(request) -> str``, and may
    have ``protocol: str`` (the metrics' ``protocol`` label, default ``rnnserve``).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
                async with _Boundary(self, name, request, context) as record:
                    await context.send_initial_metadata(
                        ((REQUEST_ID_KEY, record.rid), (REPLICA_KEY, _replica[0])))
                    check_fields(request)
                    # aclosing: when this generator is closed, the servicer's closes at once
                    async with contextlib.aclosing(fn(self, request, context)) as items:
                        async for item in items:
                            yield item

            return streaming

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _Boundary(self, name, request, context) as record:
                context.set_trailing_metadata(
                    ((REQUEST_ID_KEY, record.rid), (REPLICA_KEY, _replica[0])))
                check_fields(request)
                response = await fn(self, request, context)
                # headers only with a response: sent earlier, they would commit the call and
                # the client could no longer retry an UNAVAILABLE transparently
                await context.send_initial_metadata(((REPLICA_KEY, _replica[0]),))
                return response

        return unary

    return decorate

