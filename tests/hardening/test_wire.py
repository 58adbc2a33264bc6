"""Issue 9 A: bytes that are not a valid request message, for every method of every service.

gRPC parses the request before any handler runs; a parse failure must still reach the RPC
boundary: INVALID_ARGUMENT naming the message type, a request id, one log line, the request
counters, and no traceback in the log.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rnnserve.v1 import admin_pb2, classification_pb2, forecast_pb2, generation_pb2, models_pb2

from .conftest import bearer

ADMIN_TOKEN = "wire-admin-token"
TRUNCATED = b"\x0a\x10ab"  # field 1, length 16, but only 2 bytes follow
INVALID_UTF8_PREFIX = b"\x12\x06ti\xffme!"  # GenerateRequest.prefix (field 2) = b"ti\xffme!"


def _unary_methods() -> list[tuple[str, bool]]:
    """(path, response_streaming) of every unary-request method the server registers."""
    methods = []
    for module in (generation_pb2, classification_pb2, forecast_pb2, models_pb2, admin_pb2,
                   health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert not method.client_streaming
                methods.append((f"/{service.full_name}/{method.name}", method.server_streaming))
    return methods


METHODS = _unary_methods()


def _counted(server, method: str, code: str) -> float:
    total = 0.0
    for metric in server.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("method") == method \
                    and sample.labels.get("code", sample.labels.get("status")) == code:
                total += sample.value
    return total


async def _call(channel: grpc.aio.Channel, path: str, streaming: bool, payload: bytes,
                metadata=None) -> grpc.aio.AioRpcError:
    kwargs = dict(request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            call = channel.unary_stream(path, **kwargs)(payload, metadata=metadata, timeout=10)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path, **kwargs)(payload, metadata=metadata, timeout=10)
    return caught.value


@pytest.mark.parametrize("payload", [TRUNCATED, INVALID_UTF8_PREFIX], ids=["truncated", "utf8"])
async def test_an_invalid_message_is_invalid_argument_on_every_method(make_server, repo, caplog,
                                                                      payload):
    server = await make_server(model_repository=repo, admin_enabled=True,
                               admin_token=ADMIN_TOKEN)
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(server.target) as channel:
        for path, streaming in METHODS:
            if payload is INVALID_UTF8_PREFIX and not path.endswith("/Generate"):
                continue
            metadata = bearer(ADMIN_TOKEN) if "AdminService" in path else None
            error = await _call(channel, path, streaming, payload, metadata)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error)
            assert "is not a valid" in error.details(), (path, error.details())
            assert "Traceback" not in error.details()
            metadata_keys = [k for k, _ in (error.trailing_metadata() or ())] + \
                [k for k, _ in (error.initial_metadata() or ())]
            assert "x-request-id" in metadata_keys, path
            method = path.rsplit("/", 1)[1]
            assert _counted(server, method, "INVALID_ARGUMENT") >= 1, path
            assert any(method in r.getMessage() and "INVALID_ARGUMENT" in r.getMessage()
                       for r in caplog.records), path
        # the server is unharmed
        stub = generation_pb2.GenerateRequest(prefix="the time", max_tokens=3)
        reply = await channel.unary_unary(
            "/rnnserve.v1.GenerationService/Generate",
            request_serializer=generation_pb2.GenerateRequest.SerializeToString,
            response_deserializer=generation_pb2.GenerateResponse.FromString)(stub, timeout=10)
        assert reply.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_bad_message_on_the_reflection_stream_is_invalid_argument(make_server, repo):
    server = await make_server(model_repository=repo)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None, response_deserializer=None)(iter([TRUNCATED]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
