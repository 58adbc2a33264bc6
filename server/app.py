"""The composition root: settings → metrics → registry, sessions → serving logic → gRPC server.

The Open Inference Protocol's ``inference.GRPCInferenceService`` (``rpc/oip.py``) is served on
the same server, beside rnnserve.v1. Security wiring lives here too: TLS credentials
(``rpc/tls.py``), the auth interceptor (``rpc/auth.py``), the default deadline and lenient parser
wrapped around every method handler once at registration (``rpc/registration.py``), and the
AdminService, registered only when enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from rnnserve.server.errors import RnnserveError
from rnnserve.server.metrics import Metrics, MetricsHttpServer
from rnnserve.server.rpc.health import BoundedHealthServicer
from rnnserve.server.rpc.interceptors import build_interceptors
from rnnserve.server.rpc.oip import InferenceServicer
from rnnserve.server.rpc.oip_kinds import Backends
from rnnserve.server.rpc.registration import WrappingServer, handler_wrapper
from rnnserve.server.rpc.servicers import (
    AdminServicer,
    ClassificationServicer,
    ForecastServicer,
    GenerationServicer,
    ModelServicer,
)
from rnnserve.server.rpc.status import set_replica
from rnnserve.server.rpc.tls import server_credentials
from rnnserve.server.serving.classification import CLASSIFICATION, Classifier
from rnnserve.server.serving.forecasting import FORECASTING, Forecasting
from rnnserve.server.serving.generation import GENERATION, Generator
from rnnserve.server.serving.registry import ModelRegistry, ModelState
from rnnserve.server.serving.sequences import Sequences
from rnnserve.server.serving.store import make_session_store
from rnnserve.server.settings import ServerSettings
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
from tritonclient.grpc import service_pb2, service_pb2_grpc

logger = logging.getLogger(__name__)

GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
CLASSIFICATION_SERVICE = (
    classification_pb2.DESCRIPTOR.services_by_name["ClassificationService"].full_name
)
FORECAST_SERVICE = forecast_pb2.DESCRIPTOR.services_by_name["ForecastService"].full_name
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SESSION_STORE_HEALTH = "rnnserve.session_store"
"""Health service name that reports the session store: NOT_SERVING while Redis is unreachable."""
INFERENCE_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DATA_PLANE_HEALTH = ("", GENERATION_SERVICE, CLASSIFICATION_SERVICE, FORECAST_SERVICE, MODEL_SERVICE,
                     INFERENCE_SERVICE)
"""Health service names that go NOT_SERVING while the server starts and when its device is lost."""
SERVING_KINDS = (GENERATION, CLASSIFICATION, FORECASTING)  # every kind of model this server serves
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RnnServer:
    """A running rnnserve: gRPC server, metrics endpoint, models, sessions."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.sessions = make_session_store(settings, self.metrics)
        self.registry = ModelRegistry(settings, self.metrics, SERVING_KINDS,
                                      on_change=self._models_changed,
                                      on_retire=self.sessions.drop_model_version,
                                      on_device_lost=self._device_lost)
        self.generator = Generator(self.registry, self.sessions, settings, self.metrics)
        self.classifier = Classifier(self.registry, settings, self.metrics)
        self.sequences = Sequences(self.generator, settings.max_sessions)
        self.forecasting = Forecasting(self.registry, self.sessions, settings, self.metrics)
        self.health = BoundedHealthServicer(settings.max_health_watches)
        self.port = settings.port
        self._metrics_http = MetricsHttpServer(
            self.metrics, settings.metrics_host, max(settings.metrics_port, 0)
        )
        self._server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._loaded = False  # the repository's first load has finished
        self.secure = settings.tls_cert_file is not None
        self.device_lost = asyncio.Event()  # set when the device failed: the process must exit
        self._device_lost_error: BaseException | None = None

    @property
    def metrics_port(self) -> int:
        return self._metrics_http.port if self.settings.metrics_port >= 0 else -1

    @property
    def target(self) -> str:
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind, serve health (NOT_SERVING), load the models, then report readiness."""
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        set_replica(f"{s.replica_name}/{os.getpid()}")
        credentials = server_credentials(s)
        server = grpc.aio.server(interceptors=build_interceptors(s), options=[
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            *keepalive_options(s),
        ])
        # every service registers through this: its handlers are wrapped once, here
        wrapped = WrappingServer(server, handler_wrapper(s, self.metrics))
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(self.generator, self.registry, self.metrics), wrapped)
        classification_pb2_grpc.add_ClassificationServiceServicer_to_server(
            ClassificationServicer(self.classifier, self.registry, self.metrics), wrapped)
        forecast_pb2_grpc.add_ForecastServiceServicer_to_server(
            ForecastServicer(self.forecasting, self.registry, self.metrics), wrapped)
        models_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry, self.metrics), wrapped)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(Backends(self.classifier, self.sequences, self.forecasting), self.registry,
                              self.metrics, self.ready), wrapped)
        services = [GENERATION_SERVICE, CLASSIFICATION_SERVICE, FORECAST_SERVICE, MODEL_SERVICE,
                    INFERENCE_SERVICE]
        if s.admin_enabled:
            admin_pb2_grpc.add_AdminServiceServicer_to_server(
                AdminServicer(self.registry, self.metrics), wrapped)
            services.append(ADMIN_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, wrapped)
        # what reflection.enable_server_reflection does for an aio server (it checks the type)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
            (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)), wrapped)
        address = f"{s.host}:{s.port}"
        if credentials is not None:
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        for service in (*DATA_PLANE_HEALTH, SESSION_STORE_HEALTH):
            await self.health.set(service, NOT_SERVING)
        await self.sessions.start()
        await self._store_health()
        await server.start()
        self._server = server
        if s.metrics_port >= 0:
            self._metrics_http.start()
        logger.info("gRPC on %s:%d (%s)", s.host, self.port,
                    "mutual TLS" if s.tls_client_ca_file else "TLS" if self.secure else "plaintext")
        await self.registry.load_all()
        self._loaded = True
        await self._update_health()
        self._sweeper = asyncio.create_task(self._sweep(), name="session-sweeper")
        if s.model_repository_poll_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository-poller")

    def _models_changed(self) -> None:
        """Registry callback: refresh health once the current event-loop turn is over."""
        if self._server is None:
            return
        task = asyncio.get_running_loop().create_task(self._update_health())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _device_lost(self, error: BaseException) -> None:
        """An engine lost its device (a poisoned CUDA context): nothing on it can run again.
        Health turns NOT_SERVING at once and :attr:`device_lost` tells the entry point to exit,
        so that the supervisor (compose restart policy, worker manager) starts a new process."""
        if self.device_lost.is_set():
            return
        self._device_lost_error = error
        logger.critical("device failed (%s): health NOT_SERVING, this process exits to be "
                        "replaced", error)
        self.device_lost.set()
        task = asyncio.get_running_loop().create_task(self._not_serving())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _not_serving(self) -> None:
        for service in DATA_PLANE_HEALTH:
            await self.health.set(service, NOT_SERVING)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_repository_poll_s)
            try:
                await self.registry.poll()
            except Exception:  # noqa: BLE001 - a bad poll must not end polling
                logger.exception("polling the model repository failed")

    def ready(self) -> bool:
        """Whether the server serves: the repository's first load is over and a model is ready."""
        return self._loaded and any(e.state is ModelState.READY for e in self.registry.entries())

    async def _update_health(self) -> None:
        if self.device_lost.is_set():
            return  # NOT_SERVING until the process is replaced
        # the whole server serves once every model of the repository has had its first load
        any_ready = self.ready()
        await self.health.set("", SERVING if any_ready else NOT_SERVING)
        await self.health.set(INFERENCE_SERVICE, SERVING if any_ready else NOT_SERVING)
        await self.health.set(MODEL_SERVICE, SERVING)
        await self.health.set(
            GENERATION_SERVICE,
            SERVING if self.registry.service_ready(GENERATION.kind) else NOT_SERVING)
        await self.health.set(
            CLASSIFICATION_SERVICE,
            SERVING if self.registry.service_ready(CLASSIFICATION.kind) else NOT_SERVING)
        await self.health.set(
            FORECAST_SERVICE,
            SERVING if self.registry.service_ready(FORECASTING.kind) else NOT_SERVING)

    async def _store_health(self) -> None:
        up = getattr(self.sessions, "up", True)
        await self.health.set(SESSION_STORE_HEALTH, SERVING if up else NOT_SERVING)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session_sweep_interval_s)
            try:
                expired = await self.sessions.sweep()
            except RnnserveError as err:  # the store is down: logged and counted by the store
                logger.debug("session sweep: %s", err)
                expired = 0
            await self._store_health()
            if expired:
                logger.info("expired %d idle sessions", expired)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, let in-flight ones finish within grace."""
        grace = self.settings.grace_period_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()  # no version swaps while draining
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for task in (self._sweeper, self._poller, *self._health_updates):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.registry.stop()
        await self.sessions.stop()
        self._metrics_http.stop()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def keepalive_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The keepalive policy (docs/security.md): clients may ping every
    ``keepalive_min_ping_interval_s`` or slower, with or without calls in flight and with no
    data flowing (an idle Health watch); faster pings earn strikes and, past gRPC's limit of
    2, a GOAWAY "too_many_pings"."""
    interval_ms = int(settings.keepalive_min_ping_interval_s * 1000)
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", interval_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def build_server(settings: ServerSettings) -> RnnServer:
    """Wire a server from settings (nothing runs until ``await server.start()``)."""
    return RnnServer(settings)
