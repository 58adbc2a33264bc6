"""nn.RNN / nn.LSTM (and the served fast step) equal the hand-written cells of seeds 000/004."""

import pytest
import torch
import torch.nn.functional as F
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.models.scratch import (
    init_scratch_params,
    lstm_scratch_step,
    rnn_scratch_step,
    scratch_forward,
    scratch_to_state_dict,
    state_dict_to_scratch,
)

V, H, B, T = 11, 9, 3, 6


def _model_from_scratch(cell, params):
    net = RNNModel.from_config(CharLMConfig(cell=cell, vocab_size=V, num_hiddens=H)).eval()
    net.load_state_dict(scratch_to_state_dict(cell, params), strict=True)
    return net


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_nn_module_equals_scratch_cell(cell):
    gen = torch.Generator().manual_seed(0)
    params = init_scratch_params(cell, V, H, scale=0.5, generator=gen)
    params = tuple(p + 0.1 * torch.randn(p.shape, generator=gen) for p in params)  # nonzero biases
    net = _model_from_scratch(cell, params)
    x = torch.randint(0, V, (B, T), generator=gen)
    state = tuple(torch.randn(B, H, generator=gen) for _ in range(2 if cell == "lstm" else 1))
    y_scratch, s_scratch = scratch_forward(cell, F.one_hot(x.T, V).float(), state, params)
    seed_state = tuple(s.unsqueeze(0) for s in state)  # (1, B, H)
    with torch.no_grad():
        y_nn, s_nn = net(x, net.to_seed_state(seed_state))
    torch.testing.assert_close(y_nn, y_scratch, rtol=0, atol=1e-5)
    for a, b in zip(net.to_serving_state(s_nn), s_scratch, strict=True):
        torch.testing.assert_close(a[0], b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_served_step_equals_scratch_step(cell):
    gen = torch.Generator().manual_seed(1)
    params = init_scratch_params(cell, V, H, scale=0.5, generator=gen)
    net = _model_from_scratch(cell, params)
    step = rnn_scratch_step if cell == "rnn" else lstm_scratch_step
    state = tuple(torch.randn(B, H, generator=gen) for _ in range(2 if cell == "lstm" else 1))
    served = tuple(s.unsqueeze(0) for s in state)
    for _ in range(5):
        tokens = torch.randint(0, V, (B,), generator=gen)
        y_ref, state = step(F.one_hot(tokens, V).float(), state, params)
        y, served = net.step(tokens, served)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
        for a, b in zip(served, state, strict=True):
            torch.testing.assert_close(a[0], b, rtol=0, atol=1e-5)


def test_seed_004_rnn_accepts_bare_state():
    params = init_scratch_params("rnn", V, H, scale=0.5)
    x, h = torch.eye(V)[:2], torch.zeros(2, H)
    y1, (h1,) = rnn_scratch_step(x, h, params)
    y2, (h2,) = rnn_scratch_step(x, (h,), params)
    torch.testing.assert_close(y1, y2)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_scratch_state_dict_round_trip(cell):
    torch.manual_seed(2)
    net = RNNModel.from_config(CharLMConfig(cell=cell, vocab_size=V, num_hiddens=H)).eval()
    params = state_dict_to_scratch(cell, net.state_dict())
    back = _model_from_scratch(cell, params)
    x = torch.randint(0, V, (B, T))
    with torch.no_grad():
        torch.testing.assert_close(back(x, back.begin_state("cpu", B))[0],
                                   net(x, net.begin_state("cpu", B))[0], rtol=0, atol=1e-6)
    again = state_dict_to_scratch(cell, scratch_to_state_dict(cell, params))
    for a, b in zip(again, params, strict=True):
        torch.testing.assert_close(a, b)


def test_scratch_refuses_multilayer_state_dict():
    net = RNNModel.from_config(CharLMConfig(cell="lstm", vocab_size=V, num_hiddens=H, num_layers=2))
    with pytest.raises(ValueError, match="one layer"):
        state_dict_to_scratch("lstm", net.state_dict())
