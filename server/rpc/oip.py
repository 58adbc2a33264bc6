"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2) beside rnnserve.v1.

Same server, port, interceptors (auth, deadlines), error table and metrics as ``rnnserve.v1``;
requests are counted with ``protocol="oip"``. Each method: protobuf → tensors
(:mod:`.tensors`) → one call into the serving logic through the model kind's table entry
(:mod:`.oip_kinds`) → protobuf.

ModelStreamInfer follows Triton's decoupled models: a request to a char LM gets one response per
chunk of text, and every response carries the bool parameter ``triton_final_response`` (true on
the last). The requests of one stream are served one after another. An error ends only its
request: it is sent as ``error_message`` (status name first, as in ``INVALID_ARGUMENT: ...``) and
the stream goes on, as Triton's clients expect.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
from rnnserve import __version__
from rnnserve.server import errors
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc.oip_kinds import KINDS, Backends, KindTensors
from rnnserve.server.rpc.servicers import known_label
from rnnserve.server.rpc.status import (
    CallRecord,
    check_fields,
    request_id,
    rpc_method,
    status_of,
)
from rnnserve.server.rpc.tensors import Tensors, decode_inputs, fill_outputs, parameter_value
from rnnserve.server.serving.registry import ModelEntry, ModelRegistry, ModelState
from rnnserve.server.serving.sequences import SequenceFlags
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

logger = logging.getLogger("rnnserve.requests")

Context = grpc.aio.ServicerContext
PROTOCOL = "oip"
SERVER_NAME = "rnnserve"
EXTENSIONS = ("sequence",)
FINAL = "triton_final_response"
NO_SEQUENCE = SequenceFlags()
UNIMPLEMENTED = (
    "ModelStatistics", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    "TraceSetting", "LogSettings",
)
_INDEX_STATE = {ModelState.READY: "READY", ModelState.LOADING: "LOADING",
                ModelState.FAILED: "UNAVAILABLE"}


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's health, metadata and inference methods over rnnserve's models."""

    protocol = PROTOCOL

    def __init__(self, backends: Backends, registry: ModelRegistry, metrics: Metrics,
                 server_ready: Callable[[], bool]) -> None:
        self._backends = backends
        self._registry = registry
        self._server_ready = server_ready
        self.metrics = metrics

    def model_label(self, request: object) -> str:
        name = getattr(request, "model_name", "") or getattr(request, "name", "")
        return known_label(self._registry, name)

    # --- health and metadata ---------------------------------------------------------------
    @rpc_method("ServerLive")
    async def ServerLive(self, request: service_pb2.ServerLiveRequest, context: Context
                         ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    @rpc_method("ServerReady")
    async def ServerReady(self, request: service_pb2.ServerReadyRequest, context: Context
                          ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._server_ready())

    @rpc_method("ModelReady")
    async def ModelReady(self, request: service_pb2.ModelReadyRequest, context: Context
                         ) -> service_pb2.ModelReadyResponse:
        try:
            self._model(request.name, request.version)
        except errors.RnnserveError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @rpc_method("ServerMetadata")
    async def ServerMetadata(self, request: service_pb2.ServerMetadataRequest, context: Context
                             ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    @rpc_method("ModelMetadata")
    async def ModelMetadata(self, request: service_pb2.ModelMetadataRequest, context: Context
                            ) -> service_pb2.ModelMetadataResponse:
        entry, kind = self._model(request.name, request.version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=entry.name, versions=[str(entry.version)], platform=f"rnnserve_{entry.kind}",
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in kind.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                     for s in kind.outputs],
        )

    @rpc_method("ModelConfig")
    async def ModelConfig(self, request: service_pb2.ModelConfigRequest, context: Context
                          ) -> service_pb2.ModelConfigResponse:
        entry, kind = self._model(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=model_config(entry, kind))

    @rpc_method("RepositoryIndex")
    async def RepositoryIndex(self, request: service_pb2.RepositoryIndexRequest,
                              context: Context) -> service_pb2.RepositoryIndexResponse:
        index = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(models=[
            index(name=e.name, version=str(e.version) if e.version else "",
                  state=_INDEX_STATE[e.state], reason=e.error)
            for e in self._registry.entries()
            if not request.ready or e.state is ModelState.READY
        ])

    # --- inference -------------------------------------------------------------------------
    @rpc_method("ModelInfer")
    async def ModelInfer(self, request: service_pb2.ModelInferRequest, context: Context
                         ) -> service_pb2.ModelInferResponse:
        entry, kind = self._model(request.model_name, request.model_version)
        inputs = decode_inputs(request, kind.inputs)
        async with contextlib.aclosing(
                kind.run(self._backends, entry.name, inputs, _sequence(request))) as run:
            pieces = [piece async for piece, _ in run]
        return _response(request, entry, kind, kind.join(pieces))

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
                               context: Context
                               ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in request_iterator:
            async for response in self._stream_one(request, context):
                yield response

    async def _stream_one(self, request: service_pb2.ModelInferRequest, context: Context
                          ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """One request of a stream: its responses, or one error response; its own metrics."""
        method = "ModelStreamInfer"
        record = CallRecord(method, self.model_label(request), request_id(context), PROTOCOL)
        self.metrics.in_flight.labels(method).inc()
        try:
            check_fields(request)
            entry, kind = self._model(request.model_name, request.model_version)
            inputs = decode_inputs(request, kind.inputs)
            final = False
            async with contextlib.aclosing(
                    kind.run(self._backends, entry.name, inputs, _sequence(request))) as run:
                async for piece, final in run:
                    yield _streamed(_response(request, entry, kind, piece), final)
            if not final:  # (not expected) the final flag alone, as Triton sends it
                yield _streamed(_response(request, entry, kind, {}), True)
        except errors.RnnserveError as exc:
            code = status_of(exc)
            record.fail(code)
            yield _error(request, f"{code.name}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - the boundary sorts every error
            record.fail(grpc.StatusCode.INTERNAL)
            logger.error("%s %s failed", record.rid, method, exc_info=exc)
            yield _error(request, f"INTERNAL: internal error; request id {record.rid} "
                                  "(details are in the server log)")
        except BaseException:  # the client went away (CancelledError or GeneratorExit)
            record.cancelled(context)
            raise
        finally:
            self.metrics.in_flight.labels(method).dec()
            record.finish(self.metrics)

    def _model(self, name: str, version: str) -> tuple[ModelEntry, KindTensors]:
        """The ready model ``name`` (at ``version`` if one is given) and its kind's tensors."""
        if not name:
            raise errors.InvalidArgumentError("model_name", "must not be empty")
        entry = self._registry.entry(name)
        if version and version != str(entry.version):
            raise errors.NotFoundError(
                f"model_version: model {name!r} serves version {entry.version}, not {version!r}")
        if entry.state is not ModelState.READY:
            raise errors.ModelNotReadyError(name, entry.state.value, entry.error)
        kind = KINDS.get(entry.kind)
        if kind is None:
            raise errors.InvalidArgumentError(
                "model_name", f"{name!r} is a {entry.kind} model, which this protocol does not "
                "serve yet")
        return entry, kind


