"""Method handlers wrapped once, when a service is registered, instead of on every call.

The default deadline (``rpc/deadline.py``) and the lenient message parser (``rpc/wire.py``)
only depend on the method, so each method's handler is wrapped once: the generated
``add_*_to_server`` functions, health and reflection register on a :class:`WrappingServer`,
which hands the wrapped handlers to the ``grpc.aio`` server. A gRPC interceptor would do the
same work (coroutines, a rebuilt handler) on every call; measured on the Classify path that was
~0.1 ms of event-loop CPU per request (docs/bench.md). What needs the call's metadata (bearer
tokens, ``rpc/auth.py``) stays an interceptor and runs before the wrapped handler.

Order, outermost first: auth (interceptor), default deadline, lenient parser, the servicer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import grpc
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc.deadline import bounded_handler
from rnnserve.server.rpc.wire import lenient_handler
from rnnserve.server.settings import ServerSettings

Wrap = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]


def handler_wrapper(settings: ServerSettings, metrics: Metrics) -> Wrap:
    """``wrap(handler, method)``: the lenient parser inside the default deadline (when set)."""
    seconds = settings.default_deadline_s

    def wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        handler = lenient_handler(handler, method, metrics)
        return bounded_handler(handler, method, seconds) if seconds > 0 else handler

    return wrap


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped, once per method and handler."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._done: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        done = self._done.get(method)
        if done is None or done[0] is not handler:
            done = self._done[method] = (handler, self._wrap(handler, method))
        return done[1]


class WrappingServer:
    """Registers services on ``server`` with every method handler passed through ``wrap``.

    Pass it where the generated ``add_*_to_server`` functions (and reflection) expect the server;
    it has only the two registration methods they call.
    """

    def __init__(self, server: grpc.aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(h, self._wrap) for h in handlers))

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._wrap(h, f"/{service}/{name}") for name, h in handlers.items()})
