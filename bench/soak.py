"""Bounded load-and-soak (``make soak``): mixed traffic past the admission limits, then checks.

    python -m bench.soak --duration 120 [--concurrency 64] [--json out.json]

Starts ``rnnserve serve`` as a subprocess on loopback with low admission limits, drives it with
grpc.aio workers (streams read to the end, streams cancelled mid-way, unary calls with deadlines
too short to finish, sessions continued and ended — a few left open on purpose — and Classify),
for ``--duration`` seconds or ``--max-requests`` calls, whichever comes first. Then it checks:

- every status seen is OK, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, or CANCELLED where the load
  itself cancelled the call;
- no leaks: sessions held by the server == sessions the load left open; active generations,
  queued work and calls in flight are 0 once the load stops;
- the server's RSS (``/proc/PID/status``) after warm-up vs at the end;
- SIGTERM drains: health turns NOT_SERVING, streams in flight finish, the process exits 0.

Exits 1 if any check fails. The figures of a recorded run are in ``docs/soak.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
LIMITS = {  # low on purpose: the load goes past them
    "max_active_generations": 16, "max_queued_texts": 64, "max_sessions": 4096,
    "max_concurrent_streams": 256, "max_tokens_limit": 1024, "default_deadline_s": 30,
    "grace_period_s": 10,
}
BACKOFF_S = (0.005, 0.05)
PREFIXES = ["the time traveller", "it was", "the machine", "we sat and", "and then"]
TEXTS = ["a wonderful film", "dull and lifeless", "the best thing this year", "bad",
         "an uneven but often moving story", "i want my two hours back"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(port: int) -> dict[str, float]:
    """Sum of every sample per metric name (labels folded together)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


def prepare_repository(folder: Path) -> Path:
    """A copy of the shipped models; a tiny untrained classifier is added if none is shipped."""
    repo = folder / "repo"
    shutil.copytree(ROOT / "model_repository", repo)
    from rnnserve.models.checkpoint import find_models, save_model

    if not any(spec.kind == "classifier" for spec in find_models(repo)):
        from rnnserve.models.sentiment import SentimentConfig, SentimentRNN

        vocab = ["<unk>", "<pad>", *sorted({w for t in TEXTS for w in t.split()})]
        arch = {"vocab_size": len(vocab), "embedding_dim": 16, "hidden_dim": 16, "no_layers": 1}
        cfg = {"name": "soak-classifier", "version": 1, "kind": "classifier", "vocab": vocab,
               "architecture": {"type": "sentiment_rnn", **arch},
               "tokenizer": {"seq_length": 32, "pad_index": 1}}
        save_model(repo / "soak-classifier" / "1", SentimentRNN.from_config(SentimentConfig(**arch)),
                   cfg)
    return repo


