"""Dynamic batching for a classifier: texts from concurrent requests scored together.

One asyncio queue, a future per text and one batching task. When the model is free, a batch
closes as soon as it holds ``max_batch_size`` texts or its first (oldest) text has waited
``max_wait`` since it arrived, so texts that queued while the previous batch ran go at once:
under load the model never idles waiting for a batch to fill (dynamic batching with the delay
counted from the first request's arrival, as Triton's ``max_queue_delay``). A batch-invariant
model scores in fixed tiles of rows (:func:`~rnnserve.models.invariant.tile_rows`), and a
partly filled tile costs a full one; so a batch of more than one tile is cut to whole tiles and
the rest start the next batch, where later texts can fill their tile. Every text is padded to
the model's fixed sequence length, so a score never depends on its batch mates.
``max_batch_size = 1`` scores one text at a time.

A failed batch fails its texts only, by :mod:`rnnserve.server.execution.device`'s rules: out of
memory is RESOURCE_EXHAUSTED; a lost device also calls ``on_device_lost`` (the server turns
NOT_SERVING and exits to be replaced) and later texts are refused (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from rnnserve.models.invariant import tile_rows
from rnnserve.server.errors import ResourceExhaustedError, RnnserveError
from rnnserve.server.execution.device import is_device_lost, is_out_of_memory, request_error
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scored:
    """A text's P(positive) and, on demand, its attention weight per padded position.

    The weights stay in the batch's ``(B, S)`` CPU tensor until :meth:`attention` is asked for
    (only ``explain`` requests do): converting every row to Python floats on the device thread
    cost ~1 µs a text of GIL-held time for nothing.
    """

    score: float
    weights: torch.Tensor  # (B, S) float, CPU: the whole batch's
    row: int

    def attention(self) -> list[float]:
        """This text's attention weight per padded position, ``S`` floats."""
        return self.weights[self.row].tolist()


