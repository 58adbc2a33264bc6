"""Channel construction shared by both clients: options, retry service config, call settings.

Retries are gRPC's own (transparent to the caller): a call that fails with UNAVAILABLE before
the server sent any response message is retried with exponential backoff, up to ``retries``
more attempts. gRPC caps attempts at 5, so ``retries`` above 4 behaves like 4.

Load balancing is gRPC's client-side ``round_robin``: a target that resolves to several
addresses — ``dns:///rnnserve:50051`` (every A record) or ``ipv4:127.0.0.1:50051,127.0.0.1:50052``
(a list) — spreads calls over all of them, and a replica that goes away is skipped. With one
address it behaves like a plain connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import rnnserve
from grpc_health.v1 import health_pb2_grpc
from rnnserve.v1 import (
    classification_pb2_grpc,
    forecast_pb2_grpc,
    generation_pb2_grpc,
    models_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Send/receive limit; big enough for many texts with per-token weights."""
MAX_ATTEMPTS_CAP = 5
"""gRPC's own ceiling on ``maxAttempts``."""

RETRIED_SERVICES = (
    "rnnserve.v1.GenerationService",
    "rnnserve.v1.ClassificationService",
    "rnnserve.v1.ModelService",
    "grpc.health.v1.Health",
)

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]
"""Call metadata: a mapping or (key, value) pairs, e.g. ``{"authorization": "Bearer t"}``."""


def service_config(retries: int) -> dict[str, Any]:
    """The gRPC service config: a retry policy on UNAVAILABLE for every rnnserve RPC."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    method_config: dict[str, Any] = {"name": [{"service": s} for s in RETRIED_SERVICES]}
    if retries > 0:
        method_config["retryPolicy"] = {
            "maxAttempts": min(retries + 1, MAX_ATTEMPTS_CAP),
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method_config]}


def channel_options(retries: int) -> list[tuple[str, Any]]:
    """Channel arguments: message limits, retries, user agent."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        ("grpc.service_config", json.dumps(service_config(retries))),
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.primary_user_agent", f"rnnserve-python/{rnnserve.__version__}"),
    ]


def sync_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """Open a blocking channel (TLS when ``credentials`` is given)."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """Open an asyncio channel (TLS when ``credentials`` is given)."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class Stubs:
    """The generated stubs of every service the client calls, over one channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.generation = generation_pb2_grpc.GenerationServiceStub(channel)
        self.classification = classification_pb2_grpc.ClassificationServiceStub(channel)
        self.forecast = forecast_pb2_grpc.ForecastServiceStub(channel)
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


@dataclass(frozen=True)
class CallSettings:
    """What every call carries: the default deadline and the metadata."""

    timeout: float | None = DEFAULT_TIMEOUT
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, timeout: float | None, metadata: Metadata | None) -> CallSettings:
        """Normalise user input: metadata keys must be lower-case in gRPC."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        pairs = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
        return cls(timeout=timeout, metadata=tuple((k.lower(), v) for k, v in pairs))

    def kwargs(self, timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for a stub call; ``timeout`` overrides the default deadline."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self.metadata or None,
        }
