"""Classify over the Open Inference Protocol vs over rnnserve.v1, in the same run.

Both sides use the generated stubs directly (no client library), one text per request, C
closed-loop callers on one channel, as :func:`bench.load.classify` does: ``ModelInfer`` on model
``sentiment`` with a ``text`` BYTES [1] tensor in ``raw_input_contents`` (as Triton's client sends
it) against ``Classify``. The two alternate, ``rounds`` windows each, so slow drift of the
shared machine's load falls on both; the ratio is the protocol's requests/s over rnnserve.v1's.
The server's CPU time per request of each is reported too: on a machine others load, it moves
less than requests/s do.

    python -m bench.oip --concurrency 64    # own server subprocess; prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench import load
from bench.load import CHANNEL_OPTIONS, Samples, Window, percentile

MODEL = "sentiment"
TARGET_RATIO = 0.9


def infer_request(text: str) -> service_pb2.ModelInferRequest:
    raw = text.encode("utf-8")
    return service_pb2.ModelInferRequest(
        model_name=MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(raw).to_bytes(4, "little") + raw],
    )


async def protocol_classify(target: str, concurrency: int, duration: float, warmup: float,
                            texts: list[str], probe: load.CpuProbe | None = None) -> dict:
    """One window of ModelInfer calls; the same keys as :func:`bench.load.classify`."""
    requests = [infer_request(t) for t in texts]
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one(window: Window, s: Samples, rng: random.Random) -> None:
            sent = time.perf_counter()
            await stub.ModelInfer(rng.choice(requests))
            done = time.perf_counter()
            if done in window:
                s.requests += 1
                s.latencies.append(done - sent)

        s = await load._drive(concurrency, warmup, duration, one, probe)
    return {
        "concurrency": concurrency, "requests_per_s": s.requests / duration,
        "latency_p50_ms": load._ms(percentile(s.latencies, 50)),
        "latency_p99_ms": load._ms(percentile(s.latencies, 99)), "errors": s.errors,
        **load._cpu(s, s.requests, "server_cpu_ms_per_request"),
    }


async def compare(target: str, concurrency: int, duration: float, warmup: float,
                  texts: list[str], probe: load.CpuProbe | None = None, rounds: int = 2) -> dict:
    """Alternating windows of both protocols; their mean requests/s and the ratio."""
    cells: dict[str, list[dict]] = {"rnnserve": [], "oip": []}
    for _ in range(rounds):
        cells["rnnserve"].append(
            await load.classify(target, concurrency, duration, warmup, texts, probe))
        cells["oip"].append(
            await protocol_classify(target, concurrency, duration, warmup, texts, probe))
    rate = {k: sum(c["requests_per_s"] for c in v) / len(v) for k, v in cells.items()}
    cpu = {k: [c["server_cpu_ms_per_request"] for c in v] for k, v in cells.items()}
    cpu_ms = {k: sum(v) / len(v) if v and None not in v else None for k, v in cpu.items()}
    return {"concurrency": concurrency, "rounds": rounds, "cells": cells,
            "rnnserve_requests_per_s": rate["rnnserve"], "oip_requests_per_s": rate["oip"],
            "ratio": rate["oip"] / rate["rnnserve"] if rate["rnnserve"] else None,
            # less disturbed by other load on the machine than requests/s: server CPU per request
            "rnnserve_server_cpu_ms_per_request": cpu_ms["rnnserve"],
            "oip_server_cpu_ms_per_request": cpu_ms["oip"]}


def targets(results: dict) -> list[dict]:
    """The bench target of this comparison (in bench.report's form)."""
    ratio = (results.get("server", {}).get("on", {}).get("oip") or {}).get("ratio")
    return [{"target": "Classify c=64 requests/s, Open Inference Protocol / rnnserve.v1",
             "value": ratio, "bound": TARGET_RATIO, "op": ">=", "unit": "x",
             "pass": None if ratio is None else ratio >= TARGET_RATIO}]


def main(argv: list[str] | None = None) -> int:
    from bench import machine
    from bench.run import REPO, review_texts
    from bench.server_proc import ServerProcess, base_settings

    p = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--torch-threads", type=int, default=1)
    a = p.parse_args(argv)
    settings = base_settings(a.model_repository.resolve(), torch_threads=a.torch_threads)
    with ServerProcess(settings) as server:
        out = asyncio.run(compare(server.target, a.concurrency, a.duration, a.warmup,
                                  review_texts(), lambda: machine.cpu_seconds(server.pid),
                                  rounds=a.rounds))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
