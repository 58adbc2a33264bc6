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
import sys
import time
from pathlib import Path

import grpc
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

from bench import load, machine
from bench.server_proc import ROOT, ServeCommand, ServerProcess, base_settings, start_redis

CONNECTIONS = 8
CONCURRENCY = 64


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


async def _spread(cell, target: str, *args) -> list[dict]:
    each = CONCURRENCY // CONNECTIONS
    return list(await asyncio.gather(*(cell(target, each, *args) for _ in range(CONNECTIONS))))


async def worker_cells(target: str, pid: int, a: argparse.Namespace) -> dict:
    from bench.run import prefixes, review_texts

    def probe() -> float:
        return machine.tree_cpu_seconds(pid)
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
    redis, url = start_redis()
    out: dict = {"cpus": os.cpu_count(), "concurrency": CONCURRENCY, "connections": CONNECTIONS}
    try:
        out["session_turn"] = session_latency(repo, url, a.turns, a.torch_threads)
        out["workers"] = {}
        for workers in (1, 2):
            serve = ServeCommand(repo, [
                "--device", "cpu", "--workers", str(workers), "--session-store", url,
                "--torch-threads", str(a.torch_threads), "--log-level", "INFO"])
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
