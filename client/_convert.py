"""Protobuf ⇄ client values: request building and response conversion, shared by both clients."""

from __future__ import annotations

from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from rnnserve.v1 import classification_pb2, forecast_pb2, generation_pb2, models_pb2

from ._types import (
    Classification,
    Forecast,
    ForecastChunk,
    Generation,
    GenerationChunk,
    ModelInfo,
    TokenWeight,
)

_FINISH_PREFIX = "FINISH_REASON_"
_STATE_PREFIX = "MODEL_STATE_"


def _enum_name(value: int, enum: object, prefix: str) -> str:
    """``FINISH_REASON_STOP`` -> ``"stop"``; the UNSPECIFIED value and unknown numbers -> ``""``."""
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return ""
    short = name.removeprefix(prefix).lower()
    return "" if short == "unspecified" else short


# ----------------------------------------------------------------------------- requests


def generate_request(
    prefix: str,
    *,
    model: str = "",
    max_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 0.0,
    seed: int = 0,
    stop: str | Sequence[str] = (),
    session_id: str = "",
    keep_session: bool = False,
) -> generation_pb2.GenerateRequest:
    """Build the request shared by ``Generate`` and ``GenerateStream``."""
    if isinstance(stop, str):  # a lone stop string, not its characters
        stop = (stop,)
    return generation_pb2.GenerateRequest(
        model=model,
        prefix=prefix,
        max_tokens=max_tokens,
        session_id=session_id,
        keep_session=keep_session,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=list(stop),
    )


def end_session_request(session_id: str) -> generation_pb2.EndSessionRequest:
    """Build an ``EndSession`` request."""
    return generation_pb2.EndSessionRequest(session_id=session_id)


def classify_request(
    texts: str | Sequence[str], *, model: str = "", explain: bool = False
) -> classification_pb2.ClassifyRequest:
    """Build a ``Classify`` request; a lone string is one text."""
    if isinstance(texts, str):
        texts = (texts,)
    return classification_pb2.ClassifyRequest(model=model, texts=list(texts), explain=explain)


def forecast_request(
    series: Sequence[float],
    horizon: int,
    *,
    model: str = "",
    session_id: str = "",
    keep_session: bool = False,
) -> forecast_pb2.ForecastRequest:
    """Build the request shared by ``Forecast`` and ``ForecastStream``."""
    return forecast_pb2.ForecastRequest(
        model=model,
        series=[float(v) for v in series],
        horizon=horizon,
        session_id=session_id,
        keep_session=keep_session,
    )


def list_models_request() -> models_pb2.ListModelsRequest:
    """Build a ``ListModels`` request."""
    return models_pb2.ListModelsRequest()


def get_model_request(name: str) -> models_pb2.GetModelRequest:
    """Build a ``GetModel`` request."""
    return models_pb2.GetModelRequest(name=name)


def health_request(service: str = "") -> health_pb2.HealthCheckRequest:
    """Build a ``grpc.health.v1.Health/Check`` request (``""`` = the whole server)."""
    return health_pb2.HealthCheckRequest(service=service)


# ---------------------------------------------------------------------------- responses


def generation_from_pb(msg: generation_pb2.GenerateResponse) -> Generation:
    """Convert a ``GenerateResponse``."""
    return Generation(
        text=msg.text,
        session_id=msg.session_id,
        finish_reason=_enum_name(msg.finish_reason, generation_pb2.FinishReason, _FINISH_PREFIX),
        prefix_tokens=msg.prefix_tokens,
        generated_tokens=msg.generated_tokens,
        model=msg.model,
        model_version=msg.model_version,
    )


def chunk_from_pb(msg: generation_pb2.GenerateStreamResponse) -> GenerationChunk:
    """Convert one ``GenerateStreamResponse``."""
    return GenerationChunk(
        text=msg.text,
        session_id=msg.session_id,
        finish_reason=_enum_name(msg.finish_reason, generation_pb2.FinishReason, _FINISH_PREFIX),
        generated_tokens=msg.generated_tokens,
        model=msg.model,
        model_version=msg.model_version,
        prefix_tokens=msg.prefix_tokens,
    )


def forecast_from_pb(msg: forecast_pb2.ForecastResponse) -> Forecast:
    """Convert a ``ForecastResponse``."""
    return Forecast(
        values=tuple(msg.values),
        session_id=msg.session_id,
        observed_points=msg.observed_points,
        predicted_points=msg.predicted_points,
        model=msg.model,
        model_version=msg.model_version,
    )


def forecast_chunk_from_pb(msg: forecast_pb2.ForecastStreamResponse) -> ForecastChunk:
    """Convert one ``ForecastStreamResponse``."""
    return ForecastChunk(
        values=tuple(msg.values),
        session_id=msg.session_id,
        done=msg.done,
        observed_points=msg.observed_points,
        predicted_points=msg.predicted_points,
        model=msg.model,
        model_version=msg.model_version,
    )


def total_tokens_from_pb(msg: generation_pb2.EndSessionResponse) -> int:
    """Extract the session's total from an ``EndSessionResponse``."""
    return int(msg.total_tokens)


def classifications_from_pb(msg: classification_pb2.ClassifyResponse) -> list[Classification]:
    """Convert a ``ClassifyResponse`` into one result per input text, in order."""
    return [
        Classification(
            label=result.label,
            score=result.score,
            tokens=tuple(TokenWeight(token=t.token, weight=t.weight) for t in result.tokens),
            model=msg.model,
            model_version=msg.model_version,
        )
        for result in msg.results
    ]


def model_info_from_pb(msg: models_pb2.ModelInfo) -> ModelInfo:
    """Convert a ``ModelInfo`` message."""
    return ModelInfo(
        name=msg.name,
        version=msg.version,
        kind=msg.kind,
        state=_enum_name(msg.state, models_pb2.ModelState, _STATE_PREFIX),
        error=msg.error,
        device=msg.device,
        is_default=msg.is_default,
        architecture=msg.architecture,
        vocab_size=msg.vocab_size,
        parameters=msg.parameters,
        metrics=dict(msg.metrics),
    )


def get_model_from_pb(msg: models_pb2.GetModelResponse) -> ModelInfo:
    """Convert a ``GetModelResponse``."""
    return model_info_from_pb(msg.model)


def models_from_pb(msg: models_pb2.ListModelsResponse) -> list[ModelInfo]:
    """Convert a ``ListModelsResponse``."""
    return [model_info_from_pb(m) for m in msg.models]


def health_from_pb(msg: health_pb2.HealthCheckResponse) -> str:
    """``SERVING``, ``NOT_SERVING``, ``UNKNOWN`` or ``SERVICE_UNKNOWN``."""
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status)
    except ValueError:
        return "UNKNOWN"
