"""How the classifier batcher forms batches: whole tiles, and the wait counted from arrival.

The shipped ``sentiment`` model on the CPU, a real one-thread executor, the batcher's own batch
size histogram; no server.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import MODEL_REPOSITORY
from rnnserve.models import load_model
from rnnserve.models.invariant import CPU_TILE_ROWS
from rnnserve.models.sentiment import _TRACED, SentimentRNN
from rnnserve.server.execution.batcher import ClassificationBatcher
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.registry import ModelState

SENTIMENT = MODEL_REPOSITORY / "sentiment" / "1"
TEXTS = ["a fine film", "dull and long", "the best of the year", "i hated every minute"]


@pytest.fixture(scope="module")
def sentiment():
    return load_model(SENTIMENT, "cpu")


@pytest.fixture
def make_batcher(sentiment, start_runner):
    async def make(invariant: bool = True, **options) -> tuple[ClassificationBatcher, Metrics]:
        sentiment.module.batch_invariant = invariant
        metrics = Metrics()
        settings = {"max_batch_size": 64, "max_wait_ms": 50.0, "max_queued": 1024, **options}
        batcher = await start_runner(lambda executor: ClassificationBatcher(
            sentiment, "sentiment", executor, metrics, **settings))
        return batcher, metrics

    yield make
    sentiment.module.batch_invariant = True


def ids(sentiment, n: int) -> list[list[int]]:
    return [sentiment.tokenizer.encode(TEXTS[i % len(TEXTS)], sentiment.vocab).ids
            for i in range(n)]


def batches(metrics: Metrics) -> tuple[float, float]:
    """(batches run, texts in them) from the batch size histogram."""
    child = metrics.batch_size.labels("sentiment", "classification")
    counts = {s.name: s.value for s in child.collect()[0].samples if not s.labels.get("le")}
    return counts["rnnserve_batch_size_count"], counts["rnnserve_batch_size_sum"]


@pytest.mark.parametrize(("texts", "expected"), [
    (CPU_TILE_ROWS + 1, (2, CPU_TILE_ROWS + 1)),  # 9 -> 8 + 1: no second, mostly empty tile
    (2 * CPU_TILE_ROWS, (1, 2 * CPU_TILE_ROWS)),  # whole tiles stay one batch
    (3 * CPU_TILE_ROWS - 1, (2, 3 * CPU_TILE_ROWS - 1)),  # 23 -> 16 + 7
    (CPU_TILE_ROWS - 3, (1, CPU_TILE_ROWS - 3)),  # less than a tile: one batch
])
async def test_a_batch_of_more_than_a_tile_is_cut_to_whole_tiles(make_batcher, sentiment,
                                                                 texts, expected):
    batcher, metrics = await make_batcher()
    scored = await batcher.score(ids(sentiment, texts))
    assert batches(metrics) == expected
    alone = [(await batcher.score(ids(sentiment, texts)[i:i + 1]))[0].score
             for i in range(len(TEXTS))]
    assert [s.score for s in scored[:len(TEXTS)]] == alone  # cut or not, the same bits


async def test_a_model_without_tiles_takes_any_batch_size(make_batcher, sentiment):
    batcher, metrics = await make_batcher(invariant=False)
    await batcher.score(ids(sentiment, CPU_TILE_ROWS + 1))
    assert batches(metrics) == (1, CPU_TILE_ROWS + 1)


async def test_texts_that_waited_while_a_batch_ran_go_at_once(make_batcher, sentiment):
    """max_wait counts from a text's arrival: texts queued behind a running batch do not wait
    max_wait again once the model is free (with a fresh wait, the last text here would take
    the blocker's 1 s plus another max_wait of 1 s)."""
    wait_s = 1.0
    batcher, metrics = await make_batcher(max_batch_size=2, max_wait_ms=wait_s * 1000)
    blocker = asyncio.get_running_loop().run_in_executor(batcher._executor, time.sleep, wait_s)
    started = time.monotonic()
    results = await asyncio.gather(*(batcher.score(ids(sentiment, 1)) for _ in range(3)))
    elapsed = time.monotonic() - started
    await blocker
    assert len(results) == 3
    assert batches(metrics) == (2, 3)  # [2 texts] at once (full), then [1] when the model frees
    assert elapsed < wait_s + 0.6 * wait_s, elapsed


async def test_cancelled_texts_do_not_take_a_place_in_the_batch(make_batcher, sentiment):
    batcher, metrics = await make_batcher(max_wait_ms=300.0)
    waiting = [asyncio.ensure_future(batcher.score(ids(sentiment, 1))) for _ in range(11)]
    await asyncio.sleep(0.05)  # all queued, the batch not yet closed
    for task in waiting[:3]:
        task.cancel()
    await asyncio.gather(*waiting[3:])
    assert batches(metrics) == (1, 8)  # the 8 left are one whole tile, not 8 + 3 cancelled


async def test_stop_fails_the_texts_of_the_running_batch(make_batcher, sentiment):
    batcher, _ = await make_batcher(max_wait_ms=0.0)
    blocker = asyncio.get_running_loop().run_in_executor(batcher._executor, time.sleep, 0.5)
    pending = asyncio.ensure_future(batcher.score(ids(sentiment, 4)))
    await asyncio.sleep(0.1)  # the batch is handed to the (busy) executor
    await batcher.stop()
    with pytest.raises(Exception, match="shutting down"):
        await asyncio.wait_for(pending, 5)
    await blocker


async def test_the_server_traces_a_classifier_before_it_serves(server):
    """The registry warms each classifier up as it loads: the first request does not pay for
    tracing the scripted tiles (30-80 ms)."""
    loaded = server.registry.entry("sentiment").loaded
    seq_length = loaded.tokenizer.config.seq_length
    assert (seq_length, CPU_TILE_ROWS) in _TRACED[loaded.module][1]


async def test_a_classifier_that_cannot_score_fails_its_load(make_server, monkeypatch):
    def score(self, x):
        raise RuntimeError("the checkpoint's embedding is too small")

    monkeypatch.setattr(SentimentRNN, "score", score)
    server = await make_server()  # the shipped models: the others load and serve
    entry = server.registry.entry("sentiment")
    assert entry.state is ModelState.FAILED
    assert "embedding is too small" in entry.error
