"""The closed-loop driver under every load cell: C callers, each one request at a time.

Protocol-free (no generated stubs imported), so that it also runs in another virtual
environment, e.g. MLServer's for ``make bench-peers``. Every cell runs ``warmup`` seconds, then
measures a ``duration`` window; requests still running at its end are cancelled. Every non-OK
status, warm-up included, is counted by its code name.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

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
    statuses: dict[str, int] = field(default_factory=dict)  # non-OK status code name -> count
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
            except grpc.aio.AioRpcError as err:
                samples.errors += 1
                name = err.code().name
                samples.statuses[name] = samples.statuses.get(name, 0) + 1

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
