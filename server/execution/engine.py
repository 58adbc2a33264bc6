"""The generation engine: continuous batching of decode steps for one loaded char model.

Every active generation of a model (streams, unary calls, session continuations) advances in one
batched decode step per iteration. Each executor call runs up to ``max_steps_per_iteration``
steps; at every step boundary, inside the call, cancelled sequences leave, finished ones leave
with their final state, and queued newcomers join while there is room.

Prefill (consuming a request's prefix before its first decode step) takes one of two forms:

- **in-batch prefill**: a short prefix (under ``PREFILL_MIN_TOKENS``) joining a small running
  batch is fed to its row one character per decode step (outputs discarded): about 1/B of a
  step per character, and the newcomer joins at once;
- **chunked prefill**: a long prefix, every prefix joining an empty batch and every prefix
  joining a big batch (``PREFILL_BATCH_ROWS``, where a step is long) is consumed by the model's
  packed ``prefill`` in chunks: each executor call spends at most ``prefill_chunk_tokens`` prefix
  tokens (first come, first served) before its decode steps, so no call holds the device for
  long whatever the prefixes, and prefill memory is bounded by the chunk, not by the request.
  A row whose prefix is consumed joins the decode batch.

Failures stay in the rows they belong to (:mod:`rnnserve.server.execution.device` says what a failure
means): a failed prefill chunk fails the rows of that chunk, a failed join fails the newcomers
(the running batch is untouched), a failed decode step fails the rows of that step, a failed
sampling call is retried row by row so that only the failing request fails. Out of memory is
RESOURCE_EXHAUSTED. A lost device (a poisoned CUDA context) fails everything and calls
``on_device_lost``: the server turns NOT_SERVING and exits so that its supervisor replaces it.

Threads: the request (:class:`GenerationRequest`) is immutable; its progress (:class:`_Row`) is
owned by the executor thread; the :class:`~rnnserve.server.execution.outbox.Outbox` is the only object
both threads touch. All torch work runs on the device's executor thread, never on the event
loop. While there is work, each executor call queues the next one itself (behind any classifier
batch waiting for the same device thread) and hands its tokens to the loop with
``call_soon_threadsafe``: the device never waits for the loop (coalescing: one stream message
carries the characters of one call; a first token is posted at once).

With ``slots`` (:class:`~rnnserve.server.execution.slots.SlotStep`, the ``cuda_graphs``
setting) each decode step runs on fixed row slots per batch-size bucket, replayed as a CUDA
graph; the step's logits and state are then views of the slots, valid until the next step, which
is all this engine needs (it reads the logits before the next step, and copies any state it
keeps).

Greedy next tokens stay on the device: the ids come to the host once per call, or at a step
where they are needed (a row's first token, rows with stop strings). ``max_batch_size = 1``
restores one-at-a-time execution (what batching buys is measured with it).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from rnnserve.server.execution import decoding
from rnnserve.server.execution.batch import DecodeBatch
from rnnserve.server.execution.chain import ExecutorChain
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.device import (
    DeviceLost,
    is_device_lost,
    request_error,
    row_failure,
)
from rnnserve.server.execution.outbox import Outbox
from rnnserve.server.execution.slots import SlotStep
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)

PREFILL_MIN_TOKENS = 64  # a prefix this long is prefilled in chunks, never in the batch
PREFILL_BATCH_ROWS = 32  # joining a batch this big, every prefix is prefilled (at a call's start)
PREFILL_CHUNK_TOKENS = 64  # default prefix tokens per executor call (the setting's default)


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: consume ``prefill``, then decode from ``pending`` (immutable)."""

    prefill: tuple[int, ...]  # tokens consumed before the first decode step (may be empty)
    pending: int  # the first decode step's input
    state: torch.Tensor | None  # (S, L, H) start state; None = zeros
    max_tokens: int
    options: DecodingOptions
    submitted_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class GenerationResult:
    """How a generation ended: what a session stores to continue it."""

    finish: FinishReason
    generated: int  # tokens generated
    state: torch.Tensor  # (S, L, H) after the last generated token's step
    pending: int  # the last generated token: the next step's input


GenerationOutbox = Outbox[GenerationResult]


