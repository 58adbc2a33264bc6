"""Sequence forecaster: seed 002's ``Net`` (``nn.RNN`` + ``nn.Linear``) generalised.

The seed's sine-wave forecaster is ``rnn = nn.RNN(1, 16, num_layers=1, batch_first=True)``
followed by ``linear = nn.Linear(16, 1)``: every step's hidden state is mapped back to the
input features, so the output at step t is the prediction of the point at t + 1. Here the cell
may be ``rnn``/``gru``/``lstm``, with ``input_size`` features, ``hidden_size`` units and
``num_layers`` layers (``nonlinearity`` for rnn); parameter names stay the seed's
(``rnn.weight_ih_l0``, ..., ``linear.weight``, ``linear.bias``), so a
``torch.save(net.state_dict())`` made with the seed class loads here with ``strict=True``.

Forecasting (seed 002's test loop, from a zero state): run over every observed point, the last
output is the first prediction, and each prediction is fed back as the next input.

Serving (inference only, eval mode, no autograd), shaped like :class:`~.charlm.RNNModel`:

- state is a tuple of ``(L, B, H)`` tensors, ``(h,)`` for rnn/gru and ``(h, c)`` for lstm;
- ``prefill``: observed points of one or more series, from given states;
- ``step``: one autoregressive step for ``(B, F)`` points, *batch-invariant*: each row runs
  with batch-1 kernels (``step_one``), the ones the seed's loop runs, so a forecast's numbers
  are the seed's and never depend on its batch mates. A batched matrix multiply would change
  the last bits of a row with the batch, and a forecast feeds its outputs back, so an ulp
  grows over the horizon (measured: ~1e-6 after 40 points); the price is one small call per
  row and layer (measured in the README);
- ``step_batched``: the same step as one batched call per layer (fast; a row's last bits may
  depend on its batch mates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import Cell, architecture_dict, check_recurrent

State = tuple[Tensor, ...]
SEED_INIT_STD = 0.001  # seed 002 initialises every recurrent parameter N(0, 0.001)


@dataclass(frozen=True)
class ForecastConfig:
    """Architecture of a forecaster (config.json ``"architecture"``); defaults are seed 002's."""

    cell: Cell = "rnn"
    input_size: int = 1  # features per point
    hidden_size: int = 16
    num_layers: int = 1
    nonlinearity: str = "tanh"  # rnn only: "tanh" or "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_recurrent(self.cell, self.nonlinearity, self.dropout)
        if self.input_size < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1")

    def to_dict(self) -> dict:
        return architecture_dict(self)


