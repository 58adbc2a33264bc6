"""The generation engine: continuous batching of decode steps for one loaded char model.

Every active generation of a model (streams, unary calls, session continuations) advances in one
batched step per iteration. Newcomers join between iterations: their prefixes are consumed in one
packed call (variable lengths, ``model.prefill``), then they enter the decode batch. Finished and
cancelled sequences leave between steps. All torch work runs on the device's executor thread,
never on the event loop; the loop only admits work and hands tokens to the waiting requests.

``max_batch_size = 1`` restores one-at-a-time execution (what batching buys is measured with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from rnnserve.server.batch import DecodeBatch
from rnnserve.server.decoding import DecodingOptions, Sampler, choose_tokens
from rnnserve.server.errors import ResourceExhaustedError, RnnserveError
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class GenerationJob:
    """One generation inside the engine: what to consume, what to decode, where tokens go."""

    feed: list[int]  # tokens consumed before the first decode step (may be empty)
    pending: int  # the first decode step's input
    state: torch.Tensor | None  # (S, L, H) start state; None = zeros
    max_tokens: int
    options: DecodingOptions
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    # --- written by the engine ---
    generated: int = 0
    finish: FinishReason | None = None
    final_state: torch.Tensor | None = None  # (S, L, H), set when finished
    final_pending: int = 0
    new_ids: list[int] = field(default_factory=list)
    tail: str = ""  # the end of the generated text, for stop strings
    sampler: Sampler | None = None
    outbox: Outbox = field(default_factory=lambda: Outbox())


class Outbox:
    """Tokens waiting for their request; whatever piled up is taken at once (coalescing)."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._event = asyncio.Event()
        self.done = False
        self.error: BaseException | None = None
        self.tokens = 0  # tokens put so far

    def put(self, text: str, tokens: int, done: bool = False) -> None:
        if text:
            self._pieces.append(text)
        self.tokens += tokens
        self.done = self.done or done
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self._event.set()

    async def take(self) -> tuple[str, int]:
        """Wait for text (or the end); returns everything buffered and the tokens put so far."""
        while not self._pieces and not self.done:
            self._event.clear()
            await self._event.wait()
        if self.error is not None and not self._pieces:
            raise self.error
        text = "".join(self._pieces)
        self._pieces.clear()
        return text, self.tokens


