"""``make bench``: one run of every measurement, a markdown table on stdout, JSON in a file.

Setup (2-core CPU machine in mind): the server under test runs in a subprocess
(:mod:`bench.server_proc`), the load generator is this process with ``grpc.aio`` (one channel,
C concurrent closed-loop callers, generated stubs), both on 127.0.0.1 with an ephemeral port.
The engine limit and the idle-session RSS run in their own subprocesses. The server gets
``torch_threads`` (default 1: the load generator needs the other core; the engine limit is
measured with the same count). "Batching off" is ``max_batch_size=1`` and
``classify_max_batch_size=1``; everything else is the default settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import invariance, load, machine, report
from bench.server_proc import ROOT, ServerProcess, base_settings

DATA = ROOT.parent / "shared" / "data"
REPO = ROOT / "model_repository"  # the shipped models (--model-repository to change)
STREAM_CONCURRENCY = (1, 16, 64)
UNARY_CONCURRENCY = (16, 64)
CLASSIFY_CONCURRENCY = (1, 16, 64)
MODES = {"on": {}, "off": {"max_batch_size": 1, "classify_max_batch_size": 1}}


def _has_model(repo: Path, name: str) -> bool:
    return any((v / "model.pt").is_file() for v in (repo / name).glob("*"))


def _latest_version(repo: Path, name: str) -> Path:
    versions = [v for v in (repo / name).iterdir() if v.name.isdigit() and (v / "model.pt").is_file()]
    return max(versions, key=lambda v: int(v.name))


def prefixes(n: int = 2000) -> list[str]:
    text = (DATA / "timemachine" / "timemachine.txt").read_text(encoding="utf-8")
    text = " ".join(re.sub("[^A-Za-z]+", " ", text).lower().split())
    rng = random.Random(0)
    out = []
    for _ in range(n):
        k = rng.randrange(10, 31)
        i = rng.randrange(len(text) - k)
        out.append(text[i:i + k])
    return out


def review_texts() -> list[str]:
    lines: list[str] = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        path = DATA / "rt-polarity" / name
        if path.is_file():
            lines += [ln.strip() for ln in path.read_text(encoding="latin-1").splitlines()]
    return [ln for ln in lines if ln] or ["a wonderful film", "dull and lifeless"]


def _subprocess_json(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def server_cells(server: ServerProcess, a: argparse.Namespace, classify: bool) -> dict:
    out: dict = {"streams": [], "unary": [], "classify": []}
    pre = prefixes()
    target = server.target

    def probe() -> float:
        return machine.cpu_seconds(server.pid)
    for c in STREAM_CONCURRENCY:
        cell = await load.streams(target, c, a.duration, a.warmup, pre, a.stream_max_tokens,
                                  probe)
        _log(f"  streams c={c}: {cell['tokens_per_s']:,.0f} tok/s, "
             f"TTFT p50 {cell['ttft_p50_ms'] or 0:.2f} ms")
        out["streams"].append(cell)
    for c in UNARY_CONCURRENCY:
        cell = await load.unary_generate(target, c, a.duration, a.warmup, pre, a.unary_max_tokens,
                                          probe)
        _log(f"  Generate c={c}: {cell['requests_per_s']:,.0f} req/s")
        out["unary"].append(cell)
    if classify:
        texts = review_texts()
        for c in CLASSIFY_CONCURRENCY:
            cell = await load.classify(target, c, a.duration, a.warmup, texts, probe)
            _log(f"  Classify c={c}: {cell['requests_per_s']:,.0f} req/s")
            out["classify"].append(cell)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per load cell")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads of the server and the engine-limit process (0 = torch's)")
    p.add_argument("--stream-max-tokens", type=int, default=100)
    p.add_argument("--unary-max-tokens", type=int, default=32)
    p.add_argument("--sessions", default="10000,100000", help="idle-session counts for RSS")
    p.add_argument("--skip", default="",
                   help="comma list of: engine, server, sessions, invariance, scaleout")
    p.add_argument("--modes", default="on,off", help="server modes to run: on, off")
    a = p.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))

    results: dict = {"machine": machine.describe(), "settings": {
        "torch_threads": a.torch_threads, "duration_s": a.duration, "warmup_s": a.warmup,
        "stream_max_tokens": a.stream_max_tokens, "unary_max_tokens": a.unary_max_tokens,
        "setup": "server subprocess; grpc.aio load generator in the bench process; loopback",
    }}
    started = time.perf_counter()
    repo = a.model_repository.resolve()
    results["settings"]["model_repository"] = str(repo)
    charlm = _latest_version(repo, "timemachine")
    if "engine" not in skip:
        _log(f"engine limit on {charlm}")
        results["engine_limit"] = _subprocess_json(
            ["bench.engine_limit", "--model-dir", str(charlm), "--threads", str(a.torch_threads)])
    if "sessions" not in skip:
        _log(f"idle sessions RSS ({a.sessions})")
        settings = base_settings(repo, torch_threads=a.torch_threads)
        results["sessions_rss"] = _subprocess_json(
            ["bench.sessions_rss", "--settings", json.dumps(settings), "--counts", a.sessions,
             "--corpus", str(DATA / "timemachine" / "timemachine.txt")])
    if "server" not in skip:
        classify = _has_model(repo, "sentiment")
        if not classify:
            _log("no sentiment model in the repository: Classify cells skipped")
        results["server"] = {}
        for mode in a.modes.split(","):
            settings = base_settings(repo, torch_threads=a.torch_threads, **MODES[mode])
            _log(f"server, batching {mode}")
            with ServerProcess(settings) as server:
                results["server"][mode] = asyncio.run(server_cells(server, a, classify))
    if "invariance" not in skip:
        _log("batch invariance: invariant vs --batch-invariant=false")
        results["invariance"] = invariance.run(
            repo, a, prefixes(), review_texts() if _has_model(repo, "sentiment") else None)
    if "scaleout" not in skip:  # bench/scaleout.py: memory vs Redis store, 1 vs 2 workers
        _log("scale-out: session store latency, --workers 1 vs 2")
        results["scaleout"] = _subprocess_json(
            ["bench.scaleout", "--model-repository", str(repo), "--duration", str(a.duration),
             "--warmup", str(a.warmup), "--torch-threads", str(a.torch_threads)])
        _log(f"  scale-out: {json.dumps(results['scaleout'])}")
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in machine.load_average()]
    results["elapsed_s"] = time.perf_counter() - started
    results["targets"] = report.targets(results)
    report.write_json(results, a.out)
    print(report.markdown(results))
    if "invariance" in results:
        print(invariance.markdown(results["invariance"]))
    _log(f"done in {results['elapsed_s']:.0f} s; JSON in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
