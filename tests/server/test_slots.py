"""Decode steps on fixed row slots (the CUDA-graph layout): bit-identical to eager steps.

On the CPU the slots run eagerly (``capture=False``): the same buckets, copies and in-place
state update as on a GPU, without the graph. The CUDA case runs where a GPU is (``make
gpu-check`` runs this file on the device).
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.engine import GenerationEngine, GenerationRequest
from rnnserve.server.execution.slots import SlotStep, bucket_sizes
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.generation import graph_slots
from rnnserve.server.settings import ServerSettings

VOCAB = ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]
CUDA = torch.cuda.is_available()


def chaotic(cell: str, layers: int, device: str = "cpu") -> RNNModel:
    """Seeded weights x4: a one-ulp difference becomes another character within steps."""
    torch.manual_seed(7)
    net = RNNModel.from_config(CharLMConfig(cell, len(VOCAB), 48, layers))
    with torch.no_grad():
        for p in net.parameters():
            torch.nn.init.uniform_(p, -0.4, 0.4)
    return net.to(device).eval()


def test_bucket_sizes_cover_every_batch_with_at_most_one_and_a_half_times_padding():
    sizes = bucket_sizes(1024)
    assert sizes[:8] == [1, 2, 4, 8, 16, 24, 32, 48] and sizes[-1] == 1024
    assert sizes == sorted(set(sizes))
    for rows in range(17, 1025):
        assert min(s for s in sizes if s >= rows) <= 1.5 * rows
    assert bucket_sizes(1) == [1] and bucket_sizes(100)[-1] == 100


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA, reason="no CUDA device"))])
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_slot_steps_equal_eager_steps_bit_for_bit_as_rows_join_and_leave(device, cell, layers):
    net = chaotic(cell, layers, device)
    slots = SlotStep(net, torch.device(device), 64, capture=device == "cuda")
    gen = torch.Generator().manual_seed(3)
    state = net.zero_state(3, device)
    tokens = torch.tensor([1, 2, 3], device=device)
    ref_state, ref_tokens = state, tokens
    sizes = [3, 3, 3, 5, 5, 17, 17, 16, 1, 1, 40, 40, 64, 64, 2]
    with torch.inference_mode():
        for i, rows in enumerate(sizes):
            now = tokens.shape[0]
            if rows != now:  # rows leave (index_select) or join (cat), as DecodeBatch does
                if rows < now:
                    keep = torch.randperm(now, generator=gen)[:rows].sort().values.to(device)
                    state = tuple(t.index_select(1, keep) for t in state)
                    ref_state = tuple(t.index_select(1, keep) for t in ref_state)
                    tokens, ref_tokens = tokens[keep], ref_tokens[keep]
                else:
                    extra = tuple(torch.rand(t.shape[0], rows - now, t.shape[2], generator=gen)
                                  .to(device) for t in state)
                    new = torch.randint(1, len(VOCAB), (rows - now,), generator=gen).to(device)
                    state = tuple(torch.cat([a, b], 1) for a, b in zip(state, extra, strict=True))
                    ref_state = tuple(torch.cat([a, b], 1)
                                      for a, b in zip(ref_state, extra, strict=True))
                    tokens, ref_tokens = torch.cat([tokens, new]), torch.cat([ref_tokens, new])
            before = state[0]
            logits, state = slots.step(tokens, state)
            ref_logits, ref_state = net.step(ref_tokens, ref_state)
            assert torch.equal(logits, ref_logits), f"step {i}, {rows} rows"
            assert all(torch.equal(a, b) for a, b in zip(state, ref_state, strict=True))
            if i and sizes[i - 1] == rows:  # a steady batch: updated in place, nothing copied
                assert state[0].data_ptr() == before.data_ptr()
            tokens, ref_tokens = logits.argmax(1), ref_logits.argmax(1)
    if device == "cuda":
        assert slots.captured  # every bucket used was captured as a CUDA graph


def test_capture_needs_a_cuda_device_and_the_setting_is_ignored_on_the_cpu(caplog):
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        SlotStep(chaotic("lstm", 1), torch.device("cpu"), 8, capture=True)
    loaded = SimpleNamespace(module=chaotic("lstm", 1), device="cpu")
    assert graph_slots(loaded, "m", ServerSettings()) is None  # type: ignore[arg-type]
    assert "cuda_graphs" not in caplog.text  # the default: no warning on a CPU machine
    settings = ServerSettings(cuda_graphs=True)
    assert graph_slots(loaded, "m", settings) is None  # type: ignore[arg-type]
    assert "cuda_graphs is set but model m runs on cpu" in caplog.text


def _generate_all(net: RNNModel, slots: SlotStep | None, jobs: list[GenerationRequest],
                  batch: int) -> list[str]:
    loaded = SimpleNamespace(module=net, device="cpu", vocab=SimpleNamespace(idx_to_token=VOCAB))

    async def run() -> list[str]:
        executor = ThreadPoolExecutor(1)
        engine = GenerationEngine(loaded, "m", executor, Metrics(), max_batch_size=batch,
                                  max_active=256, max_steps_per_iteration=4, slots=slots,
                                  prefill_chunk_tokens=16)
        await engine.start()

        async def one(job: GenerationRequest, delay: float) -> str:
            await asyncio.sleep(delay)  # join running batches of changing size
            outbox = engine.submit(job)
            text = ""
            while outbox.result is None:
                text += (await outbox.take())[0]
            return text

        try:
            return list(await asyncio.gather(*(one(j, 0.002 * (i % 7))
                                               for i, j in enumerate(jobs))))
        finally:
            await engine.stop()
            executor.shutdown()

    return asyncio.run(run())


def test_the_engine_on_slots_writes_the_same_texts_as_the_eager_engine():
    net = chaotic("lstm", 2)
    rng = random.Random(5)
    jobs = []
    for i in range(40):  # greedy and seeded sampling, short and chunked prefixes, stop strings
        prefix = tuple(rng.randrange(1, len(VOCAB)) for _ in range(rng.choice([0, 3, 70])))
        options = (DecodingOptions(temperature=0.8, top_k=10, top_p=0.9, seed=i + 1) if i % 3 == 0
                   else DecodingOptions(stop=("e",)) if i % 5 == 0 else DecodingOptions())
        jobs.append(GenerationRequest(prefix, rng.randrange(1, len(VOCAB)), None,
                                      rng.randrange(1, 60), options))
    eager = _generate_all(net, None, jobs, 24)
    slots = SlotStep(net, torch.device("cpu"), 24, capture=False)
    assert _generate_all(net, slots, jobs, 24) == eager
    assert any(len(t) > 20 for t in eager)