class Forecaster(nn.Module):
    """Seed 002's ``Net``: a batch-first recurrent layer and a linear head back to the features."""

    def __init__(self, cfg: ForecastConfig = ForecastConfig()) -> None:
        super().__init__()
        self.config = cfg
        kwargs = dict(num_layers=cfg.num_layers, batch_first=True,
                      dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        if cfg.cell == "rnn":
            self.rnn: nn.RNNBase = nn.RNN(cfg.input_size, cfg.hidden_size,
                                          nonlinearity=cfg.nonlinearity, **kwargs)
        elif cfg.cell == "gru":
            self.rnn = nn.GRU(cfg.input_size, cfg.hidden_size, **kwargs)
        else:
            self.rnn = nn.LSTM(cfg.input_size, cfg.hidden_size, **kwargs)
        for p in self.rnn.parameters():  # the seed's initialisation (training starts here)
            nn.init.normal_(p, mean=0.0, std=SEED_INIT_STD)
        self.linear = nn.Linear(cfg.hidden_size, cfg.input_size)

    @classmethod
    def from_config(cls, cfg: ForecastConfig) -> Forecaster:
        return cls(cfg)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Teacher-forced pass: ``x`` (B, T, F) -> outputs (B, T, F) (step t predicts t + 1)."""
        if state is None:
            state = self.zero_state(x.shape[0], x.device)
        out, hn = self.rnn(x, self._seed_state(state))  # (B, T, H)
        return self.linear(out), self._serving_state(hn)  # (B, T, F)

    # ------------------------------------------------------------------ state
    def zero_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """All-zero state: ``(h,)`` or ``(h, c)``, each ``(L, B, H)``."""
        device = self.linear.weight.device if device is None else device
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        n = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device, dtype=self.linear.weight.dtype)
                     for _ in range(n))

    def _seed_state(self, state: State) -> Tensor | State:
        return tuple(state) if self.config.cell == "lstm" else state[0]

    @staticmethod
    def _serving_state(state: Tensor | State) -> State:
        return (state,) if isinstance(state, Tensor) else tuple(state)

    # ------------------------------------------------------------------ serving path
    @torch.no_grad()
    def prefill(self, series: Tensor, state: State) -> tuple[Tensor, State]:
        """Run observed points ``series`` (B, T, F), T >= 1, from ``state``.

        Returns the output after the last point ``(B, F)`` (the next point's prediction) and
        the state after it.
        """
        if series.dim() != 3 or series.shape[1] < 1:
            raise ValueError(f"series must be (B, T >= 1, F), got {tuple(series.shape)}")
        out, hn = self.rnn(series, self._seed_state(state))  # (B, T, H)
        # the head over every time step, as the seed's forward does (out.view(-1, 16)): the
        # same product shape as the seed's, so the same bits on a GPU too, where a (1, H)
        # product would pick another kernel
        b, t, h = out.shape
        return self.linear(out.reshape(b * t, h)).view(b, t, -1)[:, -1], \
            self._serving_state(hn)  # (B, F)

    @torch.no_grad()
    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One batch-invariant step: points ``x`` (B, F) and the state -> (outputs (B, F), new
        state). Each row runs alone (:meth:`step_one`), so a row's numbers never depend on its
        batch mates."""
        outs: list[Tensor] = []
        states: list[State] = []
        for i in range(x.shape[0]):
            y, s = self.step_one(x[i : i + 1], tuple(t[:, i : i + 1] for t in state))
            outs.append(y)
            states.append(s)
        if len(outs) == 1:
            return outs[0], states[0]
        return torch.cat(outs), tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))

    @torch.no_grad()
    def step_batched(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for all rows in one fused-cell call per layer: ``x`` (B, F) -> (B, F)."""
        return self.step_one(x, state)

    @torch.no_grad()
    def step_one(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: ``x`` (B, F), state S x (L, B, H) -> ((B, F), new state); B = 1 here.

        torch's fused cells (``rnn_tanh_cell``, ``gru_cell``, ``lstm_cell``, one call per
        layer) on the module's own parameters, then the head: at batch 1 these are the very
        kernels ``nn.RNN``/``nn.Linear`` run in the seed's loop, so the numbers are the seed's.
        On CUDA, ``nn.RNN`` runs cuDNN, not these cells: there the step is the module's own
        ``nn.RNN`` call on one time step, as in the seed's loop.
        """
        if x.is_cuda:
            out, hn = self.rnn(x.unsqueeze(1), self._seed_state(state))  # (B, 1, H)
            return self.linear(out.reshape(-1, out.shape[-1])), self._serving_state(hn)
        cell = self.config.cell
        flat = self.rnn._flat_weights  # [w_ih, w_hh, b_ih, b_hh] per layer (nn.RNNBase order)
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for layer in range(self.config.num_layers):
            weights = flat[4 * layer : 4 * layer + 4]
            if cell == "lstm":
                h, c = torch.lstm_cell(x, (state[0][layer], state[1][layer]), *weights)
                cs.append(c)
            elif cell == "gru":
                h = torch.gru_cell(x, state[0][layer], *weights)
            elif self.config.nonlinearity == "relu":
                h = torch.rnn_relu_cell(x, state[0][layer], *weights)
            else:
                h = torch.rnn_tanh_cell(x, state[0][layer], *weights)  # (B, H)
            hs.append(h)
            x = h
        new_state: State = (torch.stack(hs), torch.stack(cs)) if cell == "lstm" \
            else (torch.stack(hs),)
        return F.linear(x, self.linear.weight, self.linear.bias), new_state  # (B, F)


@torch.no_grad()
def forecast(net: Forecaster, series: Tensor, horizon: int) -> Tensor:
    """Seed 002's forecast from a zero state: ``series`` (T, F), T >= 1 -> ``(horizon, F)``."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    device = net.linear.weight.device
    y, state = net.prefill(series.unsqueeze(0).to(device), net.zero_state(1, device))  # (1, F)
    out = [y]
    for _ in range(horizon - 1):
        y, state = net.step(y, state)
        out.append(y)
    return torch.cat(out)  # (horizon, F)