class _Row:
    """A generation's progress, owned by the executor thread."""

    __slots__ = ("request", "outbox", "seed", "cursor", "state", "generated", "ids", "posted",
                 "tail", "finish", "final_state", "settled")

    def __init__(self, request: GenerationRequest, outbox: GenerationOutbox) -> None:
        self.request = request
        self.outbox = outbox
        self.seed = 0 if request.options.greedy else request.options.draw_seed()
        self.cursor = 0  # prefix tokens consumed
        self.state: torch.Tensor | None = request.state  # (S, L, H) outside the decode batch
        self.generated = 0
        self.ids: list[int] = []  # generated ids known on the host
        self.posted = 0  # ids already handed to the loop
        self.tail = ""  # the end of the generated text, for stop strings
        self.finish: FinishReason | None = None
        self.final_state: torch.Tensor | None = None
        self.settled = False  # reported finished, dropped or failed (exactly once)

    @property
    def prefilling(self) -> bool:
        return self.cursor < len(self.request.prefill)


@dataclass
class _Call:
    """What one executor call hands to the loop (read there while the next call may run)."""

    # outbox, new ids, generated so far, result when finished, submit time when first tokens
    tokens: list[tuple[GenerationOutbox, list[int], int, GenerationResult | None,
                       float | None]] = field(default_factory=list)
    dropped: list[GenerationOutbox] = field(default_factory=list)  # cancelled
    failed: list[tuple[GenerationOutbox, Exception]] = field(default_factory=list)
    steps: int = 0
    batch_size: int = 0  # rows left in the decode batch
    device_lost: BaseException | None = None


