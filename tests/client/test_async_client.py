"""The asyncio client against the fake server: same behaviour as the blocking one."""

import asyncio

import grpc
import pytest
from rnnserve.client import (
    AbortedError,
    AsyncClient,
    DeadlineExceededError,
    Generation,
    InternalError,
    NotFoundError,
    UnavailableError,
)


async def test_generate(aclient):
    result = await aclient.generate("hello", max_tokens=12)
    assert result == Generation(
        text="the time mac", session_id="", finish_reason="length",
        prefix_tokens=5, generated_tokens=12, model="timemachine", model_version=2,
    )


async def test_stream_concatenates_to_the_unary_text(aclient):
    chunks = [c async for c in aclient.stream("hello", max_tokens=18, stop="machine")]
    assert "".join(c.text for c in chunks) == "the time machine"
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason == "" for c in chunks[:-1])


async def test_stopping_a_stream_early_is_fine(aclient):
    stream = aclient.stream("hello", max_tokens=40)
    async for chunk in stream:
        assert chunk.text == "the "
        break
    await stream.aclose()
    assert (await aclient.generate("again")).text == "the time m"


async def test_classify_models_health(aclient):
    (result,) = await aclient.classify("good", explain=True)
    assert (result.label, result.score, result.tokens[0].token) == ("positive", 0.875, "good")
    assert [m.name for m in await aclient.list_models()] == ["timemachine", "broken"]
    assert (await aclient.get_model("timemachine")).architecture == "lstm 2x256"
    assert await aclient.health() == "SERVING"


async def test_end_session(aclient):
    opened = await aclient.generate("abc", max_tokens=5, keep_session=True)
    assert await aclient.end_session(opened.session_id) == 8
    with pytest.raises(NotFoundError):
        await aclient.end_session(opened.session_id)


async def test_deadline_and_metadata_are_sent(fake):
    async with AsyncClient(fake.target, timeout=4.0, metadata=[("authorization", "Bearer t")]) as c:
        await c.generate("a")
        _ = [chunk async for chunk in c.stream("a")]
        await c.list_models(timeout=1.0)
    generate, stream, models = fake.state.calls
    assert 2.0 < generate.time_remaining <= 4.1
    assert 2.0 < stream.time_remaining <= 4.1
    assert models.time_remaining <= 1.1
    assert all(c.metadata["authorization"] == "Bearer t" for c in fake.state.calls)


async def test_unary_errors_are_typed(aclient, fake):
    fake.state.fail("Classify", grpc.StatusCode.ABORTED, "busy")
    with pytest.raises(AbortedError, match="busy") as info:
        await aclient.classify("x")
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    with pytest.raises(NotFoundError, match="model"):
        await aclient.get_model("nope")


async def test_deadline_exceeded(aclient, fake):
    fake.state.delay = 1.0
    with pytest.raises(DeadlineExceededError):
        await aclient.health(timeout=0.1)


async def test_stream_error_mid_iteration(aclient, fake):
    fake.state.stream_fail_after = 1
    received = []
    with pytest.raises(InternalError, match="request id"):
        async for chunk in aclient.stream("a", max_tokens=20):
            received.append(chunk.text)
    assert received == ["the "]


async def test_stream_error_before_the_first_chunk(aclient, fake):
    with pytest.raises(NotFoundError, match="session_id"):
        async for _ in aclient.stream("a", session_id="nope"):
            pass


async def test_unavailable_is_retried(fake):
    fake.state.fail("Generate", grpc.StatusCode.UNAVAILABLE, "loading", times=2)
    async with AsyncClient(fake.target, retries=3) as c:
        assert (await c.generate("a")).text == "the time m"
    assert fake.state.methods() == ["Generate"] * 3


async def test_no_retries(fake):
    fake.state.fail("Generate", grpc.StatusCode.UNAVAILABLE, "loading", times=2)
    async with AsyncClient(fake.target, retries=0) as c:
        with pytest.raises(UnavailableError):
            await c.generate("a")
    assert fake.state.methods() == ["Generate"]


async def test_calls_run_concurrently_on_one_channel(aclient, fake):
    results = await asyncio.gather(*(aclient.generate(f"p{i}", max_tokens=i + 1) for i in range(8)))
    assert [len(r.text) for r in results] == list(range(1, 9))


def test_client_made_outside_the_loop_that_uses_it(fake):
    client = AsyncClient(fake.target)

    async def use():
        async with client:
            return await client.health(), [c.text async for c in client.stream("a")]

    assert asyncio.run(use()) == ("SERVING", ["the ", "time", " m"])
