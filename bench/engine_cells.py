"""Engine cells of ``make bench``: sampled vs greedy streams, and chunked prefill.

- **sampled streams**: 64 closed-loop ``GenerateStream`` callers with temperature 0.8, top-k 20,
  top-p 0.9 and a seed per request, measured right after the same cell with greedy decoding on
  the same server (the ratio of the two is the target: >= 0.75).
- **chunked prefill** (a server subprocess of its own, the default settings):
  one ``GenerateStream`` runs while callers keep sending ``Generate`` calls with a 16,384-character
  prefix (max_tokens 1): the stream's p99 message gap (target <= 100 ms) and the long prefix's
  time to first token (= its latency, target <= 1.5x the same call on a server without chunking,
  ``prefill_chunk_tokens = 16384``, measured in the same run); then 64 such calls at once, each
  with a 20 s deadline: the server's peak RSS growth (``VmHWM``, target <= 300 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from pathlib import Path
from typing import Any

import grpc
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

from bench import load
from bench.server_proc import ServerProcess, base_settings

LONG_CHARS = 16_384
SAMPLING = {"temperature": 0.8, "top_k": 20, "top_p": 0.9}


async def _streams(target: str, concurrency: int, duration: float, warmup: float,
                   prefixes: list[str], max_tokens: int, sampled: bool) -> dict:
    async with grpc.aio.insecure_channel(target, options=load.CHANNEL_OPTIONS) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def one(window: load.Window, s: load.Samples, rng: random.Random) -> None:
            options = dict(SAMPLING, seed=rng.randrange(1, 2**31)) if sampled else {}
            request = generation_pb2.GenerateRequest(prefix=rng.choice(prefixes),
                                                     max_tokens=max_tokens, **options)
            call = stub.GenerateStream(request)
            try:
                async for message in call:
                    if time.perf_counter() in window:
                        s.tokens += len(message.text)
            finally:
                call.cancel()

        s = await load._drive(concurrency, warmup, duration, one, None)
    return {"concurrency": concurrency, "sampled": sampled, "tokens_per_s": s.tokens / duration,
            "errors": s.errors}


async def sampled_vs_greedy(target: str, duration: float, warmup: float, prefixes: list[str],
                            max_tokens: int, concurrency: int = 64) -> dict:
    greedy = await _streams(target, concurrency, duration, warmup, prefixes, max_tokens, False)
    sampled = await _streams(target, concurrency, duration, warmup, prefixes, max_tokens, True)
    return {"greedy": greedy, "sampled": sampled, "options": SAMPLING,
            "ratio": sampled["tokens_per_s"] / greedy["tokens_per_s"]
            if greedy["tokens_per_s"] else None}


def long_prefix(corpus: Path, chars: int = LONG_CHARS, seed: int = 0) -> str:
    text = " ".join(re.sub("[^A-Za-z]+", " ", corpus.read_text(encoding="utf-8")).lower().split())
    start = random.Random(seed).randrange(len(text) - chars)
    return text[start:start + chars]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def _ttft_alone(stub: Any, prefix: str, repeat: int) -> float:
    best = []
    for _ in range(repeat):
        sent = time.perf_counter()
        await stub.Generate(generation_pb2.GenerateRequest(prefix=prefix, max_tokens=1))
        best.append(time.perf_counter() - sent)
    return sorted(best)[len(best) // 2]


async def _gaps_under_long_prefixes(stub: Any, prefix: str, short: str, duration: float,
                                    senders: int) -> dict:
    gaps: list[float] = []
    ttfts: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def stream() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            previous = None
            call = stub.GenerateStream(generation_pb2.GenerateRequest(prefix=short,
                                                                      max_tokens=4000))
            try:
                async for message in call:
                    t = time.perf_counter()
                    if previous is not None and message.text:
                        gaps.append(t - previous)
                    previous = t
                    if t > stop:
                        break
            except grpc.aio.AioRpcError:
                errors += 1
            finally:
                call.cancel()

    async def sender() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            try:
                await stub.Generate(generation_pb2.GenerateRequest(prefix=prefix, max_tokens=1))
                ttfts.append(time.perf_counter() - sent)
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(stream(), *(sender() for _ in range(senders)))
    return {"stream_msg_gap_p50_ms": load._ms(load.percentile(gaps, 50)),
            "stream_msg_gap_p99_ms": load._ms(load.percentile(gaps, 99)),
            "stream_msg_gap_max_ms": load._ms(max(gaps)) if gaps else None,
            "long_prefix_latency_p50_ms": load._ms(load.percentile(ttfts, 50)),
            "long_prefixes_done": len(ttfts), "errors": errors}


async def _concurrent_rss(server: ServerProcess, stub: Any, prefix: str, n: int,
                          window: float) -> dict:
    """n calls at once, each cut by its deadline after ``window`` seconds: every prefix is
    admitted at once, so the peak (unchunked: the first packed call over all of them; chunked:
    the held requests plus one chunk) is reached well inside the window."""
    before = _peak_rss(server.pid)
    replies = await asyncio.gather(
        *(stub.Generate(generation_pb2.GenerateRequest(prefix=prefix, max_tokens=1),
                        timeout=window) for _ in range(n)), return_exceptions=True)
    cut = sum(isinstance(r, grpc.aio.AioRpcError)
              and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED for r in replies)
    errors = sum(isinstance(r, BaseException) for r in replies) - cut
    return {"concurrent": n, "peak_rss_growth_mb": (_peak_rss(server.pid) - before) / 1e6,
            "window_s": window, "completed": n - cut - errors, "cut_at_deadline": cut,
            "errors": errors}


async def _chunked_cells(target: str, server: ServerProcess, prefix: str, short: str,
                         duration: float, rss_calls: int) -> dict:
    async with grpc.aio.insecure_channel(target, options=load.CHANNEL_OPTIONS) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await stub.Generate(generation_pb2.GenerateRequest(prefix=short, max_tokens=5))
        out = {"long_prefix_ttft_alone_ms": 1000 * await _ttft_alone(stub, prefix, 3)}
        out.update(await _gaps_under_long_prefixes(stub, prefix, short, duration, 2))
        if rss_calls:
            out["rss"] = await _concurrent_rss(server, stub, prefix, rss_calls, 20.0)
        return out


def chunked_prefill(repo: Path, corpus: Path, duration: float, torch_threads: int,
                    device: str, rss_calls: int = 64, **overrides: Any) -> dict:
    """The chunked-prefill cells (chunked server, then the unchunked baseline's TTFT)."""
    prefix = long_prefix(corpus)
    short = "the time traveller"
    out: dict[str, Any] = {"prefix_chars": len(prefix)}
    settings = base_settings(repo, torch_threads=torch_threads, device=device,
                             max_active_generations=1024, **overrides)
    with ServerProcess(settings) as server:
        out["chunked"] = asyncio.run(_chunked_cells(server.target, server, prefix, short,
                                                    duration, rss_calls))
        out["chunked"]["prefill_chunk_tokens"] = settings.get("prefill_chunk_tokens", "default")
    baseline = dict(settings, prefill_chunk_tokens=LONG_CHARS)
    with ServerProcess(baseline) as server:
        async def ttft() -> float:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                await stub.Generate(generation_pb2.GenerateRequest(prefix=short, max_tokens=5))
                return 1000 * await _ttft_alone(stub, prefix, 3)
        out["unchunked_long_prefix_ttft_alone_ms"] = asyncio.run(ttft())
    out["ttft_ratio"] = (out["chunked"]["long_prefix_ttft_alone_ms"]
                         / out["unchunked_long_prefix_ttft_alone_ms"])
    return out


def targets(cells: dict) -> list[dict]:
    """This module's targets, in bench/report.py's shape."""
    out = []

    def add(name: str, value: float | None, bound: float, at_least: bool, unit: str) -> None:
        ok = None if value is None else (value >= bound if at_least else value <= bound)
        out.append({"target": name, "value": value, "bound": bound,
                    "op": ">=" if at_least else "<=", "unit": unit, "pass": ok})

    if "sampling" in cells:
        add("sampled / greedy streams tok/s, c=64", cells["sampling"]["ratio"], 0.75, True, "x")
    chunked = cells.get("chunked_prefill")
    if chunked:
        add("stream p99 message gap under 16k prefixes", chunked["chunked"]
            ["stream_msg_gap_p99_ms"], 100.0, False, "ms")
        add("16k-prefix TTFT chunked / unchunked", chunked["ttft_ratio"], 1.5, False, "x")
        rss = chunked["chunked"].get("rss")
        if rss:
            add("peak RSS growth, 64 concurrent 16k prefixes", rss["peak_rss_growth_mb"], 300.0,
                False, "MB")
    return out


def markdown(cells: dict) -> str:
    lines = ["", "### Engine cells", ""]
    s = cells.get("sampling")
    if s:
        lines.append(f"- streams c=64: greedy {s['greedy']['tokens_per_s']:,.0f} tok/s, sampled "
                     f"(t 0.8, top-k 20, top-p 0.9, seeded) {s['sampled']['tokens_per_s']:,.0f} "
                     f"tok/s: {s['ratio']:.2f}x")
    c = cells.get("chunked_prefill")
    if c:
        k = c["chunked"]
        lines.append(f"- 16k-char prefixes arriving: stream message gap p50 "
                     f"{k['stream_msg_gap_p50_ms']:.1f} ms, p99 {k['stream_msg_gap_p99_ms']:.1f} "
                     f"ms, max {k['stream_msg_gap_max_ms']:.1f} ms")
        lines.append(f"- 16k-char prefix TTFT alone: chunked {k['long_prefix_ttft_alone_ms']:.0f} "
                     f"ms, unchunked {c['unchunked_long_prefix_ttft_alone_ms']:.0f} ms "
                     f"({c['ttft_ratio']:.2f}x)")
        if k.get("rss"):
            r = k["rss"]
            lines.append(f"- {r['concurrent']} concurrent 16k-char prefixes: peak RSS +"
                         f"{r['peak_rss_growth_mb']:.0f} MB within {r['window_s']:.0f} s "
                         f"({r['completed']} completed, {r['cut_at_deadline']} cut at the "
                         f"deadline, {r['errors']} errors)")
    lines += ["", "| target | value | bound | pass |", "|---|---|---|---|"]
    for t in targets(cells):
        v = "-" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
        lines.append(f"| {t['target']} | {v} | {t['op']} {t['bound']} | {t['pass']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run only this module's cells: ``python -m bench.engine_cells``."""
    import json

    from bench.run import DATA, REPO, prefixes

    p = argparse.ArgumentParser(prog="python -m bench.engine_cells", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--device", default="auto")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rss-calls", type=int, default=64)
    p.add_argument("--skip", default="", help="comma list of: sampling, chunked")
    p.add_argument("--prefill-chunk-tokens", type=int, default=0, help="0 = the default")
    a = p.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    cells = run_cells(a.model_repository.resolve(), DATA / "timemachine" / "timemachine.txt",
                      prefixes(), a.duration, a.warmup, a.torch_threads, a.device, a.rss_calls,
                      skip, a.prefill_chunk_tokens)
    print(markdown(cells))
    print(json.dumps(cells))
    return 0


def run_cells(repo: Path, corpus: Path, short_prefixes: list[str], duration: float,
              warmup: float, torch_threads: int, device: str, rss_calls: int = 64,
              skip: set[str] | frozenset[str] = frozenset(), chunk: int = 0) -> dict:
    """Every cell of this module, each on a server subprocess of its own."""
    cells: dict[str, Any] = {}
    overrides = {"prefill_chunk_tokens": chunk} if chunk else {}
    if "sampling" not in skip:
        settings = base_settings(repo, torch_threads=torch_threads, device=device)
        with ServerProcess(settings) as server:
            cells["sampling"] = asyncio.run(sampled_vs_greedy(server.target, duration, warmup,
                                                              short_prefixes, 100))
    if "chunked" not in skip:
        cells["chunked_prefill"] = chunked_prefill(repo, corpus, max(duration, 5.0),
                                                   torch_threads, device, rss_calls, **overrides)
    return cells


if __name__ == "__main__":
    raise SystemExit(main())
