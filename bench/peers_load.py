"""One Classify load cell against rnnserve or an Open Inference Protocol server; JSON on stdout.

``python -m bench.peers_load --protocol rnnserve|oip --target HOST:PORT --concurrency C ...``

The same closed-loop driver as ``make bench`` (:func:`bench.load._drive`: one ``grpc.aio``
channel, C callers, each sending its next request when the previous one ends, one rt-polarity
sentence per request, every non-OK status counted by code). ``rnnserve`` calls
``ClassificationService/Classify`` with one text; ``oip`` calls
``inference.GRPCInferenceService/ModelInfer`` with one BYTES input ``text`` of shape ``[1]``,
through MLServer's own generated stubs, so it runs with the peer's virtual environment's Python
(``.venv/peers``, where rnnserve is installed without dependencies). ``--pid`` names the
server process whose CPU time (with its children's: MLServer's inference workers) is measured
over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import grpc

from bench import closed_loop as load
from bench import machine


async def classify_oip(target: str, concurrency: int, duration: float, warmup: float,
                       texts: list[str], model: str,
                       probe: load.CpuProbe | None = None) -> dict:
    """Like :func:`bench.load.classify`, through ``ModelInfer`` (BYTES input ``text``, [1])."""
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target, options=load.CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(window: load.Window, s: load.Samples, rng: random.Random) -> None:
            text = rng.choice(texts).encode("utf-8")
            request = pb.ModelInferRequest(model_name=model, inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="text", datatype="BYTES", shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[text]))])
            sent = time.perf_counter()
            await stub.ModelInfer(request)
            done = time.perf_counter()
            if done in window:
                s.requests += 1
                s.latencies.append(done - sent)

        s = await load._drive(concurrency, warmup, duration, one, probe)
    return {
        "concurrency": concurrency, "requests_per_s": s.requests / duration,
        "latency_p50_ms": load._ms(load.percentile(s.latencies, 50)),
        "latency_p99_ms": load._ms(load.percentile(s.latencies, 99)), "errors": s.errors,
        "statuses": s.statuses,
        **load._cpu(s, s.requests, "server_cpu_ms_per_request"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.peers_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("rnnserve", "oip"), required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pid", type=int, default=0, help="server process to measure CPU of")
    p.add_argument("--model", default="sentiment")
    p.add_argument("--texts-file", type=Path, required=True, help="JSON list of texts")
    a = p.parse_args(argv)
    texts = json.loads(a.texts_file.read_text(encoding="utf-8"))

    def probe() -> float:
        return machine.tree_cpu_seconds(a.pid) if a.pid else 0.0

    if a.protocol == "oip":
        cell = asyncio.run(classify_oip(a.target, a.concurrency, a.duration, a.warmup, texts,
                                        a.model, probe))
    else:
        from bench.load import classify  # rnnserve's stubs: rnnserve's environment only

        cell = asyncio.run(classify(a.target, a.concurrency, a.duration, a.warmup, texts,
                                         probe))
    print(json.dumps(cell), flush=True)


if __name__ == "__main__":
    main()
