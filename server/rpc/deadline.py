"""The server's default deadline: a bound on every call that brings none of its own.

Past the bound the call ends with DEADLINE_EXCEEDED and its work is dropped at the next step, as
for a client's own deadline; a stream whose client never reads is dropped ``WRITE_GRACE_S`` after
it (gRPC's asyncio server cannot reset the stream, see docs/security.md), a unary call stuck
writing its answer between ``WRITE_GRACE_S`` and ``WRITE_GRACE_S + SWEEP_S`` after it. Each
method's handler is wrapped once, at registration (``rpc/registration.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from rnnserve.server.rpc.auth import OPEN_PREFIXES
from rnnserve.server.rpc.handlers import handler_kind
from rnnserve.server.rpc.status import SERVER_DEADLINE

logger = logging.getLogger(__name__)

def bounded_handler(handler: grpc.RpcMethodHandler, method: str, seconds: float
                    ) -> grpc.RpcMethodHandler:
    """``handler`` of the full method name ``method``, bounded to ``seconds`` when its call
    brings no deadline of its own.

    Past the bound the call ends with DEADLINE_EXCEEDED, and its work is dropped at the next
    step as for a client's own deadline. Client-streaming methods (reflection) and health
    (``Watch`` is meant to be long-lived) are returned unchanged. Applied once per method,
    when the method is registered (``rpc/registration.py``).
    """
    if handler.request_streaming or method.startswith(OPEN_PREFIXES):
        return handler
    return _bounded(handler, seconds)


def _deadline_message(seconds: float) -> str:
    return (f"the server's default deadline of {seconds:g}s passed "
            "(send a deadline with the call to choose another)")


class _StreamBound:
    """The default deadline of one streaming call (``expired()`` as on ``asyncio.Timeout``)."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self._task = task
        self.waiting = False
        self._expired = False
        self.closing: asyncio.Future[None] | None = None  # the handler's close, once stuck

    def expired(self) -> bool:
        return self._expired

    def fire(self) -> None:
        self._expired = True
        if self.waiting and self._task is not None:
            self._task.cancel()

    def uncancel(self) -> None:
        if self._task is not None:
            self._task.uncancel()


WRITE_GRACE_S = 1.0
"""How long past the default deadline a call may still be writing before its task is cancelled
(a client that never reads, e.g. one announcing a zero HTTP/2 window)."""


def _watchdog(seconds: float, close: Callable[[], None] | None = None) -> None:
    """Cancel the current call's task if it is still running ``seconds`` from now.

    The deadline itself is enforced where the handler waits (see ``_bounded``); a call can
    still be stuck past it inside gRPC's own write, which only a client that reads can finish
    (one that announces a zero HTTP/2 window never does). ``close`` first closes the handler's
    messages, so that its cleanup runs at once: the turn is dropped and its session released
    unchanged, and the call is logged and counted as DEADLINE_EXCEEDED. What gRPC's asyncio
    server cannot do is send that client a status or reset the stream: a status waits behind
    the unsent message, and no API cancels a server call. The stream (with the one message it
    holds) stays until the client reads or goes away; ``max_concurrent_streams`` bounds how
    many one connection can hold (docs/security.md).
    """
    task = asyncio.current_task()
    if task is None:
        return

    def fire() -> None:
        if task.done():
            return
        logger.warning("%s: still writing %.1fs past the server's deadline (the client does "
                       "not read); dropping the call", task.get_name(), WRITE_GRACE_S)
        if close is not None:
            close()
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, fire)
    task.add_done_callback(lambda _: timer.cancel())


SWEEP_S = 0.5
"""How often :class:`_UnaryWatchdog` looks at the unary calls it watches (seconds)."""


class _UnaryWatchdog:
    """:func:`_watchdog` for the unary calls of one method, without a timer per call.

    Every call of a method has the same bound, so calls are due in the order they started:
    :meth:`watch` records the call's task (a dict insert) and one sweep every ``SWEEP_S``
    forgets the calls that ended and cancels the ones still running past their due time (so a
    stuck call is dropped between ``seconds`` and ``seconds + SWEEP_S`` after it started). A
    timer and a done-callback per call cost ~30 µs of event-loop time on every Classify.

    The tasks are held weakly: a call's task and everything it refers to are freed when the
    call ends, not at the next sweep. Held for the sweep, every call's objects outlived the
    young garbage collections and were only freed by full ones (measured at c=64: 100-200 ms
    pauses of the event loop every couple of seconds).
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        # task -> when it is due; a stuck task is held by the loop, so a weak key suffices
        self._calls: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = (
            weakref.WeakKeyDictionary())
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        loop = task.get_loop()
        self._calls[task] = loop.time() + self._seconds
        if self._timer is None:
            self._timer = loop.call_later(SWEEP_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for task, due in list(self._calls.items()):
            if task.done():
                del self._calls[task]
            elif due <= now:
                del self._calls[task]
                logger.warning("%s: still writing %.1fs past the server's deadline (the client "
                               "does not read); dropping the call", task.get_name(),
                               WRITE_GRACE_S)
                task.cancel()
        if self._calls:
            self._timer = loop.call_later(SWEEP_S, self._sweep, loop)


def _bounded(handler: grpc.RpcMethodHandler, seconds: float) -> grpc.RpcMethodHandler:
    kind = handler_kind(handler)
    inner = getattr(handler, kind)
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
            if context.time_remaining() is not None:
                async for item in inner(request, context):
                    yield item
                return
            # One timer per call. It cancels the handler only while it waits for the next
            # message, never at a ``yield``: a cancel landing at a yield would hit gRPC's own
            # write, outside this try, and the call would hang. A bound that passes during a
            # write is seen as soon as the write returns.
            bound = _StreamBound(asyncio.current_task())
            SERVER_DEADLINE.set(bound)
            timer = asyncio.get_running_loop().call_later(seconds, bound.fire)
            messages = inner(request, context)

            def close() -> None:  # the handler is suspended at a yield: closing it is safe
                if not bound.waiting:
                    bound.closing = asyncio.ensure_future(messages.aclose())

            _watchdog(seconds + WRITE_GRACE_S, close)
            try:
                while not bound.expired():
                    bound.waiting = True
                    try:
                        item = await anext(messages)
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if not bound.expired():
                            raise
                        bound.uncancel()
                        break
                    finally:
                        bound.waiting = False
                    yield item
                await context.abort(code, _deadline_message(seconds))
            finally:
                timer.cancel()
                await messages.aclose()

        return handler._replace(**{kind: streaming})

    watchdog = _UnaryWatchdog(seconds + WRITE_GRACE_S)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if context.time_remaining() is not None:
            return await inner(request, context)
        watchdog.watch()
        try:
            async with asyncio.timeout(seconds) as bound:
                SERVER_DEADLINE.set(bound)
                try:
                    return await inner(request, context)
                finally:  # the bound refers to this task: kept in its context, it makes a cycle
                    SERVER_DEADLINE.set(None)
        except TimeoutError:
            await context.abort(code, _deadline_message(seconds))

    return handler._replace(**{kind: call})

