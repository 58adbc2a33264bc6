"""Batch invariance of the serving math, bit for bit (models/invariant.py).

Models are "chaotic": seeded random weights scaled x4, so a difference in the last bit of one
number grows through the recurrence within a few dozen steps (the fused torch path is shown to
diverge on the same checks, so the checks can fail). Every comparison is exact equality.
"""

from __future__ import annotations

import io
import random
from copy import deepcopy

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.models.invariant import linear_rows, matmul_rows, pad_rows, sigmoid
from rnnserve.models.sentiment import SentimentConfig, SentimentRNN

VOCAB = 28
HIDDEN = 128
CHAOTIC = [("rnn", 1), ("rnn", 2), ("gru", 1), ("gru", 2), ("lstm", 1), ("lstm", 2)]
DEEP = [("rnn", 1), ("gru", 2), ("lstm", 2)]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the bench and a loaded 2-core machine want (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chaotic_lm(cell: str, layers: int, seed: int = 0, hidden: int = HIDDEN) -> RNNModel:
    torch.manual_seed(seed)
    net = RNNModel.from_config(CharLMConfig(cell=cell, vocab_size=VOCAB, num_hiddens=hidden,
                                            num_layers=layers))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    return net.eval()


def rows_of(state: tuple[torch.Tensor, ...], rows: list[int]) -> tuple[torch.Tensor, ...]:
    return tuple(t[:, rows] for t in state)


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ the product and the gates
@pytest.mark.parametrize("k,n", [(128, 384), (256, 1024), (64, 28), (100, 400)])
def test_a_row_of_a_product_is_the_same_alone_and_in_any_batch(k, n):
    gen = torch.Generator().manual_seed(k * n)
    weight = torch.randn(n, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    probe = torch.randn(1, k, generator=gen)
    alone = linear_rows(probe, weight, bias, 8)
    rng = random.Random(k)
    for size in [1, 2, 7, 8, 9, 16, 17, 33, 64]:
        mates = torch.randn(size, k, generator=gen) * rng.choice([1e-3, 1.0, 1e3])
        at = rng.randrange(size)
        mates[at] = probe[0]
        got = linear_rows(mates, weight, bias, 8)
        assert torch.equal(got[at], alone[0]), (size, at)


def test_a_product_does_not_depend_on_the_torch_thread_count():
    gen = torch.Generator().manual_seed(1)
    before = torch.get_num_threads()
    try:
        for k, n in [(128, 384), (128, 512), (256, 1024)]:
            weight, x = torch.randn(n, k, generator=gen), torch.randn(40, k, generator=gen)
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(matmul_rows(x, weight, 8))
            assert torch.equal(results[0], results[1]), (k, n)
    finally:
        torch.set_num_threads(before)


def test_the_gate_sigmoid_rounds_alike_in_simd_body_and_scalar_tail():
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(2)) * 8
    strided = torch.stack([x, x], 1)[:, 0]  # not contiguous: torch's scalar loop
    assert torch.equal(sigmoid(x), sigmoid(strided))
    assert torch.allclose(sigmoid(x), torch.sigmoid(x), rtol=0, atol=1e-6)


def test_pad_rows_pads_with_zeros_to_a_multiple_of_the_tile():
    x = torch.ones(5, 3)
    padded = pad_rows(x, 4)
    assert padded.shape == (8, 3) and padded[5:].abs().sum() == 0
    assert pad_rows(torch.ones(8, 3), 4).shape == (8, 3)


# ------------------------------------------------------------------ char LM: decode steps
def _decode_alone(net: RNNModel, tokens: list[int]) -> tuple[torch.Tensor, tuple]:
    state = net.zero_state(1)
    logits = None
    for tok in tokens:
        logits, state = net.step(torch.tensor([tok]), state)
    return logits[0], state


def _decode_staggered(net: RNNModel, streams: list[list[int]], starts: list[int]
                      ) -> list[tuple[torch.Tensor, tuple]]:
    """Every stream in one decode batch, each joining at its own step and leaving when done
    (rows join at the end and leave from anywhere: batch size and positions keep changing)."""
    out: list = [None] * len(streams)
    live: list[int] = []  # stream index per batch row
    pos: list[int] = []
    state = None
    for step in range(max(s + len(t) for s, t in zip(starts, streams, strict=True))):
        for i, start in enumerate(starts):
            if start == step:
                zero = net.zero_state(1)
                state = zero if state is None else tuple(
                    torch.cat([a, b], 1) for a, b in zip(state, zero, strict=True))
                live.append(i)
                pos.append(0)
        if not live:
            continue
        tokens = torch.tensor([streams[i][p] for i, p in zip(live, pos, strict=True)])
        logits, state = net.step(tokens, state)
        keep = []
        for row, i in enumerate(live):
            pos[row] += 1
            if pos[row] == len(streams[i]):
                out[i] = (logits[row], rows_of(state, [row]))
            else:
                keep.append(row)
        live, pos = [live[r] for r in keep], [pos[r] for r in keep]
        state = rows_of(state, keep) if keep else None
    return out


def _staggered_differences(net: RNNModel, seed: int) -> int:
    rng = random.Random(seed)
    streams = [[rng.randrange(VOCAB) for _ in range(rng.randrange(12, 30))] for _ in range(16)]
    starts = [rng.randrange(16) for _ in streams]
    batched = _decode_staggered(net, streams, starts)
    bad = 0
    for stream, (logits, state) in zip(streams, batched, strict=True):
        ref_logits, ref_state = _decode_alone(net, stream)
        bad += not (torch.equal(logits, ref_logits) and same(state, ref_state))
    return bad


@pytest.mark.parametrize("cell,layers", CHAOTIC)
def test_decode_steps_are_bit_identical_alone_and_with_15_others(cell, layers):
    net = chaotic_lm(cell, layers)
    assert net.batch_invariant  # the default
    assert _staggered_differences(net, seed=layers) == 0


def test_the_fused_path_is_what_these_checks_catch():
    """batch_invariant=False (torch's fused cells) fails the same check: it is not vacuous."""
    net = chaotic_lm("rnn", 1)
    net.batch_invariant = False
    assert _staggered_differences(net, seed=1) > 0


# ------------------------------------------------------------------ char LM: prefill
@pytest.mark.parametrize("cell,layers", DEEP)
def test_prefill_equals_steps_chunks_and_any_batch(cell, layers):
    net = chaotic_lm(cell, layers, seed=7)
    rng = random.Random(layers * 31 + len(cell))
    lengths = [1, 2, 9, 40, 64, 65, 130, rng.randrange(300, 500)]
    seqs = [[rng.randrange(VOCAB) for _ in range(n)] for n in lengths]
    alone = [net.prefill([s], net.zero_state(1)) for s in seqs]
    order = list(range(len(seqs)))
    rng.shuffle(order)
    logits, state = net.prefill([seqs[i] for i in order], net.zero_state(len(seqs)))
    for row, i in enumerate(order):  # packed with others, in another order
        assert torch.equal(logits[row], alone[i][0][0]), (i, lengths[i])
        assert same(rows_of(state, [row]), alone[i][1])
    for i in (0, 3, 5):  # token by token through step
        ref_logits, ref_state = _decode_alone(net, seqs[i])
        assert torch.equal(ref_logits, alone[i][0][0]) and same(ref_state, alone[i][1])
    for i in (6, 7):  # in chunks cut anywhere (what a chunked prefill does), from a non-zero state
        seq, start = seqs[i], 0
        state1 = net.zero_state(1)
        while start < len(seq):
            size = rng.randrange(1, 70)
            chunk_logits, state1 = net.prefill([seq[start:start + size]], state1)
            start += size
        assert torch.equal(chunk_logits[0], alone[i][0][0]) and same(state1, alone[i][1])


def test_the_invariant_path_stays_close_to_the_seed_forward():
    """The tiles change which rounding is used, not the model: close to nn.LSTM's forward."""
    torch.manual_seed(3)
    net = RNNModel.from_config(CharLMConfig(cell="lstm", vocab_size=VOCAB, num_hiddens=64,
                                            num_layers=2)).eval()
    seq = [random.Random(3).randrange(VOCAB) for _ in range(50)]
    with torch.no_grad():
        out, state = net(torch.tensor([seq]), net.begin_state("cpu", 1))
    logits, new_state = net.prefill([seq], net.zero_state(1))
    assert torch.allclose(logits[0], out[-1], atol=1e-5)
    assert torch.allclose(new_state[1], state[1], atol=1e-5)


def test_cached_kernels_follow_new_weights():
    net = chaotic_lm("gru", 1)
    before, _ = net.step(torch.tensor([3]), net.zero_state(1))
    with torch.no_grad():
        net.rnn.weight_ih_l0.mul_(0.5)
    after, _ = net.step(torch.tensor([3]), net.zero_state(1))
    assert not torch.equal(before, after)
    net._recurrence = None
    assert torch.equal(after, net.step(torch.tensor([3]), net.zero_state(1))[0])


def test_a_module_built_under_inference_mode_steps():
    with torch.inference_mode():  # its parameters are inference tensors (no version counter)
        net = chaotic_lm("lstm", 2)
        logits, _ = net.step(torch.tensor([3, 4]), net.zero_state(2))
    assert logits.shape == (2, VOCAB)


# ------------------------------------------------------------------ classifier
def chaotic_classifier() -> SentimentRNN:
    torch.manual_seed(5)
    net = SentimentRNN.from_config(SentimentConfig(vocab_size=50, embedding_dim=32, hidden_dim=64,
                                                   no_layers=2, bidirectional=True))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    return net.eval()


def test_classifier_scores_are_bit_identical_alone_and_in_any_batch():
    net = chaotic_classifier()
    gen = torch.Generator().manual_seed(6)
    texts = torch.randint(0, 50, (70, 40), generator=gen)
    texts[:, 30:] = 1  # padding at the end, as the tokenizer pads
    alone = [net.score(texts[i:i + 1]) for i in range(12)]
    rng = random.Random(6)
    for size in [2, 5, 8, 9, 23, 60]:
        rows = [0, size % 12] + rng.sample(range(12, 70), size - 2)
        rng.shuffle(rows)
        probs, weights = net.score(texts[rows])
        for at, i in enumerate(rows):
            if i < len(alone):
                assert torch.equal(probs[at], alone[i][0][0]), (size, at)
                assert torch.equal(weights[at], alone[i][1][0])


def eager_tiles(net: SentimentRNN, x: torch.Tensor, tile: int = 8) -> tuple[torch.Tensor, ...]:
    """The tiles of ``score`` run eagerly, one ``_run`` call each (what the TorchScript call
    replaces)."""
    with torch.no_grad():
        parts = [net._run(part, None) for part in pad_rows(x, tile).split(tile)]
    rows = x.shape[0]
    return torch.cat([p[0] for p in parts])[:rows, 0], torch.cat([p[2] for p in parts])[:rows]


def test_the_scripted_tiles_are_the_eager_tiles_bit_for_bit():
    net = chaotic_classifier()
    texts = torch.randint(0, 50, (37, 40), generator=torch.Generator().manual_seed(8))
    for rows in (1, 8, 9, 37):
        probs, weights = net.score(texts[:rows])
        want_probs, want_weights = eager_tiles(net, texts[:rows])
        assert torch.equal(probs, want_probs) and torch.equal(weights, want_weights), rows
    from rnnserve.models.sentiment import _TRACED

    assert all(_TRACED[net][1].values())  # the TorchScript path ran (not the eager fallback)


def test_the_scripted_tiles_follow_new_weights_and_devices():
    net = chaotic_classifier()
    texts = torch.randint(0, 50, (9, 40), generator=torch.Generator().manual_seed(9))
    before = net.score(texts)[0]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.bias"] += 3.0
    net.load_state_dict(state)  # in place: the traced graph shares the parameters
    after = net.score(texts)[0]
    assert not torch.equal(before, after)
    assert torch.equal(after, eager_tiles(net, texts)[0])
    fresh = {k: v.clone() + 1.0 for k, v in net.state_dict().items()}
    net.load_state_dict(fresh, assign=True)  # new tensors: the graph must not keep the old ones
    assert torch.equal(net.score(texts)[0], eager_tiles(net, texts)[0])
    copy = deepcopy(net)  # a copy (and a pickle) carries no graphs; its changes are its own
    with torch.no_grad():
        copy.fc.bias.add_(5.0)
    assert torch.equal(copy.score(texts)[0], eager_tiles(copy, texts)[0])
    assert torch.equal(net.score(texts)[0], eager_tiles(net, texts)[0])
    torch.save(net, io.BytesIO())


def test_code_that_cannot_be_traced_runs_eagerly(caplog):
    from rnnserve.models import scripted

    def fails(tokens: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no tracing here\nsecond line")

    with caplog.at_level("WARNING", logger="rnnserve.models.scripted"):
        assert scripted.trace(fails, (torch.zeros(2),), "a test function") is None
    assert "could not trace a test function with TorchScript (RuntimeError: no tracing here)" \
        in caplog.text
