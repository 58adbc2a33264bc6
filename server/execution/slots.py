"""Decode steps on fixed row slots, one set per batch-size bucket; CUDA graphs on a GPU.

Why: an eager decode step of a small recurrent model is launch-bound on a GPU (a 2x256 LSTM
step is about a dozen small kernels, each launched by Python), and it allocates a new state tuple
every step on any device. A CUDA graph replays the whole step as one launch, but it needs the
same tensors (addresses and shapes) at every replay. So the rows of a decode batch live in
**slots**: a bucket of capacity ``C`` owns static tensors, tokens ``(C,)``, state
``S x (L, C, H)`` and the logits ``(C, V)`` a step leaves, and a batch of ``B <= C`` rows
occupies slots ``0 .. B-1``.

A step (:meth:`SlotStep.step`):

1. copies the ``B`` input tokens into the bucket;
2. copies the state in only when the batch's state is not already the bucket's slots (rows
   joined or left, or the batch moved to another bucket); in a steady batch nothing is copied;
3. runs the bucket: the model's ``step`` over all ``C`` slots, whose new state is written back
   into the same slots (**in-place state update**);
4. returns views: logits ``(B, V)`` and state ``S x (L, B, H)``. They stay valid until the
   bucket's next step: the engine reads the logits (argmax, sampling) before that, and whatever
   keeps a state copies it (``DecodeBatch.row_state``, ``filter``, ``concatenate``).

The slots past ``B`` hold what they last held (valid token ids, finite states): their rows are
computed and ignored. With the batch-invariant kernels (the default, :mod:`rnnserve.models
.invariant`) a row never depends on its neighbours, so every real row is bit-identical to an
eager step at ``B``; with ``batch_invariant = False`` a row may differ in its last bits from an
eager step at ``B`` (the library picks kernels by shape, ``C`` here), as it may already between
batch sizes.

On CUDA (``capture=True``) each bucket's step is captured once as a CUDA graph, on first use:
three warm-up steps on a side stream (as ``torch.cuda.graph`` requires), then the capture, with
one memory pool shared by every bucket; later steps replay it. Sampling, argmax and all host
work stay outside the graph. A model whose step cannot be captured (it synchronises with the
host) runs eagerly in its bucket; that is logged once. Source: PyTorch's CUDA graphs notes
(``torch.cuda.graph``, ``torch.cuda.graph_pool_handle``), "whole-network capture".
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

State = tuple[Tensor, ...]
WARMUP_STEPS = 3  # eager steps on a side stream before a capture


class SteppableModel(Protocol):
    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]: ...

    def zero_state(self, batch_size: int, device: torch.device | str | None = None) -> State: ...


def bucket_sizes(max_batch: int) -> list[int]:
    """Bucket capacities up to ``max_batch``: 1, 2, 4, 8, 16, then steps of at most 1.5x (24,
    32, 48, 64, 96, ...), and ``max_batch`` itself last. A batch pads to at most 1.5x its size
    (2x below 16 rows, where a row costs nothing next to a launch)."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes: list[int] = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        if size < 16:
            size *= 2
        elif size & (size - 1) == 0:  # a power of two: its 1.5x comes next
            size += size // 2
        else:
            size = (size // 3) * 4  # 24 -> 32, 48 -> 64, ...
    sizes.append(max_batch)
    return sizes


class _Bucket:
    """The static tensors of one capacity, and its captured graph (CUDA)."""

    def __init__(self, model: SteppableModel, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.tokens = torch.zeros(capacity, dtype=torch.long, device=device)  # (C,)
        self.state: State = tuple(t.contiguous() for t in model.zero_state(capacity, device))
        self.logits: Tensor | None = None  # (C, V): what the last step left
        self.graph: torch.cuda.CUDAGraph | None = None

    def holds(self, state: State, rows: int) -> bool:
        """Whether ``state`` is already this bucket's first ``rows`` slots."""
        first, mine = state[0], self.state[0]
        return (first.data_ptr() == mine.data_ptr() and first.shape[1] == rows
                and first.stride() == mine.stride())

    def run_eager(self, model: SteppableModel) -> None:
        logits, new = model.step(self.tokens, self.state)
        for slots, value in zip(self.state, new, strict=True):
            slots.copy_(value)
        self.logits = logits


class SlotStep:
    """Batched decode steps on per-bucket row slots (see the module docstring).

    ``model`` is a char LM serving module (``step``, ``zero_state``); ``max_batch`` the largest
    batch the engine runs; ``capture`` replays each bucket as a CUDA graph (CUDA devices only).
    """

    def __init__(self, model: SteppableModel, device: torch.device, max_batch: int, *,
                 capture: bool) -> None:
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self._model = model
        self._device = device
        self._sizes = bucket_sizes(max_batch)
        self._capture = capture
        self._buckets: dict[int, _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._capture_failed = False

    @property
    def captured(self) -> list[int]:
        """Capacities whose step is a captured CUDA graph."""
        return sorted(c for c, b in self._buckets.items() if b.graph is not None)

    def bucket_for(self, rows: int) -> int:
        """The capacity a batch of ``rows`` runs in. ValueError past ``max_batch``."""
        for size in self._sizes:
            if size >= rows:
                return size
        raise ValueError(f"a batch of {rows} rows is over the largest bucket ({self._sizes[-1]})")

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decode step for ``B = len(tokens)`` rows: ``tokens (B,)`` int64 and state
        ``S x (L, B, H)`` -> logits ``(B, V)`` and the new state ``S x (L, B, H)``, both views
        of the bucket's slots (valid until its next step). Errors are the model's (out of
        memory, a lost device)."""
        rows = tokens.shape[0]
        bucket = self._bucket(self.bucket_for(rows))
        if not bucket.holds(state, rows):
            for slots, value in zip(bucket.state, state, strict=True):
                slots[:, :rows].copy_(value)
        bucket.tokens[:rows].copy_(tokens)
        if bucket.graph is not None:
            bucket.graph.replay()
        else:
            bucket.run_eager(self._model)
        assert bucket.logits is not None
        return bucket.logits[:rows], tuple(slots[:, :rows] for slots in bucket.state)

    def _bucket(self, capacity: int) -> _Bucket:
        bucket = self._buckets.get(capacity)
        if bucket is None:
            bucket = self._buckets[capacity] = _Bucket(self._model, capacity, self._device)
            if self._capture and not self._capture_failed:
                self._capture_graph(bucket)
        return bucket

    def _capture_graph(self, bucket: _Bucket) -> None:
        """Warm up on a side stream, then capture the bucket's step (state written in place)."""
        current = torch.cuda.current_stream(self._device)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                bucket.run_eager(self._model)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                logits, new = self._model.step(bucket.tokens, bucket.state)
                for slots, value in zip(bucket.state, new, strict=True):
                    slots.copy_(value)
        except RuntimeError as exc:
            if "captur" not in str(exc).lower():
                raise
            self._capture_failed = True
            logger.warning("CUDA graph capture failed for a %d-row decode step (%s); this model "
                           "runs its steps eagerly", bucket.capacity, exc)
            return
        bucket.logits = logits
        bucket.graph = graph
