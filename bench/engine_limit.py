"""The engine limit: tokens/s of the model's greedy ``step`` with no RPC, and seed 000's loop.

Run in its own process (``python -m bench.engine_limit``) so that torch's thread count is the
server's and nothing else shares the interpreter; prints one JSON object. ``--device`` picks the
device (``auto``: CUDA when available); every timer synchronises the device before it reads.

- ``step`` at batch B: ``logits, state = net.step(tokens, state); tokens = logits.argmax(1)``
  in a loop, B sequences advancing together: what the engine could do with zero overhead.
- ``predict_ch8``: seed 000's function, verbatim (``nn`` module forward one step at a time,
  batch 1), on the same checkpoint; timed under ``torch.no_grad()`` and as d2l calls it
  (autograd on); the target compares with the faster of the two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rnnserve.models.checkpoint import load_model
from rnnserve.server.execution.devices import resolve_device

PREFIX = "time traveller"


def predict_ch8(prefix, num_preds, net, vocab, device):  # noqa: ANN001 - seed 000, verbatim
    """在prefix后面生成新字符"""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]
    get_input = lambda: torch.tensor([outputs[-1]], device=device).reshape((1, 1))  # noqa: E731
    for y in prefix[1:]:  # 预热期
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):  # 预测num_preds步
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return ''.join([vocab.idx_to_token[i] for i in outputs])


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): call before reading a timer."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def step_tokens_per_s(net: torch.nn.Module, batch: int, duration: float,
                      stepper: object | None = None) -> float:
    """Greedy tokens/s of ``stepper.step`` (default: the module's own eager ``step``)."""
    device = net.linear.weight.device
    step = (stepper or net).step
    state = net.zero_state(batch)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    with torch.inference_mode():
        for _ in range(20):  # warm-up
            logits, state = step(tokens, state)
            tokens = logits.argmax(1)
        synchronize(device)
        steps, start = 0, time.perf_counter()
        while True:
            for _ in range(10):
                logits, state = step(tokens, state)
                tokens = logits.argmax(1)
            steps += 10
            synchronize(device)
            if (elapsed := time.perf_counter() - start) >= duration:
                break
    return steps * batch / elapsed


def predict_ch8_tokens_per_s(net: torch.nn.Module, vocab: object, duration: float,
                             no_grad: bool) -> float:
    n = 200
    device = net.linear.weight.device
    with torch.set_grad_enabled(not no_grad):
        predict_ch8(PREFIX, 20, net, vocab, device)  # warm-up
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < duration:
            predict_ch8(PREFIX, n, net, vocab, device)  # int(...) per token syncs the device
            calls += 1
    # the warm-up of each call (len(PREFIX) - 1 forwards) is counted against it
    return calls * n / elapsed


def measure(model_dir: Path, threads: int, duration: float, batches: list[int],
            device: str = "auto") -> dict:
    from rnnserve.server.execution.threads import StepThreads

    step_threads = StepThreads(threads)  # 0: per batch size, as the server's engine chooses
    step_threads.apply(1)
    where = resolve_device(device)
    loaded = load_model(model_dir, str(where))
    net, vocab = loaded.module, loaded.vocab
    out: dict = {"model": f"{loaded.name}/{loaded.version}", "torch_threads": torch.get_num_threads(),
                 "device": str(where), "step_tokens_per_s": {}, "step_threads": {}}
    for b in batches:
        out["step_threads"][str(b)] = step_threads.apply(b)
        out["step_tokens_per_s"][str(b)] = step_tokens_per_s(net, b, duration)
    step_threads.apply(1)
    out["predict_ch8_tokens_per_s"] = predict_ch8_tokens_per_s(net, vocab, duration, True)
    out["predict_ch8_autograd_tokens_per_s"] = predict_ch8_tokens_per_s(net, vocab, duration / 2,
                                                                        False)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    print(json.dumps(measure(a.model_dir, a.threads, a.duration, batches, a.device)))


if __name__ == "__main__":
    main()
