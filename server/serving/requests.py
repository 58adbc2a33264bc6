"""Domain value types exchanged between the RPC layer and the serving logic (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.engine import FinishReason


@dataclass(frozen=True)
class GenerateParams:
    """A Generate / GenerateStream request, as the serving logic sees it."""

    model: str = ""
    prefix: str = ""
    max_tokens: int = 0  # 0 = server default
    session_id: str = ""
    keep_session: bool = False
    options: DecodingOptions = DecodingOptions()


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of a continuation; the last one carries ``finish_reason``."""

    text: str
    session_id: str
    finish_reason: FinishReason | None
    prefix_tokens: int
    generated_tokens: int
    model: str
    model_version: int


@dataclass(frozen=True)
class TokenWeight:
    token: str
    weight: float


@dataclass(frozen=True)
class ClassificationResult:
    label: str
    score: float
    tokens: tuple[TokenWeight, ...] = ()


@dataclass(frozen=True)
class ClassifyOutcome:
    results: list[ClassificationResult]
    model: str
    model_version: int


@dataclass(frozen=True)
class ModelDescription:
    """What ListModels / GetModel report about a model."""

    name: str
    version: int
    kind: str
    state: str
    error: str
    device: str
    is_default: bool
    architecture: str
    vocab_size: int
    parameters: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ForecastParams:
    """A Forecast / ForecastStream request, as the serving logic sees it."""

    model: str = ""
    series: tuple[float, ...] = ()  # observed values, points x features, row-major
    horizon: int = 0
    session_id: str = ""
    keep_session: bool = False


@dataclass(frozen=True)
class ForecastChunk:
    """Predicted values (points x features, row-major); the last chunk has ``done``."""

    values: tuple[float, ...]
    session_id: str
    done: bool
    observed_points: int
    predicted_points: int  # running total
    model: str
    model_version: int
