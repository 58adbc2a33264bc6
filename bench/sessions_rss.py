"""RSS of idle sessions, in a clean process: ``python -m bench.sessions_rss``; prints JSON.

The server is built and started in-process (gRPC bound, but unused) and its serving logic is
driven directly: many concurrent ``Generator.generate`` calls with ``keep_session=True``, a short
prefix and ``max_tokens=1`` open sessions, which then sit idle. RSS growth over a baseline taken
after the same number of warm-up generations (without sessions) is compared with the sum of the
sessions' state bytes (``SessionStore.state_bytes``: the raw hidden-state tensors).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from pathlib import Path

from bench.machine import rss_bytes

CONCURRENCY = 256


async def _open_sessions(generator: object, n: int, prefixes: list[str]) -> int:
    from rnnserve.server.serving.requests import GenerateParams

    opened = 0
    rng = random.Random(n)

    async def worker(count: int) -> None:
        nonlocal opened
        for _ in range(count):
            params = GenerateParams(prefix=rng.choice(prefixes), max_tokens=1, keep_session=True)
            async for _chunk in generator.generate(params):
                pass
            opened += 1

    per, extra = divmod(n, CONCURRENCY)
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(CONCURRENCY)))
    return opened


async def _warm(generator: object, n: int, prefixes: list[str]) -> None:
    from rnnserve.server.serving.requests import GenerateParams

    async def worker(count: int) -> None:
        for i in range(count):
            params = GenerateParams(prefix=prefixes[i % len(prefixes)], max_tokens=1)
            async for _chunk in generator.generate(params):
                pass

    await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))


async def measure(settings: dict, counts: list[int], prefixes: list[str]) -> dict:
    from rnnserve.server.app import build_server
    from rnnserve.server.settings import ServerSettings

    server = build_server(ServerSettings(**{**settings, "max_sessions": max(counts)}))
    await server.start()
    try:
        await _warm(server.generator, 4096, prefixes)
        gc.collect()
        base = rss_bytes()
        out: dict = {"baseline_rss_bytes": base, "points": []}
        started = time.perf_counter()
        for n in counts:
            await _open_sessions(server.generator, n - len(server.sessions), prefixes)
            gc.collect()
            rss = rss_bytes()
            state = server.sessions.memory.state_bytes  # the memory store (the default)
            growth = rss - base
            out["points"].append({
                "sessions": len(server.sessions), "rss_bytes": rss, "rss_growth_bytes": growth,
                "state_bytes": state, "ratio": growth / state if state else None,
                "bytes_per_session": growth / max(1, len(server.sessions)),
                "state_bytes_per_session": state / max(1, len(server.sessions)),
                "elapsed_s": time.perf_counter() - started,
            })
        return out
    finally:
        await server.stop(grace=0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--settings", required=True, help="server settings as JSON")
    p.add_argument("--counts", default="10000,100000")
    p.add_argument("--corpus", type=Path, required=True)
    a = p.parse_args()
    text = " ".join(a.corpus.read_text(encoding="utf-8").lower().split())
    rng = random.Random(0)
    prefixes = [text[i:i + 8] for i in (rng.randrange(len(text) - 8) for _ in range(1000))]
    counts = [int(c) for c in a.counts.split(",")]
    print(json.dumps(asyncio.run(measure(json.loads(a.settings), counts, prefixes))))


if __name__ == "__main__":
    main()
