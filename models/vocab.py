"""Token vocabularies with d2l.ai ``Vocab`` semantics.

Index 0 is always ``"<unk>"``; any token that is not in the vocabulary maps to it. ``Vocab.build``
counts tokens and orders them exactly as d2l does: ``sorted(counter.items(), key=freq,
reverse=True)`` over a ``collections.Counter`` (insertion ordered), so ties keep the order in
which the tokens were first seen. A vocabulary is stored in a model's ``config.json`` as its
``idx_to_token`` list and rebuilt from it with ``Vocab(idx_to_token)``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

UNK_TOKEN = "<unk>"


class Vocab:
    """Bidirectional token <-> index map; unknown tokens map to index 0 (``<unk>``)."""

    UNK: int = 0

    def __init__(self, idx_to_token: list[str]) -> None:
        tokens = list(idx_to_token)
        if not tokens or tokens[0] != UNK_TOKEN:
            raise ValueError(f"idx_to_token[0] must be {UNK_TOKEN!r}")
        token_to_idx: dict[str, int] = {}
        for idx, token in enumerate(tokens):
            if not isinstance(token, str):
                raise ValueError(f"token at index {idx} is not a string: {token!r}")
            if token in token_to_idx:
                raise ValueError(
                    f"duplicate token {token!r} at indices {token_to_idx[token]} and {idx}"
                )
            token_to_idx[token] = idx
        self.idx_to_token: list[str] = tokens
        self.token_to_idx: dict[str, int] = token_to_idx

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        min_freq: int = 0,
        reserved_tokens: list[str] | None = None,
        max_size: int | None = None,
    ) -> Vocab:
        """Count ``tokens`` and build a d2l-ordered vocabulary.

        ``idx_to_token = ['<unk>'] + reserved_tokens + [tokens with freq >= min_freq]`` ordered by
        descending frequency, ties in first-seen order. ``max_size`` (optional) caps the total
        length, ``<unk>`` and reserved tokens included.
        """
        counter = collections.Counter(tokens)
        token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        idx_to_token = [UNK_TOKEN] + list(reserved_tokens or [])
        seen = set(idx_to_token)
        for token, freq in token_freqs:
            if freq < min_freq or (max_size is not None and len(idx_to_token) >= max_size):
                break
            if token not in seen:
                idx_to_token.append(token)
                seen.add(token)
        return cls(idx_to_token)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        # d2l behaviour: a single token gives an int, a list/tuple gives a list of ints.
        if isinstance(tokens, list | tuple):
            return [self.token_to_idx.get(t, self.UNK) for t in tokens]
        return self.token_to_idx.get(tokens, self.UNK)

    def __contains__(self, token: object) -> bool:
        return token in self.token_to_idx

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Indices of ``tokens`` (a string iterates as characters); unknown -> 0."""
        get = self.token_to_idx.get
        return [get(t, self.UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (same as :meth:`to_tokens`)."""
        return self.to_tokens(ids)

    def to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``; raises ``IndexError`` for an index outside the vocabulary."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.idx_to_token):
                raise IndexError(f"token index {i} outside vocabulary of size {len(self)}")
            out.append(self.idx_to_token[i])
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    def __hash__(self) -> int:
        return hash(tuple(self.idx_to_token))

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        return f"Vocab(size={len(self)}, [{head}{', ...' if len(self) > 8 else ''}])"
