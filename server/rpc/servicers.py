"""gRPC servicers: protobuf → domain object → one call into the serving logic → protobuf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from rnnserve.models import ModelKind
from rnnserve.server.errors import InvalidArgumentError
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc import convert
from rnnserve.server.rpc.status import rpc_method
from rnnserve.server.serving.catalog import describe_entry
from rnnserve.server.serving.classification import CLASSIFICATION, Classifier
from rnnserve.server.serving.forecasting import FORECASTING, Forecasting
from rnnserve.server.serving.generation import GENERATION, Generator
from rnnserve.server.serving.registry import ModelEntry, ModelRegistry
from rnnserve.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    classification_pb2,
    classification_pb2_grpc,
    forecast_pb2,
    forecast_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

Context = grpc.aio.ServicerContext
UNKNOWN_MODEL_LABEL = "unknown"


def known_label(registry: ModelRegistry, name: str) -> str:
    """``name`` as a metric label if the registry knows it, else one fixed value.

    Labels must stay bounded: a label per made-up model name would let any client create
    unlimited time series.
    """
    if not name:
        return ""
    return name if registry.has(name) else UNKNOWN_MODEL_LABEL


class _KindLabels:
    """``model_label`` for a servicer whose requests name a model of one kind (empty = the kind's
    default model), as the RPC boundary's metrics and log line need it."""

    _registry: ModelRegistry
    _kind: ModelKind

    def model_label(self, request: object) -> str:
        name = getattr(request, "model", "") or self._registry.default_name(self._kind)
        return known_label(self._registry, name)


class GenerationServicer(_KindLabels, generation_pb2_grpc.GenerationServiceServicer):
    _kind = GENERATION.kind

    def __init__(self, generator: Generator, registry: ModelRegistry, metrics: Metrics) -> None:
        self._generator = generator
        self._registry = registry
        self.metrics = metrics

    @rpc_method("Generate")
    async def Generate(self, request: generation_pb2.GenerateRequest, context: Context
                       ) -> generation_pb2.GenerateResponse:
        params = convert.generate_params(request)
        async with aclosing(self._generator.generate(params)) as chunks:
            collected = [chunk async for chunk in chunks]
        return convert.generate_response(collected)

    @rpc_method("GenerateStream")
    async def GenerateStream(self, request: generation_pb2.GenerateRequest, context: Context
                             ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        params = convert.generate_params(request)
        messages = self.metrics.stream_messages.labels(self.model_label(request))
        async with aclosing(self._generator.generate(params)) as chunks:
            async for chunk in chunks:
                messages.inc()
                yield convert.stream_response(chunk)

    @rpc_method("EndSession")
    async def EndSession(self, request: generation_pb2.EndSessionRequest, context: Context
                         ) -> generation_pb2.EndSessionResponse:
        total = await self._generator.end_session(request.session_id)
        return generation_pb2.EndSessionResponse(total_tokens=total)


class ClassificationServicer(_KindLabels, classification_pb2_grpc.ClassificationServiceServicer):
    _kind = CLASSIFICATION.kind

    def __init__(self, classifier: Classifier, registry: ModelRegistry, metrics: Metrics) -> None:
        self._classifier = classifier
        self._registry = registry
        self.metrics = metrics

    @rpc_method("Classify")
    async def Classify(self, request: classification_pb2.ClassifyRequest, context: Context
                       ) -> classification_pb2.ClassifyResponse:
        outcome = await self._classifier.classify(request.model, list(request.texts),
                                                  request.explain)
        return convert.classify_response(outcome)


class ForecastServicer(_KindLabels, forecast_pb2_grpc.ForecastServiceServicer):
    _kind = FORECASTING.kind

    def __init__(self, forecasting: Forecasting, registry: ModelRegistry,
                 metrics: Metrics) -> None:
        self._forecasting = forecasting
        self._registry = registry
        self.metrics = metrics

    @rpc_method("Forecast")
    async def Forecast(self, request: forecast_pb2.ForecastRequest, context: Context
                       ) -> forecast_pb2.ForecastResponse:
        params = convert.forecast_params(request)
        async with aclosing(self._forecasting.forecast(params)) as chunks:
            collected = [chunk async for chunk in chunks]
        return convert.forecast_response(collected)

    @rpc_method("ForecastStream")
    async def ForecastStream(self, request: forecast_pb2.ForecastRequest, context: Context
                             ) -> AsyncIterator[forecast_pb2.ForecastStreamResponse]:
        params = convert.forecast_params(request)
        messages = self.metrics.stream_messages.labels(self.model_label(request))
        async with aclosing(self._forecasting.forecast(params)) as chunks:
            async for chunk in chunks:
                messages.inc()
                yield convert.forecast_stream_response(chunk)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self._registry = registry
        self.metrics = metrics

    def model_label(self, request: object) -> str:
        return known_label(self._registry, getattr(request, "name", ""))

    def _describe(self, name: str) -> models_pb2.ModelInfo:
        entry = self._registry.entry(name)
        is_default = self._registry.default_name(entry.kind) == entry.name
        return convert.model_info(describe_entry(entry, is_default))

    @rpc_method("ListModels")
    async def ListModels(self, request: models_pb2.ListModelsRequest, context: Context
                         ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[self._describe(e.name) for e in self._registry.entries()]
        )

    @rpc_method("GetModel")
    async def GetModel(self, request: models_pb2.GetModelRequest, context: Context
                       ) -> models_pb2.GetModelResponse:
        if not request.name:
            raise InvalidArgumentError("name", "must not be empty")
        return models_pb2.GetModelResponse(model=self._describe(request.name))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Model lifecycle (registered only with ``admin_enabled``; the interceptor checks the token)."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self._registry = registry
        self.metrics = metrics

    def model_label(self, request: object) -> str:
        return known_label(self._registry, getattr(request, "name", ""))

    def _info(self, entry: ModelEntry) -> models_pb2.ModelInfo:
        is_default = self._registry.default_name(entry.kind) == entry.name
        return convert.model_info(describe_entry(entry, is_default))

    @rpc_method("LoadModel")
    async def LoadModel(self, request: admin_pb2.LoadModelRequest, context: Context
                        ) -> admin_pb2.LoadModelResponse:
        done = await self._registry.load(_name(request.name), request.version)
        return admin_pb2.LoadModelResponse(model=self._info(done.entry),
                                           previous_version=done.previous_version,
                                           sessions_dropped=done.sessions_dropped)

    @rpc_method("UnloadModel")
    async def UnloadModel(self, request: admin_pb2.UnloadModelRequest, context: Context
                          ) -> admin_pb2.UnloadModelResponse:
        version, dropped = await self._registry.unload(_name(request.name))
        return admin_pb2.UnloadModelResponse(version=version, sessions_dropped=dropped)

    @rpc_method("ReloadModel")
    async def ReloadModel(self, request: admin_pb2.ReloadModelRequest, context: Context
                          ) -> admin_pb2.ReloadModelResponse:
        done = await self._registry.reload(_name(request.name))
        return admin_pb2.ReloadModelResponse(model=self._info(done.entry),
                                             previous_version=done.previous_version,
                                             sessions_dropped=done.sessions_dropped)


def _name(name: str) -> str:
    if not name:
        raise InvalidArgumentError("name", "must not be empty")
    return name
