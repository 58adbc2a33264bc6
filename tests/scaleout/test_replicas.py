"""DESIGN semantics 7: any replica continues any session, exactly, one request at a time.

Real processes on loopback: one redis-server, three ``rnnserve serve`` replicas sharing it, and
nginx (``grpc_pass``, deploy/nginx/nginx.conf) in front of them. Started once for the module;
the tests run in file order and the last one kills Redis.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import Nginx, Redis, Replica
from rnnserve.client import Client
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.timeout(420)  # a loaded 2-core machine starts servers slowly
LEASE_S = 2.0


@pytest.fixture(scope="module")
def redis() -> Redis:
    r = Redis().start()
    yield r
    r.kill()


@pytest.fixture(scope="module")
def replicas(redis: Redis) -> list[Replica]:
    started = [Replica("--session-store", redis.url, "--session-lease-s", str(LEASE_S),
                       "--session-sweep-interval-s", "0.3", "--replica-name", name).start()
               for name in ("a", "b", "c")]
    try:
        for r in started:
            r.wait_ready()
        yield started
    finally:
        for r in started:
            r.close()


@pytest.fixture(scope="module")
def nginx(replicas: list[Replica]) -> Nginx:
    lb = Nginx([r.target for r in replicas]).start()
    yield lb
    lb.close()


class Conn:
    """A channel to one target with the raw stub, so tests see the x-rnnserve-replica header."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)

    def turn(self, prefix: str, session_id: str = "", n: int = 20) -> tuple[str, str, str]:
        """One Generate: (text, session id, replica header)."""
        request = generation_pb2.GenerateRequest(prefix=prefix, max_tokens=n,
                                                 session_id=session_id, keep_session=True)
        reply, call = self.stub.Generate.with_call(request, timeout=60)
        return reply.text, reply.session_id, dict(call.initial_metadata())["x-rnnserve-replica"]

    def stateless(self, text: str, n: int = 20) -> str:
        request = generation_pb2.GenerateRequest(prefix=text, max_tokens=n)
        return self.stub.Generate(request, timeout=60).text

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def conns(replicas: list[Replica]) -> list[Conn]:
    made = [Conn(r.target) for r in replicas]
    yield made
    for c in made:
        c.close()


def test_a_session_alternating_between_replicas_equals_one_stateless_generate(conns):
    a, b = conns[0], conns[1]
    text, sid, first = a.turn("the time machine", n=25)
    history = "the time machine" + text
    served = {first}
    for i, prefix in enumerate([" by h g wells", " and", "", " the traveller said "]):
        conn = (b, a)[i % 2]
        text, same, replica = conn.turn(prefix, sid, n=30)
        assert same == sid
        history += prefix + text
        served.add(replica)
    assert {s.split("/")[0] for s in served} == {"a", "b"}, served
    # the whole session text, once, statelessly, on a third replica
    whole = conns[2].stateless(history[:-30], 30)
    assert history.endswith(whole)


def _classify_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines()
                   if line.startswith("rnnserve_requests_total{") and '"Classify"' in line)


def test_the_python_client_balances_round_robin_over_a_list_of_targets(replicas):
    before = [_classify_count(r.metrics_port) for r in replicas]
    target = "ipv4:" + ",".join(r.target for r in replicas)
    with Client(target, retries=0) as client:
        for _ in range(9):
            client.classify(["a fine film"])
    after = [_classify_count(r.metrics_port) for r in replicas]
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    assert sum(after) - sum(before) == 9


def test_two_simultaneous_turns_of_one_session_on_two_replicas_one_is_aborted(conns):
    a, b = conns[0], conns[1]
    _, sid, _ = a.turn("simultaneous", n=5)
    barrier = threading.Barrier(2)

    def go(conn: Conn) -> str:
        barrier.wait()
        try:
            conn.turn(" and", sid, n=500)
            return "ok"
        except grpc.RpcError as err:
            return err.code().name

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(go, (a, b)))
    assert outcomes == ["ABORTED", "ok"], outcomes


def test_sigkill_mid_conversation_and_mid_turn_the_other_replica_continues(replicas, conns):
    a, c = conns[0], conns[2]
    text, sid, _ = c.turn("the traveller", n=20)
    history = "the traveller" + text
    text, _, _ = c.turn(" went", sid, n=20)
    history += " went" + text
    # a long turn on c, killed while it runs: c holds the lease when it dies
    request = generation_pb2.GenerateRequest(prefix=" on", session_id=sid, max_tokens=4000)
    stream = c.stub.GenerateStream(request, timeout=60)
    next(stream)
    replicas[2].kill()
    with pytest.raises(grpc.RpcError) as info:
        a.turn(" x", sid, n=5)
    assert info.value.code() is grpc.StatusCode.ABORTED, "the dead holder's lease still holds"
    # the lease expires by itself; the session is usable again, unchanged by the killed turn
    deadline = time.monotonic() + LEASE_S * 5
    while True:
        try:
            text, _, served = a.turn(" and", sid, n=30)
            break
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.ABORTED
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.2)
    assert served.startswith("a/")
    assert text == a.stateless(history + " and", 30)


def test_through_nginx_the_session_spreads_and_survives_a_killed_replica(replicas, nginx):
    lb = Conn(nginx.target)
    try:
        text, sid, first = lb.turn("through the balancer", n=10)
        history, served = "through the balancer" + text, {first}
        for _ in range(6):
            text, _, replica = lb.turn(" then", sid, n=10)
            history += " then" + text
            served.add(replica)
        assert len({s.split("/")[0] for s in served}) >= 2, served  # c is dead: a and b
        replicas[1].kill()  # b, mid-conversation; nginx passes to the next upstream
        for _ in range(4):
            text, _, replica = lb.turn(" more", sid, n=10)
            assert replica.startswith("a/")
            history += " more" + text
        assert lb.stateless(history[:-10], 10) == history[-10:]
    finally:
        lb.close()


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_redis_down_sessions_unavailable_stateless_ok_and_recovery(redis, replicas, conns):
    a = conns[0]
    _, sid, _ = a.turn("before the outage", n=5)
    redis.kill()
    with pytest.raises(grpc.RpcError) as info:
        a.turn(" more", sid, n=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "session store unavailable" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        a.turn("a new one", n=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert a.stateless("stateless still works", 10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _metric(replicas[0].metrics_port, "rnnserve_session_store_up") == 0
    deadline = time.monotonic() + 10
    while _health(replicas[0].target, "rnnserve.session_store") == serving:
        assert time.monotonic() < deadline, "health never reported the store down"
        time.sleep(0.1)
    assert _health(replicas[0].target, "") == serving

    redis.start()  # the same port; no persistence, so old sessions are gone, new ones work
    deadline = time.monotonic() + 10
    while True:
        try:
            text, sid, _ = a.turn("after the outage", n=15)
            break
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "sessions did not resume"
            time.sleep(0.2)
    assert text == a.stateless("after the outage", 15)
    assert _metric(replicas[0].metrics_port, "rnnserve_session_store_up") == 1
