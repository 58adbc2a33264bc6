"""Profile the server subprocess under one load cell with py-spy (``pip install py-spy``).

    python -m bench.profile --mode on --rpc streams --concurrency 64 [--seconds 5]

Prints the hottest functions (own samples and with callees) per thread group: the event loop
(main thread) and the device executor (``rnnserve-cpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import load
from bench.run import MODES, REPO, prefixes, review_texts
from bench.server_proc import ServerProcess, base_settings


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    lines = [f"{total} samples (non-idle)", "", "own time:"]
    lines += [f"  {n / total * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "with callees:"]
    lines += [f"  {n / total * 100:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=list(MODES), default="on")
    p.add_argument("--rpc", choices=["streams", "unary", "classify"], default="streams")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--rate", type=int, default=200)
    a = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    settings = base_settings(a.model_repository.resolve(), torch_threads=a.torch_threads, **MODES[a.mode])
    with ServerProcess(settings) as server, tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        record = [spy, "record", "-p", str(server.pid), "-d", str(int(a.seconds)), "-r",
                  str(a.rate), "-f", "raw", "-o", str(raw), "-t"]

        def spy_thread() -> None:
            subprocess.run(record, check=False, capture_output=True)

        thread = threading.Thread(target=spy_thread)
        warm = 1.0
        if a.rpc == "streams":
            work = load.streams(server.target, a.concurrency, a.seconds + 1, warm, prefixes(), 100)
        elif a.rpc == "unary":
            work = load.unary_generate(server.target, a.concurrency, a.seconds + 1, warm,
                                       prefixes(), 32)
        else:
            work = load.classify(server.target, a.concurrency, a.seconds + 1, warm, review_texts())

        async def go() -> dict:
            task = asyncio.create_task(work)
            await asyncio.sleep(warm)
            thread.start()
            return await task

        print(asyncio.run(go()))
        thread.join()
        print(summarize(raw, a.top))


if __name__ == "__main__":
    main()
