"""Classify capacity by worker count: ``rnnserve serve --workers N`` for each N, many clients.

    python -m bench.workers_capacity --workers 1,2,4,8 --duration 5 \\
        --redis-server "$(command -v redis-server)" --out bench/results/workers_capacity.json

What a bigger machine gives (docs/bench.md, "Against a peer"): one ``grpc.aio`` event loop per
process serves ~1 core of Classify, so past that only more worker processes add throughput.
One channel is one HTTP/2 connection, which SO_REUSEPORT hands to one worker, so the load here
comes from several load-generator processes (``--client-procs``, default a quarter of the
CPUs), each with its own channels (one TCP connection each); ``--connections-per-worker``
connections with ``--callers-per-connection`` closed-loop callers each, so that the kernel
spreads them over the workers. Each cell: start the server (defaults; ``--workers N``, the
Redis session store when N > 1, log level WARNING), wait until ``--probe-rounds`` rounds of
fresh connections all get a Classify answer, then ``--warmup`` + ``--duration`` seconds of
load with one shared measurement window, then stop. Server CPU is the process tree's
(supervisor and workers) over the window. Every non-OK status is counted; the exit code is 1
when any cell had one.

Needs only Python, the project's packages and, for N > 1, a ``redis-server`` binary
(``--redis-server PATH``; default: the one on PATH). Without one, the cells with N > 1 are
skipped, and the JSON and the table say so. Budget: a cell takes about ``duration + warmup`` plus
the server's start (a few seconds), so ``--workers 1,2,4,8 --duration 5`` runs in ~60-80 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.closed_loop import percentile
from bench.server_proc import ROOT, ServeCommand, start_redis

PROBE_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # one new connection per channel


def _log(msg: str) -> None:
    print(f"[workers-capacity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _probe_round(target: str, connections: int) -> bool:
    import grpc
    from rnnserve.v1 import classification_pb2, classification_pb2_grpc

    channels = [grpc.aio.insecure_channel(target, options=PROBE_OPTIONS)
                for _ in range(connections)]
    try:
        calls = [classification_pb2_grpc.ClassificationServiceStub(c).Classify(
            classification_pb2.ClassifyRequest(texts=["a fine film"]), timeout=10)
            for c in channels]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return not any(isinstance(r, BaseException) for r in results)
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def wait_ready(server: ServeCommand, connections: int, rounds: int, timeout: float = 180.0) -> float:
    """Seconds until ``rounds`` rounds in a row of ``connections`` fresh connections all got a
    Classify answer: with SO_REUSEPORT every worker then (almost surely) serves."""
    started = time.monotonic()
    good = 0
    while good < rounds:
        if server.proc.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"server did not become ready:\n{server.tail()}")
        ok = asyncio.run(_probe_round(server.target, connections))
        good = good + 1 if ok else 0
        if not ok:
            time.sleep(0.2)
    return time.monotonic() - started


async def _client(target: str, channels: int, callers: int, start_at: float, duration: float,
                  texts: list[str]) -> dict:
    """One load-generator process: ``channels`` connections × ``callers`` closed-loop callers;
    counts the answers that end inside [start_at, start_at + duration) (wall clock)."""
    import grpc
    from rnnserve.v1 import classification_pb2, classification_pb2_grpc

    end = start_at + duration
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    options = [("grpc.max_concurrent_streams", 1024), *PROBE_OPTIONS]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]

    async def caller(stub: object, seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < end:
            request = classification_pb2.ClassifyRequest(texts=[rng.choice(texts)])
            sent = time.perf_counter()
            try:
                await stub.Classify(request)  # type: ignore[attr-defined]
            except grpc.aio.AioRpcError as err:
                statuses[err.code().name] = statuses.get(err.code().name, 0) + 1
                continue
            if start_at <= time.time() < end:
                latencies.append(time.perf_counter() - sent)

    try:
        stubs = [classification_pb2_grpc.ClassificationServiceStub(c) for c in opened]
        tasks = [asyncio.create_task(caller(stub, i * 1000 + j))
                 for i, stub in enumerate(stubs) for j in range(callers)]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_window = time.process_time()
        await asyncio.sleep(max(0.0, end - time.time()))
        cpu_used = time.process_time() - cpu_window
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    return {"latencies_us": [round(x * 1e6) for x in latencies], "statuses": statuses,
            "client_cpu_s": cpu_used}


def run_cell(server: ServeCommand, a: argparse.Namespace, workers: int, texts_file: Path) -> dict:
    connections = a.connections_per_worker * workers
    procs = max(1, min(a.client_procs, connections))
    per_proc = [connections // procs + (1 if i < connections % procs else 0)
                for i in range(procs)]
    start_at = time.time() + a.warmup + 1.0  # the clients' imports and connections first
    clients = [subprocess.Popen(
        [sys.executable, "-m", "bench.workers_capacity", "--client", server.target,
         "--client-channels", str(n), "--callers-per-connection", str(a.callers_per_connection),
         "--client-start-at", repr(start_at), "--duration", str(a.duration),
         "--texts-file", str(texts_file)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True) for n in per_proc]
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = machine.tree_cpu_seconds(server.proc.pid)
    time.sleep(max(0.0, start_at + a.duration - time.time()))
    server_cpu = machine.tree_cpu_seconds(server.proc.pid) - cpu0
    parts = []
    for client in clients:
        out, _ = client.communicate(timeout=120)
        if client.returncode != 0:
            raise RuntimeError("a load-generator process failed")
        parts.append(json.loads(out.strip().splitlines()[-1]))
    latencies = [x / 1e6 for p in parts for x in p["latencies_us"]]
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    requests = len(latencies)
    return {
        "workers": workers, "connections": connections, "client_procs": procs,
        "callers": connections * a.callers_per_connection,
        "requests_per_s": requests / a.duration,
        "latency_p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "latency_p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "statuses": statuses, "errors": sum(statuses.values()),
        "server_cpu_cores": server_cpu / a.duration,
        "server_cpu_ms_per_request": server_cpu * 1000 / requests if requests else None,
        "client_cpu_cores": sum(p["client_cpu_s"] for p in parts) / a.duration,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['nproc']} CPUs ({m['cpu_model']}); load average at start "
             f"{results['load_average_start']}, at end {results['load_average_end']}. "
             f"{results['settings']['duration_s']} s cells after {results['settings']['warmup_s']}"
             f" s warm-up; {results['settings']['connections_per_worker']} connections per worker"
             f" × {results['settings']['callers_per_connection']} callers.", "",
             "| workers | connections | callers | req/s | p50 | p99 | server CPU cores "
             "| CPU ms/req | client CPU cores | non-OK | × workers 1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    base = next((c["requests_per_s"] for c in results["cells"] if c["workers"] == 1), None)
    for c in results["cells"]:
        ratio = f"{c['requests_per_s'] / base:.2f}" if base else "–"
        cpu = c["server_cpu_ms_per_request"]
        lines.append(
            f"| {c['workers']} | {c['connections']} | {c['callers']} | "
            f"{c['requests_per_s']:,.0f} | {c['latency_p50_ms']:.2f} ms | "
            f"{c['latency_p99_ms']:.2f} ms | {c['server_cpu_cores']:.2f} | "
            f"{'–' if cpu is None else f'{cpu:.3f}'} | {c['client_cpu_cores']:.2f} | "
            f"{', '.join(f'{k} {v}' for k, v in c['statuses'].items()) or '0'} | {ratio} |")
    for skipped in results["skipped"]:
        lines.append(f"\nSkipped workers {skipped['workers']}: {skipped['why']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers_capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before it")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                   "workers_capacity.json")
    p.add_argument("--redis-server", default=shutil.which("redis-server"),
                   help="redis-server binary, for the session store of N > 1 (default: PATH)")
    p.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--connections-per-worker", type=int, default=4)
    p.add_argument("--callers-per-connection", type=int, default=8)
    p.add_argument("--client-procs", type=int, default=max(1, (os.cpu_count() or 2) // 4),
                   help="load-generator processes (default: a quarter of the CPUs)")
    p.add_argument("--probe-rounds", type=int, default=3)
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for rnnserve serve (repeat), printed with the figures")
    # the load-generator process (internal)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--client-channels", type=int, help=argparse.SUPPRESS)
    p.add_argument("--client-start-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--texts-file", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.client:
        texts = json.loads(a.texts_file.read_text(encoding="utf-8"))
        print(json.dumps(asyncio.run(_client(a.client, a.client_channels,
                                             a.callers_per_connection, a.client_start_at,
                                             a.duration, texts))), flush=True)
        return 0

    from bench.run import review_texts

    counts = [int(x) for x in a.workers.split(",") if x.strip()]
    redis_ok = bool(a.redis_server) and Path(a.redis_server).exists()
    results: dict = {
        "machine": machine.describe(),
        "load_average_start": [round(x, 2) for x in machine.load_average()],
        "settings": {"duration_s": a.duration, "warmup_s": a.warmup,
                     "connections_per_worker": a.connections_per_worker,
                     "callers_per_connection": a.callers_per_connection,
                     "client_procs": a.client_procs, "serve_args": a.serve_arg,
                     "redis_server": a.redis_server if redis_ok else None},
        "cells": [], "skipped": [],
    }
    if not redis_ok and any(n > 1 for n in counts):
        why = (f"no redis-server binary ({a.redis_server or 'none on PATH'}); workers > 1 need "
               "the Redis session store: pass --redis-server PATH")
        _log(f"skipping workers > 1: {why}")
        results["skipped"] = [{"workers": n, "why": why} for n in counts if n > 1]
        counts = [n for n in counts if n == 1]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    redis = None
    errors = 0
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(review_texts()), encoding="utf-8")
        try:
            url = None
            if redis_ok:
                redis, url = start_redis(a.redis_server)
            for n in counts:
                server = ServeCommand(a.model_repository.resolve(), [
                    "--workers", str(n), "--log-level", "WARNING",
                    *(["--session-store", url] if url else []), *a.serve_arg])
                try:
                    ready_s = wait_ready(server, 4 * n, a.probe_rounds)
                    cell = run_cell(server, a, n, texts_file)
                finally:
                    server.close()
                cell["ready_s"] = round(ready_s, 2)
                cell["session_store"] = "redis" if url else "memory"
                errors += cell["errors"]
                results["cells"].append(cell)
                _log(f"workers {n}: {cell['requests_per_s']:,.0f} req/s, "
                     f"{cell['server_cpu_cores']:.2f} server cores, non-OK "
                     f"{cell['statuses'] or 0} (ready in {ready_s:.1f} s)")
        finally:
            if redis is not None:
                redis.kill()
                redis.wait()
    results["load_average_end"] = [round(x, 2) for x in machine.load_average()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    a.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(results))
    _log(f"done in {results['elapsed_s']:.0f} s; JSON in {a.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
