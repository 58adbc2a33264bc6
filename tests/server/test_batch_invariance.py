"""DESIGN semantics 3, end to end: batching never changes an answer, bit for bit.

A real server on an ephemeral port serves "chaotic" models (seeded random weights x4: a one-ulp
difference grows into another character within a few dozen steps). Every answer is asked alone
(one request on the server), then again with 15 other requests in flight that start at random
moments (so it joins decode batches of changing size, at changing rows, warming up in the batch
or prefilled with others), twice; texts and scores must be identical.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.models.checkpoint import save_model
from rnnserve.models.sentiment import SentimentConfig, SentimentRNN

from .conftest import TIMEMACHINE_DIR

CHARS: list[str] = json.loads((TIMEMACHINE_DIR / "config.json").read_text())["vocab"]
LETTERS = "".join(c for c in CHARS if len(c) == 1)
WORDS = ["<unk>", "<pad>", "good", "bad", "film", "a", "the", "dull", "fine", "plot", "slow",
         "great", "is", "not", "very", "and"]
MODELS = {"chaos-rnn1": ("rnn", 1), "chaos-gru2": ("gru", 2), "chaos-lstm2": ("lstm", 2)}


def _scaled(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.uniform_(p, -0.1, 0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    return net


@pytest.fixture(scope="module")
def chaos_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("chaos")
    for seed, (name, (cell, layers)) in enumerate(MODELS.items()):
        arch = {"cell": cell, "vocab_size": len(CHARS), "num_hiddens": 128, "num_layers": layers}
        net = _scaled(RNNModel.from_config(CharLMConfig(**arch)), seed)
        with torch.no_grad():  # never emit <unk>: a session's text then re-reads as its tokens
            net.linear.weight[0] = 0.0
            net.linear.bias[0] = -100.0
        save_model(repo / name / "1", net, {
            "name": name, "version": 1, "kind": "charlm", "architecture": arch, "vocab": CHARS,
            "text": {"normalization": "none"}})
    arch = {"vocab_size": len(WORDS), "embedding_dim": 16, "hidden_dim": 32, "no_layers": 2,
            "bidirectional": True}
    net = _scaled(SentimentRNN.from_config(SentimentConfig(**arch)), 9)
    save_model(repo / "chaos-cls" / "1", net, {
        "name": "chaos-cls", "version": 1, "kind": "classifier", "vocab": WORDS,
        "architecture": {"type": "sentiment_rnn", **arch},
        "tokenizer": {"seq_length": 24, "pad_index": 1}})
    return repo


def _prefixes(rng: random.Random, n: int) -> list[str]:
    lengths = [rng.randrange(1, 100) for _ in range(n - 2)] + [rng.randrange(200, 801)
                                                                for _ in range(2)]
    return ["".join(rng.choice(LETTERS) for _ in range(k)) for k in lengths]


async def _in_flight(calls, rng: random.Random):
    """Run every call at once, each starting after a random delay (random phases)."""
    async def later(call):
        await asyncio.sleep(rng.random() * 0.05)
        return await call()
    return await asyncio.gather(*(later(c) for c in calls))


@pytest.fixture
async def chaos_server(make_server, chaos_repo):
    return await make_server(model_repository=chaos_repo, torch_threads=1)


async def test_greedy_and_seeded_sampling_alone_equal_with_15_others_in_flight(
        chaos_server, connect):
    rng = random.Random(11)
    async with connect(chaos_server, timeout=120) as client:
        for model in MODELS:
            prefixes = _prefixes(rng, 16)
            # half greedy, half sampled with a seed; max_tokens differ so rows leave at random
            asks = [dict(prefix=p, model=model, max_tokens=rng.randrange(8, 24),
                         **({"temperature": 1.0, "seed": 1 + i} if i % 2 else {}))
                    for i, p in enumerate(prefixes)]
            alone = [(await client.generate(**a)).text for a in asks]  # one at a time
            assert len(set(alone)) > 8, "the model should say different things"
            for _ in range(2):
                order = list(range(len(asks)))
                rng.shuffle(order)
                got = await _in_flight(
                    [lambda a=asks[i]: client.generate(**a) for i in order], rng)
                diffs = [i for i, g in zip(order, got, strict=True) if g.text != alone[i]]
                assert diffs == [], f"{model}: {len(diffs)} of 16 answers changed in a batch"


async def test_session_continuations_alone_equal_in_flight_and_stateless(chaos_server, connect):
    rng = random.Random(12)
    model = "chaos-rnn1"
    firsts, seconds = _prefixes(rng, 6), _prefixes(rng, 6)
    async with connect(chaos_server, timeout=120) as client:
        async def converse(a: str, b: str) -> tuple[str, str, str]:
            one = await client.generate(a, model=model, max_tokens=20, keep_session=True)
            two = await client.generate(b, model=model, max_tokens=20,
                                        session_id=one.session_id)
            await client.end_session(one.session_id)
            return a + one.text + b, one.text, two.text

        alone = [await converse(a, b) for a, b in zip(firsts, seconds, strict=True)]
        busy = [lambda p=p: client.generate(p, model=model, max_tokens=20)
                for p in _prefixes(rng, 10)]
        got = await _in_flight(
            [lambda a=a, b=b: converse(a, b) for a, b in zip(firsts, seconds, strict=True)]
            + busy, rng)
        assert [g[1:] for g in got[:6]] == [a[1:] for a in alone]
        # a session equals one stateless call on its whole text (semantics 2), in flight too
        stateless = await _in_flight(
            [lambda t=t: client.generate(t, model=model, max_tokens=20) for t, _, _ in alone],
            rng)
        assert [s.text for s in stateless] == [a[2] for a in alone]


async def test_classifier_scores_alone_equal_any_batch(chaos_server, connect):
    rng = random.Random(13)
    texts = [" ".join(rng.choice(WORDS[2:]) for _ in range(rng.randrange(1, 30)))
             for _ in range(40)]
    async with connect(chaos_server) as client:
        alone = [(await client.classify(t, model="chaos-cls"))[0].score for t in texts]
        assert len(set(alone)) > 20
        whole = [c.score for c in await client.classify(texts[::-1], model="chaos-cls")]
        assert whole[::-1] == alone
        chunks = [texts[i:i + rng.randrange(1, 9)] for i in range(0, 40, 5)]
        got = await _in_flight(
            [lambda c=c: client.classify(c, model="chaos-cls") for c in chunks], rng)
        for chunk, result in zip(chunks, got, strict=True):
            assert [r.score for r in result] == [alone[texts.index(t)] for t in chunk]
