"""A small fake rnnserve server (grpc.aio, 127.0.0.1:0) with canned answers, for client tests.

It runs on its own event loop in a background thread, so blocking clients, asyncio clients and
the CLI can all talk to it. It records every call (method, request, metadata, time remaining)
and can be told to fail the next calls to a method with a given status.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.client import AsyncClient, Client
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

CANNED = "the time machine is a fiction. "
"""Every generation is CANNED cycled, cut to max_tokens (default 10) or after a stop string."""
CHUNK = 4
"""Characters per stream chunk."""

MODELS = [
    models_pb2.ModelInfo(
        name="timemachine", version=2, kind="charlm", state=models_pb2.MODEL_STATE_READY,
        device="cpu", is_default=True, architecture="lstm 2x256", vocab_size=28,
        parameters=812_060, metrics={"perplexity": 1.25},
    ),
    models_pb2.ModelInfo(
        name="broken", version=1, kind="classifier", state=models_pb2.MODEL_STATE_FAILED,
        error="model.pt: unexpected key 'x'",
    ),
]


@dataclass
class Call:
    method: str
    request: object
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeState:
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, list[tuple[grpc.StatusCode, str]]] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    stream_fail_after: int | None = None
    """Abort a GenerateStream with INTERNAL after this many chunks."""
    delay: float = 0.0
    """Seconds every call sleeps before answering."""

    def fail(self, method: str, code: grpc.StatusCode, details: str = "", times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([(code, details)] * times)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def last(self, method: str) -> Call:
        return [c for c in self.calls if c.method == method][-1]


class FakeServicer(
    generation_pb2_grpc.GenerationServiceServicer,
    classification_pb2_grpc.ClassificationServiceServicer,
    models_pb2_grpc.ModelServiceServicer,
    health_pb2_grpc.HealthServicer,
):
    def __init__(self) -> None:
        self.state = FakeState()

    async def _enter(self, method: str, request: object, context: grpc.aio.ServicerContext):
        metadata = {m.key: m.value for m in context.invocation_metadata() or ()}
        self.state.calls.append(Call(method, request, metadata, context.time_remaining()))
        queued = self.state.failures.get(method)
        if queued:
            code, details = queued.pop(0)
            await context.abort(code, details)
        if self.state.delay:
            await asyncio.sleep(self.state.delay)

    # -- generation

    async def _generate(self, request, context) -> tuple[str, int, str]:
        if request.session_id and request.session_id not in self.state.sessions:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"session_id: session {request.session_id!r} expired"
            )
        if not request.prefix and not request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prefix: must not be empty")
        n = request.max_tokens or 10
        text = (CANNED * (n // len(CANNED) + 1))[:n]
        finish = generation_pb2.FINISH_REASON_LENGTH
        for stop in request.stop:
            if stop in text:
                text = text[: text.index(stop) + len(stop)]
                finish = generation_pb2.FINISH_REASON_STOP
        session_id = ""
        if request.keep_session:
            session_id = request.session_id or f"s{len(self.state.sessions) + 1}"
            seen = self.state.sessions.get(session_id, 0)
            self.state.sessions[session_id] = seen + len(request.prefix) + len(text)
        elif request.session_id:
            self.state.sessions.pop(request.session_id)
        return text, finish, session_id

    async def Generate(self, request, context):
        await self._enter("Generate", request, context)
        text, finish, session_id = await self._generate(request, context)
        return generation_pb2.GenerateResponse(
            text=text, session_id=session_id, finish_reason=finish,
            prefix_tokens=len(request.prefix), generated_tokens=len(text),
            model=request.model or "timemachine", model_version=2,
        )

    async def GenerateStream(self, request, context):
        await self._enter("GenerateStream", request, context)
        text, finish, session_id = await self._generate(request, context)
        pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
        for i, piece in enumerate(pieces):
            if self.state.stream_fail_after is not None and i == self.state.stream_fail_after:
                await context.abort(grpc.StatusCode.INTERNAL, "internal error (request id r-1)")
            yield generation_pb2.GenerateStreamResponse(
                text=piece,
                session_id=session_id if i == 0 else "",
                finish_reason=finish if i == len(pieces) - 1 else 0,
                prefix_tokens=len(request.prefix),
                generated_tokens=min(len(text), (i + 1) * CHUNK),
                model=request.model or "timemachine",
                model_version=2,
            )

    async def EndSession(self, request, context):
        await self._enter("EndSession", request, context)
        if request.session_id not in self.state.sessions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "session_id: unknown session")
        total = self.state.sessions.pop(request.session_id)
        return generation_pb2.EndSessionResponse(total_tokens=total)

    # -- classification

    async def Classify(self, request, context):
        await self._enter("Classify", request, context)
        if not request.texts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts: must not be empty")
        results = []
        for text in request.texts:
            positive = "good" in text
            words = text.split()
            tokens = [
                classification_pb2.TokenWeight(token=w, weight=0.5 if w == "good" else 0.25)
                for w in words
            ] if request.explain else []
            results.append(classification_pb2.Classification(
                label="positive" if positive else "negative",
                score=0.875 if positive else 0.125,
                tokens=tokens,
            ))
        return classification_pb2.ClassifyResponse(
            results=results, model=request.model or "sentiment", model_version=1
        )

    # -- models

    async def ListModels(self, request, context):
        await self._enter("ListModels", request, context)
        return models_pb2.ListModelsResponse(models=MODELS)

    async def GetModel(self, request, context):
        await self._enter("GetModel", request, context)
        for model in MODELS:
            if model.name == request.name:
                return models_pb2.GetModelResponse(model=model)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model: no model named {request.name!r}")

    # -- health

    async def Check(self, request, context):
        await self._enter("Check", request, context)
        if request.service not in ("", "rnnserve.v1.GenerationService"):
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class FakeServer:
    """The fake on its own loop and thread; ``target`` is where it listens."""

    def __init__(self) -> None:
        self.servicer = FakeServicer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.target = ""

    def _run(self, coro: object, timeout: float = 10) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(self.servicer, self._server)
        classification_pb2_grpc.add_ClassificationServiceServicer_to_server(
            self.servicer, self._server
        )
        models_pb2_grpc.add_ModelServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def start(self) -> None:
        self._thread.start()
        self.target = f"127.0.0.1:{self._run(self._start())}"

    def stop(self) -> None:
        assert self._server is not None
        self._run(self._server.stop(None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def state(self) -> FakeState:
        return self.servicer.state

    def reset(self) -> None:
        self.servicer.state = FakeState()


@pytest.fixture(scope="session")
def fake_server():
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeServer:
    """The running fake, with fresh state for this test."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def client(fake: FakeServer):
    with Client(fake.target, timeout=5.0) as c:
        yield c


@pytest.fixture
async def aclient(fake: FakeServer):
    async with AsyncClient(fake.target, timeout=5.0) as c:
        yield c
