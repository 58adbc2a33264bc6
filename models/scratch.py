"""Hand-written RNN and LSTM steps of seeds 000/004, kept as test oracles and converters.

The parameter tuples are the seeds':

- rnn:  ``(W_xh, W_hh, b_h, W_hq, b_q)`` with ``W_xh (V, H)``, ``W_hh (H, H)``, ``b_h (H,)``,
  ``W_hq (H, Q)``, ``b_q (Q,)``;
- lstm: ``(W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q)``.

They compute ``X @ W`` (row-vector convention) where ``nn.RNN``/``nn.LSTM`` store ``W^T``, and
they have one bias per gate where torch has two (``bias_ih + bias_hh``). ``scratch_to_state_dict``
maps scratch parameters to the single-layer ``RNNModel`` layout (torch's LSTM gate order is
i, f, g(=c~), o; the hidden-side bias is zero); ``state_dict_to_scratch`` maps back, summing the
two biases.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

ScratchCell = Literal["rnn", "lstm"]
_LSTM_NAMES = (
    "W_xi",
    "W_hi",
    "b_i",
    "W_xf",
    "W_hf",
    "b_f",
    "W_xo",
    "W_ho",
    "b_o",
    "W_xc",
    "W_hc",
    "b_c",
    "W_hq",
    "b_q",
)


def _as_tuple(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (state,) if isinstance(state, Tensor) else tuple(state)


def rnn_scratch_step(
    X: Tensor, state: Tensor | tuple[Tensor], params: tuple[Tensor, ...]
) -> tuple[Tensor, tuple[Tensor]]:
    """One RNN step (seed 004): ``X (B, V)``, ``state (H,)`` with H ``(B, H)`` -> ``(Y, (H,))``."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = _as_tuple(state)
    H = torch.tanh(torch.matmul(X, W_xh) + torch.matmul(H, W_hh) + b_h)
    Y = torch.matmul(H, W_hq) + b_q
    return Y, (H,)


def lstm_scratch_step(
    X: Tensor, state: tuple[Tensor, Tensor], params: tuple[Tensor, ...]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One LSTM step (seed 004): ``X (B, V)``, ``state (H, C)`` -> ``(Y (B, Q), (H, C))``."""
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q = params
    H, C = state
    F = torch.sigmoid(torch.matmul(X, W_xf) + torch.matmul(H, W_hf) + b_f)
    I = torch.sigmoid(torch.matmul(X, W_xi) + torch.matmul(H, W_hi) + b_i)  # noqa: E741
    C_tilde = torch.tanh(torch.matmul(X, W_xc) + torch.matmul(H, W_hc) + b_c)
    C = F * C + I * C_tilde
    O = torch.sigmoid(torch.matmul(X, W_xo) + torch.matmul(H, W_ho) + b_o)  # noqa: E741
    H = O * C.tanh()
    Y = torch.matmul(H, W_hq) + b_q
    return Y, (H, C)


def scratch_forward(
    cell: ScratchCell,
    inputs: Tensor,
    state: Tensor | tuple[Tensor, ...],
    params: tuple[Tensor, ...],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Seed 000's loop: ``inputs (T, B, V)`` -> ``(outputs (T*B, Q), state)``."""
    step = rnn_scratch_step if cell == "rnn" else lstm_scratch_step
    st = _as_tuple(state)
    outputs = []
    for X in inputs:
        Y, st = step(X, st, params)
        outputs.append(Y)
    return torch.cat(outputs, dim=0), st


def init_scratch_params(
    cell: ScratchCell,
    vocab_size: int,
    num_hiddens: int,
    scale: float = 0.01,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """Random scratch parameters as d2l's ``get_params`` (normal * ``scale``, zero biases)."""

    def normal(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator) * scale

    V, H = vocab_size, num_hiddens
    gate = lambda: (normal(V, H), normal(H, H), torch.zeros(H))  # noqa: E731
    if cell == "rnn":
        return (*gate(), normal(H, V), torch.zeros(V))
    if cell == "lstm":
        return (*gate(), *gate(), *gate(), *gate(), normal(H, V), torch.zeros(V))
    raise ValueError(f"scratch cell must be 'rnn' or 'lstm', not {cell!r}")


def scratch_to_state_dict(cell: ScratchCell, params: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """Scratch parameters -> ``RNNModel`` state_dict (single layer; hidden-side bias zero)."""
    if cell == "rnn":
        W_xh, W_hh, b_h, W_hq, b_q = params
        w_ih, w_hh, b = W_xh.T, W_hh.T, b_h
    elif cell == "lstm":
        if len(params) != len(_LSTM_NAMES):
            raise ValueError(f"lstm scratch params must be {_LSTM_NAMES}")
        W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q = params
        w_ih = torch.cat([W_xi, W_xf, W_xc, W_xo], dim=1).T  # (4H, V), torch order i, f, g, o
        w_hh = torch.cat([W_hi, W_hf, W_hc, W_ho], dim=1).T  # (4H, H)
        b = torch.cat([b_i, b_f, b_c, b_o])  # (4H,)
    else:
        raise ValueError(f"scratch cell must be 'rnn' or 'lstm', not {cell!r}")
    return {
        "rnn.weight_ih_l0": w_ih.contiguous().clone(),
        "rnn.weight_hh_l0": w_hh.contiguous().clone(),
        "rnn.bias_ih_l0": b.clone(),
        "rnn.bias_hh_l0": torch.zeros_like(b),
        "linear.weight": W_hq.T.contiguous().clone(),
        "linear.bias": b_q.clone(),
    }


def state_dict_to_scratch(cell: ScratchCell, sd: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """Single-layer ``RNNModel`` state_dict -> scratch parameters (biases summed)."""
    if any(k.startswith("rnn.") and not k.endswith("_l0") for k in sd):
        raise ValueError("scratch models have one layer; the state_dict has more")
    w_ih, w_hh = sd["rnn.weight_ih_l0"].T, sd["rnn.weight_hh_l0"].T  # (V, G*H), (H, G*H)
    b = sd["rnn.bias_ih_l0"] + sd["rnn.bias_hh_l0"]
    W_hq, b_q = sd["linear.weight"].T.contiguous(), sd["linear.bias"].clone()
    if cell == "rnn":
        return (w_ih.contiguous(), w_hh.contiguous(), b.clone(), W_hq, b_q)
    if cell != "lstm":
        raise ValueError(f"scratch cell must be 'rnn' or 'lstm', not {cell!r}")
    H = w_hh.shape[0]
    x = [w_ih[:, k * H : (k + 1) * H].contiguous() for k in range(4)]  # i, f, g, o
    h = [w_hh[:, k * H : (k + 1) * H].contiguous() for k in range(4)]
    bs = [b[k * H : (k + 1) * H].clone() for k in range(4)]
    i, f, g, o = 0, 1, 2, 3
    return (x[i], h[i], bs[i], x[f], h[f], bs[f], x[o], h[o], bs[o], x[g], h[g], bs[g], W_hq, b_q)
