"""The forecast engine: continuous batching of autoregressive steps for one loaded forecaster.

Shaped like the generation engine (``engine.py``): every active forecast of a model advances in
one batched step per iteration; each executor call runs up to ``max_steps_per_iteration`` steps,
and at every step boundary cancelled forecasts leave, finished ones leave with their final
state, and queued newcomers join while there is room. A newcomer is first *prefilled* alone:
its observed points run through the model from its start state in one call, whose last output
is its first prediction; it then joins the batch (the :class:`~rnnserve.server.execution.batch.
DecodeBatch` algebra, with ``(B, F)`` float points as the rows' next inputs), where each step
feeds every row's last prediction back as its next input. Prefilling alone keeps a forecast
independent of its batch mates, and so does the model's batch-invariant ``step`` (each row with
batch-1 kernels); ``batch_invariant=False`` uses one batched call per step instead (faster; a
row's last bits may then depend on its batch mates).

Failures stay in the rows they belong to, by the generation engine's rules
(:mod:`rnnserve.server.execution.device`): a failed prefill fails its own job, a failed join
the newcomers, a failed step the rows of that step; out of memory is RESOURCE_EXHAUSTED; a lost
device fails everything, refuses new jobs (UNAVAILABLE) and calls ``on_device_lost`` (the server
turns NOT_SERVING and exits to be replaced).

All torch work runs on the device's executor thread, never on the event loop. A job is an
immutable request; its progress is owned by the executor (``_Row``); the :class:`ForecastOutbox`
is the only object both threads touch (the loop reads values, the executor's results are
handed over with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from rnnserve.server.execution.batch import DecodeBatch
from rnnserve.server.execution.chain import ExecutorChain
from rnnserve.server.execution.device import (
    DeviceLost,
    request_error,
    row_failure,
)
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.metrics import Metrics

logger = logging.getLogger(__name__)


class ForecastOutbox:
    """Predicted values waiting for their request; whatever piled up is taken at once."""

    def __init__(self) -> None:
        self._values: list[float] = []
        self._event = asyncio.Event()
        self.done = False
        self.error: BaseException | None = None
        self.predicted = 0  # values put so far
        self.end: ForecastEnd | None = None  # where the forecast ended (set with the last values)
        self.cancelled = False  # set by the loop when the request goes away; read by the executor

    def put(self, values: list[float], points: int, done: bool,
            end: ForecastEnd | None = None) -> None:
        self._values.extend(values)
        self.predicted += points
        if end is not None:
            self.end = end
        self.done = self.done or done
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self._event.set()

    async def take(self) -> tuple[list[float], int]:
        """Wait for values (or the end); returns everything buffered and the points so far."""
        while not self._values and not self.done:
            self._event.clear()
            await self._event.wait()
        if self.error is not None and not self._values:
            raise self.error
        values, self._values = self._values, []
        return values, self.predicted


@dataclass(frozen=True, eq=False)
class ForecastEnd:
    """The states a finished forecast leaves (what a session keeps)."""

    observed: torch.Tensor  # (S, L, H) after the last observed point (the job's inputs)
    predicted: torch.Tensor  # (S, L, H) after every prediction but the last
    pending: torch.Tensor  # (F,) the last prediction: the next input when extending


@dataclass(frozen=True, eq=False)
class ForecastJob:
    """One forecast: points to consume, where to start, how far to predict (never mutated)."""

    inputs: torch.Tensor  # (T, F), T >= 1, in the model's space; the last output is prediction 1
    state: torch.Tensor | None  # (S, L, H) start state; None = zeros
    horizon: int  # points to predict, >= 1
    submitted_at: float = field(default_factory=time.perf_counter)
    outbox: ForecastOutbox = field(default_factory=ForecastOutbox)


@dataclass(eq=False)
class _Row:
    """A job's progress, owned by the executor thread."""

    job: ForecastJob
    predicted: int = 0
    new: list[torch.Tensor] = field(default_factory=list)  # (F,) predictions not yet handed over
    observed: torch.Tensor | None = None  # (S, L, H) after the prefill
    final: ForecastEnd | None = None


@dataclass
class _CallResult:
    """What one executor call hands to the loop."""

    # each row that predicted something in this call, with snapshots of its new predictions and
    # of its final (state, pending) if it finished: the executor's next call may already run
    # while the loop reads these
    rows: list[tuple[_Row, list[torch.Tensor], ForecastEnd | None]] = field(default_factory=list)
    dropped: int = 0  # cancelled, left without finishing
    batch_size: int = 0
    failed: list[tuple[ForecastJob, Exception]] = field(default_factory=list)  # each its error
    device_lost: BaseException | None = None


