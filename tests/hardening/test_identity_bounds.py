"""Issue 9 D and E: owners, full-string names, bounded id/name fields and labels, health watches,
and client-visible messages without the server's absolute paths."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.client import AsyncClient, NotFoundError
from rnnserve.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from .conftest import TIMEMACHINE_DIR, bearer

TOKEN_A, TOKEN_B, ADMIN = "token-a", "token-b", "admin-token"
HUGE = "x" * 2**20


async def test_only_the_owner_may_use_or_end_a_session(make_server, repo):
    server = await make_server(model_repository=repo, auth_tokens=f"{TOKEN_A},{TOKEN_B}")
    async with AsyncClient(server.target, retries=0, metadata=bearer(TOKEN_A)) as a, \
            AsyncClient(server.target, retries=0, metadata=bearer(TOKEN_B)) as b:
        opened = await a.generate("the time", max_tokens=3, keep_session=True)
        with pytest.raises(NotFoundError):
            await b.generate(" machine", max_tokens=3, session_id=opened.session_id)
        with pytest.raises(NotFoundError):
            await b.end_session(opened.session_id)
        assert (await a.generate(" machine", max_tokens=3,
                                 session_id=opened.session_id)).session_id
        assert await a.end_session(opened.session_id) > 0


def _huge_requests():
    gen = generation_pb2_grpc.GenerationServiceStub
    cls = classification_pb2_grpc.ClassificationServiceStub
    mod = models_pb2_grpc.ModelServiceStub
    adm = admin_pb2_grpc.AdminServiceStub
    return [
        (gen, "Generate", generation_pb2.GenerateRequest(model=HUGE, prefix="a")),
        (gen, "Generate", generation_pb2.GenerateRequest(session_id=HUGE, prefix="a")),
        (gen, "GenerateStream", generation_pb2.GenerateRequest(model=HUGE, prefix="a")),
        (gen, "GenerateStream", generation_pb2.GenerateRequest(session_id=HUGE, prefix="a")),
        (gen, "EndSession", generation_pb2.EndSessionRequest(session_id=HUGE)),
        (cls, "Classify", classification_pb2.ClassifyRequest(model=HUGE, texts=["a"])),
        (mod, "GetModel", models_pb2.GetModelRequest(name=HUGE)),
        (adm, "LoadModel", admin_pb2.LoadModelRequest(name=HUGE)),
        (adm, "UnloadModel", admin_pb2.UnloadModelRequest(name=HUGE)),
        (adm, "ReloadModel", admin_pb2.ReloadModelRequest(name=HUGE)),
    ]


async def test_every_id_and_name_field_is_bounded_and_never_echoed_whole(make_server, repo):
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token=ADMIN,
                               max_message_bytes=4 * 2**20)
    async with grpc.aio.insecure_channel(server.target) as channel:
        for stub_class, method, request in _huge_requests():
            call = getattr(stub_class(channel), method)
            metadata = bearer(ADMIN) if "Admin" in stub_class.__name__ else None
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                result = call(request, metadata=metadata, timeout=10)
                if hasattr(result, "__aiter__"):
                    async for _ in result:
                        pass
                else:
                    await result
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
            assert len(error.details()) < 500, (method, len(error.details()))
    async with AsyncClient(server.target, retries=0) as client:
        # a long (but bounded) unknown id is echoed truncated
        with pytest.raises(NotFoundError) as caught:
            await client.generate("a", max_tokens=1, session_id="s" * 120)
        assert len(str(caught.value)) < 400


async def test_admin_names_do_not_become_unbounded_metric_labels(make_server, repo):
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token=ADMIN)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for i in range(20):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.LoadModel(admin_pb2.LoadModelRequest(name=f"nope-{i}"),
                                     metadata=bearer(ADMIN), timeout=10)
    labels = {s.labels["model"] for m in server.metrics.requests.collect() for s in m.samples}
    assert not [label for label in labels if label.startswith("nope-")], labels


async def test_concurrent_health_watches_are_capped(make_server, repo):
    server = await make_server(model_repository=repo, max_health_watches=3)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        extra = stub.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await extra.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches[0].cancel()
        for _ in range(50):  # the slot frees once the server sees the cancel
            again = stub.Watch(health_pb2.HealthCheckRequest())
            try:
                assert (await again.read()).status == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("a cancelled watch never freed its slot")
        assert (await stub.Check(health_pb2.HealthCheckRequest())).status == \
            health_pb2.HealthCheckResponse.SERVING


async def test_client_visible_refusals_name_files_relative_to_the_repository(make_server,
                                                                             repo):
    broken = repo / "broken" / "1"
    shutil.copytree(TIMEMACHINE_DIR, broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "name": "broken"}))
    state = torch.load(broken / "model.pt", weights_only=True)
    state["linear.bias"][0] = float("nan")
    torch.save(state, broken / "model.pt")
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token=ADMIN)
    absolute = str(repo.resolve())
    async with AsyncClient(server.target, retries=0) as client:
        info = {m.name: m for m in await client.list_models()}["broken"]
        assert info.state == "failed" and "linear.bias" in info.error
        assert absolute not in info.error and "broken/1/model.pt" in info.error
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadModel(admin_pb2.ReloadModelRequest(name="broken"),
                                   metadata=bearer(ADMIN), timeout=10)
        assert absolute not in caught.value.details()
        assert "linear.bias" in caught.value.details()
