"""Hot reload: new versions are picked up without failing in-flight work; bad ones are refused."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
from pathlib import Path

import grpc
import pytest
import torch
from rnnserve.client import AsyncClient, NotFoundError
from rnnserve.v1 import admin_pb2, admin_pb2_grpc

from .conftest import TIMEMACHINE_DIR, add_timemachine_version


class RunsCommand:
    """Unpickling this would run a shell command (the classic pickle RCE payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def test_poll_picks_up_a_new_version_while_a_stream_on_the_old_one_completes(
        make_server, repo):
    server = await make_server(model_repository=repo, model_repository_poll_s=0.1,
                               max_batch_size=1)
    async with AsyncClient(server.target, retries=0) as client:
        expected = (await client.generate("the time traveller", max_tokens=4000)).text
        session = await client.generate("the time", max_tokens=5, keep_session=True)
        old_engine = server.registry.entry("timemachine").runner
        stream = client.stream("the time traveller", max_tokens=4000)
        first = await anext(stream)
        assert first.model_version == 1
        add_timemachine_version(repo, 2, perplexity=1.5)

        async def upgraded():
            info = await client.get_model("timemachine")
            return info if info.version == 2 else None

        info = await wait_for(upgraded)
        assert info.metrics["perplexity"] == 1.5
        assert old_engine.active == 1, "the stream should still be running on version 1"
        rest = [chunk async for chunk in stream]
        # the stream that began on version 1 finished on version 1, whole and unchanged
        assert first.text + "".join(c.text for c in rest) == expected
        assert all(c.model_version == 1 for c in rest) and rest[-1].finish_reason == "length"
        with pytest.raises(NotFoundError, match="no longer loaded"):
            await client.generate(" machine", max_tokens=3, session_id=session.session_id)
        fresh = await client.generate("the time", max_tokens=5)
        assert fresh.model_version == 2
    await server.registry.wait_retired()
    assert len(server.sessions) == 0 and old_engine.active == 0


async def test_a_malicious_pickle_is_refused_and_the_old_version_serves_on(
        make_server, repo, tmp_path, caplog):
    marker = tmp_path / "pwned"
    server = await make_server(model_repository=repo, model_repository_poll_s=0.1)
    bad = repo / "timemachine" / ".staging"
    shutil.copytree(TIMEMACHINE_DIR, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["version"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    torch.save({"payload": RunsCommand(marker)}, bad / "model.pt")
    os.replace(bad, repo / "timemachine" / "2")
    async with AsyncClient(server.target, retries=0) as client:

        async def refused():
            info = await client.get_model("timemachine")
            return info if info.error else None

        info = await wait_for(refused)
        assert info.version == 1 and info.state == "ready"
        assert "version 2 was refused" in info.error and "pickled objects" in info.error
        assert (await client.generate("the time", max_tokens=5)).model_version == 1
        # not retried at every poll while the files stay the same
        await asyncio.sleep(0.3)
        assert sum("version 2 refused" in r.getMessage() for r in caplog.records) == 1
        # a plain pickle (not torch's zip format) is refused just the same
        (repo / "timemachine" / "2" / "model.pt").write_bytes(pickle.dumps(RunsCommand(marker)))
        await asyncio.sleep(0.3)
        assert (await client.get_model("timemachine")).version == 1
    assert not marker.exists(), "unpickling ran the payload's command"


async def test_a_bad_config_is_refused_before_any_tensor_is_read(make_server, repo, tmp_path):
    marker = tmp_path / "pwned"
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token="adm")
    vdir = repo / "timemachine" / "2"
    vdir.mkdir()
    (vdir / "config.json").write_text(json.dumps({"kind": "charlm", "vocab": ["<unk>"]}))
    (vdir / "model.pt").write_bytes(pickle.dumps(RunsCommand(marker)))
    async with grpc.aio.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.ReloadModel(admin_pb2.ReloadModelRequest(name="timemachine"),
                                    metadata=(("authorization", "Bearer adm"),))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details()
    assert "config.json" in details and "'architecture' is a required property" in details
    assert "version 1 keeps serving" in details
    assert not marker.exists()


async def test_oversized_checkpoint_is_refused(make_server, repo):
    server = await make_server(model_repository=repo, max_checkpoint_bytes=1_000_000)
    async with AsyncClient(server.target, retries=0) as client:
        info = await client.get_model("timemachine")
    assert info.state == "failed" and "byte limit" in info.error
    assert server.registry.entry("sentiment").state == "ready"
