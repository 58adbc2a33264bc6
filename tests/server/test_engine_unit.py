"""The generation engine with a fake model: batching mechanics, admission, cancellation."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from rnnserve.server.decoding import DecodingOptions
from rnnserve.server.engine import FinishReason, GenerationEngine, GenerationJob
from rnnserve.server.errors import ResourceExhaustedError
from rnnserve.server.metrics import Metrics

VOCAB = ["<unk>", *"abcdefghij"]


class CountingModel:
    """Next token = (input + 1 + h) mod V, where h counts the tokens consumed so far.

    Records the batch size of every step, so tests can see how work was batched.
    """

    def __init__(self) -> None:
        self.step_batches: list[int] = []

    def zero_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, batch_size, 1),)

    def prefill(self, sequences: list[list[int]], state: tuple[torch.Tensor, ...]):
        (h,) = state
        lengths = torch.tensor([[len(s)] for s in sequences], dtype=torch.float32)  # (B, 1)
        return None, (h + lengths.unsqueeze(0),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        self.step_batches.append(len(tokens))
        (h,) = state
        nxt = (tokens + 1 + h[0, :, 0].long()) % len(VOCAB)
        logits = torch.nn.functional.one_hot(nxt, len(VOCAB)).float()
        return logits, (h + 1,)


def expected(feed: list[int], pending: int, n: int) -> list[int]:
    h, token, out = len(feed), pending, []
    for _ in range(n):
        token = (token + 1 + h) % len(VOCAB)
        h += 1
        out.append(token)
    return out


@pytest.fixture
async def engine_factory():
    executor = ThreadPoolExecutor(1)
    engines: list[GenerationEngine] = []

    async def make(**kw) -> tuple[GenerationEngine, CountingModel]:
        fake = CountingModel()
        loaded = SimpleNamespace(module=fake, device="cpu",
                                 vocab=SimpleNamespace(idx_to_token=VOCAB))
        options = {"max_batch_size": 64, "max_active": 64, "max_steps_per_iteration": 4} | kw
        engine = GenerationEngine(loaded, "fake", executor, Metrics(), **options)
        await engine.start()
        engines.append(engine)
        return engine, fake

    yield make
    for engine in engines:
        await engine.stop()
    executor.shutdown()


async def collect(job: GenerationJob) -> str:
    text = ""
    while True:
        piece, _ = await job.outbox.take()
        text += piece
        if job.outbox.done:
            return text


def job(feed: list[int], pending: int, n: int, **options) -> GenerationJob:
    return GenerationJob(feed=feed, pending=pending, state=None, max_tokens=n,
                         options=DecodingOptions(**options))


def as_text(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


async def test_concurrent_jobs_share_steps_and_keep_their_answers(engine_factory):
    engine, fake = await engine_factory()
    jobs = [job(list(range(1, 1 + i % 5)), i % 10 + 1, 10 + i) for i in range(20)]
    for j in jobs:
        engine.submit(j)
    texts = await asyncio.gather(*(collect(j) for j in jobs))
    for j, text in zip(jobs, texts, strict=True):
        assert text == as_text(expected(j.feed, j.pending, j.max_tokens))
        assert j.finish is FinishReason.LENGTH
    assert max(fake.step_batches) == 20  # all advanced together
    assert engine.active == 0


async def test_batch_size_one_runs_one_at_a_time(engine_factory):
    engine, fake = await engine_factory(max_batch_size=1)
    jobs = [job([1, 2], 3, 5) for _ in range(4)]
    for j in jobs:
        engine.submit(j)
    texts = await asyncio.gather(*(collect(j) for j in jobs))
    assert set(fake.step_batches) == {1}
    assert texts == [as_text(expected([1, 2], 3, 5))] * 4


async def test_stop_string_ends_generation(engine_factory):
    engine, _ = await engine_factory()
    ids = expected([], 1, 30)
    stop = as_text(ids[3:5])
    j = job([], 1, 30, stop=(stop,))
    engine.submit(j)
    text = await collect(j)
    assert text.endswith(stop) and j.finish is FinishReason.STOP
    assert text == as_text(ids)[: as_text(ids).index(stop) + len(stop)]


async def test_admission_limit_and_cancellation_free_the_slot(engine_factory):
    engine, _ = await engine_factory(max_active=2)
    long_jobs = [job([], 1, 10**9), job([], 2, 10**9)]
    for j in long_jobs:
        engine.submit(j)
    with pytest.raises(ResourceExhaustedError):
        engine.submit(job([], 3, 5))
    await long_jobs[0].outbox.take()
    long_jobs[0].cancelled = True
    long_jobs[1].cancelled = True
    for _ in range(200):
        if engine.active == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.active == 0
    j = job([], 3, 5)
    engine.submit(j)
    assert await collect(j) == as_text(expected([], 3, 5))


async def test_final_state_is_a_compact_copy(engine_factory):
    engine, _ = await engine_factory()
    jobs = [job([1], 2, 3), job([1, 2, 3], 4, 7)]
    for j in jobs:
        engine.submit(j)
    await asyncio.gather(*(collect(j) for j in jobs))
    for j in jobs:
        assert j.final_state.shape == (1, 1, 1)
        assert j.final_state.item() == len(j.feed) + j.max_tokens
        assert j.final_state.untyped_storage().nbytes() == 4  # not a view into the batch
        assert j.final_pending == expected(j.feed, j.pending, j.max_tokens)[-1]
