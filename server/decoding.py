"""Choosing the next character from a step's logits: greedy argmax or seeded sampling.

Each sequence carries its own options and its own random generator, so what it draws never
depends on which other sequences share its batch. Sampling never draws ``<unk>`` (index 0): it
is no character, and a text holding it could not be sent back to continue the session exactly.
Greedy decoding keeps the plain argmax, as the seed's ``predict_ch8`` does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodingOptions:
    """How one generation picks its characters (validated by the caller)."""

    temperature: float = 0.0  # 0 = greedy argmax
    top_k: int = 0  # 0 = no limit
    top_p: float = 0.0  # 0 or 1 = no limit
    seed: int = 0  # 0 = unseeded
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


UNK = 0  # the vocabulary's <unk> index


class Sampler:
    """Draws tokens for one sequence from its logits rows (on the CPU, with its own generator)."""

    def __init__(self, options: DecodingOptions) -> None:
        self.options = options
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(options.seed if options.seed else secrets.randbits(63))

    def draw(self, logits: torch.Tensor) -> int:
        """Sample one token id from a ``(V,)`` logits row."""
        opts = self.options
        # float64: any temperature in (0, 100] from a float32 field stays finite (float32
        # logits / 1e-38 overflow to inf, and softmax of inf is NaN)
        scores = logits.detach().to("cpu", torch.float64) / opts.temperature  # (V,)
        if scores.numel() > UNK + 1:
            scores[UNK] = float("-inf")
        if 0 < opts.top_k < scores.numel():
            kth = torch.topk(scores, opts.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if 0.0 < opts.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            cut = cumulative - sorted_probs >= opts.top_p
            sorted_probs = sorted_probs.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))

