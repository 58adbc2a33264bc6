"""The cost of batch invariance: the same load on a server with ``batch_invariant`` on and off.

Cells (one server subprocess per mode, one after the other in the same run, same settings
otherwise): ``GenerateStream`` tokens/s at c = 1, 16, 64 and ``Classify`` requests/s at
c = 1, 16, 64 (one text per call). The ratio invariant/fast is the figure to read; absolute
numbers move with the machine's load. Run alone: ``python -m bench.invariance``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bench import load
from bench.server_proc import ROOT, ServerProcess, base_settings

CONCURRENCY = (1, 16, 64)


async def _cells(target: str, a: argparse.Namespace, prefixes: list[str], texts: list[str] | None
                 ) -> dict:
    out: dict = {"streams": {}, "classify": {}}
    for c in CONCURRENCY:
        cell = await load.streams(target, c, a.duration, a.warmup, prefixes, a.stream_max_tokens)
        out["streams"][c] = {"tokens_per_s": cell["tokens_per_s"], "errors": cell["errors"]}
    if texts:
        for c in CONCURRENCY:
            cell = await load.classify(target, c, a.duration, a.warmup, texts)
            out["classify"][c] = {"requests_per_s": cell["requests_per_s"],
                                  "errors": cell["errors"]}
    return out


def run(repo: Path, a: argparse.Namespace, prefixes: list[str], texts: list[str] | None) -> dict:
    """Both modes, then ratios ``invariant / fast`` per cell (1.0 = free)."""
    modes: dict = {}
    for name, flag in (("invariant", True), ("fast", False)):
        settings = base_settings(repo, torch_threads=a.torch_threads, batch_invariant=flag)
        with ServerProcess(settings) as server:
            modes[name] = asyncio.run(_cells(server.target, a, prefixes, texts))
    ratios: dict = {"streams": {}, "classify": {}}
    for kind, key in (("streams", "tokens_per_s"), ("classify", "requests_per_s")):
        for c, cell in modes["invariant"][kind].items():
            fast = modes["fast"][kind][c][key]
            ratios[kind][c] = cell[key] / fast if fast else None
    return {"modes": modes, "ratio_invariant_to_fast": ratios}


def markdown(result: dict) -> str:
    """A table: each cell invariant vs fast and the ratio."""
    lines = ["", "### Batch invariance: cost (same run, invariant vs --batch-invariant=false)", "",
             "| cell | invariant | fast | ratio |", "|---|---:|---:|---:|"]
    modes, ratios = result["modes"], result["ratio_invariant_to_fast"]
    for kind, key, unit in (("streams", "tokens_per_s", "tok/s"),
                            ("classify", "requests_per_s", "req/s")):
        for c, cell in modes["invariant"][kind].items():
            fast = modes["fast"][kind][c]
            ratio = ratios[kind][c]
            errors = cell["errors"] + fast["errors"]
            note = f" (errors: {errors})" if errors else ""
            shown = f"{ratio:.2f}" if ratio is not None else "-"
            lines.append(f"| {kind} c={c} ({unit}) | {cell[key]:,.0f} | {fast[key]:,.0f} | "
                         f"{shown}{note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.run import REPO, prefixes, review_texts  # the same loads as make bench

    p = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--stream-max-tokens", type=int, default=100)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "invariance.json")
    a = p.parse_args(argv)
    repo = a.model_repository.resolve()
    has_classifier = any((v / "model.pt").is_file() for v in (repo / "sentiment").glob("*"))
    result = run(repo, a, prefixes(), review_texts() if has_classifier else None)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"JSON in {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
