"""One-shot device check: every GPU figure rnnserve needs, in one call, written as JSON.

``python -m bench.gpu_check --device cuda --out gpu_check.json`` (``make gpu-check``) runs, in
order, each part timed and each failure recorded instead of ending the run:

1. ``step_vs_forward``: the serving ``step`` against the module's ``forward`` (seed 000's path)
   on one step, max abs difference per cell (bound 1e-5), with cuDNN's TF32 off and on;
2. ``prefill``: packed ``prefill`` against in-batch prefill (``step`` per character) on the
   same prefixes: exact equality and max abs difference of the states;
3. ``greedy_batch_invariance``: greedy ids of 16 prefixes decoded alone vs in batches of 16 and
   64 through the engine: equal or not, per cell;
4. ``pytest``: tests/server/test_batching.py and test_seed_equivalence.py with
   ``RNNSERVE_TEST_DEVICE`` set to the device;
5. ``oom``: a real allocation past the device's memory (CUDA only) is classified as out of
   memory, the device still runs a step afterwards, and through the engine an out-of-memory
   prefill fails only its newcomers while a running generation finishes;
6. ``engine_limit``: tokens/s of the eager ``step`` loop and of the engine as written
   (``GenerationEngine``, greedy, B requests in flight) for batch 1 ... 4096, for lstm/gru/rnn
   2x256 and one 3x1024 LSTM (random weights, vocabulary 28);
7. ``cuda_graphs``: decode steps on fixed row slots replayed as CUDA graphs
   (:class:`~rnnserve.server.execution.slots.SlotStep`) against the eager ``step``: greedy
   tokens/s per batch size, ids and final state bit-equal after 40 steps, and the engine's
   tokens/s with ``cuda_graphs`` off and on (on the CPU the slots run without capture, which
   only proves the script);
8. ``grpc``: ``GenerateStream`` tokens/s at c = 64 / 256 / 1024 against a server subprocess on
   the device with the limits raised (batch 1024, 4096 generations, 4096 streams), with
   ``cuda_graphs`` off and on.

``--quick`` shrinks every part (batches up to 64, short windows, one pytest test, c = 16 / 64)
so that ``--device cpu --quick`` proves the script on a machine without a GPU in about a minute.
The full run is sized for one call under ~7 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from rnnserve.models.charlm import CharLMConfig, RNNModel
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.device import is_out_of_memory
from rnnserve.server.execution.devices import resolve_device
from rnnserve.server.execution.engine import GenerationEngine, GenerationRequest
from rnnserve.server.execution.slots import SlotStep
from rnnserve.server.metrics import Metrics

from bench.engine_limit import step_tokens_per_s, synchronize
from bench.server_proc import ROOT

VOCAB = 28
MODELS = [("lstm", 256, 2), ("gru", 256, 2), ("rnn", 256, 2), ("lstm", 1024, 3)]
ITOS = ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]


def build(cell: str, hidden: int, layers: int, device: torch.device, seed: int = 0) -> RNNModel:
    torch.manual_seed(seed)
    return RNNModel.from_config(CharLMConfig(cell, VOCAB, hidden, layers)).to(device).eval()


def prefixes(n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


# --- 1, 2: numerics --------------------------------------------------------------------------
@torch.inference_mode()
def step_vs_forward(device: torch.device, models: list[tuple[str, int, int]]) -> dict:
    """The serving step (full float32 products) against ``forward``, whose cuDNN RNN may use
    TF32 (torch's default ``torch.backends.cudnn.allow_tf32 = True``): measured both ways;
    the 1e-5 bound applies with TF32 off."""
    out = {}
    saved = torch.backends.cudnn.allow_tf32
    try:
        for cell, hidden, layers in models:
            net = build(cell, hidden, layers, device)
            tokens = torch.randint(1, VOCAB, (64,), device=device)
            state = tuple(torch.randn_like(t) * 0.5 for t in net.zero_state(64, device))
            logits, new = net.step(tokens, state)
            row = {}
            for tf32 in (False, True):
                torch.backends.cudnn.allow_tf32 = tf32
                ref_logits, ref = net(tokens[:, None], net.to_seed_state(state))
                ref = net.to_serving_state(ref)
                diff = max((logits - ref_logits).abs().max().item(),
                           *((a - b).abs().max().item() for a, b in zip(new, ref, strict=True)))
                row["cudnn_tf32" if tf32 else "float32"] = diff
            row["pass"] = row["float32"] <= 1e-5
            out[f"{cell}{layers}x{hidden}"] = row
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return out


@torch.inference_mode()
def packed_vs_in_batch_prefill(device: torch.device, length: int,
                               models: list[tuple[str, int, int]]) -> dict:
    out = {}
    for cell, hidden, layers in models:
        net = build(cell, hidden, layers, device)
        seqs = prefixes(8, length)
        _, packed = net.prefill(seqs, net.zero_state(8, device))
        state = net.zero_state(8, device)
        for t in range(length):
            tokens = torch.tensor([s[t] for s in seqs], device=device)
            _, state = net.step(tokens, state)
        diff = max((a - b).abs().max().item() for a, b in zip(packed, state, strict=True))
        equal = all(torch.equal(a, b) for a, b in zip(packed, state, strict=True))
        out[f"{cell}{layers}x{hidden}"] = {"max_abs_diff": diff, "bit_equal": equal}
    return out


# --- engine helpers ---------------------------------------------------------------------------
def slot_step(net: RNNModel, device: torch.device, batch: int) -> SlotStep:
    """Row slots for ``net``: captured as CUDA graphs on a GPU, eager slots on the CPU."""
    return SlotStep(net, device, batch, capture=device.type == "cuda")


class _Engine:
    """A GenerationEngine on its own executor and event loop (no server)."""

    def __init__(self, net: RNNModel, device: torch.device, batch: int, graphs: bool = False,
                 **kw: Any) -> None:
        loaded = SimpleNamespace(module=net, device=str(device),
                                 vocab=SimpleNamespace(idx_to_token=ITOS))
        self.executor = ThreadPoolExecutor(1)
        slots = slot_step(net, device, batch) if graphs else None
        self.engine = GenerationEngine(loaded, "check", self.executor, Metrics(),
                                       max_batch_size=batch, max_active=max(batch, 1) * 2,
                                       max_steps_per_iteration=8, slots=slots, **kw)

    async def __aenter__(self) -> GenerationEngine:
        await self.engine.start()
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()
        self.executor.shutdown()


async def _generate(engine: GenerationEngine, prefix: list[int], n: int) -> str:
    outbox = engine.submit(GenerationRequest(tuple(prefix[:-1]), prefix[-1], None, n,
                                             DecodingOptions()))
    text = ""
    while outbox.result is None:
        piece, _ = await outbox.take()
        text += piece
    return text


def greedy_batch_invariance(device: torch.device, sizes: list[int], tokens: int) -> dict:
    out = {}
    for cell, hidden, layers in MODELS[:3]:
        net = build(cell, hidden, layers, device)
        seqs = prefixes(16, 40, seed=1)

        async def run(batch: int, net: RNNModel = net, seqs: list[list[int]] = seqs,
                      graphs: bool = False) -> list[str]:
            async with _Engine(net, device, batch, graphs) as engine:
                if batch == 1:
                    return [await _generate(engine, s, tokens) for s in seqs]
                fillers = prefixes(max(batch - len(seqs), 0), 40, seed=2)
                jobs = [_generate(engine, s, tokens) for s in seqs + fillers]
                return (await asyncio.gather(*jobs))[: len(seqs)]

        alone = asyncio.run(run(1))
        cells = {str(b): asyncio.run(run(b)) == alone for b in sizes}
        graphed = {str(b): asyncio.run(run(b, graphs=True)) == alone for b in sizes}
        out[f"{cell}{layers}x{hidden}"] = {"equal_to_alone_at_batch": cells,
                                           "cuda_graphs_equal_to_alone_at_batch": graphed}
    return out


# --- 4: the suite's batching tests on the device ----------------------------------------------
def pytest_on_device(device: torch.device, quick: bool) -> dict:
    env = dict(os.environ, RNNSERVE_TEST_DEVICE=str(device))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/server/test_batching.py", "tests/server/test_seed_equivalence.py",
            "tests/server/test_batch_invariance.py", "tests/server/test_slots.py"]
    if quick:
        args += ["-k", "test_concurrent_greedy_requests_all_equal_the_seed"]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return {"exit_code": done.returncode, "seconds": time.perf_counter() - started,
            "summary": done.stdout.strip().splitlines()[-1:] or done.stderr[-500:]}


# --- 5: out of memory ---------------------------------------------------------------------------
class _OomOnLongPrefill:
    def __init__(self, net: RNNModel) -> None:
        self._net = net

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    def prefill(self, sequences: list[list[int]], state: Any) -> Any:
        if any(len(s) >= 50 for s in sequences):  # a chunk (64 tokens) of a long prefix
            raise torch.OutOfMemoryError("CUDA out of memory (injected by gpu_check)")
        return self._net.prefill(sequences, state)


def oom_probe(device: torch.device) -> dict:
    out: dict[str, Any] = {}
    net = build("lstm", 256, 2, device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        try:
            torch.empty(int(total * 2), dtype=torch.uint8, device=device)
            out["real_allocation"] = "did not fail"
        except Exception as exc:  # noqa: BLE001 - what the engine would see
            out["real_allocation"] = {"error": type(exc).__name__,
                                      "classified_out_of_memory": is_out_of_memory(exc)}
        with torch.inference_mode():
            logits, _ = net.step(torch.ones(4, dtype=torch.long, device=device),
                                 net.zero_state(4, device))
            synchronize(device)
        out["device_usable_after"] = bool(torch.isfinite(logits).all())

    async def through_engine() -> dict:
        async with _Engine(_OomOnLongPrefill(net), device, 64) as engine:  # type: ignore[arg-type]
            running = asyncio.create_task(_generate(engine, [1, 2, 3], 200))
            await asyncio.sleep(0.05)
            failed = []
            for s in prefixes(4, 150):
                try:
                    await _generate(engine, s, 5)
                    failed.append("ok")
                except Exception as exc:  # noqa: BLE001 - recorded
                    failed.append(f"{type(exc).__name__}: {exc}")
            text = await running
            return {"newcomers": failed, "running_finished_chars": len(text),
                    "active_after": engine.active}

    out["engine"] = asyncio.run(through_engine())
    return out


# --- 6: the engine limit ----------------------------------------------------------------------
def engine_tokens_per_s(net: RNNModel, device: torch.device, batch: int, duration: float,
                        graphs: bool = False) -> float:
    async def run() -> float:
        async with _Engine(net, device, batch, graphs) as engine:
            counted = 0
            stop_at = time.perf_counter() + duration + 0.3
            start = time.perf_counter() + 0.3  # warm-up

            async def one(seed: int) -> None:
                nonlocal counted
                while time.perf_counter() < stop_at:
                    outbox = engine.submit(GenerationRequest((), 1 + seed % 27, None, 10**6,
                                                             DecodingOptions()))
                    seen = 0
                    while time.perf_counter() < stop_at:
                        _, total = await outbox.take()
                        if time.perf_counter() >= start:
                            counted += total - seen
                        seen = total
                    outbox.cancel()

            await asyncio.gather(*(one(i) for i in range(batch)))
            return counted / duration

    return asyncio.run(run())


def engine_limit(device: torch.device, batches: list[int], engine_batches: list[int],
                 duration: float, models: list[tuple[str, int, int]]) -> dict:
    out = {}
    for cell, hidden, layers in models:
        net = build(cell, hidden, layers, device)
        row: dict[str, Any] = {"eager_step_tokens_per_s": {}, "engine_tokens_per_s": {}}
        for b in batches:
            try:
                row["eager_step_tokens_per_s"][str(b)] = step_tokens_per_s(net, b, duration)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a big batch
                row["eager_step_tokens_per_s"][str(b)] = f"{type(exc).__name__}: {exc}"[:200]
        for b in engine_batches:
            row["engine_tokens_per_s"][str(b)] = engine_tokens_per_s(net, device, b, duration)
        out[f"{cell}{layers}x{hidden}"] = row
    return out


# --- 7: CUDA graphs -----------------------------------------------------------------------------
@torch.inference_mode()
def graphs_bit_equal(net: RNNModel, device: torch.device, batch: int, steps: int) -> bool:
    """Greedy ids and the final state after ``steps`` steps: slots (graphs) vs eager."""
    slots = slot_step(net, device, batch)
    runs = []
    for stepper in (net, slots):
        tokens = torch.arange(batch, device=device) % (VOCAB - 1) + 1
        state = net.zero_state(batch, device)
        ids = []
        for _ in range(steps):
            logits, state = stepper.step(tokens, state)
            tokens = logits.argmax(1)
            ids.append(tokens)
        runs.append((torch.stack(ids), tuple(t.clone() for t in state)))
    (a, sa), (b, sb) = runs
    return torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))


def cuda_graphs(device: torch.device, batches: list[int], engine_batches: list[int],
                duration: float, models: list[tuple[str, int, int]]) -> dict:
    out: dict[str, Any] = {"captured": device.type == "cuda"}
    for cell, hidden, layers in models:
        net = build(cell, hidden, layers, device)
        row: dict[str, Any] = {"bit_equal_40_steps_batch_64": graphs_bit_equal(net, device, 64,
                                                                                40),
                               "step_tokens_per_s": {}, "engine_tokens_per_s": {}}
        for b in batches:
            try:
                eager = step_tokens_per_s(net, b, duration)
                graphed = step_tokens_per_s(net, b, duration, slot_step(net, device, b))
                row["step_tokens_per_s"][str(b)] = {"eager": eager, "graphs": graphed,
                                                    "ratio": graphed / eager}
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a big batch
                row["step_tokens_per_s"][str(b)] = f"{type(exc).__name__}: {exc}"[:200]
        for b in engine_batches:
            eager = engine_tokens_per_s(net, device, b, duration)
            graphed = engine_tokens_per_s(net, device, b, duration, graphs=True)
            row["engine_tokens_per_s"][str(b)] = {"eager": eager, "graphs": graphed,
                                                  "ratio": graphed / eager}
        out[f"{cell}{layers}x{hidden}"] = row
    return out


# --- 8: gRPC streams ----------------------------------------------------------------------------
def grpc_streams(device: torch.device, concurrencies: list[int], duration: float) -> dict:
    from bench import load
    from bench.run import REPO
    from bench.run import prefixes as text_prefixes
    from bench.server_proc import ServerProcess, base_settings

    out: dict[str, Any] = {}
    for graphs in (False, True):
        settings = base_settings(REPO.resolve(), device=str(device), max_batch_size=1024,
                                 max_active_generations=4096, max_concurrent_streams=4096,
                                 torch_threads=1, cuda_graphs=graphs)
        cells = out["cuda_graphs" if graphs else "eager"] = {}
        with ServerProcess(settings) as server:
            for c in concurrencies:
                cell = asyncio.run(load.streams(server.target, c, duration, 0.5,
                                                text_prefixes(), 100))
                cells[str(c)] = {k: cell[k] for k in ("tokens_per_s", "errors", "ttft_p50_ms",
                                                      "msg_gap_p99_ms")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes: proves the script")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    p.add_argument("--skip", default="", help="comma list of part names to leave out")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads of this process (0 = torch's default)")
    a = p.parse_args(argv)
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    device = resolve_device(a.device)
    skip = set(filter(None, a.skip.split(",")))
    q = a.quick
    models = MODELS[:3] if q else MODELS  # quick: the 2x256 cells only
    report: dict[str, Any] = {
        "device": str(device), "quick": q, "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {},
    }
    parts = [
        ("step_vs_forward", lambda: step_vs_forward(device, models)),
        ("prefill", lambda: packed_vs_in_batch_prefill(device, 32 if q else 200, models)),
        ("greedy_batch_invariance",
         lambda: greedy_batch_invariance(device, [16] if q else [16, 64], 20 if q else 100)),
        ("pytest", lambda: pytest_on_device(device, q)),
        ("oom", lambda: oom_probe(device)),
        ("engine_limit", lambda: engine_limit(
            device, [1, 16, 64] if q else [1, 4, 16, 64, 256, 1024, 4096],
            [1, 16] if q else [1, 64, 1024], 0.2 if q else 1.0, models)),
        ("cuda_graphs", lambda: cuda_graphs(
            device, [1, 16, 64] if q else [1, 64, 256, 1024, 4096],
            [16] if q else [64, 1024], 0.2 if q else 0.7, models)),
        ("grpc", lambda: grpc_streams(device, [16, 64] if q else [64, 256, 1024],
                                      1.0 if q else 2.5)),
    ]
    started = time.perf_counter()
    for name, part in parts:
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            report["parts"][name] = part()
        except Exception as exc:  # noqa: BLE001 - one part's failure is a finding, not the end
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()[-2000:]}
        report["parts"][name + "_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[gpu_check] {name}: {report['parts'][name + '_seconds']} s", file=sys.stderr,
              flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")  # what is done survives a kill
    report["seconds"] = round(time.perf_counter() - started, 2)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
