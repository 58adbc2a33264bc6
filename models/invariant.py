"""Batch-invariant kernels: a row's numbers never depend on the other rows of its batch.

Why they are needed: a float32 matrix product rounds differently depending on how many rows it
has. The BLAS picks its kernel by shape (measured with torch 2.13's MKL on an AVX-512 Xeon: one
row takes a matrix-vector path, a few rows a small-matrix path, many rows the packed GEMM; each
rounds its sums in another order), and cuBLAS chooses kernels by shape as well. A difference of
one unit in the last place grows through a recurrence until an argmax flips, so a request's text
would depend on which requests shared its decode steps.

How these kernels avoid it (no custom code below the torch operator level):

- every matrix product runs on **fixed-shape row tiles**: the rows are padded to a multiple of
  ``tile`` (zero rows) and each tile is one ``mm`` call of shape ``(tile, K) @ (K, N)``, so the
  library sees the same call whatever the batch size, and a GEMM never mixes rows: a row's
  result depends on its own numbers only, not on its neighbours, their number, or its position
  in the tile (each pinned by tests/models/test_invariant.py). One ``bmm`` over all tiles is
  *not* enough: measured, MKL's ``bmm`` rounds a single tile differently from several;
- the tile is 8 rows on CPU: with 4, one measured shape (a GRU's 128 -> 384 product) changed
  with the torch thread count; with 8 none of the shapes measured (K 64..1024) did. On CUDA the
  tile is 64 rows (a batch up to 64 is one call; a GPU computes 64 rows in the time of one);
- one-hot inputs are **gathered**, not multiplied: ``onehot(t) @ W^T`` has one non-zero term, so
  the gather is the exact value any GEMM would produce;
- the element-wise gate math uses operators whose vectorised body and scalar tail round alike:
  ``sigmoid`` is written as ``1 / (1 + exp(-x))`` because torch's CPU ``sigmoid`` does not (its
  SIMD body and its scalar tail differ for ~4% of inputs, measured), while ``exp`` and ``tanh``
  do;
- a prefill is the decode step applied once per time step to the rows still consuming input, so
  a packed prefill, a prefill split into chunks anywhere, and token-by-token warm-up in a decode
  batch all produce the same bits.

State layout is the char LM's serving layout: a tuple of ``(L, B, H)`` tensors, ``(h,)`` for
rnn/gru and ``(h, c)`` for lstm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

State = tuple[Tensor, ...]

CPU_TILE_ROWS = 8  # rows per product tile on CPU
CUDA_TILE_ROWS = 64  # rows per product tile on a GPU


def tile_rows(device: torch.device | str) -> int:
    """Rows per matrix-product tile on ``device``."""
    return CUDA_TILE_ROWS if torch.device(device).type == "cuda" else CPU_TILE_ROWS


def pad_rows(x: Tensor, tile: int) -> Tensor:
    """``x (R, ...)`` with zero rows appended up to a multiple of ``tile`` (no copy if none)."""
    rows = x.shape[0]
    padded = -(-rows // tile) * tile
    if padded == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((padded - rows, *x.shape[1:]))])


def matmul_rows(x: Tensor, weight: Tensor, tile: int) -> Tensor:
    """``x @ weight.T`` for ``x (R, K)``, ``weight (N, K)`` -> ``(R, N)``, on fixed row tiles.

    Row ``r`` of the result is bit-identical whatever the other rows are, however many there
    are and wherever ``r`` sits: the rows are padded to a multiple of ``tile`` and every tile
    is the same ``mm`` call with the same shapes.
    """
    rows = x.shape[0]
    xp = pad_rows(x, tile)
    wt = weight.t()  # (K, N) view
    out = torch.empty((xp.shape[0], wt.shape[1]), dtype=x.dtype, device=x.device)
    for part, dest in zip(xp.split(tile), out.split(tile), strict=True):
        torch.mm(part, wt, out=dest)
    return out[:rows] if out.shape[0] != rows else out


def linear_rows(x: Tensor, weight: Tensor, bias: Tensor | None, tile: int) -> Tensor:
    """``x @ weight.T + bias`` on fixed row tiles (see :func:`matmul_rows`); ``(R, N)``."""
    y = matmul_rows(x, weight, tile)
    return y if bias is None else y.add_(bias)


def sigmoid(x: Tensor) -> Tensor:
    """Logistic function as ``1 / (1 + exp(-x))``: the same bits in SIMD body and scalar tail."""
    return torch.exp(-x).add_(1.0).reciprocal_()


@dataclass(frozen=True)
class Layer:
    """One recurrent layer's parameters in torch's gate order (``nn.RNNBase`` names)."""

    w_ih: Tensor  # (G*H, I)
    w_hh: Tensor  # (G*H, H)
    b_ih: Tensor  # (G*H,)
    b_hh: Tensor  # (G*H,)


class InvariantRecurrence:
    """The decode step and the prefill of a stacked RNN/GRU/LSTM on batch-invariant kernels.

    ``cell`` is ``"rnn"``, ``"gru"`` or ``"lstm"``; layer 0's input is one-hot token ids
    (gathered from ``w_ih``), the other layers' input the layer below's ``h``. The products are
    ``x @ W_ih^T + b_ih`` then ``h @ W_hh^T + b_hh`` (GRU keeps them apart for its reset gate;
    the other cells accumulate the second into the first).
    """

    def __init__(self, cell: str, layers: Sequence[Layer], nonlinearity: str = "tanh",
                 tile: int | None = None) -> None:
        if cell not in ("rnn", "gru", "lstm"):
            raise ValueError(f"unknown cell {cell!r}")
        self.cell = cell
        self.layers = list(layers)
        self.relu = cell == "rnn" and nonlinearity == "relu"
        first = self.layers[0]
        self.tile = tile if tile is not None else tile_rows(first.w_hh.device)
        gru = cell == "gru"
        # the bias added to x @ W_ih^T: b_ih for GRU (its reset gate needs the products apart),
        # b_ih + b_hh otherwise
        self.bias = [la.b_ih if gru else la.b_ih + la.b_hh for la in self.layers]
        # (V, G*H): row t = onehot(t) @ W_ih^T + bias, exactly (one non-zero term per sum)
        self.embed = first.w_ih.t() + self.bias[0]

    def _cell(self, index: int, gi: Tensor, h: Tensor, c: Tensor | None
              ) -> tuple[Tensor, Tensor | None]:
        """One cell update of layer ``index``: ``gi (B, G*H)`` = x @ W_ih^T + bias."""
        layer = self.layers[index]
        gh = matmul_rows(h, layer.w_hh, self.tile)  # (B, G*H)
        size = h.shape[1]
        if self.cell == "gru":
            gh.add_(layer.b_hh)
            rz = sigmoid(gi[:, : 2 * size] + gh[:, : 2 * size])  # (B, 2H)
            n = torch.tanh(torch.addcmul(gi[:, 2 * size :], rz[:, :size], gh[:, 2 * size :]))
            return torch.addcmul(n, rz[:, size:], h - n), None
        gates = gh.add_(gi)  # (B, G*H)
        if self.cell == "lstm":
            ifo = sigmoid(gates)  # (B, 4H); the g quarter is unused
            g = torch.tanh(gates[:, 2 * size : 3 * size])
            c_new = torch.addcmul(ifo[:, size : 2 * size] * c, ifo[:, :size], g)
            return ifo[:, 3 * size :] * torch.tanh(c_new), c_new
        return (torch.relu_(gates) if self.relu else torch.tanh_(gates)), None

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for every row: ``tokens (B,)`` int64 -> (top ``h (B, H)``, new state)."""
        lstm = self.cell == "lstm"
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        x = tokens
        for index, layer in enumerate(self.layers):
            if index == 0:
                gi = self.embed.index_select(0, tokens)  # (B, G*H)
            else:
                gi = linear_rows(x, layer.w_ih, self.bias[index], self.tile)
            h, c = self._cell(index, gi, state[0][index], state[1][index] if lstm else None)
            hs.append(h)
            if c is not None:
                cs.append(c)
            x = h
        new: State = (torch.stack(hs),) + ((torch.stack(cs),) if lstm else ())
        return x, new

    def prefill(self, sequences: Sequence[Sequence[int]], state: State) -> tuple[Tensor, State]:
        """Consume token sequences (each non-empty) from ``state`` (``B = len(sequences)``).

        Each time step is :meth:`step` on the rows whose sequence is still running, so the
        result is bit-identical to feeding the tokens one step at a time, in any batch.
        Returns the top layer's ``h`` after each sequence's last token ``(B, H)`` and the state.
        """
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("prefill needs at least one sequence and every sequence non-empty")
        device = state[0].device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        longest = len(sequences[order[0]])
        grid = torch.zeros((longest, len(order)), dtype=torch.int64)  # (T, B) longest first
        for col, i in enumerate(order):
            grid[: len(sequences[i]), col] = torch.as_tensor(sequences[i], dtype=torch.int64)
        grid = grid.to(device)
        index = torch.as_tensor(order, dtype=torch.int64, device=device)
        work = [t.index_select(1, index) for t in state]  # (L, B, H), sorted rows
        lengths = [len(sequences[i]) for i in order]
        active = len(order)
        for t in range(longest):
            while lengths[active - 1] <= t:
                active -= 1
            _, stepped = self.step(grid[t, :active], tuple(w[:, :active] for w in work))
            for w, s in zip(work, stepped, strict=True):
                w[:, :active] = s
        inverse = torch.empty_like(index)
        inverse[index] = torch.arange(len(order), device=device)
        new_state = tuple(w.index_select(1, inverse) for w in work)
        return new_state[0][-1], new_state