class GenerationEngine:
    """Owns all execution of one char language model."""

    def __init__(self, model: object, name: str, executor: Executor, metrics: Metrics, *,
                 max_batch_size: int, max_active: int, max_steps_per_iteration: int) -> None:
        self.model = model  # rnnserve.models LoadedModel (charlm)
        self.name = name
        self._module = model.module
        self._device = torch.device(model.device)
        self._itos: list[str] = model.vocab.idx_to_token
        self._executor = executor
        self._max_batch = max_batch_size
        self._max_active = max_active
        self._max_steps = max_steps_per_iteration
        self._waiting: list[GenerationJob] = []
        self._active = 0  # jobs submitted and not yet finished or dropped
        self._batch: DecodeBatch[GenerationJob] | None = None  # touched on the executor only
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        m = metrics
        self._m_queue = m.queue_depth.labels(name, "generation")
        self._m_active = m.active_generations.labels(name)
        self._m_batch = m.batch_size.labels(name, "decode")
        self._m_prefill_batch = m.batch_size.labels(name, "prefill")
        self._m_ttft = m.time_to_first_token.labels(name)
        self._m_itl = m.inter_token_latency.labels(name)
        self._m_tokens = m.generated_tokens.labels(name)
        self._m_cancelled = m.cancelled_generations.labels(name)
        self._m_rejected = m.rejected.labels(name, "generations")

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"engine:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        error = RnnserveError("the server is shutting down")
        for job in self._waiting:
            job.outbox.fail(error)
        self._waiting.clear()

    @property
    def active(self) -> int:
        return self._active

    # --- admission -----------------------------------------------------------------------------
    def submit(self, job: GenerationJob) -> None:
        """Queue a job; RESOURCE_EXHAUSTED when the model already runs its maximum."""
        if self._wake is None:
            raise RuntimeError("engine not started")
        if self._active >= self._max_active:
            self._m_rejected.inc()
            raise ResourceExhaustedError(
                f"model {self.name!r} is running its maximum of {self._max_active} generations; "
                "retry later"
            )
        if not job.options.greedy:
            job.sampler = Sampler(job.options)
        self._active += 1
        self._waiting.append(job)
        self._m_queue.set(len(self._waiting))
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._waiting and self._batch is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            room = self._max_batch - (len(self._batch) if self._batch else 0)
            admit = [j for j in self._waiting[:room] if not j.cancelled]
            self._drop_cancelled_waiting(self._waiting[:room])
            del self._waiting[:room]
            self._m_queue.set(len(self._waiting))
            steps = 1 if (admit or self._waiting) else self._max_steps
            started = time.perf_counter()
            try:
                touched, dropped = await loop.run_in_executor(
                    self._executor, self._iterate, admit, steps
                )
            except Exception as exc:  # a model failure fails the jobs it touched, not the server
                logger.exception("generation step failed on model %s", self.name)
                self._fail_all(admit, exc)
                continue
            self._dispatch(touched, dropped, (time.perf_counter() - started) / steps)

    def _drop_cancelled_waiting(self, jobs: list[GenerationJob]) -> None:
        for job in jobs:
            if job.cancelled:
                self._active -= 1
                self._m_cancelled.inc()

    def _fail_all(self, admitted: list[GenerationJob], exc: Exception) -> None:
        jobs = admitted + (self._batch.items if self._batch else [])
        self._batch = None
        for job in jobs:
            job.outbox.fail(exc)
        self._active -= len(jobs)
        self._m_active.set(0)

    def _dispatch(self, touched: list[GenerationJob], dropped: list[GenerationJob],
                  step_seconds: float) -> None:
        now = time.perf_counter()
        produced = 0
        self._active -= len(dropped)
        self._m_cancelled.inc(len(dropped))
        for job in touched:
            ids = job.new_ids
            if ids and job.generated == len(ids):
                self._m_ttft.observe(now - job.submitted_at)
            if ids:
                self._m_itl.observe(step_seconds)
            produced += len(ids)
            job.new_ids = []
            job.outbox.put(
                "".join(self._itos[i] for i in ids), len(ids), done=job.finish is not None
            )
            if job.finish is not None:
                self._active -= 1
        self._m_tokens.inc(produced)
        self._m_active.set(len(self._batch) if self._batch else 0)

    # --- model work (executor thread) ----------------------------------------------------------
    def _iterate(self, admit: list[GenerationJob], steps: int
                 ) -> tuple[list[GenerationJob], list[GenerationJob]]:
        """Admit newcomers, then run up to ``steps`` decode steps. Returns (touched, dropped)."""
        with torch.inference_mode():
            dropped: list[GenerationJob] = []
            batch = self._batch
            if batch is not None:
                keep = [i for i, job in enumerate(batch.items) if not job.cancelled]
                dropped = [job for job in batch.items if job.cancelled]
                batch = batch.filter(keep)
            if admit:
                joined = self._prefill(admit)
                batch = joined if batch is None else batch.concatenate(joined)
            touched = list(batch.items) if batch is not None else []
            for _ in range(steps):
                if batch is None:
                    break
                batch = self._step(batch)
            self._batch = batch
            return touched, dropped

    def _prefill(self, jobs: list[GenerationJob]) -> DecodeBatch[GenerationJob]:
        """Consume each job's feed in one packed call and form a batch of them."""
        module = self._module
        zero = None
        states: list[torch.Tensor] = []
        for job in jobs:
            if job.state is None:
                if zero is None:
                    zero = torch.stack(module.zero_state(1, self._device))[:, :, 0]  # (S, L, H)
                states.append(zero)
            else:
                states.append(job.state)
        feeding = [i for i, job in enumerate(jobs) if job.feed]
        if feeding:
            self._m_prefill_batch.observe(len(feeding))
            start = torch.stack([states[i] for i in feeding], dim=2)  # (S, L, B, H)
            _, new_state = module.prefill([jobs[i].feed for i in feeding], tuple(start.unbind(0)))
            new = torch.stack(new_state)  # (S, L, B, H)
            for row, i in enumerate(feeding):
                states[i] = new[:, :, row]
        return DecodeBatch.from_rows(jobs, states, [job.pending for job in jobs], self._device)

    def _step(self, batch: DecodeBatch[GenerationJob]) -> DecodeBatch[GenerationJob] | None:
        """One decode step for every row; finished rows leave the batch."""
        self._m_batch.observe(len(batch))
        logits, new_state = self._module.step(batch.tokens, batch.model_state())
        jobs = batch.items
        ids = choose_tokens(logits, [job.sampler for job in jobs])
        batch.state = torch.stack(new_state)
        batch.tokens = torch.tensor(ids, dtype=torch.long, device=self._device)
        keep: list[int] = []
        for row, (job, token) in enumerate(zip(jobs, ids, strict=True)):
            job.new_ids.append(token)
            job.generated += 1
            if self._finished(job, token):
                job.final_state = batch.row_state(row)
                job.final_pending = token
            else:
                keep.append(row)
        return batch.filter(keep)

    def _finished(self, job: GenerationJob, token: int) -> bool:
        stop = job.options.stop
        if stop:
            window = max(len(s) for s in stop)
            job.tail = (job.tail + self._itos[token])[-window:]
            if any(job.tail.endswith(s) for s in stop):
                job.finish = FinishReason.STOP
                return True
        if job.generated >= job.max_tokens:
            job.finish = FinishReason.LENGTH
            return True
        return False
