"""Plain result values returned by the client, free of protobuf.

Enums arrive as lower-case strings: ``finish_reason`` is ``"length"``, ``"stop"`` or
``"cancelled"`` (``""`` when the server did not say, e.g. on every stream chunk but the last);
``ModelInfo.state`` is ``"ready"``, ``"loading"`` or ``"failed"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Generation:
    """The result of a unary ``generate``: the continuation only, never the prefix."""

    text: str
    session_id: str = ""
    """The session's id when its state was kept, else ``""``."""
    finish_reason: str = ""
    prefix_tokens: int = 0
    """Prefix characters consumed in warm-up."""
    generated_tokens: int = 0
    model: str = ""
    model_version: int = 0


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a streamed generation; the chunks' text concatenates to the whole text."""

    text: str
    session_id: str = ""
    """Set on the first chunk when the state is kept."""
    finish_reason: str = ""
    """Empty until the last chunk."""
    generated_tokens: int = 0
    """Running total of characters generated so far."""
    model: str = ""
    model_version: int = 0
    prefix_tokens: int = 0


@dataclass(frozen=True)
class Forecast:
    """The result of a unary ``forecast``: ``horizon`` predicted points, never the series.

    For a model with F features per point, ``values`` holds F values per point, row-major.
    """

    values: tuple[float, ...]
    session_id: str = ""
    """The session's id when its state was kept, else ``""``."""
    observed_points: int = 0
    predicted_points: int = 0
    model: str = ""
    model_version: int = 0


@dataclass(frozen=True)
class ForecastChunk:
    """One piece of a streamed forecast; the chunks' values concatenate to the unary values."""

    values: tuple[float, ...]
    session_id: str = ""
    """Set on the first chunk when the state is kept."""
    done: bool = False
    """True on the last chunk."""
    observed_points: int = 0
    predicted_points: int = 0
    """Running total of points predicted so far."""
    model: str = ""
    model_version: int = 0


@dataclass(frozen=True)
class TokenWeight:
    """A token the classifier saw and its attention weight."""

    token: str
    weight: float


@dataclass(frozen=True)
class Classification:
    """The sentiment of one text: ``label`` is "positive"/"negative", ``score`` P(positive)."""

    label: str
    score: float
    tokens: tuple[TokenWeight, ...] = ()
    """Per-token attention weights, only when ``explain`` was requested."""
    model: str = ""
    model_version: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """A model the server knows about, and whether it is ready to serve."""

    name: str
    version: int = 0
    kind: str = ""
    """``"charlm"``, ``"classifier"`` or ``"forecast"``."""
    state: str = ""
    error: str = ""
    """Why loading failed (state ``"failed"``)."""
    device: str = ""
    is_default: bool = False
    architecture: str = ""
    vocab_size: int = 0
    parameters: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    """Held-out metrics recorded at training time."""
