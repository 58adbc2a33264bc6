"""The Redis store's lease while a turn runs: renewed by the store's one renewal task, so a turn
longer than ``session_lease_s`` keeps its session (another replica gets ABORTED), and its state
is written back when it ends. Two stores in this process stand for two replicas (real Redis)."""

from __future__ import annotations

import asyncio
import signal

import pytest
import torch
from rnnserve.server.errors import SessionBusyError
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.redis_store import RedisSessionStore
from rnnserve.server.settings import ServerSettings

LEASE_S = 0.3


@pytest.fixture
async def stores(redis_url: str):
    settings = ServerSettings(session_store=redis_url, session_lease_s=LEASE_S, metrics_port=-1)
    made = [RedisSessionStore(settings, Metrics()) for _ in range(2)]
    for store in made:
        await store.start()
    yield made
    for store in made:
        await store.stop()


async def test_a_turn_longer_than_the_lease_keeps_its_session_and_is_written_back(stores):
    one, other = stores
    session = await one.open("timemachine", 1)
    state = torch.arange(6, dtype=torch.float32).reshape(2, 1, 3)
    await one.release(session, state, 4, added_tokens=3)

    held = await one.acquire(session.id)
    await asyncio.sleep(LEASE_S * 4)  # the turn runs on; unrenewed, the lease would be gone
    with pytest.raises(SessionBusyError):
        await other.acquire(session.id)
    await one.release(held, state + 1, 7, added_tokens=2)

    again = await other.acquire(session.id)
    assert torch.equal(again.state, state + 1) and again.pending == 7
    assert again.total_tokens == 5
    await other.release(again)


async def test_a_redis_that_stops_answering_is_unavailable_within_the_op_timeout(monkeypatch):
    from procs import Redis
    from rnnserve.server.errors import SessionStoreUnavailableError
    from rnnserve.server.serving import redis_store

    monkeypatch.setattr(redis_store, "OP_TIMEOUT_S", 0.3)
    redis = Redis().start()
    metrics = Metrics()
    store = RedisSessionStore(ServerSettings(session_store=redis.url, metrics_port=-1), metrics)
    await store.start()
    try:
        session = await store.open("timemachine", 1)
        await store.release(session)
        redis.proc.send_signal(signal.SIGSTOP)  # hung, not gone: the socket stays open
        try:
            with pytest.raises(SessionStoreUnavailableError, match="timeout"):
                await asyncio.wait_for(store.acquire(session.id), 5)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert metrics.session_store_errors.labels("timeout")._value.get() == 1
        assert metrics.session_store_up._value.get() == 0
        await store.release(await store.acquire(session.id))  # answers again: usable again
        assert metrics.session_store_up._value.get() == 1
    finally:
        await store.stop()
        redis.kill()
