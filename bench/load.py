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

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from rnnserve.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

CHANNEL_OPTIONS = [("grpc.max_concurrent_streams", 1024)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Window:
    start: float
    end: float

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Samples:
    tokens: int = 0
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)  # per character
    gaps: list[float] = field(default_factory=list)  # per message
    messages: int = 0
    window_s: float = 1.0
    server_cpu_s: float = 0.0  # CPU time of the server process during the window
    client_cpu_s: float = 0.0  # CPU time of this (load generator) process during the window


CpuProbe = Callable[[], float]


async def _drive(concurrency: int, warmup: float, duration: float,
                 one: Callable[[Window, Samples, random.Random], Awaitable[None]],
                 probe: CpuProbe | None) -> Samples:
    now = time.perf_counter()
    window = Window(now + warmup, now + warmup + duration)
    samples = Samples(window_s=duration)

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < window.end:
            try:
                await one(window, samples, rng)
            except grpc.aio.AioRpcError:
                samples.errors += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    cpu0 = (probe() if probe else 0.0, time.process_time())
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    samples.server_cpu_s = (probe() if probe else 0.0) - cpu0[0]
    samples.client_cpu_s = time.process_time() - cpu0[1]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def _cpu(s: Samples, work: int, key: str) -> dict:
    """CPU use during the window: the server's and the load generator's, in cores."""
    out = {"server_cpu_cores": s.server_cpu_s / s.window_s,
           "client_cpu_cores": s.client_cpu_s / s.window_s}
    scale = 1000.0 if key.endswith("1k_tokens") else 1.0
    out[key] = s.server_cpu_s * 1000.0 * scale / work if work else None
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


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
        **_cpu(s, s.requests, "server_cpu_ms_per_request"),
    }
