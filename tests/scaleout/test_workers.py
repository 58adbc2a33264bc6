"""``rnnserve serve --workers N``: one port, several processes, one /metrics, restart, drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from procs import MODEL_REPOSITORY, Redis, Replica
from rnnserve.v1 import classification_pb2, classification_pb2_grpc, generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.timeout(420)  # a loaded 2-core machine starts servers slowly


def test_workers_with_the_memory_store_refuse_to_start():
    done = subprocess.run(
        [sys.executable, "-m", "rnnserve.server.main", "--workers", "2",
         "--model-repository", str(MODEL_REPOSITORY)],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")},
    )
    assert done.returncode == 2
    assert "needs a shared session store" in done.stdout + done.stderr


def _classify(target: str) -> str:
    """One Classify on a fresh connection; the pid of the worker that answered."""
    with grpc.insecure_channel(target) as channel:
        stub = classification_pb2_grpc.ClassificationServiceStub(channel)
        _, call = stub.Classify.with_call(
            classification_pb2.ClassifyRequest(texts=["a fine film"]), timeout=30)
        return dict(call.initial_metadata())["x-rnnserve-replica"].split("/")[1]


def _requests_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rnnserve_requests_total{") and 'method="Classify"' in line)


def test_two_workers_share_one_port_and_metrics_restart_and_drain():
    redis = Redis().start()
    server = Replica("--workers", "2", "--session-store", redis.url).start()
    try:
        server.wait_ready()
        pids = set()
        for _ in range(24):  # the kernel spreads new connections over the workers
            pids.add(_classify(server.target))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "every connection went to one worker"
        assert str(server.proc.pid) not in pids, "the supervisor itself serves no RPC"
        calls = 24  # bounded: at most 24 before plus these
        for _ in range(4):
            _classify(server.target)
        total = _requests_total(server.metrics_port)
        assert 6 <= total <= calls + 4, total  # one endpoint sums every worker's counter

        # a worker that dies is restarted (logged) and the port keeps serving
        victim = int(sorted(pids)[0])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "restarting it" not in server.output() or "started (pid" not in \
                server.output().split("restarting it", 1)[1]:
            assert time.monotonic() < deadline, server.output()[-2000:]
            time.sleep(0.2)
        for _ in range(4):  # the survivor serves while the new worker loads
            assert _classify(server.target) != str(victim)

        # SIGTERM drains: a stream in flight finishes, then every process exits 0
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            stream = stub.GenerateStream(
                generation_pb2.GenerateRequest(prefix="drain", max_tokens=600), timeout=60)
            first = next(stream)
            threading.Timer(0.05, server.proc.send_signal, (signal.SIGTERM,)).start()
            rest = [m for m in stream]
        assert rest[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert sum(len(m.text) for m in [first, *rest]) == 600
        assert server.proc.wait(timeout=60) == 0
        assert "draining 2 workers" in server.output()
    finally:
        server.close()
        redis.kill()
