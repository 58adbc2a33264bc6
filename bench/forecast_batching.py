"""What batching buys a forecaster: concurrent Forecast calls on the shipped ``sine`` model.

``python -m bench.forecast_batching [--clients 64 --horizon 100 --rounds 3]`` starts in-process
servers (ephemeral port, CPU, one torch thread) with three engine settings and times the same
burst of concurrent forecasts on each, in one run, so the ratios compare like with like:

- ``invariant`` (the default): rows batched, each computed with batch-1 kernels (exact);
- ``batched``: ``forecast_batch_invariant=false``, one fused call per step for all rows;
- ``one_at_a_time``: ``max_batch_size=1``.

Prints one JSON object: points predicted per second for each, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import torch
from rnnserve.client import AsyncClient
from rnnserve.server.app import build_server
from rnnserve.server.settings import ServerSettings

SETTINGS = {
    "invariant": {},
    "batched": {"forecast_batch_invariant": False},
    "one_at_a_time": {"max_batch_size": 1},
}


async def burst(target: str, clients: int, horizon: int) -> float:
    series = [float(v) for v in np.sin(np.linspace(0, 6, 30))]
    async with AsyncClient(target, timeout=600, retries=0) as client:
        await client.forecast(series, 2)  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client.forecast(series, horizon) for _ in range(clients)))
        return time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    out: dict = {"clients": args.clients, "horizon": args.horizon, "rounds": args.rounds}
    for name, extra in SETTINGS.items():
        server = build_server(ServerSettings(port=0, metrics_port=-1, device="cpu",
                                             torch_threads=1, **extra))
        await server.start()
        try:
            best = min([await burst(server.target, args.clients, args.horizon)
                        for _ in range(args.rounds)])
        finally:
            await server.stop(0.5)
        out[f"{name}_points_per_s"] = round(args.clients * args.horizon / best, 1)
    base = out["one_at_a_time_points_per_s"]
    out["invariant_vs_one_at_a_time"] = round(out["invariant_points_per_s"] / base, 2)
    out["batched_vs_one_at_a_time"] = round(out["batched_points_per_s"] / base, 2)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