class Tally:
    """Calls by kind and status code, plus sessions left open on purpose."""

    def __init__(self) -> None:
        self.codes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.left_open = 0
        self.calls = 0

    def add(self, kind: str, code: str) -> None:
        self.codes[(kind, code)] += 1
        self.calls += 1

    def by_code(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for (_, code), n in self.codes.items():
            out[code] += n
        return dict(out)

    def unexpected(self) -> dict[str, int]:
        return {f"{kind}:{code}": n for (kind, code), n in self.codes.items()
                if code not in ALLOWED and not (kind == "cancel" and code == "CANCELLED")}


async def _call(tally: Tally, kind: str, coro: Any) -> Any:
    try:
        result = await coro
    except grpc.aio.AioRpcError as err:
        tally.add(kind, err.code().name)
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            await asyncio.sleep(random.uniform(*BACKOFF_S))  # as a polite client would
        return None
    tally.add(kind, "CANCELLED" if result is CANCELLED_BY_LOAD else "OK")
    return result


CANCELLED_BY_LOAD = object()


async def _stream(stub: Any, request: Any, read: int | None = None,
                  timeout: float | None = None) -> Any:
    """Read a stream to the end (or ``read`` messages, then cancel it)."""
    call = stub.GenerateStream(request, timeout=timeout)
    n = 0
    async for _ in call:
        n += 1
        if read is not None and n >= read:
            call.cancel()
            break
    if read is not None and n >= read:
        return CANCELLED_BY_LOAD
    return n


async def worker(target: str, role: str, stop_at: float, budget: list[int], tally: Tally,
                 seed: int) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        gen = generation_pb2_grpc.GenerationServiceStub(channel)
        cls = classification_pb2_grpc.ClassificationServiceStub(channel)
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            prefix = rng.choice(PREFIXES)
            if role == "stream":
                req = generation_pb2.GenerateRequest(prefix=prefix, max_tokens=rng.randint(20, 400),
                                                     temperature=rng.choice([0.0, 0.8]), seed=7)
                await _call(tally, "stream", _stream(gen, req, timeout=30))
            elif role == "cancel":
                req = generation_pb2.GenerateRequest(prefix=prefix, max_tokens=1000)
                await _call(tally, "cancel", _stream(gen, req, read=rng.randint(1, 3), timeout=30))
            elif role == "deadline":
                req = generation_pb2.GenerateRequest(prefix=prefix, max_tokens=1024)
                await _call(tally, "deadline", gen.Generate(req, timeout=rng.uniform(0.02, 0.2)))
            elif role == "unary":
                req = generation_pb2.GenerateRequest(prefix=prefix, max_tokens=rng.randint(5, 100))
                await _call(tally, "unary", gen.Generate(req, timeout=30))
            elif role == "classify":
                texts = [rng.choice(TEXTS) for _ in range(rng.randint(1, 32))]
                req = classification_pb2.ClassifyRequest(texts=texts, explain=rng.random() < 0.2)
                await _call(tally, "classify", cls.Classify(req, timeout=30))
            else:
                await session_turns(gen, rng, prefix, tally)


async def session_turns(gen: Any, rng: random.Random, prefix: str, tally: Tally) -> None:
    opened = await _call(tally, "session", gen.Generate(generation_pb2.GenerateRequest(
        prefix=prefix, max_tokens=rng.randint(5, 50), keep_session=True), timeout=30))
    if opened is None:
        return
    for _ in range(rng.randint(1, 3)):
        more = generation_pb2.GenerateRequest(prefix=" and", max_tokens=rng.randint(5, 50),
                                              session_id=opened.session_id)
        if rng.random() < 0.3:
            await _call(tally, "session", _stream(gen, more, timeout=30))
        else:
            await _call(tally, "session", gen.Generate(more, timeout=30))
    if rng.random() < 0.05:
        tally.left_open += 1  # kept on purpose: the server must still hold exactly these
        return
    await _call(tally, "session", gen.EndSession(
        generation_pb2.EndSessionRequest(session_id=opened.session_id), timeout=30))


async def wait_serving(target: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not become SERVING")


async def drain_check(proc: subprocess.Popen, target: str) -> dict[str, Any]:
    """SIGTERM with streams in flight: they finish, health says NOT_SERVING, exit code 0."""
    async with grpc.aio.insecure_channel(target) as channel:
        gen = generation_pb2_grpc.GenerationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        req = generation_pb2.GenerateRequest(prefix="the time traveller", max_tokens=1000)
        calls = [gen.GenerateStream(req, timeout=30) for _ in range(4)]
        for call in calls:
            await call.read()
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        await watch.read()  # SERVING
        proc.send_signal(signal.SIGTERM)
        try:
            status = (await asyncio.wait_for(watch.read(), 5)).status
            health_after = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            health_after = type(err).__name__
        try:
            await gen.Generate(generation_pb2.GenerateRequest(prefix="x", max_tokens=1), timeout=2)
            new_call = "OK"
        except grpc.aio.AioRpcError as err:
            new_call = err.code().name
        finished = 0
        for call in calls:
            try:
                while await call.read() is not grpc.aio.EOF:
                    pass
                finished += 1
            except grpc.aio.AioRpcError:
                pass
    code = await asyncio.to_thread(proc.wait, 30)
    return {"health_after_sigterm": health_after, "new_call_after_sigterm": new_call,
            "in_flight_streams": len(calls), "in_flight_streams_finished": finished,
            "exit_code": code}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="rnnserve-soak-"))
    repo = prepare_repository(folder)
    port, metrics_port = free_port(), free_port()
    flags = {"host": "127.0.0.1", "port": port, "metrics_port": metrics_port,
             "device": args.device,
             "model_repository": repo, "log_level": "WARNING", **LIMITS}
    argv = [sys.executable, "-m", "rnnserve.server.main"]
    for key, value in flags.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        await wait_serving(target)
        tally = Tally()
        roles = (["stream"] * 6 + ["session"] * 4 + ["cancel"] * 2 + ["deadline"] * 2
                 + ["unary"] * 2 + ["classify"] * 4)
        budget = [args.max_requests]
        started = time.monotonic()
        warm_until = started + min(10.0, args.duration / 4)
        stop_at = started + args.duration
        tasks = [asyncio.create_task(worker(target, roles[i % len(roles)], stop_at, budget,
                                            tally, seed=i)) for i in range(args.concurrency)]
        rss_samples: list[tuple[float, int]] = []
        rss_warm = 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rss_samples.append((round(now - started, 1), rss_bytes(proc.pid)))
            if not rss_warm and now >= warm_until:
                rss_warm = rss_samples[-1][1]
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)  # let cancelled work leave the engine
        metrics = await asyncio.to_thread(scrape, metrics_port)
        rss_end = rss_bytes(proc.pid)
        leaks = {
            "sessions_held_minus_left_open":
                int(metrics["rnnserve_sessions_active"]) - tally.left_open,
            "active_generations": int(metrics["rnnserve_active_generations"]),
            "queued_work": int(metrics["rnnserve_queue_depth"]),
            "calls_in_flight": int(metrics["rnnserve_requests_in_flight"]),
        }
        drain = await drain_check(proc, target)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    rss_warm = rss_warm or (rss_samples[0][1] if rss_samples else rss_end)
    return {
        "duration_s": round(elapsed, 1), "concurrency": args.concurrency, "limits": LIMITS,
        "calls": tally.calls, "calls_per_s": round(tally.calls / elapsed, 1),
        "by_code": tally.by_code(),
        "by_kind": {f"{k}:{c}": n for (k, c), n in sorted(tally.codes.items())},
        "unexpected": tally.unexpected(), "sessions_left_open": tally.left_open,
        "server_sessions_active": int(metrics["rnnserve_sessions_active"]),
        "server_rejected_total": int(metrics["rnnserve_rejected_total"]),
        "server_cancelled_generations_total": int(metrics["rnnserve_cancelled_generations_total"]),
        "leaks": leaks,
        "rss_mib": {"after_warmup": round(rss_warm / 2**20, 1), "end": round(rss_end / 2**20, 1),
                    "max": round(max(r for _, r in rss_samples) / 2**20, 1) if rss_samples else 0,
                    "growth_after_warmup": round((rss_end - rss_warm) / 2**20, 1),
                    "timeline": timeline(rss_samples)},
        "drain": drain, "server_log": str(folder / "server.log"),
    }


