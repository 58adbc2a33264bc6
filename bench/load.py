"""Closed-loop load over loopback gRPC with ``grpc.aio``: C workers, each one request at a time.

Every cell runs ``warmup`` seconds, then measures a ``duration`` window; requests still running
at its end are cancelled. The generated stubs are used directly (no client-library conversion),
so that the load generator spends as little CPU as it can on the 2 cores it shares with the
server.

Streams: a message's *arrival* is when the client's ``async for`` receives it. Time to first
token = arrival of the first message with text - the moment the call was made (for every first
message arriving in the window, queueing time included). Inter-token
latency is per message gap divided by the characters of the later message (a coalesced message
of k characters contributes one sample of gap / k); the raw per-message gaps and the mean
characters per message are reported alongside.
"""

from __future__ import annotations

import random
import time

import grpc
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

from bench.closed_loop import (  # noqa: F401 - re-exported for cells built on this module
    CHANNEL_OPTIONS,
    CpuProbe,
    Samples,
    Window,
    _cpu,
    _drive,
    _ms,
    percentile,
)


async def streams(target: str, concurrency: int, duration: float, warmup: float,
                  prefixes: list[str], max_tokens: int,
                  probe: CpuProbe | None = None) -> dict:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def one(window: Window, s: Samples, rng: random.Random) -> None:
            request = generation_pb2.GenerateRequest(prefix=rng.choice(prefixes),
                                                     max_tokens=max_tokens)
            sent = time.perf_counter()
            previous: float | None = None
            call = stub.GenerateStream(request)
            try:
                async for message in call:
                    t = time.perf_counter()
                    n = len(message.text)
                    if not n:
                        continue
                    if t in window:
                        s.tokens += n
                        s.messages += 1
                        if previous is None:
                            s.ttft.append(t - sent)
                        elif previous in window:
                            s.gaps.append(t - previous)
                            s.itl.append((t - previous) / n)
                    previous = t
                if time.perf_counter() in window:
                    s.requests += 1
            finally:
                call.cancel()

        s = await _drive(concurrency, warmup, duration, one, probe)
    return {
        "concurrency": concurrency, "max_tokens": max_tokens,
        "tokens_per_s": s.tokens / duration, "requests": s.requests, "errors": s.errors,
        "statuses": s.statuses,
        "ttft_p50_ms": _ms(percentile(s.ttft, 50)), "ttft_p99_ms": _ms(percentile(s.ttft, 99)),
        "itl_p50_ms": _ms(percentile(s.itl, 50)), "itl_p99_ms": _ms(percentile(s.itl, 99)),
        "msg_gap_p50_ms": _ms(percentile(s.gaps, 50)),
        "msg_gap_p99_ms": _ms(percentile(s.gaps, 99)),
        "chars_per_message": s.tokens / s.messages if s.messages else None,
        **_cpu(s, s.tokens, "server_cpu_ms_per_1k_tokens"),
    }


async def unary_generate(target: str, concurrency: int, duration: float, warmup: float,
                         prefixes: list[str], max_tokens: int,
                  probe: CpuProbe | None = None) -> dict:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def one(window: Window, s: Samples, rng: random.Random) -> None:
            request = generation_pb2.GenerateRequest(prefix=rng.choice(prefixes),
                                                     max_tokens=max_tokens)
            sent = time.perf_counter()
            response = await stub.Generate(request)
            done = time.perf_counter()
            if done in window:
                s.requests += 1
                s.tokens += len(response.text)
                s.latencies.append(done - sent)

        s = await _drive(concurrency, warmup, duration, one, probe)
    return {
        "concurrency": concurrency, "max_tokens": max_tokens,
        "requests_per_s": s.requests / duration, "tokens_per_s": s.tokens / duration,
        "latency_p50_ms": _ms(percentile(s.latencies, 50)),
        "latency_p99_ms": _ms(percentile(s.latencies, 99)), "errors": s.errors,
        "statuses": s.statuses,
        **_cpu(s, s.requests, "server_cpu_ms_per_request"),
    }


async def classify(target: str, concurrency: int, duration: float, warmup: float,
                   texts: list[str], probe: CpuProbe | None = None) -> dict:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = classification_pb2_grpc.ClassificationServiceStub(channel)

        async def one(window: Window, s: Samples, rng: random.Random) -> None:
            request = classification_pb2.ClassifyRequest(texts=[rng.choice(texts)])
            sent = time.perf_counter()
            await stub.Classify(request)
            done = time.perf_counter()
            if done in window:
                s.requests += 1
                s.latencies.append(done - sent)

        s = await _drive(concurrency, warmup, duration, one, probe)
    return {
        "concurrency": concurrency, "requests_per_s": s.requests / duration,
        "latency_p50_ms": _ms(percentile(s.latencies, 50)),
        "latency_p99_ms": _ms(percentile(s.latencies, 99)), "errors": s.errors,
        "statuses": s.statuses,
        **_cpu(s, s.requests, "server_cpu_ms_per_request"),
    }
