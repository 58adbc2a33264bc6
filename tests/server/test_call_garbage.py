"""What a call leaves behind for Python's cyclic garbage collector: nothing of its own.

Every unary call's objects used to form a reference cycle (the call's task -> its context ->
the server's default deadline, an ``asyncio.Timeout`` -> the task) and were held for the
deadline watchdog's next sweep, so they outlived the young collections and only full ones freed
them: under load, pauses of the event loop of 100-200 ms every few seconds (measured at 64
concurrent Classify callers). A real server, real gRPC calls.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import grpc
import pytest
from conftest import test_settings as server_settings
from rnnserve.server import main
from rnnserve.server.rpc.deadline import SWEEP_S
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

CALLS = 20


def _done_tasks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is asyncio.Task and o.done())


async def _classify(server, calls: int, timeout: float | None = None) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = classification_pb2_grpc.ClassificationServiceStub(channel)
        for _ in range(calls):
            await stub.Classify(classification_pb2.ClassifyRequest(texts=["a fine film"]),
                                timeout=timeout)


async def test_a_finished_call_is_freed_at_once_not_at_the_watchdogs_sweep(server):
    """Calls without a deadline of their own get the server's, and its watchdog (which sweeps
    every 0.5 s) must not keep their tasks alive until then."""
    assert server.settings.default_deadline_s > 0
    before = _done_tasks()
    await _classify(server, CALLS)
    assert _done_tasks() - before <= 5  # the last call's, at most; not one per call


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["server-deadline", "client-deadline"])
async def test_calls_leave_no_reference_cycles_of_their_own(server, timeout):
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    try:
        await _classify(server, CALLS, timeout)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            for _ in range(3):
                async for _ in stub.GenerateStream(
                        generation_pb2.GenerateRequest(prefix="the time", max_tokens=3),
                        timeout=timeout):
                    pass
        await asyncio.sleep(2 * SWEEP_S + 0.2)  # the watchdog lets go of the ended calls
        gc.collect()
        ours = [type(o).__name__ for o in gc.garbage
                if isinstance(o, (asyncio.Timeout, asyncio.Task)) or
                type(o).__module__.startswith("rnnserve.")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []


async def test_rnnserve_serve_freezes_what_is_alive_once_the_models_are_loaded():
    gc.unfreeze()
    serving = asyncio.create_task(main.serve(server_settings()))
    try:
        for _ in range(600):  # bounded: 60 s at most
            if gc.get_freeze_count() > 0 or serving.done():
                break
            await asyncio.sleep(0.1)
        assert gc.get_freeze_count() > 100_000  # the imports, the models, the server
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(serving, timeout=30) == 0
    finally:
        if not serving.done():  # the test failed before the server was told to stop
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(serving, timeout=30)
        gc.unfreeze()
