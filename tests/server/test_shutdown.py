"""Graceful stop: in-flight work completes, new calls are refused, health turns NOT_SERVING.

One test drives ``RnnServer.stop`` in-process; the other runs the real ``rnnserve serve`` process
and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.client import AsyncClient, Client, RnnserveError, UnavailableError

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LONG = 8000
PROCESS_LONG = 3000  # the subprocess test pays a process start already
GRACE = 15.0


async def test_stop_drains_in_flight_streams_and_refuses_new_calls(make_server, connect):
    server = await make_server(max_tokens_limit=LONG)
    target = server.target
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(connect(server))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert (await watch.read()).status == SERVING

        first_chunk = asyncio.Event()

        async def consume() -> tuple[str, str]:
            text, reason = "", ""
            async for chunk in client.stream("the time traveller", max_tokens=LONG):
                text += chunk.text
                reason = chunk.finish_reason
                first_chunk.set()
            return text, reason

        streaming = asyncio.create_task(consume())
        await asyncio.wait_for(first_chunk.wait(), 10)
        started = time.monotonic()
        stopping = asyncio.create_task(server.stop(grace=GRACE))

        # health turns NOT_SERVING for watchers (load balancers stop sending traffic)
        update = await asyncio.wait_for(watch.read(), 5)
        assert update.status == NOT_SERVING
        watch.cancel()  # a watch is an in-flight call too: don't make stop wait for it
        await asyncio.sleep(0.05)

        # a new call made after stop began is refused, on a new channel and on the old one
        still_streaming = not streaming.done()
        async with AsyncClient(target, retries=0, timeout=5) as late:
            with pytest.raises(UnavailableError):
                await late.generate("time", max_tokens=3)
        with pytest.raises(UnavailableError):
            await client.generate("time", max_tokens=3)

        text, reason = await asyncio.wait_for(streaming, 30)
        await asyncio.wait_for(stopping, GRACE + 5)
        elapsed = time.monotonic() - started
    assert still_streaming, "the stream should still have been running when stop began"
    assert len(text) == LONG and reason == "length", "the in-flight stream completed fully"
    assert elapsed < GRACE, "stop returned once the stream was done, not at the end of the grace"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rnnserve_serve_drains_on_sigterm(tmp_path: Path):
    port, metrics_port = free_port(), free_port()
    exe = Path(sys.executable).parent / "rnnserve"
    assert exe.exists(), "the rnnserve console script is installed in the venv"
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--model-repository", str(ROOT / "model_repository"),
         "--device", "cpu", "--grace-period-s", str(GRACE),
         "--max-tokens-limit", str(PROCESS_LONG)],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    target = f"127.0.0.1:{port}"
    try:
        with Client(target, timeout=2, retries=0) as client:
            deadline = time.monotonic() + 60
            for _ in range(600):
                assert proc.poll() is None, f"rnnserve serve exited early:\n{_read(log)}"
                with contextlib.suppress(RnnserveError):
                    if client.health() == "SERVING":
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not SERVING within 60 s:\n{_read(log)}")
                time.sleep(0.1)
            else:
                raise AssertionError("server never became SERVING")
            expected = client.generate("the time traveller", max_tokens=50).text

        got: dict = {}
        started = threading.Event()

        def consume() -> None:
            try:
                with Client(target, timeout=60, retries=0) as streaming_client:
                    text, reason = "", ""
                    chunks = streaming_client.stream("the time traveller", max_tokens=PROCESS_LONG)
                    for chunk in chunks:
                        text += chunk.text
                        reason = chunk.finish_reason
                        started.set()
                    got["text"], got["reason"] = text, reason
            except Exception as exc:  # noqa: BLE001 - reported by the assertions below
                got["error"] = exc
            finally:
                started.set()

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        assert started.wait(30), "the stream never started"
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        worker.join(30)
        assert not worker.is_alive(), "the stream never finished"
        code = proc.wait(timeout=20)
        exit_seconds = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    output = _read(log)
    assert "error" not in got, f"{got.get('error')!r}\n{output}"
    assert len(got["text"]) == PROCESS_LONG and got["reason"] == "length"
    assert got["text"].startswith(expected)
    assert code == 0, output
    assert exit_seconds < GRACE + 5, "the process exited within the grace period"
    assert "draining" in output and "stopped" in output
    with Client(target, timeout=2, retries=0) as client, pytest.raises(UnavailableError):
        client.health()


def _read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]
