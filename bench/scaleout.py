"""Scale-out figures, measured in one run: ``python -m bench.scaleout`` (also part of make bench).

1. Session turn latency, memory store vs Redis store: two servers (bench.server_proc) run side by
   side, one per store, against a private redis-server (free port, no persistence); one session
   on each gets ``--turns`` turns of one character in and one out, alternating between the two
   servers in blocks so that both see the same machine load. p50/p99 in ms, and the difference;
   also each server process's CPU time per turn (user + system, all threads), which moves far
   less than wall-clock latency when other processes compete for the cores.
2. Classify req/s and streams tok/s at c=64, ``rnnserve serve --workers 1`` vs ``--workers 2``
   (Redis store, torch_threads 1 per worker). The load is spread over 8 connections (8 callers
   each; a connection stays on one worker, the kernel picks it), so both workers get some. The
   load generator shares the machine's cores with the server.

Prints one JSON line (the last line) for bench.run, and a short table before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

from bench import load, machine
from bench.server_proc import ROOT, ServerProcess, base_settings

CONNECTIONS = 8
CONCURRENCY = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _pct(values: list[float], q: float) -> float:
    return round(load.percentile(values, q) * 1000.0, 3)


def session_latency(repo: Path, redis_url: str, turns: int, threads: int) -> dict:
    settings = {"memory": base_settings(repo, torch_threads=threads),
                "redis": base_settings(repo, torch_threads=threads, session_store=redis_url)}
    with ServerProcess(settings["memory"]) as mem, ServerProcess(settings["redis"]) as red:
        stubs, sids, times = {}, {}, {"memory": [], "redis": []}
        channels = []
        for name, server in (("memory", mem), ("redis", red)):
            channel = grpc.insecure_channel(server.target)
            channels.append(channel)
            stubs[name] = generation_pb2_grpc.GenerationServiceStub(channel)
            sids[name] = stubs[name].Generate(generation_pb2.GenerateRequest(
                prefix="the time machine", max_tokens=1, keep_session=True)).session_id
        pids, cpu = {"memory": mem.pid, "redis": red.pid}, {"memory": 0.0, "redis": 0.0}
        for block in range(turns // 50):
            for name in ("memory", "redis") if block % 2 == 0 else ("redis", "memory"):
                cpu_before = machine.cpu_seconds(pids[name])
                for _ in range(50):
                    started = time.perf_counter()
                    stubs[name].Generate(generation_pb2.GenerateRequest(
                        prefix="a", max_tokens=1, session_id=sids[name]), timeout=30)
                    times[name].append(time.perf_counter() - started)
                cpu[name] += machine.cpu_seconds(pids[name]) - cpu_before
        for channel in channels:
            channel.close()
    out = {name: {"turns": len(t), "p50_ms": _pct(t, 50), "p99_ms": _pct(t, 99),
                  "server_cpu_ms_per_turn": round(cpu[name] / max(len(t), 1) * 1000.0, 3)}
           for name, t in times.items()}
    out["redis_adds_p50_ms"] = round(out["redis"]["p50_ms"] - out["memory"]["p50_ms"], 3)
    out["redis_adds_server_cpu_ms"] = round(out["redis"]["server_cpu_ms_per_turn"]
                                            - out["memory"]["server_cpu_ms_per_turn"], 3)
    return out


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the supervisor and its workers)."""
    total = machine.cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_tree_cpu(int(c)) for c in children)


class Serve:
    """``rnnserve serve --workers N`` as a subprocess, ready when its log says so."""

    def __init__(self, repo: Path, workers: int, redis_url: str, threads: int) -> None:
        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnserve.server.main", "--port", str(self.port),
             "--metrics-port", "-1", "--device", "cpu", "--model-repository", str(repo),
             "--workers", str(workers), "--session-store", redis_url,
             "--torch-threads", str(threads), "--log-level", "INFO"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def wait(self) -> str:
        for _ in range(1200):
            if "rnnserve ready" in Path(self.log.name).read_text(errors="replace"):
                return f"127.0.0.1:{self.port}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(Path(self.log.name).read_text(errors="replace")[-2000:])

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        Path(self.log.name).unlink(missing_ok=True)


async def _spread(cell, target: str, *args) -> list[dict]:
    each = CONCURRENCY // CONNECTIONS
    return list(await asyncio.gather(*(cell(target, each, *args) for _ in range(CONNECTIONS))))


async def worker_cells(target: str, pid: int, a: argparse.Namespace) -> dict:
    from bench.run import prefixes, review_texts

    def probe() -> float:
        return _tree_cpu(pid)
    classify = await _spread(load.classify, target, a.duration, a.warmup, review_texts(), probe)
    streams = await _spread(load.streams, target, a.duration, a.warmup, prefixes(), 100, probe)
    return {
        "classify_requests_per_s": round(sum(c["requests_per_s"] for c in classify), 1),
        "classify_server_cpu_cores": round(classify[0]["server_cpu_cores"], 2),
        "stream_tokens_per_s": round(sum(c["tokens_per_s"] for c in streams), 1),
        "stream_server_cpu_cores": round(streams[0]["server_cpu_cores"], 2),
        "errors": sum(c["errors"] for c in classify + streams),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--turns", type=int, default=1000, help="session turns per store")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--torch-threads", type=int, default=1)
    a = p.parse_args(argv)
    # one TCP connection per channel, so that the kernel can hand them to different workers
    load.CHANNEL_OPTIONS = [*load.CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    repo = a.model_repository.resolve()
    redis, url = _redis()
    out: dict = {"cpus": os.cpu_count(), "concurrency": CONCURRENCY, "connections": CONNECTIONS}
    try:
        out["session_turn"] = session_latency(repo, url, a.turns, a.torch_threads)
        out["workers"] = {}
        for workers in (1, 2):
            serve = Serve(repo, workers, url, a.torch_threads)
            try:
                target = serve.wait()
                out["workers"][str(workers)] = asyncio.run(worker_cells(target, serve.proc.pid, a))
            finally:
                serve.close()
    finally:
        redis.kill()
        redis.wait()
    w1, w2 = out["workers"]["1"], out["workers"]["2"]
    out["classify_ratio_2_vs_1"] = round(
        w2["classify_requests_per_s"] / max(w1["classify_requests_per_s"], 1e-9), 2)
    out["streams_ratio_2_vs_1"] = round(
        w2["stream_tokens_per_s"] / max(w1["stream_tokens_per_s"], 1e-9), 2)
    out["load_average_at_end"] = [round(x, 2) for x in machine.load_average()]
    s = out["session_turn"]
    print(f"session turn p50/p99 ms: memory {s['memory']['p50_ms']}/{s['memory']['p99_ms']}, "
          f"redis {s['redis']['p50_ms']}/{s['redis']['p99_ms']} "
          f"(redis adds {s['redis_adds_p50_ms']} ms at p50; server CPU per turn "
          f"{s['memory']['server_cpu_ms_per_turn']} vs {s['redis']['server_cpu_ms_per_turn']} ms)",
          file=sys.stderr)
    print(f"workers 1 vs 2 at c={CONCURRENCY}: Classify {w1['classify_requests_per_s']} vs "
          f"{w2['classify_requests_per_s']} req/s (x{out['classify_ratio_2_vs_1']}), streams "
          f"{w1['stream_tokens_per_s']} vs {w2['stream_tokens_per_s']} tok/s "
          f"(x{out['streams_ratio_2_vs_1']})", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
