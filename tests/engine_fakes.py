"""Fakes for the generation-engine tests: a counting model whose answers are known in closed
form, and small helpers to submit requests and collect their text."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import torch
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.engine import GenerationEngine, GenerationOutbox, GenerationRequest

VOCAB = ["<unk>", *"abcdefghij"]


class CountingModel:
    """Next token = (input + 1 + h) mod V, where h counts the tokens consumed so far.

    Records the batch size of every step and the (rows, longest piece) of every prefill call,
    so tests can see how work was batched and chunked.
    """

    def __init__(self) -> None:
        self.step_batches: list[int] = []
        self.prefill_calls: list[tuple[int, int]] = []

    def zero_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, batch_size, 1),)

    def prefill(self, sequences: list[list[int]], state: tuple[torch.Tensor, ...]):
        self.prefill_calls.append((len(sequences), max(len(s) for s in sequences)))
        (h,) = state
        lengths = torch.tensor([[len(s)] for s in sequences], dtype=torch.float32)  # (B, 1)
        return None, (h + lengths.unsqueeze(0),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        self.step_batches.append(len(tokens))
        (h,) = state
        nxt = (tokens + 1 + h[0, :, 0].long()) % len(VOCAB)
        logits = torch.nn.functional.one_hot(nxt, len(VOCAB)).float()
        return logits, (h + 1,)


def expected(prefill: list[int] | tuple[int, ...], pending: int, n: int) -> list[int]:
    h, token, out = len(prefill), pending, []
    for _ in range(n):
        token = (token + 1 + h) % len(VOCAB)
        h += 1
        out.append(token)
    return out


def loaded_model(module: object) -> SimpleNamespace:
    return SimpleNamespace(module=module, device="cpu", vocab=SimpleNamespace(idx_to_token=VOCAB))


async def collect(outbox: GenerationOutbox) -> str:
    text = ""
    while True:
        piece, _ = await outbox.take()
        text += piece
        if outbox.result is not None:
            return text


def request(prefill: list[int], pending: int, n: int, **options) -> GenerationRequest:
    return GenerationRequest(prefill=tuple(prefill), pending=pending, state=None, max_tokens=n,
                             options=DecodingOptions(**options))


def as_text(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


async def settled(engine: GenerationEngine) -> int:
    """The active count once the engine has nothing left (bounded wait)."""
    for _ in range(300):
        if engine.active <= 0:
            break
        await asyncio.sleep(0.01)
    return engine.active
