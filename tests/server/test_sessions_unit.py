"""The session store: TTL, LRU cap, busy sessions, tombstones, byte accounting."""

from __future__ import annotations

import pytest
import torch
from rnnserve.server.errors import (
    ResourceExhaustedError,
    SessionBusyError,
    SessionNotFoundError,
)
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.sessions import SessionStore, new_session_id


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store(ttl: float = 10.0, cap: int = 3) -> tuple[SessionStore, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    return SessionStore(ttl, cap, metrics, clock=clock), clock, metrics


def opened(s: SessionStore, state_size: int = 4):
    session = s.open("m", 1)
    s.release(session, torch.zeros(state_size), 0, added_tokens=1)
    return session


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_busy_session_is_aborted_and_release_frees_it():
    s, _, _ = store()
    session = opened(s)
    taken = s.acquire(session.id)
    with pytest.raises(SessionBusyError):
        s.acquire(session.id)
    s.release(taken)
    assert s.acquire(session.id) is session


def test_ttl_expiry_is_told_apart_from_unknown():
    s, clock, metrics = store(ttl=10)
    session = opened(s)
    clock.now = 11
    with pytest.raises(SessionNotFoundError, match="expired"):
        s.acquire(session.id)
    with pytest.raises(SessionNotFoundError, match="unknown"):
        s.acquire("nope")
    assert metric(metrics, "rnnserve_sessions_removed_total", model="m", reason="expired") == 1


def test_sweep_removes_only_idle_expired_sessions():
    s, clock, _ = store(ttl=10, cap=10)
    old = opened(s)
    busy = opened(s)
    s.acquire(busy.id)
    clock.now = 5
    fresh = opened(s)
    clock.now = 12
    assert s.expire() == 1
    assert len(s) == 2
    s.release(busy)
    assert s.acquire(fresh.id) is fresh
    with pytest.raises(SessionNotFoundError, match="expired"):
        s.acquire(old.id)


def test_lru_eviction_past_the_cap():
    s, clock, metrics = store(cap=2)
    a = opened(s)
    clock.now = 1
    b = opened(s)
    clock.now = 2
    s.release(s.acquire(a.id))  # a is now more recent than b
    c = opened(s)
    with pytest.raises(SessionNotFoundError, match="evicted"):
        s.acquire(b.id)
    assert s.acquire(a.id) is a and s.acquire(c.id) is c
    assert metric(metrics, "rnnserve_sessions_removed_total", model="m", reason="evicted") == 1


def test_cap_with_every_session_busy_is_resource_exhausted():
    s, _, _ = store(cap=1)
    s.open("m", 1)  # busy: its first request is running
    with pytest.raises(ResourceExhaustedError, match="keep_session"):
        s.open("m", 1)


def test_state_bytes_are_accounted():
    s, _, metrics = store(cap=10)
    a, b = opened(s, 8), opened(s, 8)
    assert s.state_bytes == 64
    assert metric(metrics, "rnnserve_session_state_bytes", model="m") == 64
    s.end(a.id)
    assert metric(metrics, "rnnserve_session_state_bytes", model="m") == 32
    assert metric(metrics, "rnnserve_sessions_active", model="m") == 1
    with pytest.raises(SessionNotFoundError, match="ended"):
        s.acquire(a.id)
    s.discard(b)
    assert s.state_bytes == 0 and len(s) == 0


def test_session_ids_are_hex_and_never_look_like_an_option():
    # A URL-safe base64 id began with "-" about 1 time in 64, and `rnnserve generate --session ID`
    # then failed with "expected one argument".
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 and not i.startswith("-") for i in ids)
