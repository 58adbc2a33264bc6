"""Character language model: the d2l ``RNNModel`` of seed 000, plus a fast serving path.

``RNNModel(rnn_layer, vocab_size)`` wraps an ``nn.RNN``/``nn.GRU``/``nn.LSTM`` whose input is the
one-hot encoding of the token ids, followed by ``linear``; parameter names are exactly the
seed's (``rnn.weight_ih_l0``, ..., ``linear.weight``, ``linear.bias``) so a
``torch.save(net.state_dict())`` made with the seed class loads here with ``strict=True``.
``forward`` and ``begin_state`` are the seed's, token for token.

Serving adds (inference only, eval mode, no autograd):

- state is always a tuple of ``(L, B, H)`` tensors, ``(h,)`` for rnn/gru and ``(h, c)`` for
  lstm; the batch is dimension 1, so sessions join/leave a batch with ``cat``/``split`` on dim 1;
- ``prefill``: variable-length prompts in one packed ``nn`` call;
- ``step``: one decode step with torch's fused cell functions (``torch.lstm_cell``,
  ``torch.gru_cell``, ``torch.rnn_tanh_cell``/``rnn_relu_cell``: one call per layer, the gate
  math in C++ in torch's gate order) on the module's own parameters, the input being the one-hot
  rows of the token ids. It equals ``forward`` on one step to 1e-5 and costs a handful of
  dispatches, which is what a batch-1 decode step is made of.

Both run batch-invariant by default (``batch_invariant = True``): ``step`` and ``prefill`` then
go through :class:`~rnnserve.models.invariant.InvariantRecurrence`, whose row results are
bit-identical whatever else shares the call, and whose prefill equals step-by-step feeding bit
for bit (any split into chunks included). ``batch_invariant = False`` selects the torch fused
paths described above (faster for some batch sizes; a row then changes in the last bits with its
batch mates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .invariant import InvariantRecurrence, Layer, linear_rows
from .recurrent import Cell, architecture_dict, check_recurrent

logger = logging.getLogger(__name__)

State = tuple[Tensor, ...]
_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@dataclass(frozen=True)
class CharLMConfig:
    """Architecture of a char LM (config.json ``"architecture"``)."""

    cell: Cell
    vocab_size: int
    num_hiddens: int
    num_layers: int = 1
    dropout: float = 0.0
    nonlinearity: str = "tanh"  # rnn only: "tanh" or "relu"

    def __post_init__(self) -> None:
        check_recurrent(self.cell, self.nonlinearity, self.dropout)
        if self.vocab_size < 1 or self.num_hiddens < 1 or self.num_layers < 1:
            raise ValueError("vocab_size, num_hiddens and num_layers must be >= 1")

    def to_dict(self) -> dict:
        return architecture_dict(self)


def cell_of(rnn_layer: nn.Module) -> Cell:
    """'rnn' | 'gru' | 'lstm' for an ``nn.RNN``/``nn.GRU``/``nn.LSTM``."""
    if isinstance(rnn_layer, nn.LSTM):
        return "lstm"
    if isinstance(rnn_layer, nn.GRU):
        return "gru"
    if isinstance(rnn_layer, nn.RNN):
        return "rnn"
    raise TypeError(f"unsupported recurrent layer {type(rnn_layer).__name__}")


class RNNModel(nn.Module):
    """The recurrent neural network model of seed 000 (d2l ``RNNModel``)."""

    def __init__(self, rnn_layer: nn.RNNBase, vocab_size: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        if not self.rnn.bidirectional:
            self.num_directions = 1
            self.linear = nn.Linear(self.num_hiddens, self.vocab_size)
        else:
            self.num_directions = 2
            self.linear = nn.Linear(self.num_hiddens * 2, self.vocab_size)
        self.batch_invariant = True  # serving path: bit-identical rows at any batch size
        self._recurrence: tuple[tuple, InvariantRecurrence] | None = None

    @classmethod
    def from_config(cls, cfg: CharLMConfig) -> RNNModel:
        kwargs = dict(num_layers=cfg.num_layers, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        if cfg.cell == "rnn":
            layer: nn.RNNBase = nn.RNN(
                cfg.vocab_size, cfg.num_hiddens, nonlinearity=cfg.nonlinearity, **kwargs
            )
        elif cfg.cell == "gru":
            layer = nn.GRU(cfg.vocab_size, cfg.num_hiddens, **kwargs)
        else:
            layer = nn.LSTM(cfg.vocab_size, cfg.num_hiddens, **kwargs)
        return cls(layer, cfg.vocab_size)

    @property
    def cell(self) -> Cell:
        return cell_of(self.rnn)

    # ------------------------------------------------------------------ seed 000, verbatim
    def forward(self, inputs: Tensor, state: Tensor | State) -> tuple[Tensor, Tensor | State]:
        X = F.one_hot(inputs.T.long(), self.vocab_size)  # (T, B, V)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)  # (T, B, D*H)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))  # (T*B, V)
        return output, state

    def begin_state(self, device: torch.device | str, batch_size: int = 1) -> Tensor | State:
        shape = (self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens)
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros(shape, device=device)
        return (torch.zeros(shape, device=device), torch.zeros(shape, device=device))

    # ------------------------------------------------------------------ serving path
    def _check_servable(self) -> None:
        if self.rnn.bidirectional:
            raise ValueError("a bidirectional RNNModel cannot generate text")
        if not self.rnn.bias:
            raise ValueError("the serving path needs an rnn layer with biases")

    def zero_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """All-zero serving state: ``(h,)`` or ``(h, c)``, each ``(L, B, H)``."""
        device = self.linear.weight.device if device is None else device
        shape = (self.rnn.num_layers, batch_size, self.num_hiddens)
        n = 2 if isinstance(self.rnn, nn.LSTM) else 1
        return tuple(
            torch.zeros(shape, device=device, dtype=self.linear.weight.dtype) for _ in range(n)
        )

    @staticmethod
    def state_bytes(state: State) -> int:
        """Bytes held by a state's tensors."""
        return sum(t.numel() * t.element_size() for t in state)

    def to_serving_state(self, state: Tensor | State) -> State:
        """Seed state (tensor for rnn/gru, tuple for lstm) -> serving tuple."""
        return (state,) if isinstance(state, Tensor) else tuple(state)

    def to_seed_state(self, state: State) -> Tensor | State:
        """Serving tuple -> seed state (what ``forward`` takes)."""
        return tuple(state) if isinstance(self.rnn, nn.LSTM) else state[0]

    def invariant_recurrence(self) -> InvariantRecurrence:
        """The batch-invariant kernels on this module's current parameters (cached; rebuilt
        when the parameters move or are overwritten, e.g. by ``load_state_dict``)."""
        flat = self.rnn._flat_weights
        # an inference tensor (a module built under torch.inference_mode) has no version
        # counter and cannot be changed in place outside that mode: its address is the key
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.device, t.dtype)
                    for t in flat)
        cached = self._recurrence
        if cached is None or cached[0] != key:
            layers = [Layer(*flat[4 * i : 4 * i + 4]) for i in range(self.rnn.num_layers)]
            cached = self._recurrence = (key, InvariantRecurrence(
                self.cell, layers, getattr(self.rnn, "nonlinearity", "tanh")))
        return cached[1]

    def _logits(self, h: Tensor, tile: int) -> Tensor:
        return linear_rows(h, self.linear.weight, self.linear.bias, tile)  # (B, V)

    @torch.no_grad()
    def prefill(self, sequences: list[list[int]], state: State) -> tuple[Tensor, State]:
        """Run token sequences (each non-empty; B = len(sequences)) from ``state``.

        Returns the logits after each sequence's last token ``(B, V)`` and the state after it.
        Batch-invariant (the default): bit-identical to feeding the tokens through :meth:`step`
        one at a time, alone or with any other rows. Otherwise one packed ``nn`` call.
        """
        self._check_servable()
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("prefill needs at least one sequence and every sequence non-empty")
        if self.batch_invariant:
            recurrence = self.invariant_recurrence()
            top, new_state = recurrence.prefill(sequences, state)
            return self._logits(top, recurrence.tile), new_state
        device = self.linear.weight.device
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        padded = torch.zeros((len(sequences), int(lengths.max())), dtype=torch.int64)  # (B, T)
        for i, seq in enumerate(sequences):
            padded[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
        x = F.one_hot(padded.T.to(device), self.vocab_size).to(
            self.linear.weight.dtype
        )  # (T, B, V)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, hn = self.rnn(packed, self.to_seed_state(state))
        new_state = self.to_serving_state(hn)
        logits = self.linear(new_state[0][-1])  # top layer h after each row's last token: (B, V)
        return logits, new_state

    def _one_hot(self, tokens: Tensor) -> Tensor:
        """``(B,)`` ids -> ``(B, V)`` one-hot rows in the weights' dtype.

        Built per step, so memory is B x V; a cached ``torch.eye(V)`` would hold V x V (1.6 GB
        for a 20,000-character vocabulary). The rows are the same values, so the cell's
        arithmetic (and every output bit) is unchanged.
        """
        weight = self.linear.weight
        return F.one_hot(tokens.to(weight.device), self.vocab_size).to(weight.dtype)

    @torch.no_grad()
    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decode step: ``tokens`` (B,) int64, state tuple -> (logits (B, V), new state).

        Batch-invariant (the default): each row's logits and state are bit-identical whatever
        other rows share the step.
        """
        self._check_servable()
        if self.batch_invariant:
            recurrence = self.invariant_recurrence()
            top, new_state = recurrence.step(tokens, state)
            return self._logits(top, recurrence.tile), new_state
        rnn = self.rnn
        flat = rnn._flat_weights  # [w_ih, w_hh, b_ih, b_hh] per layer, as nn.RNNBase.forward uses
        x = self._one_hot(tokens)  # (B, V)
        h_prev = state[0]  # (L, B, H)
        hs: list[Tensor] = []
        if isinstance(rnn, nn.LSTM):
            c_prev = state[1]  # (L, B, H)
            cs: list[Tensor] = []
            for layer in range(rnn.num_layers):
                h, c = torch.lstm_cell(x, (h_prev[layer], c_prev[layer]),
                                       *flat[4 * layer : 4 * layer + 4])  # (B, H) each
                hs.append(h)
                cs.append(c)
                x = h
            new_state: State = (torch.stack(hs), torch.stack(cs))
        else:
            if isinstance(rnn, nn.GRU):
                cell_fn = torch.gru_cell
            elif rnn.nonlinearity == "relu":
                cell_fn = torch.rnn_relu_cell
            else:
                cell_fn = torch.rnn_tanh_cell
            for layer in range(rnn.num_layers):
                x = cell_fn(x, h_prev[layer], *flat[4 * layer : 4 * layer + 4])  # (B, H)
                hs.append(x)
            new_state = (torch.stack(hs),)
        logits = F.linear(x, self.linear.weight, self.linear.bias)  # (B, V)
        return logits, new_state


@torch.no_grad()
def predict_greedy(net: RNNModel, prefix_ids: list[int], num_preds: int) -> list[int]:
    """Greedy continuation ids, same numbers as seed 000's ``predict_ch8`` (without the prefix)."""
    if not prefix_ids:
        raise ValueError("prefix must not be empty")
    device = net.linear.weight.device
    logits, state = net.prefill([prefix_ids], net.zero_state(1, device))
    out: list[int] = []
    for i in range(num_preds):
        tok = logits.argmax(dim=1)  # (1,)
        out.append(int(tok))
        if i + 1 < num_preds:
            logits, state = net.step(tok, state)
    return out
