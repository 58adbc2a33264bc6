"""The generation engine: continuous batching of decode steps for one loaded char model.

Every active generation of a model (streams, unary calls, session continuations) advances in one
batched step per iteration. Each executor call runs up to ``max_steps_per_iteration`` steps; at
every step boundary, inside the call, cancelled sequences leave, finished ones leave with their
final state, and queued newcomers join while there is room. A newcomer's prefix warms up *in the
decode batch*: its row is fed the prefix characters one step at a time (outputs discarded), which
costs about 1/B of a step per character instead of a separate model call that would stall every
other stream. A long prefix (``PREFILL_MIN_TOKENS`` or more), every prefix joining a big batch
(``PREFILL_BATCH_ROWS``; there a step is long, and a prefix warmed up in it would make its first
token wait one long step per character; those newcomers join at the start of an executor call)
and every prefix joining an empty batch is consumed first in one packed ``model.prefill`` call.

All torch work runs on the device's executor thread, never on the event loop. While there is
work, each executor call queues the next one itself (behind any classifier batch waiting for the
same device thread) and hands its tokens to the loop with ``call_soon_threadsafe``: the device
never waits for the loop, and the loop only admits work and passes each job the characters of a
call in one piece (coalescing: one stream message carries up to ``max_steps_per_iteration``
characters; a first token is posted at once).

``max_batch_size = 1`` restores one-at-a-time execution (what batching buys is measured with it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from rnnserve.server.batch import DecodeBatch
from rnnserve.server.decoding import DecodingOptions, Sampler
from rnnserve.server.errors import ResourceExhaustedError, RnnserveError
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)

PREFILL_MIN_TOKENS = 64  # a prefix this long is consumed in one packed call, not in the batch
PREFILL_BATCH_ROWS = 32  # joining a batch this big, every prefix is prefilled (at a call's start)


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
    warm: int = 0  # feed tokens still to consume in the decode batch
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


@dataclass
class _CallResult:
    """What one executor call hands to the loop (read there while the next call may run)."""

    tokens: list[tuple[GenerationJob, list[int], int, bool]]  # job, new ids, generated, finished
    dropped: list[GenerationJob]  # cancelled, left without finishing
    steps: int
    batch_size: int  # rows left in the batch
    failed: list[GenerationJob]
    error: Exception | None
    row_errors: list[tuple[GenerationJob, Exception]] = field(default_factory=list)


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
        self._waiting: deque[GenerationJob] = deque()  # appended on the loop, taken on the executor
        self._active = 0  # jobs submitted and not yet finished or dropped
        self._batch: DecodeBatch[GenerationJob] | None = None  # touched on the executor only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _scheduled/_closed between loop and executor
        self._scheduled = False  # a _drive call is queued or running on the executor
        self._closed = False
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
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def stop(self) -> None:
        """Refuse new work and fail what is left (queued or still in the batch)."""
        with self._lock:
            self._closed = True  # a running _drive finishes its call and does not come back
        error = RnnserveError("the server is shutting down")
        left: list[GenerationJob] = []
        try:  # behind any running call on the device thread, then the batch is ours
            left = await asyncio.get_running_loop().run_in_executor(self._executor, self._abandon)
        except RuntimeError:  # the executor is already shut down
            pass
        while self._waiting:
            left.append(self._waiting.popleft())
        for job in left:
            if not job.outbox.done:
                job.outbox.fail(error)
        self._active = 0

    def _abandon(self) -> list[GenerationJob]:
        batch, self._batch = self._batch, None
        return list(batch.items) if batch is not None else []

    @property
    def active(self) -> int:
        return self._active

    @property
    def pending(self) -> int:
        """Generations not finished yet (the Runner protocol's drain count)."""
        return self._active

    # --- admission -----------------------------------------------------------------------------
    def submit(self, job: GenerationJob) -> None:
        """Queue a job; RESOURCE_EXHAUSTED when the model already runs its maximum."""
        if self._loop is None or self._closed:
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
        with self._lock:
            if self._scheduled:
                return  # the running chain admits it at its next step boundary
            self._scheduled = True
        self._executor.submit(self._drive)

    # --- the chain of executor calls -----------------------------------------------------------
    def _drive(self) -> None:
        """One executor call: up to ``max_steps`` steps, then hand the tokens to the loop and,
        while there is work, queue the next call behind whatever else waits for the device (the
        classifier's batches), so the device thread never waits on the event loop."""
        started = time.perf_counter()
        result = self._iterate(self._max_steps)
        self._post(result, (time.perf_counter() - started) / max(result.steps, 1))
        with self._lock:
            if self._closed or (self._batch is None and not self._waiting):
                self._scheduled = False
                return
        try:
            self._executor.submit(self._drive)
        except RuntimeError:  # the executor was shut down
            with self._lock:
                self._scheduled = False

    def _post(self, result: _CallResult, step_seconds: float | None) -> None:
        """From the executor: have the loop deliver ``result``."""
        try:
            self._loop.call_soon_threadsafe(self._deliver, result,  # type: ignore[union-attr]
                                            step_seconds)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            self._closed = True

    def _deliver(self, result: _CallResult, step_seconds: float | None) -> None:
        """On the loop: hand each job its tokens (one piece per job per call), settle counts.

        ``step_seconds`` is None for an early delivery of first tokens in the middle of a call.
        """
        now = time.perf_counter()
        if result.error is not None:  # a model failure fails the jobs it touched, not the server
            logger.error("generation step failed on model %s", self.name, exc_info=result.error)
            for job in result.failed:
                job.outbox.fail(result.error)
            self._active -= len(result.failed)
        for job, exc in result.row_errors:  # one request's failure, not its batch mates'
            logger.error("generation failed on model %s", self.name, exc_info=exc)
            job.outbox.fail(exc)
        self._active -= len(result.row_errors)
        if result.dropped:
            self._active -= len(result.dropped)
            self._m_cancelled.inc(len(result.dropped))
        itos = self._itos
        produced = 0
        for job, ids, generated, finished in result.tokens:
            if job.outbox.done:  # failed in this call
                continue
            if generated == len(ids):
                self._m_ttft.observe(now - job.submitted_at)
            if step_seconds is not None:
                self._m_itl.observe(step_seconds)
            produced += len(ids)
            job.outbox.put("".join([itos[i] for i in ids]), len(ids), done=finished)
            if finished:
                self._active -= 1
        self._m_tokens.inc(produced)
        if step_seconds is not None:
            self._m_active.set(result.batch_size)
            self._m_queue.set(len(self._waiting))

    # --- model work (executor thread) ----------------------------------------------------------
    def _iterate(self, steps: int) -> _CallResult:
        """Run up to ``steps`` decode steps, admitting and dropping sequences between steps.

        A job's first token is posted to the loop as soon as it exists (time to first token does
        not wait for the end of the call); the rest of the call's tokens go at its end.
        """
        touched: dict[GenerationJob, None] = {}  # insertion-ordered set
        firsts: list[GenerationJob] = []
        dropped: list[GenerationJob] = []
        admitting: list[GenerationJob] = []
        batch, self._batch = self._batch, None
        ran = 0
        failed: list[GenerationJob] = []
        row_errors: list[tuple[GenerationJob, Exception]] = []
        error: Exception | None = None
        with torch.inference_mode():
            try:
                for step in range(steps):
                    batch = self._boundary(batch, dropped, admitting, step == 0)
                    if batch is None:
                        break
                    batch = self._step(batch, touched, firsts, row_errors)
                    ran += 1
                    if firsts:
                        self._post(_CallResult(self._take_tokens(firsts, touched), [], 0, 0, [],
                                               None), None)
                        firsts.clear()
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which fails the jobs
                failed = (batch.items if batch is not None else []) + admitting
                batch, error = None, exc
        self._batch = batch
        for job, _ in row_errors:
            touched.pop(job, None)
        return _CallResult(self._take_tokens(list(touched), touched), dropped, ran,
                           len(batch) if batch is not None else 0, failed, error, row_errors)

    @staticmethod
    def _take_tokens(jobs: list[GenerationJob], touched: dict[GenerationJob, None]
                     ) -> list[tuple[GenerationJob, list[int], int, bool]]:
        """Snapshot and clear the jobs' new tokens (the loop reads them while we go on)."""
        out = []
        for job in jobs:
            out.append((job, job.new_ids, job.generated, job.finish is not None))
            job.new_ids = []
            del touched[job]
        return out

    def _boundary(self, batch: DecodeBatch[GenerationJob] | None, dropped: list[GenerationJob],
                  admitting: list[GenerationJob], call_start: bool
                  ) -> DecodeBatch[GenerationJob] | None:
        """Between two steps: cancelled rows leave, queued jobs join while there is room.

        Joining a small batch, a prefix warms up in the batch (a warming row costs 1/B of a
        step per character, and the newcomer joins at once). Joining a big batch
        (``PREFILL_BATCH_ROWS``), where every step is long, the newcomers of a whole call are
        prefilled together at its start instead, so that their first token does not wait one
        long step per prefix character; joining an empty batch, they are prefilled too (the
        packed call runs the recurrence in C++, faster than one step call per character).
        """
        if batch is not None:
            items = batch.items
            if any(job.cancelled for job in items):
                dropped.extend(job for job in items if job.cancelled)
                batch = batch.filter([i for i, job in enumerate(items) if not job.cancelled])
        rows = len(batch) if batch is not None else 0
        big = rows >= PREFILL_BATCH_ROWS
        if big and not call_start:
            return batch
        room = self._max_batch - rows
        waiting = self._waiting
        while room > len(admitting) and waiting:
            job = waiting.popleft()  # deque: safe against the loop's appends
            if job.cancelled:
                dropped.append(job)
            else:
                admitting.append(job)
        if admitting:
            joined = self._join(admitting, prefill_all=big or rows == 0)
            admitting.clear()
            batch = joined if batch is None else batch.concatenate(joined)
        return batch

    def _join(self, jobs: list[GenerationJob], prefill_all: bool) -> DecodeBatch[GenerationJob]:
        """Rows for newcomers: prefixes are prefilled in one packed call when long (or when
        ``prefill_all``), else they warm up in the batch."""
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
        prefill = [i for i, job in enumerate(jobs)
                   if job.feed and (prefill_all or len(job.feed) >= PREFILL_MIN_TOKENS)]
        if prefill:
            self._m_prefill_batch.observe(len(prefill))
            start = torch.stack([states[i] for i in prefill], dim=2)  # (S, L, B, H)
            _, new_state = module.prefill([jobs[i].feed for i in prefill],
                                          tuple(start.unbind(0)))
            new = torch.stack(new_state)  # (S, L, B, H)
            for row, i in enumerate(prefill):
                states[i] = new[:, :, row]
        prefilled = set(prefill)
        tokens: list[int] = []
        for i, job in enumerate(jobs):
            if job.feed and i not in prefilled:
                job.warm = len(job.feed)
                tokens.append(job.feed[0])
            else:
                tokens.append(job.pending)
        return DecodeBatch.from_rows(list(jobs), states, tokens, self._device)

    def _step(self, batch: DecodeBatch[GenerationJob], touched: dict[GenerationJob, None],
              firsts: list[GenerationJob], row_errors: list[tuple[GenerationJob, Exception]]
              ) -> DecodeBatch[GenerationJob] | None:
        """One step for every row: warming rows take their next prefix character, the others
        emit a token; finished rows leave the batch, and so does a row whose sampling fails
        (that request fails alone)."""
        self._m_batch.observe(len(batch))
        logits, batch.state = self._module.step(batch.tokens, batch.state)
        ids: list[int] = logits.argmax(dim=1).tolist()  # (B,)
        keep: list[int] = []
        for row, job in enumerate(batch.items):
            if job.warm:  # this step consumed a prefix character: feed the next one
                job.warm -= 1
                ids[row] = job.feed[-job.warm] if job.warm else job.pending
                keep.append(row)
                continue
            if job.sampler is not None:
                try:
                    ids[row] = job.sampler.draw(logits[row])
                except Exception as exc:  # noqa: BLE001 - handed to the loop, fails this job
                    row_errors.append((job, exc))
                    if job in firsts:
                        firsts.remove(job)
                    continue
            token = ids[row]
            job.new_ids.append(token)
            job.generated += 1
            touched[job] = None
            if job.generated == 1:
                firsts.append(job)
            if self._finished(job, token):
                job.final_state = batch.row_state(row)
                job.final_pending = token
            else:
                keep.append(row)
        batch.tokens = torch.tensor(ids, dtype=torch.long, device=self._device)
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