class GenerationEngine(ExecutorChain[_Row]):
    """Owns all execution of one char language model."""

    def __init__(self, model: object, name: str, executor: Executor, metrics: Metrics, *,
                 max_batch_size: int, max_active: int, max_steps_per_iteration: int,
                 prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
                 on_device_lost: Callable[[BaseException], None] | None = None,
                 threads: StepThreads | None = None, slots: SlotStep | None = None) -> None:
        m = metrics
        super().__init__(name, executor, max_active, "generations",
                         m.rejected.labels(name, "generations"),
                         m.queue_depth.labels(name, "generation"))
        self.model = model  # rnnserve.models LoadedModel (charlm)
        self._module = model.module
        self._device = torch.device(model.device)
        self._itos: list[str] = model.vocab.idx_to_token
        self._threads = threads or StepThreads()  # torch threads per step, by its size
        # decode steps on fixed row slots (CUDA graphs); None: the module's step, eagerly
        self._slots = slots
        self._max_batch = max_batch_size
        self._max_steps = max_steps_per_iteration
        self._chunk = prefill_chunk_tokens
        self.on_device_lost = on_device_lost  # set by the registry: the server's hook
        # --- executor thread only ---
        self._batch: DecodeBatch[_Row] | None = None
        self._prefilling: deque[_Row] = deque()  # rows whose prefix is prefilled in chunks
        self._records: list[tuple[list[_Row], list[int], torch.Tensor]] = []  # ids on device
        self._m_active = m.active_generations.labels(name)
        self._m_batch = m.batch_size.labels(name, "decode")
        self._m_prefill_batch = m.batch_size.labels(name, "prefill")
        self._m_ttft = m.time_to_first_token.labels(name)
        self._m_itl = m.inter_token_latency.labels(name)
        self._m_tokens = m.generated_tokens.labels(name)
        self._m_cancelled = m.cancelled_generations.labels(name)

    # --- lifecycle (ExecutorChain: start, stop) ------------------------------------------------
    def _fail_left(self, row: _Row, error: Exception) -> None:
        row.outbox.fail(error)

    def _abandon(self) -> list[_Row]:
        batch, self._batch = self._batch, None
        rows = list(batch.items) if batch is not None else []
        rows += self._prefilling
        self._prefilling.clear()
        self._records.clear()
        return rows

    @property
    def active(self) -> int:
        """Generations submitted and not yet ended (the admission count)."""
        return self._active

    # --- admission (event loop) ----------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationOutbox:
        """Queue a generation; returns its outbox. RESOURCE_EXHAUSTED when the model already
        runs its maximum; UNAVAILABLE after the device was lost."""
        outbox: GenerationOutbox = Outbox()
        self._enqueue(_Row(request, outbox))
        return outbox

    # --- the chain of executor calls -----------------------------------------------------------
    def _run_call(self) -> None:
        """One executor call: up to ``max_steps`` steps, then hand the tokens to the loop."""
        started = time.perf_counter()
        call = self._iterate(self._max_steps)
        self._post(self._deliver, call, (time.perf_counter() - started) / max(call.steps, 1))

    def _has_work(self) -> bool:
        return self._batch is not None or bool(self._prefilling) or bool(self._waiting)

    def _deliver(self, call: _Call, step_seconds: float | None) -> None:
        """On the loop: hand each outbox its tokens (one piece per call), end what ended, and
        count each ended generation exactly once (``Outbox`` says whether it just ended).

        ``step_seconds`` is None for an early delivery of first tokens in the middle of a call.
        """
        now = time.perf_counter()
        itos = self._itos
        produced = 0
        ended = 0
        for outbox, ids, _, result, submitted_at in call.tokens:
            if ids:
                if submitted_at is not None:
                    self._m_ttft.observe(now - submitted_at)
                if step_seconds is not None:
                    self._m_itl.observe(step_seconds)
                produced += len(ids)
                outbox.put("".join([itos[i] for i in ids]), len(ids))
            if result is not None and outbox.finish(result):
                ended += 1
        for outbox in call.dropped:
            if outbox.drop():
                ended += 1
                self._m_cancelled.inc()
        for outbox, exc in call.failed:  # one request's failure, not its batch mates'
            if outbox.fail(exc):
                ended += 1
        self._active -= ended
        self._m_tokens.inc(produced)
        if call.device_lost is not None and self.on_device_lost is not None:
            self.on_device_lost(call.device_lost)
        if step_seconds is not None:
            self._m_active.set(call.batch_size)
            self._m_queue.set(len(self._waiting))

    # --- model work (executor thread) ----------------------------------------------------------
    def _iterate(self, steps: int) -> _Call:
        """Run up to ``steps`` decode steps, admitting, prefilling and dropping rows between them.

        A row's first token is posted to the loop as soon as it exists (time to first token does
        not wait for the end of the call); the rest of the call's tokens go at its end.
        """
        call = _Call()
        touched: dict[_Row, None] = {}  # insertion-ordered set of rows with new tokens
        try:
            with torch.inference_mode():
                for i in range(steps):
                    self._boundary(call, first=i == 0)
                    if self._batch is None:
                        break  # nothing decodes (the next call runs the next prefill chunk)
                    firsts = self._step(call, touched)
                    call.steps += 1
                    if firsts:
                        early = _Call()
                        self._take(firsts, touched, early)
                        self._post(self._deliver, early, None)
                self._flush()
        except DeviceLost as lost:
            self._lose_device(call, lost.cause, lost.held)
        self._take(list(touched), touched, call)
        call.batch_size = len(self._batch) if self._batch is not None else 0
        return call

    def _take(self, rows: list[_Row], touched: dict[_Row, None], call: _Call) -> None:
        """Move the rows' new ids (and results, for finished rows) into ``call``."""
        for row in rows:
            touched.pop(row, None)
            if row.settled:
                continue  # failed or dropped in this call: its last tokens are not sent
            ids = row.ids[row.posted:]
            first = row.request.submitted_at if row.posted == 0 and ids else None
            row.posted = len(row.ids)
            result = None
            if row.finish is not None:
                row.settled = True
                assert row.final_state is not None
                result = GenerationResult(row.finish, row.generated, row.final_state, row.ids[-1])
            call.tokens.append((row.outbox, ids, row.generated, result, first))

    def _fail(self, rows: list[_Row], exc: Exception, call: _Call, what: str) -> None:
        """Fail ``rows`` (each at most once) with the request error for ``exc``."""
        live = [row for row in rows if not row.settled]
        if not live and not is_device_lost(exc):
            return
        error = row_failure(exc, live or rows, f"generation {what} on model {self.name}")
        for row in live:
            row.settled = True
            call.failed.append((row.outbox, error))

    def _drop(self, row: _Row, call: _Call) -> None:
        if not row.settled:
            row.settled = True
            call.dropped.append(row.outbox)

    def _lose_device(self, call: _Call, cause: BaseException, held: list[_Row]) -> None:
        """The device context is gone: fail every row this engine holds, refuse new ones."""
        logger.critical("model %s: the device failed (%s); failing every generation, the "
                        "server must be replaced", self.name, cause)
        self._lost = True
        error = request_error(cause if isinstance(cause, Exception) else RuntimeError(cause))
        rows = held + self._abandon()
        while self._waiting:
            rows.append(self._waiting.popleft())
        for row in rows:
            if not row.settled:
                row.settled = True
                call.failed.append((row.outbox, error))
        call.device_lost = cause

    def _boundary(self, call: _Call, first: bool) -> None:
        """Between two steps: cancelled rows leave, queued rows join while there is room, and
        at a call's start one chunk of prefill runs."""
        batch = self._batch
        if batch is not None and any(row.outbox.cancelled for row in batch.items):
            keep = [i for i, row in enumerate(batch.items) if not row.outbox.cancelled]
            try:
                self._batch = batch.filter(keep)
            except Exception as exc:  # noqa: BLE001 - the batch's rows fail, nothing else
                self._batch = None
                self._fail(batch.items, exc, call, "filter")
            for row in batch.items:
                if row.outbox.cancelled:
                    self._drop(row, call)
        if any(row.outbox.cancelled for row in self._prefilling):
            for row in self._prefilling:
                if row.outbox.cancelled:
                    self._drop(row, call)
            self._prefilling = deque(r for r in self._prefilling if not r.outbox.cancelled)
        rows = len(self._batch) if self._batch is not None else 0
        big = rows >= PREFILL_BATCH_ROWS
        if first or not big:
            self._admit(call, rows, big)
        if self._prefilling and first:
            self._prefill_chunk(call)

    def _admit(self, call: _Call, rows: int, big: bool) -> None:
        """Queued rows join: to the prefill queue, or straight into the batch."""
        room = self._max_batch - rows - len(self._prefilling)
        joining: list[_Row] = []
        waiting = self._waiting
        while room > len(joining) and waiting:
            row = waiting.popleft()  # deque: safe against the loop's appends
            if row.outbox.cancelled:
                self._drop(row, call)
            elif (row.request.prefill and (big or rows == 0
                                           or len(row.request.prefill) >= PREFILL_MIN_TOKENS)):
                self._prefilling.append(row)
                room -= 1
            else:
                joining.append(row)  # no prefix left, or a short one prefilled in the batch
        if joining:
            self._join(joining, call)

    def _join(self, rows: list[_Row], call: _Call) -> None:
        """Rows join the decode batch; if building or joining fails, they fail (only they) and
        the running batch goes on as it was."""
        try:
            zero = None
            states: list[torch.Tensor] = []
            for row in rows:
                if row.state is None:
                    if zero is None:
                        zero = torch.stack(self._module.zero_state(1, self._device))[:, :, 0]
                    states.append(zero)  # (S, L, H)
                else:
                    states.append(row.state)
            tokens = [row.request.prefill[row.cursor] if row.prefilling else row.request.pending
                      for row in rows]
            joined = DecodeBatch.from_rows(rows, states, tokens, self._device)
            batch = joined if self._batch is None else self._batch.concatenate(joined)
        except Exception as exc:  # noqa: BLE001 - the newcomers fail, the batch goes on
            self._fail(rows, exc, call, "join")
            return
        self._batch = batch
        for row in rows:
            row.state = None

    def _prefill_chunk(self, call: _Call) -> None:
        """Consume up to ``prefill_chunk_tokens`` prefix tokens of the queued prefills in one
        packed ``prefill`` call (short remainders first, then first come first served); rows
        whose prefix is consumed join the decode batch."""
        budget = self._chunk
        rows: list[_Row] = []
        pieces: list[list[int]] = []
        # short prefixes first (they finish in this chunk and start decoding), then first come
        # first served: a short request never waits behind a long prefix
        queue = sorted(self._prefilling,
                       key=lambda r: len(r.request.prefill) - r.cursor >= PREFILL_MIN_TOKENS)
        for row in queue:
            if budget <= 0:
                break
            n = min(budget, len(row.request.prefill) - row.cursor)
            pieces.append(list(row.request.prefill[row.cursor:row.cursor + n]))
            rows.append(row)
            budget -= n
        try:
            self._m_prefill_batch.observe(len(rows))
            self._threads.apply(len(rows))
            zero = None
            states = []
            for row in rows:
                if row.state is None:
                    if zero is None:
                        zero = torch.stack(self._module.zero_state(1, self._device))[:, :, 0]
                    states.append(zero)
                else:
                    states.append(row.state)
            start = torch.stack(states, dim=2)  # (S, L, B, H)
            _, new_state = self._module.prefill(pieces, tuple(start.unbind(0)))
            new = torch.stack(new_state)  # (S, L, B, H)
        except Exception as exc:  # noqa: BLE001 - the rows of this chunk fail, nothing else
            failed = set(rows)
            self._prefilling = deque(r for r in self._prefilling if r not in failed)
            self._fail(rows, exc, call, "prefill")
            return
        done: list[_Row] = []
        for k, (row, piece) in enumerate(zip(rows, pieces, strict=True)):
            row.state = new[:, :, k].clone()  # (S, L, H), its own storage
            row.cursor += len(piece)
            if not row.prefilling:
                done.append(row)
        if done:
            finished = set(done)
            self._prefilling = deque(r for r in self._prefilling if r not in finished)
            self._join(done, call)

    def _step(self, call: _Call, touched: dict[_Row, None]) -> list[_Row]:
        """One decode step for every row of the batch; returns the rows that got their first
        token. Rows prefilling in the batch take their next prefix character; the others emit a
        token; finished rows leave with their final state."""
        batch = self._batch
        assert batch is not None
        items = batch.items
        self._m_batch.observe(len(items))
        self._threads.apply(len(items))
        try:
            stepper = self._slots if self._slots is not None else self._module
            logits, state = stepper.step(batch.tokens, batch.state)  # (B, V), S x (L, B, H)
            nxt = logits.argmax(dim=1)  # (B,) on the device
        except Exception as exc:  # noqa: BLE001 - the rows of this step fail
            self._batch = None
            self._records.clear()
            self._fail(items, exc, call, "decode step")
            return []
        emitting: list[int] = []
        forced_rows: list[int] = []
        forced: list[int] = []
        sampled: list[int] = []
        finished: list[int] = []
        firsts: list[_Row] = []
        sync = False
        for i, row in enumerate(items):
            request = row.request
            if row.cursor < len(request.prefill):  # this step consumed a prefix character
                row.cursor += 1
                forced_rows.append(i)
                forced.append(request.prefill[row.cursor] if row.cursor < len(request.prefill)
                              else request.pending)
                continue
            emitting.append(i)
            row.generated += 1
            touched[row] = None
            if row.seed:
                sampled.append(i)
            if row.generated == 1:
                firsts.append(row)
                sync = True
            if request.options.stop:
                sync = True
            if row.generated >= request.max_tokens:
                row.finish = FinishReason.LENGTH
                finished.append(i)
        failed: set[int] = set()
        if sampled:
            try:
                nxt = self._sample(logits, nxt, [items[i] for i in sampled], sampled, failed, call)
            except Exception as exc:  # noqa: BLE001 - e.g. the index tensors: the step's rows
                self._batch = None
                self._records.clear()
                self._fail(items, exc, call, "sampling")
                return []
        if forced_rows:
            nxt[torch.tensor(forced_rows, device=self._device)] = torch.tensor(
                forced, dtype=nxt.dtype, device=self._device)
        self._records.append(([items[i] for i in emitting], emitting, nxt))
        if sync:
            self._flush()
            for i in emitting:
                row = items[i]
                if row.request.options.stop and i not in failed and self._stopped(row):
                    if row.finish is None:
                        finished.append(i)
                    row.finish = FinishReason.STOP
        batch.state, batch.tokens = state, nxt
        leave = set(finished) | failed
        try:
            for i in finished:
                if i not in failed:
                    items[i].final_state = batch.row_state(i)
            self._batch = batch.filter([i for i in range(len(items)) if i not in leave])
        except Exception as exc:  # noqa: BLE001 - the batch's rows fail
            self._batch = None
            self._fail(items, exc, call, "decode step")
            return []
        return [row for row in firsts if not row.settled]

    def _sample(self, logits: torch.Tensor, nxt: torch.Tensor, rows: list[_Row],
                index: list[int], failed: set[int], call: _Call) -> torch.Tensor:
        """Sampled rows' tokens into ``nxt`` (one call for all; row by row if it fails, so that
        only a failing row fails)."""
        every = len(index) == len(nxt)  # all rows sample: no gather, no scatter
        where = None if every else torch.tensor(index, device=self._device)
        options = [row.request.options for row in rows]
        seeds = [row.seed for row in rows]
        draws = [row.generated - 1 for row in rows]
        try:
            drawn = decoding.sample(logits if where is None else logits.index_select(0, where),
                                    options, seeds, draws)
        except Exception as exc:  # noqa: BLE001 - find the failing rows one at a time
            if is_device_lost(exc):
                raise DeviceLost(exc, list(rows)) from exc
            parts = []
            for k, (i, row) in enumerate(zip(index, rows, strict=True)):
                try:
                    parts.append(decoding.sample(logits[i:i + 1], options[k:k + 1],
                                                 seeds[k:k + 1], draws[k:k + 1]))
                except Exception as row_exc:  # noqa: BLE001 - this request fails alone
                    failed.add(i)
                    self._fail([row], row_exc, call, "sampling")
                    parts.append(nxt[i:i + 1])
            drawn = torch.cat(parts)
        if where is None:
            return drawn
        nxt[where] = drawn
        return nxt

    def _flush(self) -> None:
        """Bring the recorded next tokens to the host (one transfer per recorded step)."""
        for rows, index, nxt in self._records:
            values = nxt.tolist()
            for row, i in zip(rows, index, strict=True):
                row.ids.append(values[i])
        self._records.clear()

    def _stopped(self, row: _Row) -> bool:
        stop = row.request.options.stop
        window = max(len(s) for s in stop)
        row.tail = (row.tail + self._itos[row.ids[-1]])[-window:]
        return any(row.tail.endswith(s) for s in stop)
