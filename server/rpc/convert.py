"""Protobuf ⇄ domain objects. The only module of the server, with servicers.py, that knows the
generated protobuf code."""

from __future__ import annotations

from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.engine import FinishReason
from rnnserve.server.serving.requests import (
    ClassifyOutcome,
    ForecastChunk,
    ForecastParams,
    GenerateParams,
    GenerationChunk,
    ModelDescription,
)
from rnnserve.v1 import classification_pb2, forecast_pb2, generation_pb2, models_pb2

_FINISH = {
    None: generation_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.CANCELLED: generation_pb2.FINISH_REASON_CANCELLED,
}
_STATE = {
    "loading": models_pb2.MODEL_STATE_LOADING,
    "ready": models_pb2.MODEL_STATE_READY,
    "failed": models_pb2.MODEL_STATE_FAILED,
}


def generate_params(request: generation_pb2.GenerateRequest) -> GenerateParams:
    return GenerateParams(
        model=request.model,
        prefix=request.prefix,
        max_tokens=request.max_tokens,
        session_id=request.session_id,
        keep_session=request.keep_session,
        options=DecodingOptions(
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=request.seed,
            stop=tuple(request.stop),
        ),
    )


def generate_response(chunks: list[GenerationChunk]) -> generation_pb2.GenerateResponse:
    """The unary answer: every chunk's text joined, the last chunk's counts and reason."""
    last = chunks[-1]
    return generation_pb2.GenerateResponse(
        text="".join(c.text for c in chunks),
        session_id=last.session_id,
        finish_reason=_FINISH[last.finish_reason],
        prefix_tokens=last.prefix_tokens,
        generated_tokens=last.generated_tokens,
        model=last.model,
        model_version=last.model_version,
    )


def stream_response(chunk: GenerationChunk) -> generation_pb2.GenerateStreamResponse:
    return generation_pb2.GenerateStreamResponse(
        text=chunk.text,
        session_id=chunk.session_id,
        finish_reason=_FINISH[chunk.finish_reason],
        prefix_tokens=chunk.prefix_tokens,
        generated_tokens=chunk.generated_tokens,
        model=chunk.model,
        model_version=chunk.model_version,
    )


def forecast_params(request: forecast_pb2.ForecastRequest) -> ForecastParams:
    return ForecastParams(
        model=request.model,
        series=tuple(request.series),
        horizon=request.horizon,
        session_id=request.session_id,
        keep_session=request.keep_session,
    )


def forecast_response(chunks: list[ForecastChunk]) -> forecast_pb2.ForecastResponse:
    """The unary answer: every chunk's values joined, the last chunk's counts."""
    last = chunks[-1]
    return forecast_pb2.ForecastResponse(
        values=[v for c in chunks for v in c.values],
        session_id=last.session_id,
        observed_points=last.observed_points,
        predicted_points=last.predicted_points,
        model=last.model,
        model_version=last.model_version,
    )


def forecast_stream_response(chunk: ForecastChunk) -> forecast_pb2.ForecastStreamResponse:
    return forecast_pb2.ForecastStreamResponse(
        values=chunk.values,
        session_id=chunk.session_id,
        observed_points=chunk.observed_points,
        predicted_points=chunk.predicted_points,
        model=chunk.model,
        model_version=chunk.model_version,
        done=chunk.done,
    )


def classify_response(outcome: ClassifyOutcome) -> classification_pb2.ClassifyResponse:
    return classification_pb2.ClassifyResponse(
        results=[
            classification_pb2.Classification(
                label=r.label,
                score=r.score,
                tokens=[classification_pb2.TokenWeight(token=t.token, weight=t.weight)
                        for t in r.tokens],
            )
            for r in outcome.results
        ],
        model=outcome.model,
        model_version=outcome.model_version,
    )


def model_info(desc: ModelDescription) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        name=desc.name,
        version=desc.version,
        kind=desc.kind,
        state=_STATE.get(desc.state, models_pb2.MODEL_STATE_UNSPECIFIED),
        error=desc.error,
        device=desc.device,
        is_default=desc.is_default,
        architecture=desc.architecture,
        vocab_size=desc.vocab_size,
        parameters=desc.parameters,
        metrics=desc.metrics,
    )
