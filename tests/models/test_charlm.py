"""The char LM's serving path: fast step == module, prefill == token by token, state layout."""

import pytest
import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel, predict_greedy

V, H = 13, 16
CASES = [(cell, layers, nl) for cell in ("rnn", "gru", "lstm") for layers in (1, 2)
         for nl in (("tanh", "relu") if cell == "rnn" else ("tanh",))]


def _net(cell, layers, nonlinearity="tanh", seed=0):
    torch.manual_seed(seed)
    cfg = CharLMConfig(cell=cell, vocab_size=V, num_hiddens=H, num_layers=layers, dropout=0.3,
                       nonlinearity=nonlinearity)
    return RNNModel.from_config(cfg).eval()


def _random_state(net, batch):
    return tuple(torch.randn_like(t) for t in net.zero_state(batch))


@pytest.mark.parametrize(("cell", "layers", "nonlinearity"), CASES)
def test_fast_step_equals_module(cell, layers, nonlinearity):
    net = _net(cell, layers, nonlinearity)
    state = _random_state(net, 4)
    for _ in range(4):
        tokens = torch.randint(0, V, (4,))
        logits, new_state = net.step(tokens, state)
        with torch.no_grad():
            ref, ref_state = net(tokens.reshape(4, 1), net.to_seed_state(state))
        torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
        for a, b in zip(new_state, net.to_serving_state(ref_state), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        state = new_state


@pytest.mark.parametrize(("cell", "layers", "nonlinearity"), CASES)
def test_prefill_equals_token_by_token(cell, layers, nonlinearity):
    net = _net(cell, layers, nonlinearity, seed=1)
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 0], [12, 12]]
    state = _random_state(net, len(seqs))
    logits, new_state = net.prefill(seqs, state)
    assert logits.shape == (len(seqs), V)
    assert all(t.shape == (layers, len(seqs), H) for t in new_state)
    for i, seq in enumerate(seqs):
        row = tuple(t[:, i : i + 1] for t in state)  # batch dim 1
        for tok in seq:
            out, row = net.step(torch.tensor([tok]), row)
        torch.testing.assert_close(logits[i : i + 1], out, rtol=0, atol=1e-5)
        for a, b in zip(new_state, row, strict=True):
            torch.testing.assert_close(a[:, i : i + 1], b, rtol=0, atol=1e-5)
    # and equals the seed forward over the whole sequence
    with torch.no_grad():
        out, _ = net(torch.tensor([seqs[2]]), net.to_seed_state(tuple(t[:, 2:3] for t in state)))
    torch.testing.assert_close(logits[2], out[-1], rtol=0, atol=1e-5)


def test_prefill_rejects_empty():
    net = _net("lstm", 1)
    with pytest.raises(ValueError):
        net.prefill([[1], []], net.zero_state(2))
    with pytest.raises(ValueError):
        net.prefill([], net.zero_state(0))


def test_state_layout_and_batching_along_dim_1():
    net = _net("lstm", 2)
    a, b = _random_state(net, 1), _random_state(net, 2)
    joined = tuple(torch.cat([x, y], dim=1) for x, y in zip(a, b, strict=True))
    tokens = torch.tensor([3, 4, 5])
    logits, out = net.step(tokens, joined)
    la, oa = net.step(tokens[:1], a)
    torch.testing.assert_close(logits[:1], la, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1][:, :1], oa[1], rtol=0, atol=1e-5)
    assert net.state_bytes(out) == 2 * 2 * 3 * H * 4
    assert len(_net("gru", 1).zero_state(2)) == 1


def test_step_follows_weight_changes():
    net = _net("gru", 2)
    state = net.zero_state(1)
    tok = torch.tensor([2])
    before, _ = net.step(tok, state)
    other = _net("gru", 2, seed=9)
    net.load_state_dict(other.state_dict())
    after, _ = net.step(tok, state)
    ref, _ = other.step(tok, state)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref)


def test_bidirectional_cannot_generate():
    net = RNNModel(torch.nn.GRU(V, H, bidirectional=True), V)
    assert net.linear.in_features == 2 * H
    with pytest.raises(ValueError, match="bidirectional"):
        net.step(torch.tensor([1]), (torch.zeros(2, 1, H),))


def test_predict_greedy_matches_forward_argmax():
    net = _net("lstm", 2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    ids = predict_greedy(net, [1, 2, 3], 5)
    seq = [1, 2, 3]
    for expected in ids:
        with torch.no_grad():
            out, _ = net(torch.tensor([seq]), net.begin_state("cpu", 1))
        assert int(out[-1].argmax()) == expected
        seq.append(expected)
