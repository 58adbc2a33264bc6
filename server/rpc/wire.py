"""Requests whose bytes are not a valid message, answered at the RPC boundary.

gRPC parses a request with the method's deserializer *before* any handler runs; a parse error
there (truncated bytes, a string field that is not UTF-8) would end the call as UNKNOWN with a
traceback in the log, no request id, no log line and no metrics. :func:`lenient_handler`
gives every method of every service (ours, health, reflection) a deserializer that never
raises: it returns an :class:`InvalidMessage` instead, and the method's wrapped behaviour
answers it with INVALID_ARGUMENT ("request is not a valid <type>: ..."), the request id, one
log line and the request counters, like any other refused call. It is applied once per method,
when the method is registered (``rpc/registration.py``), not on every call.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc.handlers import handler_kind
from rnnserve.server.rpc.status import REQUEST_ID_KEY, CallRecord, request_id

MAX_PROBLEM_CHARS = 200


class InvalidMessage:
    """Stands in for a request whose bytes did not parse as ``type_name``."""

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem[:MAX_PROBLEM_CHARS]

    @property
    def message(self) -> str:
        return f"request is not a valid {self.type_name}: {self.problem}"


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an :class:`InvalidMessage` instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # noqa: BLE001 - any parse failure is the client's
            return InvalidMessage(type_name, str(err) or type(err).__name__)

    return parse


def lenient_handler(handler: grpc.RpcMethodHandler, method: str, metrics: Metrics
                    ) -> grpc.RpcMethodHandler:
    """``handler`` of the full method name ``method`` with a lenient deserializer, whose
    behaviour answers an :class:`InvalidMessage` with INVALID_ARGUMENT."""
    short = method.rsplit("/", 1)[-1]
    kind = handler_kind(handler)
    inner = getattr(handler, kind)
    return handler._replace(
        request_deserializer=lenient(handler.request_deserializer),
        **{kind: _checked(inner, short, metrics, handler.request_streaming)},
    )


async def refuse(context: grpc.aio.ServicerContext, method: str, bad: InvalidMessage,
                 metrics: Metrics) -> None:
    """End the call with INVALID_ARGUMENT, counted and logged like any other call."""
    record = CallRecord(method, "", request_id(context))
    record.fail(grpc.StatusCode.INVALID_ARGUMENT)
    record.finish(metrics)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.message,
                        trailing_metadata=((REQUEST_ID_KEY, record.rid),))


def _checked(inner: Callable[..., Any], method: str, metrics: Metrics,
             request_streaming: bool) -> Callable[..., Any]:
    if request_streaming:
        return _checked_stream(inner, method, metrics)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
            if isinstance(request, InvalidMessage):
                await refuse(context, method, request, metrics)
            async for item in inner(request, context):
                yield item

        return streaming

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, InvalidMessage):
            await refuse(context, method, request, metrics)
        return await inner(request, context)

    return call


def _checked_stream(inner: Callable[..., Any], method: str, metrics: Metrics
                    ) -> Callable[..., Any]:
    """Client-streaming methods (reflection): the first unparsable message ends the call."""

    def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
        async def each() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, InvalidMessage):
                    await refuse(context, method, request, metrics)
                yield request

        return each()

    if inspect.isasyncgenfunction(inner):

        async def streaming(requests: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
            async for item in inner(checked(requests, context), context):
                yield item

        return streaming

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await inner(checked(requests, context), context)

    return call
