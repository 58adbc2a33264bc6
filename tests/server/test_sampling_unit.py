"""Vectorised sampling: a row's draw depends on its own logits, options, seed and draw number only."""

from __future__ import annotations

import random

import torch
from rnnserve.server.execution.decoding import DecodingOptions, sample, uniform

OPTIONS = [DecodingOptions(temperature=0.8, top_k=20, top_p=0.9, seed=1),
           DecodingOptions(temperature=1.5, seed=2), DecodingOptions(temperature=0.3, top_k=3, seed=3),
           DecodingOptions(temperature=2.0, top_p=0.5, seed=4)]


def test_a_rows_draw_does_not_depend_on_its_batch_mates():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 28, generator=gen) * 3
    rng = random.Random(0)
    options = [rng.choice(OPTIONS) for _ in range(64)]
    seeds = [rng.randrange(1, 2**63) for _ in range(64)]
    draws = [rng.randrange(0, 500) for _ in range(64)]
    together = sample(logits, options, seeds, draws)
    for i in range(64):
        alone = sample(logits[i:i + 1], options[i:i + 1], seeds[i:i + 1], draws[i:i + 1])
        assert int(alone) == int(together[i])
    order = list(range(64))
    rng.shuffle(order)
    shuffled = sample(logits[order], [options[i] for i in order], [seeds[i] for i in order],
                      [draws[i] for i in order])
    assert shuffled.tolist() == together[order].tolist()


def test_draws_follow_the_distribution_and_never_unk():
    logits = torch.tensor([[5.0, 0.0, 1.0, 2.0]])
    options = [DecodingOptions(temperature=1.0, seed=9)]
    drawn = sample(logits.expand(4000, 4), options * 4000, [9] * 4000, list(range(4000)))
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[0] == 0  # <unk> is never drawn, even as the most likely token
    probs = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).tolist()
    for got, p in zip(counts[1:], probs, strict=True):
        assert abs(got / 4000 - p) < 0.03
    assert len({uniform(9, n) for n in range(1000)}) == 1000
    assert all(0.0 <= uniform(s, n) < 1.0 for s in (1, 2**63 - 1) for n in range(100))


def test_top_k_one_and_tiny_top_p_are_the_argmax():
    logits = torch.randn(16, 28, generator=torch.Generator().manual_seed(1))
    logits[:, 0] = -1e9
    k1 = [DecodingOptions(temperature=5.0, top_k=1, seed=3)] * 16
    p0 = [DecodingOptions(temperature=1.0, top_p=1e-9, seed=3)] * 16
    best = logits.argmax(1).tolist()
    assert sample(logits, k1, [3] * 16, list(range(16))).tolist() == best
    assert sample(logits, p0, [3] * 16, list(range(16))).tolist() == best