class ClassificationBatcher:
    """Owns all execution of one classifier."""

    def __init__(self, model: object, name: str, executor: Executor, metrics: Metrics, *,
                 max_batch_size: int, max_wait_ms: float, max_queued: int,
                 threads: StepThreads | None = None) -> None:
        self.model = model  # rnnserve.models LoadedModel (classifier)
        self.name = name
        self._module = model.module
        self._device = torch.device(model.device)
        self._executor = executor
        self._threads = threads or StepThreads()
        self._max_batch = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queued = max_queued
        # (token ids, the text's future, its arrival on the loop's clock)
        self._queue: list[tuple[list[int], asyncio.Future[Scored], float]] = []
        self._tile = batch_tile(self._module, self._device)
        self._unanswered = 0  # texts submitted whose request has not returned yet
        self._wake: asyncio.Event | None = None  # set when a text arrives
        self._full: asyncio.Event | None = None  # set when max_batch_size texts wait
        self._task: asyncio.Task[None] | None = None
        self.on_device_lost: Callable[[BaseException], None] | None = None  # set by the registry
        self._lost = False
        self._m_queue = metrics.queue_depth.labels(name, "classification")
        self._m_batch = metrics.batch_size.labels(name, "classification")
        self._m_rejected = metrics.rejected.labels(name, "queued_texts")

    def warm_up(self) -> None:
        """Score one empty text (all padding), blocking; the registry runs it on its loading
        thread before the version serves, so a SIGTERM never waits for it.

        It traces the model's scripted tiles before the model serves, so the first request
        does not pay for it (the shipped ``sentiment``: 28-42 ms alone, a 77 ms first batch in a
        server under load); a model that cannot score fails its load here, with its own error.
        """
        tokenizer = self.model.tokenizer.config
        self._score([[tokenizer.pad_index] * tokenizer.seq_length])

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, future, _ in self._queue:
            if not future.done():
                future.set_exception(_shutting_down())
        self._queue.clear()

    async def score(self, rows: list[list[int]]) -> list[Scored]:
        """Score padded token-id rows; RESOURCE_EXHAUSTED when too many texts wait already."""
        if self._wake is None:
            raise RuntimeError("batcher not started")
        if self._lost:
            raise RnnserveError(f"model {self.name!r}: the device failed; retry on another server")
        if len(self._queue) + len(rows) > self._max_queued:
            self._m_rejected.inc()
            raise ResourceExhaustedError(
                f"texts: classifier {self.name!r} has {len(self._queue)} texts waiting "
                f"(limit {self._max_queued}); retry later"
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        now = loop.time()
        self._queue.extend((r, f, now) for r, f in zip(rows, futures, strict=True))
        self._m_queue.set(len(self._queue))
        self._wake.set()
        if len(self._queue) >= self._max_batch:
            self._full.set()  # type: ignore[union-attr]
        self._unanswered += len(rows)
        try:
            if len(futures) == 1:  # the common case: no gather machinery per request
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        finally:
            self._unanswered -= len(rows)

    @property
    def in_flight(self) -> int:
        """Texts whose request is still waiting (a version swap drains these before stopping)."""
        return self._unanswered

    @property
    def pending(self) -> int:
        """The Runner protocol's drain count: :attr:`in_flight`."""
        return self._unanswered

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None and self._full is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self._max_batch and self._max_wait > 0:
                left = self._queue[0][2] + self._max_wait - loop.time()
                if left > 0:  # one wait per batch (not a wake-up per text): full or timed out
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), left)
                    except TimeoutError:
                        pass
            batch = self._take()
            if not batch:
                continue
            self._m_batch.observe(len(batch))
            try:
                scored = await loop.run_in_executor(
                    self._executor, self._score, [rows for rows, _ in batch]
                )
            except asyncio.CancelledError:  # stop() while this batch runs: its texts fail too
                for _, future in batch:
                    if not future.done():
                        future.set_exception(_shutting_down())
                raise
            except Exception as exc:  # noqa: BLE001 - this batch's texts fail, nothing else
                scored = [self._failed(exc, len(batch))] * len(batch)
            for (_, future), result in zip(batch, scored, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _take(self) -> list[tuple[list[int], asyncio.Future[Scored]]]:
        """Close the next batch: the oldest texts, whole tiles when more than one tile."""
        if any(f.done() for _, f, _ in self._queue[: self._max_batch]):  # cancelled meanwhile
            self._queue = [entry for entry in self._queue if not entry[1].done()]
        take = min(len(self._queue), self._max_batch)
        if take > self._tile:
            take -= take % self._tile
        batch = [(r, f) for r, f, _ in self._queue[:take]]
        del self._queue[:take]
        self._m_queue.set(len(self._queue))
        if len(self._queue) < self._max_batch:
            self._full.clear()  # type: ignore[union-attr]
        return batch

    def _failed(self, exc: Exception, texts: int) -> Exception:
        """Log a failed batch; the error its texts get (a lost device also tells the server)."""
        if is_device_lost(exc):
            logger.critical("classifier %s: the device failed (%s); the server must be replaced",
                            self.name, exc)
            self._lost = True
            if self.on_device_lost is not None:
                self.on_device_lost(exc)
        elif is_out_of_memory(exc):  # expected under load: no traceback
            logger.warning("classifier %s ran out of device memory (%d texts fail with "
                           "RESOURCE_EXHAUSTED): %s", self.name, texts, exc)
        else:
            logger.error("classifier %s failed on a batch (%d texts fail)", self.name, texts,
                         exc_info=exc)
        return request_error(exc)

    def _score(self, rows: list[list[int]]) -> list[Scored]:
        """Score one batch on the device thread.

        Every torch call from Python gives the GIL back and must take it again, waiting behind
        a busy event loop up to the switch interval (5 ms); so the padding is done in Python and
        the model's scripted tiles are the only torch call that releases it (measured at c=16:
        a batch's wall time over its CPU time fell from 1.8-2.1 ms to 0.7-1.5 ms).
        """
        self._threads.apply(len(rows))
        texts = len(rows)
        short = -texts % self._tile  # a part-filled tile: zero-id rows, as the model pads
        if short:
            rows = rows + [[0] * len(rows[0])] * short
        x = torch.from_numpy(np.array(rows, dtype=np.int64))  # (B, S); faster than torch.tensor
        if self._device.type != "cpu":
            x = x.to(self._device)
        with torch.inference_mode():
            probs, attention = self._module.score(x)  # (B,), (B, S)
        probs_l = _on_host(probs).tolist()
        weights = _on_host(attention)
        return [Scored(probs_l[i], weights, i) for i in range(texts)]


def _on_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 on the CPU; itself when it is one already (no torch call: every torch
    call gives the GIL back and must wait to take it again)."""
    return t if t.dtype == torch.float32 and t.device.type == "cpu" else t.float().cpu()


def batch_tile(module: object, device: torch.device) -> int:
    """Rows a batch is best cut at for ``module``: its product tile when it scores
    batch-invariant (a partly filled tile costs a whole one), else 1 (any size)."""
    return tile_rows(device) if getattr(module, "batch_invariant", False) else 1


def _shutting_down() -> RnnserveError:
    """What a text still waiting when the batcher stops gets (UNAVAILABLE)."""
    return RnnserveError("the server is shutting down")
