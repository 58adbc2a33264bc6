"""Choosing the next character from a step's logits: greedy argmax or seeded sampling.

Sampling is vectorised: the sampled rows of a decode step are drawn in one call
(:func:`sample`), temperature, top-k and top-p applied to all of them at once, each row with its
own options. Randomness is counter-based: a row's draw number ``n`` (its generated-token count)
and its seed give one uniform number (:func:`uniform`, splitmix64), and the token is the inverse
of the row's cumulative distribution at that number. A row's draw therefore depends only on its
own logits, options, seed and draw number — never on which other rows share its batch or where
it sits — and the same seed gives the same text. Every operation on the ``(n, V)`` matrix is
row-wise (softmax, sort, cumulative sum), so a row's numbers do not depend on ``n`` either.

Sampling never draws ``<unk>`` (index 0): it is no character, and a text holding it could not be
sent back to continue the session exactly. Greedy decoding keeps the plain argmax, as the seed's
``predict_ch8`` does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

UNK = 0  # the vocabulary's <unk> index
_MASK = (1 << 64) - 1


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

    def draw_seed(self) -> int:
        """The seed a generation draws with: its own, or a fresh random one when unseeded."""
        return self.seed if self.seed else secrets.randbits(63)


def uniform(seed: int, draw: int) -> float:
    """A number in [0, 1) from (seed, draw number): splitmix64 of a Weyl sequence, 53 bits."""
    z = (seed + (draw + 1) * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53))


def sample(logits: torch.Tensor, options: list[DecodingOptions], seeds: list[int],
           draws: list[int]) -> torch.Tensor:
    """Draw one token per row: ``logits`` (n, V) on any device -> ids (n,) int64, same device.

    Row i uses ``options[i]`` (temperature > 0), the uniform number of ``(seeds[i], draws[i])``.
    Raises whatever torch raises (out of memory, a device error); the engine then retries the
    rows one at a time so that only the failing request fails.
    """
    device = logits.device
    n, vocab = logits.shape
    # float64: any temperature in (0, 100] from a float32 field stays finite (float32
    # logits / 1e-38 overflow to inf, and softmax of inf is NaN)
    rows = [(o.temperature, o.top_k if 0 < o.top_k < vocab else vocab,
             o.top_p if 0.0 < o.top_p < 1.0 else 2.0, uniform(s, d))
            for o, s, d in zip(options, seeds, draws, strict=True)]
    params = torch.tensor(rows, dtype=torch.float64).to(device)  # (n, 4): one transfer
    temps, top_p, u = params[:, 0], params[:, 2], params[:, 3]
    top_k = params[:, 1].long()
    scores = logits.to(torch.float64) / temps[:, None]  # (n, V)
    if vocab > UNK + 1:
        scores[:, UNK] = float("-inf")
    ordered, order = torch.sort(scores, dim=1, descending=True)  # (n, V)
    kth = ordered.gather(1, (top_k - 1)[:, None])  # (n, 1): the k-th largest score
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = torch.softmax(ordered, dim=1)  # (n, V), sorted descending
    cumulative = torch.cumsum(probs, dim=1)  # (n, V)
    # the kept tokens are a prefix of the sorted row: inside top-k (probability > 0) and, for
    # top-p, the smallest prefix whose mass reaches top_p (always the first token)
    kept = ((cumulative - probs < top_p[:, None]) & (probs > 0)).sum(1, keepdim=True)  # (n, 1)
    target = u[:, None] * cumulative.gather(1, kept - 1)  # (n, 1): u x the kept mass
    pick = torch.searchsorted(cumulative, target, right=True)  # (n, 1)
    pick = torch.minimum(pick, kept - 1)  # rounding must not step past the kept prefix
    return order.gather(1, pick)[:, 0]
