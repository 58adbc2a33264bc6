"""Shared fixtures: real rnnserve servers started in-process on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rnnserve.server.app import RnnServer, build_server
from rnnserve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
DATA = ROOT.parent / "shared" / "data"

ServerFactory = Callable[..., Awaitable[RnnServer]]


def test_settings(**overrides: Any) -> ServerSettings:
    """Settings for a test server: loopback, ephemeral ports, the shipped models, CPU."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "model_repository": MODEL_REPOSITORY,
        "device": "cpu",
        "grace_period_s": 2.0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with custom settings; every one is stopped when the test ends."""
    started: list[RnnServer] = []

    async def factory(**overrides: Any) -> RnnServer:
        server = build_server(test_settings(**overrides))
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop(grace=0.5)


@pytest.fixture
async def server(make_server: ServerFactory) -> RnnServer:
    """A started server on the shipped models with default settings."""
    return await make_server()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of its own (Debian's, free port, no persistence) for the whole run."""
    from procs import Redis

    redis = Redis().start()
    yield redis.url
    redis.kill()
