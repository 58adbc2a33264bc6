"""Fault injection: a failure stays in the rows it belongs to, and the active count returns to 0.

A wrapped fake model raises in prefill, step, join (``DecodeBatch.concatenate``) or sampling;
each test checks who fails, with what, that everyone else gets exactly their answer, and that
the engine's admission count comes back to 0 (never below).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from engine_fakes import CountingModel, as_text, collect, expected, loaded_model, request, settled
from rnnserve.server.errors import ResourceExhaustedError
from rnnserve.server.execution import decoding
from rnnserve.server.execution.batch import DecodeBatch
from rnnserve.server.execution.device import DeviceLostError
from rnnserve.server.execution.engine import GenerationEngine, GenerationOutbox
from rnnserve.server.metrics import Metrics


class Boom(Exception):
    pass


class FaultyModel(CountingModel):
    """CountingModel that raises ``error`` when ``when(kind, arg)`` says so."""

    def __init__(self) -> None:
        super().__init__()
        self.when = lambda kind, arg: False
        self.error: Exception = Boom("injected")

    def prefill(self, sequences, state):
        if self.when("prefill", sequences):
            raise self.error
        return super().prefill(sequences, state)

    def step(self, tokens, state):
        if self.when("step", tokens):
            raise self.error
        return super().step(tokens, state)


@pytest.fixture
async def faulty():
    executor = ThreadPoolExecutor(1)
    made: list[GenerationEngine] = []
    lost: list[BaseException] = []

    async def make(**kw) -> tuple[GenerationEngine, FaultyModel]:
        model = FaultyModel()
        options = {"max_batch_size": 64, "max_active": 64, "max_steps_per_iteration": 4,
                   "prefill_chunk_tokens": 32, "on_device_lost": lost.append} | kw
        engine = GenerationEngine(loaded_model(model), "faulty", executor, Metrics(), **options)
        await engine.start()
        made.append(engine)
        return engine, model

    make.lost = lost  # type: ignore[attr-defined]
    yield make
    for engine in made:
        await engine.stop()
    executor.shutdown()


async def outcome(outbox: GenerationOutbox) -> str | BaseException:
    try:
        return await asyncio.wait_for(collect(outbox), 20)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


async def started(outbox: GenerationOutbox) -> str:
    piece, _ = await asyncio.wait_for(outbox.take(), 20)
    return piece


async def test_oom_in_a_newcomers_prefill_fails_only_the_newcomers(faulty):
    engine, model = await faulty()
    running = [engine.submit(request([1, 2], 3, 400)) for _ in range(3)]
    firsts = [await started(o) for o in running]
    model.error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model.when = lambda kind, arg: kind == "prefill" and any(len(s) > 10 for s in arg)
    newcomers = [engine.submit(request([4] * 100, 5, 10)) for _ in range(5)]
    fine = engine.submit(request([], 6, 10))
    results = await asyncio.gather(*(outcome(o) for o in newcomers))
    for result in results:
        assert isinstance(result, ResourceExhaustedError)
        assert "device memory exhausted, retry" in str(result)
    assert await outcome(fine) == as_text(expected([], 6, 10))
    for outbox, first in zip(running, firsts, strict=True):
        assert first + await outcome(outbox) == as_text(expected([1, 2], 3, 400))
    assert await settled(engine) == 0


async def test_a_failed_join_fails_the_newcomer_and_frees_its_slot(faulty, monkeypatch):
    engine, _ = await faulty()
    running = engine.submit(request([], 1, 300))
    first = await started(running)
    real = DecodeBatch.concatenate
    calls = {"n": 0}

    def concatenate(self, other):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Boom("join failed")
        return real(self, other)

    monkeypatch.setattr(DecodeBatch, "concatenate", concatenate)
    newcomer = engine.submit(request([1], 2, 5))
    assert isinstance(await outcome(newcomer), Boom)  # an error, not a wait forever
    later = engine.submit(request([1], 2, 5))
    assert await outcome(later) == as_text(expected([1], 2, 5))
    assert first + await outcome(running) == as_text(expected([], 1, 300))
    assert await settled(engine) == 0


async def test_cancellation_and_a_join_error_at_one_boundary_count_once(faulty, monkeypatch):
    engine, _ = await faulty(max_steps_per_iteration=1)
    running = [engine.submit(request([], 1, 10**6)) for _ in range(2)]
    for outbox in running:
        await started(outbox)

    def concatenate(self, other):
        raise Boom("join failed")

    monkeypatch.setattr(DecodeBatch, "concatenate", concatenate)
    seen: list[int] = []
    running[0].cancel()  # leaves at the same boundary where the newcomer's join fails
    newcomer = engine.submit(request([1], 2, 5))
    assert isinstance(await outcome(newcomer), Boom)
    running[1].cancel()
    for _ in range(300):
        seen.append(engine.active)
        if engine.active == 0:
            break
        await asyncio.sleep(0.01)
    assert min(seen) == 0 and engine.active == 0


async def test_a_failing_step_fails_its_rows_and_the_engine_goes_on(faulty):
    engine, model = await faulty()
    model.when = lambda kind, arg: kind == "step" and model.step_batches.count(3) == 2
    doomed = [engine.submit(request([], i + 1, 50)) for i in range(3)]
    for result in await asyncio.gather(*(outcome(o) for o in doomed)):
        assert isinstance(result, Boom)
    assert await settled(engine) == 0
    model.when = lambda kind, arg: False
    after = engine.submit(request([1, 2], 3, 7))
    assert await outcome(after) == as_text(expected([1, 2], 3, 7))
    assert await settled(engine) == 0


async def test_a_failing_draw_fails_only_its_request(faulty, monkeypatch):
    engine, _ = await faulty()
    real = decoding.sample

    def sample(logits, options, seeds, draws):
        if any(o.seed == 666 for o in options) and draws[0] >= 3:
            raise Boom("draw failed")
        return real(logits, options, seeds, draws)

    monkeypatch.setattr(decoding, "sample", sample)
    alone = await outcome(engine.submit(request([1], 2, 40, temperature=1.0, seed=5)))
    mates = [engine.submit(request([1], 2, 40, temperature=1.0, seed=5)),
             engine.submit(request([1], 2, 40, temperature=1.0, seed=666)),
             engine.submit(request([1, 2], 3, 40))]
    sampled, failed, greedy = await asyncio.gather(*(outcome(o) for o in mates))
    assert isinstance(failed, Boom)
    assert sampled == alone  # the mate's failure changed nothing for it
    assert greedy == as_text(expected([1, 2], 3, 40))
    assert await settled(engine) == 0


async def test_a_lost_device_fails_everything_and_is_reported(faulty):
    engine, model = await faulty()
    running = [engine.submit(request([], 1, 10**6)) for _ in range(3)]
    for outbox in running:
        await started(outbox)
    model.error = RuntimeError("CUDA error: device-side assert triggered")
    model.when = lambda kind, arg: kind == "step"
    queued = engine.submit(request([5] * 100, 2, 5))
    for result in await asyncio.gather(*(outcome(o) for o in [*running, queued])):
        assert isinstance(result, DeviceLostError)
    assert await settled(engine) == 0
    assert len(faulty.lost) == 1 and "device-side assert" in str(faulty.lost[0])
    with pytest.raises(Exception, match="device failed"):
        engine.submit(request([], 1, 5))


class _LostDevice:
    """Wraps a model module: every decode step raises the error of a poisoned CUDA context."""

    def __init__(self, module: object) -> None:
        self._module = module

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)

    def step(self, tokens, state):
        raise RuntimeError("CUDA error: device-side assert triggered")


class _LostDeviceAnyKind(_LostDevice):
    """Every model call of any kind (prefill, step, score) hits a poisoned CUDA context."""

    def prefill(self, *args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def score(self, *args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.mark.parametrize("kind", ["generation", "classification", "forecast"])
async def test_a_lost_device_in_every_model_kind_turns_health_not_serving(make_server, kind):
    """The server's part: health NOT_SERVING, the kind refuses new work, and
    ``server.device_lost`` asks the entry point to exit (code 3, tested below)."""
    from rnnserve.client import AsyncClient, UnavailableError
    from rnnserve.server.serving.classification import CLASSIFICATION
    from rnnserve.server.serving.forecasting import FORECASTING
    from rnnserve.server.serving.generation import GENERATION

    server = await make_server()
    serving_kind = {"generation": GENERATION, "classification": CLASSIFICATION,
                    "forecast": FORECASTING}[kind]
    runner = server.registry.ready("", serving_kind).runner
    runner._module = _LostDeviceAnyKind(runner._module)
    runner._slots = None  # on a GPU: a captured CUDA graph would not call the injected step
    async with AsyncClient(server.target, timeout=10, retries=0) as client:
        assert await client.health() == "SERVING"

        async def call() -> object:
            if kind == "generation":
                return await client.generate("the time", max_tokens=5)
            if kind == "classification":
                return await client.classify("a fine film")
            return await client.forecast([0.1, 0.2, 0.3], 5)

        with pytest.raises(UnavailableError) as info:
            await call()
        assert "device failed" in str(info.value) and "Traceback" not in str(info.value)
        await asyncio.wait_for(server.device_lost.wait(), 10)
        for _ in range(100):
            if await client.health() == "NOT_SERVING":
                break
            await asyncio.sleep(0.02)
        assert await client.health() == "NOT_SERVING"
        assert await client.health("rnnserve.v1.GenerationService") == "NOT_SERVING"
        with pytest.raises(UnavailableError, match="device failed"):  # refused from now on
            await call()


# --- the forecast engine: the same rules ------------------------------------------------------
class _FaultyForecaster:
    """The shipped sine forecaster; ``prefill`` of a series of ``bad_length`` points runs out
    of memory, and ``step`` raises ``step_error`` while it is set."""

    def __init__(self, module: object, bad_length: int) -> None:
        self._module = module
        self.bad_length = bad_length
        self.step_error: Exception | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)

    def prefill(self, series, state):
        if series.shape[1] == self.bad_length:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self._module.prefill(series, state)

    def step(self, x, state):
        if self.step_error is not None:
            raise self.step_error
        return self._module.step(x, state)


async def _forecast_values(job) -> list[float]:
    values: list[float] = []
    while True:
        got, _ = await job.outbox.take()
        values += got
        if job.outbox.done and job.outbox.error is None:
            return values


async def test_a_forecast_newcomer_out_of_memory_fails_alone_and_a_failed_step_fails_its_rows():
    from conftest import MODEL_REPOSITORY
    from rnnserve.models.checkpoint import load_model
    from rnnserve.server.execution.forecast_engine import ForecastEngine, ForecastJob

    clean = load_model(MODEL_REPOSITORY / "sine" / "1").module
    faulty = _FaultyForecaster(clean, bad_length=7)
    loaded = SimpleNamespace(module=faulty, device="cpu")
    executor = ThreadPoolExecutor(1)
    lost: list[BaseException] = []
    engine = ForecastEngine(loaded, "sine", executor, Metrics(), max_batch_size=64,
                            max_active=64, max_steps_per_iteration=4, on_device_lost=lost.append)
    await engine.start()
    try:
        series = torch.sin(torch.linspace(0, 3, 20)).unsqueeze(1)  # (T, F)
        ref = ForecastJob(series, None, 300)
        engine.submit(ref)
        want = await _forecast_values(ref)  # alone, no fault: the reference values

        running = ForecastJob(series, None, 300)
        engine.submit(running)
        await asyncio.sleep(0.01)
        newcomers = [ForecastJob(series[:7], None, 5) for _ in range(3)]
        fine = ForecastJob(series[:9], None, 5)
        for job in [*newcomers, fine]:
            engine.submit(job)
        assert await _forecast_values(running) == want  # the running forecast went on, exact
        assert len(await _forecast_values(fine)) == 5
        for job in newcomers:
            with pytest.raises(ResourceExhaustedError, match="device memory exhausted"):
                await _forecast_values(job)
        assert engine.pending == 0

        faulty.step_error = Boom("injected step")
        rows = [ForecastJob(series, None, 50) for _ in range(4)]
        for job in rows:
            engine.submit(job)
        for job in rows:
            with pytest.raises(Boom):
                await _forecast_values(job)
        faulty.step_error = None
        again = ForecastJob(series, None, 300)
        engine.submit(again)
        assert await _forecast_values(again) == want  # the engine goes on
        assert engine.pending == 0 and not lost
    finally:
        await engine.stop()
        executor.shutdown()


async def test_rnnserve_serve_returns_exit_code_3_when_the_device_is_lost(monkeypatch):
    """The entry point's part: after a lost device, ``serve`` stops and returns 3 (the code
    ``rnnserve serve`` exits with, for its supervisor to start a new process)."""
    from conftest import test_settings
    from rnnserve.client import AsyncClient, UnavailableError
    from rnnserve.server import main as entry
    from rnnserve.server.serving.generation import GENERATION

    made = []
    real_build = entry.build_server
    monkeypatch.setattr(entry, "build_server", lambda s: made.append(real_build(s)) or made[-1])
    serving = asyncio.create_task(entry.serve(test_settings(metrics_port=-1)))
    for _ in range(500):  # bounded: the shipped models load in about a second
        if made and made[0].port and made[0].target and not serving.done():
            try:
                engine = made[0].registry.ready("", GENERATION).runner
                break
            except Exception:  # noqa: BLE001 - not loaded yet
                pass
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the server did not start")
    engine._module = _LostDevice(engine._module)
    engine._slots = None
    async with AsyncClient(made[0].target, timeout=10, retries=0) as client:
        with pytest.raises(UnavailableError):
            await client.generate("the time", max_tokens=5)
    assert await asyncio.wait_for(serving, 20) == entry.DEVICE_LOST_EXIT == 3
