"""Property-based: whatever a client sends in any request field, the server answers with a
deliberate status (never INTERNAL or UNKNOWN, never a hang) and stays healthy.

One server per test (started in the test's event loop); hypothesis runs in a worker thread
with a blocking channel, so the loop keeps serving while examples are tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

EXAMPLES = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT = 20.0
LIMITS = {"max_tokens_limit": 64, "max_prefix_chars": 2000, "max_text_chars": 200,
          "max_texts_per_call": 32, "max_stop_strings": 4, "max_stop_chars": 16,
          "max_sessions": 50}

UINT32 = 2**32 - 1
UINT64 = 2**64 - 1
NAMES = st.one_of(
    st.just(""), st.just("timemachine"),
    st.sampled_from(["", "timemachine", "sentiment", "../x", "../../etc/passwd", "/etc/passwd",
                     "timemachine/../sentiment", "TimeMachine", "timemachine\x00", ".", "..",
                     "a" * 65, "con", "timemachine/1"]),
    st.text(max_size=80),
)
TEXT = st.one_of(st.text(max_size=120), st.text(alphabet="the time machine", max_size=400),
                 st.sampled_from(["", " ", "\x00", "é" * 2001, "a" * 2000, "\U0001f600" * 50]))
FLOATS = st.one_of(st.just(0.0), st.floats(width=32),
                   st.sampled_from([0.0, 0.5, 1.0, 1e-30, -0.0, 100.0]))
UINT = st.one_of(st.integers(0, 100), st.integers(0, UINT32))


def session_ids(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.just(""), st.sampled_from(known or [""]),
                     st.text(max_size=60), st.sampled_from(["../x", "a" * 10_000]))


def generate_requests(known: list[str]) -> st.SearchStrategy[generation_pb2.GenerateRequest]:
    """Half wild (every field anything the wire allows), half tame (in range, odd content)."""
    wild = st.builds(
        generation_pb2.GenerateRequest,
        model=NAMES, prefix=TEXT, max_tokens=UINT, session_id=session_ids(known),
        keep_session=st.booleans(), temperature=FLOATS, top_k=UINT, top_p=FLOATS,
        seed=st.one_of(st.integers(0, 10), st.integers(0, UINT64)),
        stop=st.lists(st.text(max_size=20), max_size=6),
    )
    temperature = st.one_of(st.just(0.0), st.floats(0, 100, width=32))
    tame = st.builds(
        generation_pb2.GenerateRequest,
        model=st.sampled_from(["", "timemachine"]), prefix=st.text(min_size=1, max_size=200),
        max_tokens=st.integers(0, 64), session_id=st.sampled_from(["", *known]),
        keep_session=st.booleans(), temperature=temperature,
        top_k=st.one_of(st.just(0), st.integers(0, 40)),
        top_p=st.one_of(st.just(0.0), st.floats(0, 1, width=32)),
        seed=st.integers(0, UINT64), stop=st.lists(st.text(min_size=1, max_size=16), max_size=4),
    )
    return st.one_of(tame, wild)


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__next__"):  # a server stream: read it to the end
            for _ in result:
                pass
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


SEEN: dict[str, int] = {}


def check(call: Callable[[], Any], request: Any) -> None:
    code = code_of(call)
    SEEN[code.name] = SEEN.get(code.name, 0) + 1
    assert code not in FORBIDDEN, f"{code} for {request!r}"


async def run_property(make_server, repo,
                       body: Callable[[grpc.Channel, list[str]], None]) -> None:
    server = await make_server(model_repository=repo, **LIMITS)
    channel = grpc.insecure_channel(server.target)
    try:
        known = []
        gen = generation_pb2_grpc.GenerationServiceStub(channel)
        for _ in range(3):  # real session ids for the strategies to pick from
            opened = await asyncio.to_thread(gen.Generate, generation_pb2.GenerateRequest(
                prefix="the time", max_tokens=2, keep_session=True))
            known.append(opened.session_id)
        SEEN.clear()
        await asyncio.to_thread(body, channel, known)
        print("status codes seen:", dict(sorted(SEEN.items())))
        assert SEEN.get("OK", 0) >= 5, f"too few valid requests to mean much: {SEEN}"
        health = health_pb2_grpc.HealthStub(channel)
        reply = await asyncio.to_thread(health.Check, health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        normal = await asyncio.to_thread(gen.Generate, generation_pb2.GenerateRequest(
            prefix="the time traveller", max_tokens=10), timeout=CALL_TIMEOUT)
        assert len(normal.text) == 10
        assert server.registry.entry("timemachine").runner.active == 0
    finally:
        channel.close()


async def test_generate_never_fails_internally(make_server, repo):
    def body(channel: grpc.Channel, known: list[str]) -> None:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        @EXAMPLES
        @given(generate_requests(known))
        def prop(request: generation_pb2.GenerateRequest) -> None:
            check(lambda: stub.Generate(request, timeout=CALL_TIMEOUT), request)

        prop()

    await run_property(make_server, repo, body)


async def test_generate_stream_never_fails_internally(make_server, repo):
    def body(channel: grpc.Channel, known: list[str]) -> None:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        @EXAMPLES
        @given(generate_requests(known))
        def prop(request: generation_pb2.GenerateRequest) -> None:
            check(lambda: stub.GenerateStream(request, timeout=CALL_TIMEOUT), request)

        prop()

    await run_property(make_server, repo, body)


async def test_classify_end_session_and_get_model_never_fail_internally(make_server, repo):
    def body(channel: grpc.Channel, known: list[str]) -> None:
        classify = classification_pb2_grpc.ClassificationServiceStub(channel)
        gen = generation_pb2_grpc.GenerationServiceStub(channel)
        models = models_pb2_grpc.ModelServiceStub(channel)
        requests = st.one_of(
            st.builds(classification_pb2.ClassifyRequest, model=NAMES,
                      texts=st.lists(TEXT, max_size=40), explain=st.booleans()),
            st.builds(classification_pb2.ClassifyRequest, model=st.sampled_from(["", "sentiment"]),
                      texts=st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=32),
                      explain=st.booleans()),
            st.builds(generation_pb2.EndSessionRequest, session_id=session_ids(known)),
            st.builds(models_pb2.GetModelRequest, name=NAMES),
        )

        @EXAMPLES
        @given(requests)
        def prop(request: Any) -> None:
            if isinstance(request, classification_pb2.ClassifyRequest):
                method = classify.Classify
            elif isinstance(request, generation_pb2.EndSessionRequest):
                method = gen.EndSession
            else:
                method = models.GetModel
            check(lambda: method(request, timeout=CALL_TIMEOUT), request)

        prop()
        assert models.ListModels(models_pb2.ListModelsRequest(), timeout=CALL_TIMEOUT).models

    await run_property(make_server, repo, body)
