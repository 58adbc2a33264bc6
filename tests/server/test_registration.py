"""Handlers wrapped once at registration (rpc/registration.py) and the unary watchdog's sweep."""

from __future__ import annotations

import asyncio

import grpc
from rnnserve.server.rpc import deadline
from rnnserve.server.rpc.registration import WrappingServer


class _Recorder:
    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_every_method_is_wrapped_once_on_both_registration_paths():
    async def echo(request, context):
        return request

    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    calls: list[str] = []

    def wrap(handler, method):
        calls.append(method)
        return handler._replace(unary_unary=echo)

    inner = _Recorder()
    server = WrappingServer(inner, wrap)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    server.add_registered_method_handlers("t.S", handlers)
    assert calls == ["/t.S/Echo"]  # the registered path: wrapped at registration
    generic = inner.generic[0]
    first = generic.service(_Details("/t.S/Echo"))
    again = generic.service(_Details("/t.S/Echo"))
    assert first is again and calls == ["/t.S/Echo", "/t.S/Echo"]  # generic: once, then cached
    assert generic.service(_Details("/t.S/Nope")) is None


async def test_the_unary_watchdog_cancels_a_stuck_call_and_forgets_finished_ones(monkeypatch):
    monkeypatch.setattr(deadline, "SWEEP_S", 0.02)
    watchdog = deadline._UnaryWatchdog(0.05)

    async def call(hold: float) -> None:
        watchdog.watch()
        await asyncio.sleep(hold)

    quick = asyncio.create_task(call(0.0))
    stuck = asyncio.create_task(call(10.0))
    await quick
    for _ in range(100):  # bounded: 2 s at most
        if stuck.done():
            break
        await asyncio.sleep(0.02)
    assert stuck.cancelled()
    await asyncio.sleep(0.05)
    assert watchdog._calls == {} and watchdog._timer is None  # nothing left to watch
