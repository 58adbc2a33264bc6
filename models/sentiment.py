"""Sentiment classifier: the ``SentimentRNN`` of seed 001.

embedding -> LSTM (batch_first, ``no_layers``, optionally bidirectional) -> additive attention
pooling over time (``Linear, Tanh, Linear`` then softmax) -> dropout -> ``fc`` -> sigmoid.
Parameter names are the seed's (``embedding.weight``, ``lstm.*``, ``attention.0.*``,
``attention.2.*``, ``fc.*``), so a seed ``state_dict`` loads with ``strict=True``; ``forward``
and ``init_hidden`` behave exactly as in the seed. ``score`` adds the serving view: P(positive)
and the attention weight of every position (for ``explain``). Inputs are always padded or
truncated to the config's fixed ``seq_length``, and ``score`` runs batch-invariant by default
(``batch_invariant = True``): the batch is cut into fixed tiles of
:func:`~rnnserve.models.invariant.tile_rows` texts (the last one padded with zero ids) and every
tile is one call with the same shapes, so a text's score and attention weights are bit-identical
alone and in any batch, at any position. The library kernels never mix rows within a call; the
row count is what changes their blocking and rounding, and tiling pins it.

The tiles of one ``score`` call run as one TorchScript call (:class:`TiledScore`: the tile's
forward traced once per device and sequence length, the loop over tiles scripted) on the CPU,
through :mod:`rnnserve.models.scripted`: the same operators and bits as the eager tiles, without
the GIL held while they run (a tile of 8 texts next to a busy event loop: 122-129 ms eager,
8.3 ms as one call). If TorchScript cannot trace it, and on CUDA, the tiles run eagerly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from . import scripted
from .invariant import pad_rows, tile_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentimentConfig:
    """Architecture of a SentimentRNN (config.json ``"architecture"``, plus ``"type"``)."""

    vocab_size: int
    embedding_dim: int
    hidden_dim: int
    no_layers: int
    output_dim: int = 1
    drop_prob: float = 0.5
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.embedding_dim, self.hidden_dim, self.no_layers) < 1:
            raise ValueError("vocab_size, embedding_dim, hidden_dim and no_layers must be >= 1")
        if self.output_dim != 1:
            raise ValueError("only output_dim=1 (a sigmoid score) is supported")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError("drop_prob must be in [0, 1)")

    def to_dict(self) -> dict:
        return {"type": "sentiment_rnn", **asdict(self)}


class SentimentRNN(nn.Module):
    """Seed 001's LSTM sentiment classifier with attention pooling."""

    def __init__(
        self,
        no_layers: int,
        vocab_size: int,
        hidden_dim: int,
        embedding_dim: int,
        output_dim: int,
        drop_prob: float = 0.5,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.no_layers = no_layers
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(
            input_size=embedding_dim,
            hidden_size=hidden_dim,
            num_layers=no_layers,
            batch_first=True,
            dropout=drop_prob if no_layers > 1 else 0,
            bidirectional=bidirectional,
        )
        lstm_output_dim = hidden_dim * 2 if bidirectional else hidden_dim
        self.attention = nn.Sequential(
            nn.Linear(lstm_output_dim, lstm_output_dim),
            nn.Tanh(),
            nn.Linear(lstm_output_dim, 1),
        )
        self.dropout = nn.Dropout(drop_prob)
        self.fc = nn.Linear(lstm_output_dim, output_dim)
        self.sig = nn.Sigmoid()
        self.batch_invariant = True  # score: bit-identical per text at any batch size

    @classmethod
    def from_config(cls, cfg: SentimentConfig) -> SentimentRNN:
        return cls(
            cfg.no_layers,
            cfg.vocab_size,
            cfg.hidden_dim,
            cfg.embedding_dim,
            cfg.output_dim,
            cfg.drop_prob,
            cfg.bidirectional,
        )

    def _run(self, x: Tensor, hidden: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple, Tensor]:
        if hidden is None:
            hidden = self.init_hidden(x.size(0))
        embeds = self.dropout(self.embedding(x))  # (B, S, E)
        lstm_out, hidden = self.lstm(embeds, hidden)  # (B, S, D*H)
        weights = torch.softmax(self.attention(lstm_out), dim=1)  # (B, S, 1)
        context = torch.sum(weights * lstm_out, dim=1)  # (B, D*H)
        out = self.fc(self.dropout(context))  # (B, 1)
        return self.sig(out), hidden, weights.squeeze(-1)

    def forward(
        self, x: Tensor, hidden: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple]:
        sig_out, hidden, _ = self._run(x, hidden)
        return sig_out, hidden

    def init_hidden(self, batch_size: int) -> tuple[Tensor, Tensor]:
        device = next(self.parameters()).device
        num_directions = 2 if self.bidirectional else 1
        h0 = torch.zeros(self.no_layers * num_directions, batch_size, self.hidden_dim).to(device)
        c0 = torch.zeros(self.no_layers * num_directions, batch_size, self.hidden_dim).to(device)
        return h0, c0

    @torch.no_grad()
    def score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Eval-mode P(positive) ``(B,)`` and attention weights ``(B, S)`` for ids ``x (B, S)``.

        Batch-invariant (the default): computed in fixed tiles of rows, each text's numbers are
        bit-identical whatever else is in ``x``.
        """
        was_training = self.training
        if was_training:  # eval()/train() walk every submodule: ~70 µs a call when not needed
            self.eval()
        try:
            if not self.batch_invariant:
                probs, _, weights = self._run(x, None)
                return probs[:, 0], weights
            rows = x.shape[0]
            tile = tile_rows(x.device)
            tiled = self._tiled(x, tile)
            padded = pad_rows(x, tile)
            if tiled is None:
                parts = [self._run(part, None) for part in padded.split(tile)]
                probs = torch.cat([p[0] for p in parts])[:, 0]  # (R * tile,)
                weights = torch.cat([p[2] for p in parts])  # (R * tile, S)
            else:
                probs, weights = scripted.call(tiled, padded)
        finally:
            if was_training:
                self.train()
        if probs.shape[0] == rows:  # no slicing call: each gives the GIL back
            return probs, weights
        return probs[:rows], weights[:rows]

    def _tiled(self, x: Tensor, tile: int) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
        """The scripted tile loop for ``x``'s device and sequence length on the current
        parameters (traced on first use); None when TorchScript cannot trace it (then ``score``
        runs the tiles eagerly)."""
        if x.device.type != "cpu":  # not yet run on a GPU: CUDA keeps the eager tiles
            return None
        # the traced graph holds these parameter tensors: a parameter replaced (assign=True,
        # a new nn.Parameter, .to(), .half(), a deep copy's own) traces again
        params = tuple((p.data_ptr(), p.dtype) for p in self.parameters())
        held = _TRACED.get(self)
        if held is None or held[0] != params:
            held = _TRACED[self] = (params, {})
        cache = held[1]
        key = (x.shape[1], tile)
        if key not in cache:
            cache[key] = scripted.trace(
                _Tile(self), (x.new_zeros((tile, x.shape[1])),), "the classifier's tile",
                script=lambda traced: torch.jit.script(TiledScore(traced, tile)))
        return cache[key]


_TRACED: weakref.WeakKeyDictionary[SentimentRNN, tuple[tuple, dict]] = weakref.WeakKeyDictionary()
"""Each classifier's traced tile loops, outside the module (a module stays picklable and
copyable, and its graphs go with it), with the parameters they were traced on."""


class _Tile(nn.Module):
    """One eval-mode tile of :meth:`SentimentRNN.score`: ids ``(tile, S)`` -> P ``(tile,)``,
    attention ``(tile, S)``; what gets traced."""

    def __init__(self, net: SentimentRNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        probs, _, weights = self.net._run(x, None)
        return probs[:, 0], weights


class TiledScore(nn.Module):
    """Scores ids ``(R * tile, S)`` tile by tile in one TorchScript call: P ``(R * tile,)`` and
    attention ``(R * tile, S)``, each tile through the same traced graph."""

    def __init__(self, tile_fn: torch.jit.ScriptModule, tile: int) -> None:
        super().__init__()
        self.tile_fn = tile_fn
        self.tile = tile

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        probs: list[Tensor] = []
        weights: list[Tensor] = []
        for part in x.split(self.tile):
            p, w = self.tile_fn(part)
            probs.append(p)
            weights.append(w)
        return torch.cat(probs), torch.cat(weights)
