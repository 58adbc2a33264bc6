"""The decode batch: the hidden states and next inputs of every sequence advancing together.

Batch algebra in one type: ``concatenate`` lets sequences join between steps and ``filter`` lets
them leave, both along the batch dimension of the model's state tuple (S tensors of
``(L, B, H)``: S = 2 for an LSTM's ``(h, c)``, 1 otherwise), kept exactly as the model's ``step``
takes and returns it, so that a decode step copies nothing. ``row_state`` copies one sequence's
state out as a single ``(S, L, H)`` tensor, so that a session holds its own small tensor, never a
view that keeps the whole batch alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


@dataclass
class DecodeBatch(Generic[T]):
    """Sequences (``items``) with their states and next inputs, row for row."""

    items: list[T]
    state: tuple[torch.Tensor, ...]  # S x (L, B, H)
    tokens: torch.Tensor  # (B,) int64: each row's next input

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_rows(cls, items: list[T], states: list[torch.Tensor], tokens: list[int],
                  device: torch.device) -> DecodeBatch[T]:
        """Build a batch from per-sequence ``(S, L, H)`` states."""
        state = torch.stack(states, dim=2)  # (S, L, B, H)
        return cls(items, tuple(state.unbind(0)),
                   torch.tensor(tokens, dtype=torch.long, device=device))

    def concatenate(self, other: DecodeBatch[T]) -> DecodeBatch[T]:
        return DecodeBatch(
            self.items + other.items,
            tuple(torch.cat([a, b], dim=1) for a, b in zip(self.state, other.state, strict=True)),
            torch.cat([self.tokens, other.tokens]),
        )

    def filter(self, keep: list[int]) -> DecodeBatch[T] | None:
        """The batch with only rows ``keep`` (None when empty)."""
        if not keep:
            return None
        if len(keep) == len(self.items):
            return self
        index = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)
        return DecodeBatch(
            [self.items[i] for i in keep],
            tuple(t.index_select(1, index) for t in self.state),
            self.tokens.index_select(0, index),
        )

    def row_state(self, row: int) -> torch.Tensor:
        """A compact copy of one row's state, ``(S, L, H)``."""
        return torch.stack([t[:, row] for t in self.state])
