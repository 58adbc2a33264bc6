"""DESIGN semantics 1: greedy Generate equals seed 000's ``predict_ch8`` on the shipped checkpoint.

The seed's ``RNNModel`` and ``predict_ch8`` are copied here verbatim (device cpu), the shipped
``timemachine`` state_dict is loaded into it with ``strict=True``, and the server's answers are
compared character for character. The seed's ``Vocab`` maps unknown characters to index 0
(``<unk>``); the tiny lookup below does the same.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from rnnserve.client import AsyncClient
from seed_oracles import RNNModel, SeedVocab, predict_ch8
from torch import nn

TIMEMACHINE_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "timemachine" / "1"


PARAGRAPH = (
    "the time traveller for so it will be convenient to speak of him was expounding a "
    "recondite matter to us his grey eyes shone and twinkled and his usually pale face was "
    "flushed and animated the fire burned brightly and the soft radiance of the incandescent "
    "lights in the lilies of silver caught the bubbles that flashed and passed in our glasses "
)
LONG_PREFIX = (PARAGRAPH * 3)[:1000]

# (prefix, characters to generate)
CASES = [
    ("time traveller", 200),
    ("t", 120),  # a one-character prefix: no warm-up at all
    ("the time machine", 1),
    ("The Time Traveller, said: ", 150),  # capitals and punctuation are <unk>
    ("what 🙂 is ünïcödé?", 100),  # emoji and accented letters are <unk>
    ("!!!", 50),  # nothing but <unk>
    (LONG_PREFIX, 200),
]


@pytest.fixture(scope="module")
def seed_model() -> tuple[RNNModel, SeedVocab]:
    """The seed's class holding the shipped timemachine weights (strict load)."""
    config = json.loads((TIMEMACHINE_DIR / "config.json").read_text(encoding="utf-8"))
    arch = config["architecture"]
    assert arch["cell"] == "lstm", "this test builds the shipped model's nn.LSTM"
    vocab = SeedVocab(config["vocab"])
    layer = nn.LSTM(len(vocab), arch["num_hiddens"], num_layers=arch["num_layers"],
                    dropout=arch.get("dropout", 0.0))
    net = RNNModel(layer, vocab_size=len(vocab))
    state = torch.load(TIMEMACHINE_DIR / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()  # the checkpoint was trained with dropout between layers; predicting uses none
    return net, vocab


_ORACLE: dict[tuple[str, int], str] = {}


def seed_continuation(prefix: str, n: int, seed_model: tuple[RNNModel, SeedVocab]) -> str:
    """``predict_ch8``'s output without its (vocabulary-rendered) prefix (memoised)."""
    if (prefix, n) not in _ORACLE:
        _ORACLE[prefix, n] = _seed_continuation(prefix, n, seed_model)
    return _ORACLE[prefix, n]


def _seed_continuation(prefix: str, n: int, seed_model: tuple[RNNModel, SeedVocab]) -> str:
    net, vocab = seed_model
    with torch.no_grad():
        full = predict_ch8(prefix, n, net, vocab, "cpu")
    # predict_ch8 renders the prefix through the vocabulary too, so an unknown character comes
    # back as '<unk>' (5 characters): cut what the prefix became, not len(prefix).
    rendered = "".join(vocab.idx_to_token[vocab[c]] for c in prefix)
    assert full.startswith(rendered)
    return full[len(rendered):]


def test_the_seed_class_really_holds_the_shipped_weights(seed_model):
    net, vocab = seed_model
    assert len(vocab) == 28 and vocab.idx_to_token[0] == "<unk>"
    assert vocab["T"] == 0 and vocab["🙂"] == 0 and vocab["t"] != 0
    # a trained model continues its namesake sensibly: not all <unk>, not one repeated char
    text = seed_continuation("time traveller", 60, seed_model)
    assert "<unk>" not in text and len(set(text)) > 5


@pytest.mark.parametrize("prefix,n", CASES, ids=[f"{p[:12]!r}x{n}" for p, n in CASES])
async def test_greedy_generate_equals_predict_ch8(aclient: AsyncClient, seed_model, prefix, n):
    expected = seed_continuation(prefix, n, seed_model)
    result = await aclient.generate(prefix, max_tokens=n)
    assert result.text == expected
    assert result.finish_reason == "length"
    assert result.generated_tokens == n
    assert result.prefix_tokens == len(prefix)
    assert result.session_id == ""
    assert (result.model, result.model_version) == ("timemachine", 1)


async def test_stream_chunks_concatenate_to_the_unary_text(aclient: AsyncClient, seed_model):
    for prefix, n in [("time traveller", 200), ("The Time", 57), ("x", 1)]:
        unary = await aclient.generate(prefix, max_tokens=n)
        chunks = [chunk async for chunk in aclient.stream(prefix, max_tokens=n)]
        assert "".join(c.text for c in chunks) == unary.text == seed_continuation(
            prefix, n, seed_model)
        # only the last chunk says why decoding ended; running totals only grow
        assert [c.finish_reason for c in chunks] == [""] * (len(chunks) - 1) + ["length"]
        totals = [c.generated_tokens for c in chunks]
        assert totals == sorted(totals) and totals[-1] == n
        seen = 0
        for chunk in chunks:  # each running total counts exactly the text sent so far
            seen += len(chunk.text)
            assert chunk.generated_tokens == seen
        assert all(c.prefix_tokens == len(prefix) for c in chunks)
        assert all((c.model, c.model_version) == ("timemachine", 1) for c in chunks)
        assert all(c.session_id == "" for c in chunks)


async def test_concurrent_greedy_requests_all_equal_the_seed(aclient: AsyncClient, seed_model):
    """The same oracle while the requests share decode batches."""
    results = await asyncio.gather(*(aclient.generate(p, max_tokens=n) for p, n in CASES))
    for (prefix, n), result in zip(CASES, results, strict=True):
        assert result.text == seed_continuation(prefix, n, seed_model), prefix[:20]


async def test_a_slow_reader_gets_coalesced_chunks_with_the_same_text(aclient: AsyncClient):
    unary = (await aclient.generate("time traveller", max_tokens=1500)).text
    text, messages = "", 0
    async for chunk in aclient.stream("time traveller", max_tokens=1500):
        text += chunk.text
        messages += 1
        assert chunk.generated_tokens == len(text)
        if messages <= 20:
            await asyncio.sleep(0.01)
    assert text == unary
    assert messages < 1500, "characters that piled up travel together"
