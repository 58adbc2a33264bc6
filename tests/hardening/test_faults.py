"""Faults: deadlines and cancellations free their slot, slow readers stay bounded, restarts."""

from __future__ import annotations

import time

import grpc
import pytest
from rnnserve.client import AsyncClient, DeadlineExceededError, NotFoundError
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

from .test_reload import wait_for


async def test_an_expired_deadline_frees_the_slot(make_server, repo):
    server = await make_server(model_repository=repo, max_active_generations=1, max_batch_size=1)
    engine = server.registry.entry("timemachine").runner
    async with AsyncClient(server.target, retries=0) as client:
        with pytest.raises(DeadlineExceededError):
            await client.generate("the time traveller", max_tokens=4096, timeout=0.2)
        await wait_for(lambda: _async(engine.active == 0), timeout=2)
        started = time.perf_counter()
        assert (await client.generate("the time", max_tokens=5, timeout=5)).text
        assert time.perf_counter() - started < 1.0


async def test_the_server_bounds_a_call_that_brings_no_deadline(make_server, repo):
    server = await make_server(model_repository=repo, default_deadline_s=0.3, max_batch_size=1,
                               max_active_generations=1)
    engine = server.registry.entry("timemachine").runner
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        long = generation_pb2.GenerateRequest(prefix="the time traveller", max_tokens=4096)
        for call in (lambda: stub.Generate(long), lambda: _drain(stub.GenerateStream(long))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "default deadline of 0.3s" in caught.value.details()
            await wait_for(lambda: _async(engine.active == 0), timeout=2)
        # a client's own deadline wins over the default
        reply = await stub.Generate(generation_pb2.GenerateRequest(prefix="the", max_tokens=3),
                                    timeout=10)
        assert reply.text


async def test_a_client_that_stops_reading_does_not_hold_the_server(make_server, repo):
    """The engine finishes the job whatever the reader does (max_tokens bounds what is kept);
    when the client goes away the call ends and nothing stays in flight."""
    server = await make_server(model_repository=repo)
    engine = server.registry.entry("timemachine").runner
    channel = grpc.aio.insecure_channel(server.target)
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    calls = [stub.GenerateStream(generation_pb2.GenerateRequest(
        prefix="the time traveller", max_tokens=4096)) for _ in range(8)]
    for call in calls:
        await call.read()  # started; now nobody reads
    await wait_for(lambda: _async(engine.active == 0), timeout=20)
    await channel.close()  # the client goes away without reading
    await wait_for(lambda: _async(_in_flight(server) == 0), timeout=5)
    async with AsyncClient(server.target, retries=0) as client:
        assert await client.health() == "SERVING"
        assert (await client.generate("the", max_tokens=3)).text


async def test_cancelling_mid_stream_frees_the_slot_and_keeps_the_session(make_server, repo):
    server = await make_server(model_repository=repo, max_active_generations=1, max_batch_size=1)
    engine = server.registry.entry("timemachine").runner
    async with AsyncClient(server.target, retries=0) as client:
        opened = await client.generate("the time", max_tokens=3, keep_session=True)
        stream = client.stream(" machine", max_tokens=4096, session_id=opened.session_id)
        await anext(stream)
        await stream.aclose()  # cancels the call
        await wait_for(lambda: _async(engine.active == 0), timeout=2)
        # the cancelled turn changed nothing: the session continues from where it was
        again = await client.generate(" machine", max_tokens=5, session_id=opened.session_id)
        whole = await client.generate("the time" + opened.text + " machine", max_tokens=5)
        assert again.text == whole.text


async def test_a_restarted_server_keeps_its_models_and_says_sessions_are_unknown(
        make_server, repo):
    first = await make_server(model_repository=repo)
    async with AsyncClient(first.target, retries=0) as client:
        opened = await client.generate("the time", max_tokens=3, keep_session=True)
    await first.stop(grace=0.5)
    second = await make_server(model_repository=repo)
    async with AsyncClient(second.target, retries=0) as client:
        assert {m.name: m.state for m in await client.list_models()} == \
            {"sentiment": "ready", "timemachine": "ready"}
        with pytest.raises(NotFoundError, match="unknown to this server"):
            await client.generate(" machine", max_tokens=3, session_id=opened.session_id)


async def _drain(call) -> None:
    async for _ in call:
        pass


async def _async(value):
    return value


def _in_flight(server) -> float:
    total = 0.0
    for metric in server.metrics.in_flight.collect():
        total += sum(sample.value for sample in metric.samples)
    return total
