"""Issue 9 G and H: client keepalive pings are accepted; default models stay put; a stop string
the model can never produce is refused."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.client import AsyncClient, InvalidArgumentError

from .conftest import TIMEMACHINE_DIR
from .test_reload import wait_for


async def test_a_long_idle_health_watch_survives_client_keepalive_pings(make_server, repo):
    server = await make_server(model_repository=repo)
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]
    async with grpc.aio.insecure_channel(server.target, options=options) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        # nothing changes for 5 s: the next read must still be waiting, not failed by GOAWAY
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch.read(), timeout=5.0)
        assert (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5)).status == \
            health_pb2.HealthCheckResponse.SERVING


def _add_char_model(repo, name: str) -> None:
    staging = repo / f".staging-{name}"
    shutil.copytree(TIMEMACHINE_DIR, staging)
    cfg = json.loads((staging / "config.json").read_text())
    cfg["name"] = name
    (staging / "config.json").write_text(json.dumps(cfg))
    (repo / name).mkdir()
    staging.rename(repo / name / "1")


async def test_adding_a_model_never_moves_the_default(make_server, repo):
    server = await make_server(model_repository=repo, model_repository_poll_s=0.1)
    async with AsyncClient(server.target, retries=0) as client:
        assert (await client.generate("the", max_tokens=2)).model == "timemachine"
        _add_char_model(repo, "aaa")  # sorts first

        async def loaded() -> bool:
            return any(m.name == "aaa" and m.state == "ready"
                       for m in await client.list_models())

        await wait_for(loaded, timeout=20)
        assert (await client.generate("the", max_tokens=2)).model == "timemachine"
        defaults = {m.name for m in await client.list_models() if m.is_default}
        assert defaults == {"timemachine", "sentiment"}


async def test_a_stop_string_the_model_cannot_produce_is_invalid_argument(make_server, repo):
    server = await make_server(model_repository=repo)
    async with AsyncClient(server.target, retries=0) as client:
        for stop in (".", "The", "ok!"):
            with pytest.raises(InvalidArgumentError) as caught:
                await client.generate("the time", max_tokens=5, stop=[stop])
            assert "stop" in str(caught.value) and repr(stop) in str(caught.value)
        assert (await client.generate("the time", max_tokens=5, stop=["e", " t"])).text