def timeline(samples: list[tuple[float, int]], points: int = 6) -> dict[str, float]:
    """RSS (MiB) at a few evenly spaced moments of the run, keyed by elapsed seconds."""
    if not samples:
        return {}
    step = max(1, len(samples) // points)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return {f"{t:.0f}s": round(r / 2**20, 1) for t, r in picked}


def verdict(report: dict[str, Any], max_rss_growth_mib: float) -> list[str]:
    problems = []
    if report["unexpected"]:
        problems.append(f"unexpected status codes: {report['unexpected']}")
    for name, value in report["leaks"].items():
        if value != 0:
            problems.append(f"leak: {name} = {value}")
    if report["rss_mib"]["growth_after_warmup"] > max_rss_growth_mib:
        problems.append(f"RSS grew {report['rss_mib']['growth_after_warmup']} MiB after warm-up")
    drain = report["drain"]
    if drain["exit_code"] != 0 or drain["health_after_sigterm"] != "NOT_SERVING":
        problems.append(f"drain: {drain}")
    if drain["in_flight_streams_finished"] != drain["in_flight_streams"]:
        problems.append(f"drain: in-flight streams were cut: {drain}")
    if drain["new_call_after_sigterm"] == "OK":
        problems.append("drain: a new call was served after SIGTERM")
    if report["by_code"].get("OK", 0) == 0:
        problems.append("nothing was served")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent workers")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many")
    p.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--device", default="auto", help="the server's device: auto, cpu, cuda, cuda:N")
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = asyncio.run(soak(args))
    problems = verdict(report, args.max_rss_growth_mib)
    report["problems"] = problems
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("SOAK " + ("FAILED: " + "; ".join(problems) if problems else "PASSED"), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