async def _unimplemented(self: InferenceServicer, request: object, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                        "rnnserve does not implement this method of the protocol")


for _method in UNIMPLEMENTED:  # a plain UNIMPLEMENTED, not the generated base's traceback
    setattr(InferenceServicer, _method, _unimplemented)


def _sequence(request: service_pb2.ModelInferRequest) -> SequenceFlags:
    """The request's sequence parameters (``sequence_id`` as int64, uint64 or string)."""
    params = request.parameters
    if not params:
        return NO_SEQUENCE
    raw = parameter_value(params["sequence_id"]) if "sequence_id" in params else None
    if raw is None or raw == 0 or raw == "":
        seq_id = ""
    elif isinstance(raw, bool) or not isinstance(raw, int | str):
        raise errors.InvalidArgumentError("sequence_id", "must be an integer or a string")
    elif isinstance(raw, int):
        if raw < 0:
            raise errors.InvalidArgumentError("sequence_id", "must not be negative")
        seq_id = f"int:{raw}"
    else:
        seq_id = f"str:{raw}"
    return SequenceFlags(id=seq_id, start=_flag(params, "sequence_start"),
                         end=_flag(params, "sequence_end"))


def _flag(params: Mapping[str, service_pb2.InferParameter], name: str) -> bool:
    if name not in params:
        return False
    value = parameter_value(params[name])
    if value is not None and not isinstance(value, bool):
        raise errors.InvalidArgumentError(name, "must be a bool parameter")
    return bool(value)


def _response(request: service_pb2.ModelInferRequest, entry: ModelEntry, kind: KindTensors,
              tensors: Tensors) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(
        model_name=entry.name, model_version=str(entry.version), id=request.id)
    fill_outputs(response, tensors, kind.outputs,
                 [o.name for o in request.outputs] if request.outputs else ())
    return response


def _streamed(response: service_pb2.ModelInferResponse, final: bool
              ) -> service_pb2.ModelStreamInferResponse:
    response.parameters[FINAL].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=response)


def _error(request: service_pb2.ModelInferRequest, message: str
           ) -> service_pb2.ModelStreamInferResponse:
    response = service_pb2.ModelInferResponse(model_name=request.model_name,
                                              model_version=request.model_version,
                                              id=request.id)
    response.parameters[FINAL].bool_param = True
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=response)


_CONFIG_TYPES = {"BYTES": model_config_pb2.TYPE_STRING, "FP32": model_config_pb2.TYPE_FP32,
                 "INT32": model_config_pb2.TYPE_INT32, "UINT64": model_config_pb2.TYPE_UINT64}


def model_config(entry: ModelEntry, kind: KindTensors) -> model_config_pb2.ModelConfig:
    """Triton's ModelConfig for a model: its tensors, no batch dimension, decoupled or not."""
    return model_config_pb2.ModelConfig(
        name=entry.name, platform=f"rnnserve_{entry.kind}", backend="rnnserve",
        max_batch_size=0,
        input=[model_config_pb2.ModelInput(name=s.name, data_type=_CONFIG_TYPES[s.datatype],
                                           dims=s.shape, optional=s.optional)
               for s in kind.inputs],
        output=[model_config_pb2.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype],
                                             dims=s.shape) for s in kind.outputs],
        model_transaction_policy=model_config_pb2.ModelTransactionPolicy(
            decoupled=kind.decoupled),
    )
