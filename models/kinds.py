"""Model kinds: one enum, and one class per kind that knows everything kind-specific.

A kind's class checks its config beyond the JSON Schema (``config.schema.json`` has one branch
per kind), builds the module the config describes, reads the *assets* serving needs besides the
weights (vocabulary, text normalisation, tokenizer, labels, input scaling) and describes the
architecture in a few words. The checkpoint loader and the server's registry ask
:func:`kind_spec` and never branch on the kind themselves (a test checks this).

Adding a kind: a member of :class:`ModelKind`, a :class:`KindSpec` subclass here, a schema branch,
and on the server side the kind's serving module (its runner factory and service).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from torch import nn

from .charlm import CharLMConfig, RNNModel
from .forecast import ForecastConfig, Forecaster
from .sentiment import SentimentConfig, SentimentRNN
from .text import CharNormalization, WordTokenizer, WordTokenizerConfig
from .vocab import Vocab

DEFAULT_LABELS = ("negative", "positive")


class ModelKind(StrEnum):
    """What a model does: config.json ``"kind"``."""

    CHARLM = "charlm"  # seed 000's char language model: Generate
    CLASSIFIER = "classifier"  # seed 001's sentiment classifier: Classify
    FORECAST = "forecast"  # seed 002's sequence forecaster: Forecast


class KindSpec(ABC):
    """Everything kind-specific about a model's config and checkpoint."""

    kind: ClassVar[ModelKind]

    @abstractmethod
    def check(self, cfg: dict) -> None:
        """Cross-field checks after the schema; raises ValueError/TypeError/re.error."""

    @abstractmethod
    def build(self, cfg: dict) -> nn.Module:
        """A freshly initialised module for a validated config."""

    @abstractmethod
    def assets(self, cfg: dict) -> object:
        """What serving needs besides the weights (a frozen value)."""

    @abstractmethod
    def describe(self, cfg: dict) -> str:
        """A short architecture summary, such as 'lstm 2x256'."""

    def vocab_size(self, cfg: dict) -> int:
        """Tokens in the vocabulary (0 for models without one)."""
        return len(cfg.get("vocab", ()))


def _check_vocab(cfg: dict) -> None:
    vocab = cfg.get("vocab")
    if vocab is None:
        raise ValueError("vocab is required")
    if cfg["architecture"]["vocab_size"] != len(vocab):
        raise ValueError(f"architecture.vocab_size is {cfg['architecture']['vocab_size']} "
                         f"but vocab has {len(vocab)} tokens")


# ------------------------------------------------------------------------------- charlm
@dataclass(frozen=True)
class CharLMAssets:
    vocab: Vocab
    normalization: CharNormalization


class CharLMKind(KindSpec):
    kind = ModelKind.CHARLM

    def check(self, cfg: dict) -> None:
        _check_vocab(cfg)
        CharLMConfig(**cfg["architecture"])

    def build(self, cfg: dict) -> RNNModel:
        return RNNModel.from_config(CharLMConfig(**cfg["architecture"]))

    def assets(self, cfg: dict) -> CharLMAssets:
        return CharLMAssets(Vocab(cfg["vocab"]), cfg.get("text", {}).get("normalization", "none"))

    def describe(self, cfg: dict) -> str:
        arch = cfg["architecture"]
        return f"{arch['cell']} {arch.get('num_layers', 1)}x{arch['num_hiddens']}"


# --------------------------------------------------------------------------- classifier
@dataclass(frozen=True)
class ClassifierAssets:
    vocab: Vocab
    tokenizer: WordTokenizer
    labels: list[str]


def _sentiment_config(cfg: dict) -> SentimentConfig:
    return SentimentConfig(**{k: v for k, v in cfg["architecture"].items() if k != "type"})


class ClassifierKind(KindSpec):
    kind = ModelKind.CLASSIFIER

    def check(self, cfg: dict) -> None:
        _check_vocab(cfg)
        _sentiment_config(cfg)
        tok = WordTokenizerConfig(**cfg["tokenizer"])
        if tok.pad_index >= len(cfg["vocab"]):
            raise ValueError(
                f"tokenizer.pad_index {tok.pad_index} outside vocab of {len(cfg['vocab'])}")
        re.compile(tok.pattern)

    def build(self, cfg: dict) -> SentimentRNN:
        return SentimentRNN.from_config(_sentiment_config(cfg))

    def assets(self, cfg: dict) -> ClassifierAssets:
        return ClassifierAssets(Vocab(cfg["vocab"]),
                                WordTokenizer(WordTokenizerConfig(**cfg["tokenizer"])),
                                list(cfg.get("labels", DEFAULT_LABELS)))

    def describe(self, cfg: dict) -> str:
        arch = cfg["architecture"]
        bi = "bi" if arch.get("bidirectional") else ""
        return f"sentiment {bi}lstm {arch.get('no_layers', 1)}x{arch['hidden_dim']}"


# ----------------------------------------------------------------------------- forecast
@dataclass(frozen=True)
class Scaling:
    """Input scaling: the model sees ``(x - mean) / std`` per feature; outputs are unscaled."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ForecastAssets:
    features: int  # values per point (input_size)
    scaling: Scaling | None  # None: the model takes raw values (seed 002)


class ForecastKind(KindSpec):
    kind = ModelKind.FORECAST

    def check(self, cfg: dict) -> None:
        arch = ForecastConfig(**cfg["architecture"])
        scaling = cfg.get("scaling")
        if scaling is not None:
            for key in ("mean", "std"):
                if len(scaling[key]) != arch.input_size:
                    raise ValueError(f"scaling.{key} has {len(scaling[key])} values, "
                                     f"architecture.input_size is {arch.input_size}")

    def build(self, cfg: dict) -> Forecaster:
        return Forecaster.from_config(ForecastConfig(**cfg["architecture"]))

    def assets(self, cfg: dict) -> ForecastAssets:
        scaling = cfg.get("scaling")
        return ForecastAssets(
            ForecastConfig(**cfg["architecture"]).input_size,
            Scaling(tuple(scaling["mean"]), tuple(scaling["std"])) if scaling else None,
        )

    def describe(self, cfg: dict) -> str:
        arch = ForecastConfig(**cfg["architecture"])
        return f"forecast {arch.cell} {arch.num_layers}x{arch.hidden_size}"


_SPECS: dict[ModelKind, KindSpec] = {s.kind: s for s in (CharLMKind(), ClassifierKind(),
                                                          ForecastKind())}


def kind_spec(kind: str) -> KindSpec:
    """The spec of a kind (``kind`` as config.json spells it); KeyError for an unknown kind."""
    return _SPECS[ModelKind(kind)]