class ForecastEngine(ExecutorChain[ForecastJob]):
    """Owns all execution of one forecaster."""

    def __init__(self, model: object, name: str, executor: Executor, metrics: Metrics, *,
                 max_batch_size: int, max_active: int, max_steps_per_iteration: int,
                 batch_invariant: bool = True, threads: StepThreads | None = None,
                 on_device_lost: Callable[[BaseException], None] | None = None) -> None:
        m = metrics
        super().__init__(name, executor, max_active, "forecasts",
                         m.rejected.labels(name, "forecasts"),
                         m.queue_depth.labels(name, "forecast"))
        self.model = model  # rnnserve.models LoadedModel (forecast)
        self._module = model.module
        self._batch_invariant = batch_invariant
        self._device = torch.device(model.device)
        self._threads = threads or StepThreads()  # torch threads per step, by its size
        self.on_device_lost = on_device_lost  # set by the registry: the server's hook
        self._max_batch = max_batch_size
        self._max_steps = max_steps_per_iteration
        self._batch: DecodeBatch[_Row] | None = None  # touched on the executor only
        self._m_batch = m.batch_size.labels(name, "forecast")
        self._m_prefill = m.batch_size.labels(name, "forecast_prefill")
        self._m_active = m.active_forecasts.labels(name)
        self._m_predicted = m.forecast_points.labels(name, "predicted")
        self._m_ttfp = m.time_to_first_token.labels(name)
        self._m_cancelled = m.cancelled_generations.labels(name)

    # --- lifecycle (ExecutorChain: start, stop) ------------------------------------------------
    def _fail_left(self, job: ForecastJob, error: Exception) -> None:
        if not job.outbox.done:
            job.outbox.fail(error)

    def _abandon(self) -> list[ForecastJob]:
        batch, self._batch = self._batch, None
        return [row.job for row in batch.items] if batch is not None else []

    # --- admission -----------------------------------------------------------------------------
    def submit(self, job: ForecastJob) -> None:
        """Queue a job; RESOURCE_EXHAUSTED when the model already runs its maximum; UNAVAILABLE
        after the device was lost."""
        self._enqueue(job)

    # --- the chain of executor calls -----------------------------------------------------------
    def _run_call(self) -> None:
        self._post(self._deliver, self._iterate(self._max_steps))

    def _has_work(self) -> bool:
        return self._batch is not None or bool(self._waiting)

    def _deliver(self, result: _CallResult) -> None:
        """On the loop: hand each job its values, settle counts."""
        now = time.perf_counter()
        for job, error in result.failed:  # one job's failure, not its batch mates'
            if not job.outbox.done:
                job.outbox.fail(error)
        self._active -= len(result.failed)
        if result.device_lost is not None and self.on_device_lost is not None:
            self.on_device_lost(result.device_lost)
        if result.dropped:
            self._active -= result.dropped
            self._m_cancelled.inc(result.dropped)
        produced = 0
        for row, new, final in result.rows:
            outbox = row.job.outbox
            if outbox.done:
                continue
            if outbox.predicted == 0:
                self._m_ttfp.observe(now - row.job.submitted_at)
            values = torch.stack(new).to("cpu", torch.float64)  # (N, F)
            produced += len(new)
            finished = final is not None
            outbox.put(values.flatten().tolist(), len(new), finished, final)
            if finished:
                self._active -= 1
        self._m_predicted.inc(produced)
        self._m_active.set(result.batch_size)
        self._m_queue.set(len(self._waiting))

    # --- model work (executor thread) ----------------------------------------------------------
    def _iterate(self, steps: int) -> _CallResult:
        call = _CallResult()
        touched: dict[_Row, None] = {}
        batch, self._batch = self._batch, None
        with torch.inference_mode():
            try:
                for _ in range(steps):
                    batch = self._boundary(batch, touched, call)
                    if batch is None:
                        break
                    batch = self._step(batch, touched, call)
            except DeviceLost as lost:
                batch = None
                self._lose_device(call, lost)
        self._batch = batch
        failed = {job for job, _ in call.failed}
        for row in touched:
            if row.job not in failed:
                call.rows.append((row, row.new, row.final))
                row.new = []
        call.batch_size = len(batch) if batch is not None else 0
        return call

    def _fail(self, jobs: list[ForecastJob], exc: Exception, call: _CallResult, what: str) -> None:
        """Fail ``jobs`` with the request error for ``exc`` (a lost device: everything)."""
        error = row_failure(exc, jobs, f"forecast {what} on model {self.name}")
        call.failed.extend((job, error) for job in jobs)

    def _lose_device(self, call: _CallResult, lost: DeviceLost) -> None:
        """The device context is gone: fail every job this engine holds, refuse new ones."""
        logger.critical("model %s: the device failed (%s); failing every forecast, the server "
                        "must be replaced", self.name, lost.cause)
        self._lost = True
        cause = lost.cause
        error = request_error(cause if isinstance(cause, Exception) else RuntimeError(cause))
        jobs = list(lost.held)
        while self._waiting:
            jobs.append(self._waiting.popleft())
        failed = {job for job, _ in call.failed}
        call.failed.extend((job, error) for job in dict.fromkeys(jobs) if job not in failed)
        call.device_lost = cause

    def _boundary(self, batch: DecodeBatch[_Row] | None, touched: dict[_Row, None],
                  call: _CallResult) -> DecodeBatch[_Row] | None:
        """Between two steps: cancelled rows leave, queued jobs are prefilled and join (a
        newcomer that fails fails alone; the running batch goes on)."""
        if batch is not None:
            items = batch.items
            if any(row.job.outbox.cancelled for row in items):
                call.dropped += sum(1 for row in items if row.job.outbox.cancelled)
                try:
                    batch = batch.filter([i for i, row in enumerate(items)
                                          if not row.job.outbox.cancelled])
                except Exception as exc:  # noqa: BLE001 - the batch's rows fail, nothing else
                    self._fail([r.job for r in items if not r.job.outbox.cancelled], exc, call,
                               "filter")
                    batch = None
        room = self._max_batch - (len(batch) if batch is not None else 0)
        admitting: list[ForecastJob] = []
        while room > len(admitting) and self._waiting:
            job = self._waiting.popleft()
            if job.outbox.cancelled:
                call.dropped += 1
            else:
                admitting.append(job)
        if not admitting:
            return batch
        try:
            joined = self._prefill(admitting, touched, call)
        except DeviceLost as lost:  # the running rows are held too
            held = [row.job for row in batch.items] if batch is not None else []
            raise DeviceLost(lost.cause, lost.held + held) from lost.cause
        if joined is None:
            return batch
        try:
            return joined if batch is None else batch.concatenate(joined)
        except Exception as exc:  # noqa: BLE001 - the newcomers fail, the batch goes on
            held = [row.job for row in batch.items] if batch is not None else []
            try:
                self._fail([row.job for row in joined.items], exc, call, "join")
            except DeviceLost as lost:
                raise DeviceLost(lost.cause, lost.held + held) from lost.cause
            return batch

    def _prefill(self, jobs: list[ForecastJob], touched: dict[_Row, None], call: _CallResult
                 ) -> DecodeBatch[_Row] | None:
        """Each newcomer alone: its points from its start state; the last output is its first
        prediction. Those with more to predict become rows of a new batch. A prefill that
        fails fails its own job."""
        module = self._module
        rows: list[_Row] = []
        states: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        self._m_prefill.observe(len(jobs))
        self._threads.apply(1)
        for k, job in enumerate(jobs):
            try:
                if job.state is None:
                    start = module.zero_state(1, self._device)
                else:
                    start = tuple(s.unsqueeze(1) for s in job.state)  # S x (L, 1, H)
                x = job.inputs.to(self._device).unsqueeze(0)  # (1, T, F)
                y, state = module.prefill(x, start)  # (1, F), S x (L, 1, H)
                row_state = torch.stack([s[:, 0] for s in state])  # (S, L, H)
            except Exception as exc:  # noqa: BLE001 - this job fails alone
                try:
                    self._fail([job], exc, call, "prefill")
                except DeviceLost as lost:  # every newcomer is in hand
                    rest = [j for j in jobs[k + 1:]] + [r.job for r in rows]
                    raise DeviceLost(lost.cause, lost.held + rest) from lost.cause
                continue
            row = _Row(job, predicted=1, new=[y[0]], observed=row_state)
            touched[row] = None
            if job.horizon == 1:
                row.final = ForecastEnd(row_state, row_state, y[0].clone())
                continue
            rows.append(row)
            states.append(row_state)
            inputs.append(y[0])
        if not rows:
            return None
        try:
            stacked = torch.stack(states, dim=2)  # (S, L, B, H)
            return DecodeBatch(rows, tuple(stacked.unbind(0)), torch.stack(inputs))  # (B, F)
        except Exception as exc:  # noqa: BLE001 - the newcomers fail
            for row in rows:
                touched.pop(row, None)
            self._fail([row.job for row in rows], exc, call, "join")
            return None

    def _step(self, batch: DecodeBatch[_Row], touched: dict[_Row, None], call: _CallResult
              ) -> DecodeBatch[_Row] | None:
        """One step for every row: each row's last prediction in, the next prediction out. A
        failed step fails its rows."""
        self._m_batch.observe(len(batch))
        self._threads.apply(1 if self._batch_invariant else len(batch))  # rows run alone
        module = self._module
        step = module.step if self._batch_invariant else module.step_batched
        try:
            y, new_state = step(batch.tokens, batch.state)  # (B, F)
        except Exception as exc:  # noqa: BLE001 - the rows of this step fail
            self._fail([row.job for row in batch.items], exc, call, "step")
            return None
        batch.state = new_state
        keep: list[int] = []
        for i, row in enumerate(batch.items):
            row.predicted += 1
            row.new.append(y[i])
            touched[row] = None
            if row.predicted >= row.job.horizon:
                row.final = ForecastEnd(row.observed, batch.row_state(i), y[i].clone())
            else:
                keep.append(i)
        batch.tokens = y
        try:
            return batch.filter(keep)
        except Exception as exc:  # noqa: BLE001 - the batch's rows fail
            self._fail([batch.items[i].job for i in keep], exc, call, "step")
            return None
