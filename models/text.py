"""Text handling: d2l corpus normalisation, serving-time character normalisation, word tokenizer.

Character language models (seed 000) are trained on d2l's normalised Time Machine: every line
becomes ``re.sub('[^A-Za-z]+', ' ', line).strip().lower()`` and the lines are concatenated with
no separator. At serving time text is normalised *character by character* (``normalize_chars``)
so that ``normalize(a + b) == normalize(a) + normalize(b)``; that keeps session continuation
exact.

The classifier's :class:`WordTokenizer` (settings stored in config.json under ``"tokenizer"``):

- ``lowercase``: ``str.lower()`` the text first (default true);
- ``pattern``: tokens are the regex matches, by default ``[a-z0-9']+|[^\\sa-z0-9']`` (runs of
  ASCII letters, digits and apostrophes; every other non-space character is a token of its own,
  so punctuation and any odd Unicode become single tokens, unknown ones map to ``<unk>``);
- ``seq_length``: every text becomes exactly this many ids;
- ``truncation``: ``"post"`` keeps the first ``seq_length`` tokens, ``"pre"`` the last;
- ``padding``: ``"pre"`` puts ``pad_index`` before the tokens (the default; best for an LSTM
  that reads left to right), ``"post"`` after;
- ``pad_index``: the padding id; the sentiment vocabulary reserves ``"<pad>"`` at index 1.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .vocab import Vocab

logger = logging.getLogger(__name__)

CharNormalization = Literal["none", "lower", "d2l"]
CHAR_NORMALIZATIONS: tuple[str, ...] = ("none", "lower", "d2l")

_D2L_LINE_RE = re.compile("[^A-Za-z]+")


def read_text(path: str | Path) -> str:
    """Read a text file robustly: each line is decoded as UTF-8, or as latin-1 if that fails."""
    data = Path(path).read_bytes()
    lines = []
    for raw in data.splitlines(keepends=True):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("latin-1"))
    return "".join(lines)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a text file (see :func:`read_text` for the decoding)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def normalize_corpus_line(line: str) -> str:
    """d2l's line normalisation: non-letters -> one space, strip, lower case."""
    return _D2L_LINE_RE.sub(" ", line).strip().lower()


def load_corpus(path: str | Path) -> str:
    """d2l's Time Machine preprocessing: normalised lines concatenated with NO separator."""
    return "".join(normalize_corpus_line(line) for line in read_text(path).splitlines())


def _lower_char(c: str) -> str:
    low = c.lower()
    return low if len(low) == 1 else c


def normalize_chars(text: str, mode: CharNormalization) -> str:
    """Serving-time, length-preserving, character-wise normalisation.

    ``none``: identity; ``lower``: each char lower-cased unless that changes its length;
    ``d2l``: ASCII letters lower-cased, every other character becomes ``' '``.
    """
    if mode == "none":
        return text
    if mode == "lower":
        return "".join(_lower_char(c) for c in text)
    if mode == "d2l":
        return "".join(c.lower() if ("a" <= c <= "z" or "A" <= c <= "Z") else " " for c in text)
    raise ValueError(
        f"unknown character normalization {mode!r}; expected one of {CHAR_NORMALIZATIONS}"
    )


@dataclass(frozen=True)
class WordTokenizerConfig:
    """Word tokenizer settings (stored in config.json under ``"tokenizer"``)."""

    lowercase: bool = True
    pattern: str = r"[a-z0-9']+|[^\sa-z0-9']"
    seq_length: int = 64
    padding: Literal["pre", "post"] = "pre"
    truncation: Literal["pre", "post"] = "post"
    pad_index: int = 0

    def __post_init__(self) -> None:
        if self.seq_length < 1:
            raise ValueError("seq_length must be >= 1")
        if self.padding not in ("pre", "post"):
            raise ValueError(f"padding must be 'pre' or 'post', not {self.padding!r}")
        if self.truncation not in ("pre", "post"):
            raise ValueError(f"truncation must be 'pre' or 'post', not {self.truncation!r}")
        if self.pad_index < 0:
            raise ValueError("pad_index must be >= 0")
        re.compile(self.pattern)

    def to_dict(self) -> dict:
        return asdict(self)


class Encoded(NamedTuple):
    """A text encoded for the classifier."""

    ids: list[int]  # exactly seq_length ids
    tokens: list[str]  # the tokens kept (after truncation), in text order
    positions: list[int]  # index of each kept token in ``ids``


class WordTokenizer:
    """Regex word tokenizer with fixed-length padding/truncation (see module docstring)."""

    def __init__(self, config: WordTokenizerConfig | None = None) -> None:
        self.config = config or WordTokenizerConfig()
        self._re = re.compile(self.config.pattern)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text``; never raises on odd Unicode (lone surrogates, NULs, emoji...)."""
        if self.config.lowercase:
            text = text.lower()
        return self._re.findall(text)

    def encode(self, text: str, vocab: Vocab) -> Encoded:
        """Ids (exactly ``seq_length``), the kept tokens and their positions in the padded row."""
        cfg = self.config
        tokens = self.tokenize(text)
        if len(tokens) > cfg.seq_length:
            tokens = (
                tokens[: cfg.seq_length] if cfg.truncation == "post" else tokens[-cfg.seq_length :]
            )
        ids = vocab.encode(tokens)
        n_pad = cfg.seq_length - len(ids)
        if cfg.padding == "pre":
            return Encoded(
                [cfg.pad_index] * n_pad + ids, tokens, list(range(n_pad, cfg.seq_length))
            )
        return Encoded(ids + [cfg.pad_index] * n_pad, tokens, list(range(len(ids))))
