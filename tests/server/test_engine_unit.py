"""The generation engine with a fake model: batching mechanics, admission, cancellation,
chunked prefill."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from engine_fakes import (
    VOCAB,
    CountingModel,
    as_text,
    collect,
    expected,
    loaded_model,
    request,
    settled,
)
from rnnserve.server.errors import ResourceExhaustedError
from rnnserve.server.execution.engine import FinishReason, GenerationEngine, GenerationRequest
from rnnserve.server.metrics import Metrics


@pytest.fixture
def engine_factory(start_runner):
    async def make(model: object | None = None, **kw) -> tuple[GenerationEngine, CountingModel]:
        fake = model or CountingModel()
        options = {"max_batch_size": 64, "max_active": 64, "max_steps_per_iteration": 4} | kw
        engine = await start_runner(
            lambda executor: GenerationEngine(loaded_model(fake), "fake", executor, Metrics(),
                                              **options))
        return engine, fake

    return make


async def test_concurrent_requests_share_steps_and_keep_their_answers(engine_factory):
    engine, fake = await engine_factory()
    requests = [request(list(range(1, 1 + i % 5)), i % 10 + 1, 10 + i) for i in range(20)]
    outboxes = [engine.submit(r) for r in requests]
    texts = await asyncio.gather(*(collect(o) for o in outboxes))
    for r, o, text in zip(requests, outboxes, texts, strict=True):
        assert text == as_text(expected(r.prefill, r.pending, r.max_tokens))
        assert o.result.finish is FinishReason.LENGTH and o.result.generated == r.max_tokens
    assert max(fake.step_batches) == 20  # all advanced together
    assert engine.active == 0


async def test_batch_size_one_runs_one_at_a_time(engine_factory):
    engine, fake = await engine_factory(max_batch_size=1)
    outboxes = [engine.submit(request([1, 2], 3, 5)) for _ in range(4)]
    texts = await asyncio.gather(*(collect(o) for o in outboxes))
    assert set(fake.step_batches) == {1}
    assert texts == [as_text(expected([1, 2], 3, 5))] * 4


async def test_stop_string_ends_generation(engine_factory):
    engine, _ = await engine_factory()
    ids = expected([], 1, 30)
    stop = as_text(ids[3:5])
    outbox = engine.submit(request([], 1, 30, stop=(stop,)))
    text = await collect(outbox)
    assert text.endswith(stop) and outbox.result.finish is FinishReason.STOP
    assert text == as_text(ids)[: as_text(ids).index(stop) + len(stop)]


async def test_admission_limit_and_cancellation_free_the_slot(engine_factory):
    engine, _ = await engine_factory(max_active=2)
    long_ones = [engine.submit(request([], 1, 10**9)), engine.submit(request([], 2, 10**9))]
    with pytest.raises(ResourceExhaustedError):
        engine.submit(request([], 3, 5))
    await long_ones[0].take()
    for outbox in long_ones:
        outbox.cancel()
    assert await settled(engine) == 0
    outbox = engine.submit(request([], 3, 5))
    assert await collect(outbox) == as_text(expected([], 3, 5))


async def test_final_state_is_a_compact_copy(engine_factory):
    engine, _ = await engine_factory()
    requests = [request([1], 2, 3), request([1, 2, 3], 4, 7)]
    outboxes = [engine.submit(r) for r in requests]
    await asyncio.gather(*(collect(o) for o in outboxes))
    for r, o in zip(requests, outboxes, strict=True):
        assert o.result.state.shape == (1, 1, 1)
        assert o.result.state.item() == len(r.prefill) + r.max_tokens
        assert o.result.state.untyped_storage().nbytes() == 4  # not a view into the batch
        assert o.result.pending == expected(r.prefill, r.pending, r.max_tokens)[-1]


# --- chunked prefill ---------------------------------------------------------------------------
async def test_long_prefixes_are_prefilled_in_bounded_chunks(engine_factory):
    """Memory bound: no prefill call sees more than the chunk, whatever the prefixes."""
    engine, fake = await engine_factory(prefill_chunk_tokens=50)
    requests = [request([1 + i % 9] * (300 + 37 * i), 2, 5) for i in range(6)]
    outboxes = [engine.submit(r) for r in requests]
    texts = await asyncio.gather(*(collect(o) for o in outboxes))
    for r, text in zip(requests, texts, strict=True):
        assert text == as_text(expected(r.prefill, r.pending, r.max_tokens))
    assert fake.prefill_calls and all(rows * longest <= 50 * rows and longest <= 50
                                      for rows, longest in fake.prefill_calls)
    assert sum(1 for _ in fake.prefill_calls) >= sum(len(r.prefill) for r in requests) // 50


async def test_a_long_prefix_does_not_hold_back_a_short_stream(engine_factory):
    engine, _ = await engine_factory(prefill_chunk_tokens=16)
    order: list[str] = []

    async def run(name: str, r: GenerationRequest) -> str:
        text = await collect(engine.submit(r))
        order.append(name)
        return text

    long_request = request([3] * 4000, 1, 5)
    long_task = asyncio.create_task(run("long", long_request))
    await asyncio.sleep(0)  # the long one is queued first
    short = await run("short", request([1, 2], 3, 20))
    assert await long_task == as_text(expected(long_request.prefill, 1, 5))
    assert short == as_text(expected([1, 2], 3, 20))
    assert order == ["short", "long"]


async def test_chunked_and_unchunked_prefill_give_identical_states():
    """The real model (a small seeded 2-layer LSTM): prefix consumed in chunks of 7 vs whole."""
    from rnnserve.models.charlm import RNNModel

    torch.manual_seed(0)
    net = RNNModel(torch.nn.LSTM(len(VOCAB), 16, num_layers=2), len(VOCAB)).eval()
    prefix = [1 + (i * 7) % 10 for i in range(60)]
    states = []
    executor = ThreadPoolExecutor(1)
    for chunk in (7, 10_000):
        engine = GenerationEngine(loaded_model(net), "lstm", executor, Metrics(), max_batch_size=8,
                                  max_active=8, max_steps_per_iteration=4,
                                  prefill_chunk_tokens=chunk)
        await engine.start()
        outbox = engine.submit(request(prefix, 2, 3))
        await collect(outbox)
        states.append(outbox.result.state)
        await engine.stop()
    executor.shutdown()
    assert torch.equal(states[0], states[1])
