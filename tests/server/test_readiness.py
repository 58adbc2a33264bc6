"""While the repository is still loading, the server is not SERVING and the default model is
UNAVAILABLE (never NOT_FOUND), even when another model is already ready."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import test_settings as server_settings
from rnnserve.client import AsyncClient, UnavailableError
from rnnserve.server.app import build_server
from rnnserve.server.serving import registry as registry_module


async def test_not_serving_until_every_model_has_loaded(monkeypatch):
    release = threading.Event()
    real_load = registry_module.load_model

    def slow_load(vdir, *args, **kwargs):
        if vdir.parent.name == "timemachine":  # sentiment loads first (by name) and is ready
            release.wait(timeout=30)
        return real_load(vdir, *args, **kwargs)

    monkeypatch.setattr(registry_module, "load_model", slow_load)
    server = build_server(server_settings(metrics_port=-1))
    starting = asyncio.create_task(server.start())
    try:
        async with AsyncClient(f"127.0.0.1:{await _bound_port(server)}", retries=0,
                               timeout=10) as client:
            deadline = time.monotonic() + 20
            while server.registry.entry("sentiment").state.value != "ready":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # let any health update run
            assert await client.health() == "NOT_SERVING"
            with pytest.raises(UnavailableError, match="still loading"):
                await client.generate("the time", max_tokens=3)
            release.set()
            await asyncio.wait_for(starting, 30)
            assert await client.health() == "SERVING"
            assert (await client.generate("the time", max_tokens=3)).text
    finally:
        release.set()
        await asyncio.wait_for(starting, 30)
        await server.stop(grace=0.5)


async def _bound_port(server) -> int:
    for _ in range(500):
        if server.port:
            return server.port
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not bind")
