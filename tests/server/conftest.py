"""Helpers for the end-to-end server tests: real servers (tests/conftest.py), the real client.

Every server here lives in the test's own event loop, so tests talk to it with the
:class:`~rnnserve.client.AsyncClient`; anything blocking (the sync client, the CLI, grpcurl,
a /metrics scrape) runs in a thread or a subprocess so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.client import AsyncClient

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
TIMEMACHINE_DIR = MODEL_REPOSITORY / "timemachine" / "1"
SENTIMENT_DIR = MODEL_REPOSITORY / "sentiment" / "1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MetricsView:
    """One /metrics scrape: ``view.value("rnnserve_requests_total", method="Generate")``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0.0 when absent, as for an untouched counter)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return [(dict(lbl), v) for (n, lbl), v in self.samples.items()
                if n == name and want <= set(lbl)]


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode("utf-8")


async def scrape(port: int) -> MetricsView:
    """Scrape a server's /metrics (in a thread: the server shares this event loop)."""
    return MetricsView(await asyncio.to_thread(_fetch, port))


@pytest.fixture
def metrics_of() -> Callable[[Any], Awaitable[MetricsView]]:
    """``await metrics_of(server)`` scrapes that server's /metrics."""

    async def get(server: Any) -> MetricsView:
        return await scrape(server.metrics_port)

    return get


@pytest.fixture
async def aclient(server: Any) -> AsyncIterator[AsyncClient]:
    """The real async client on the default test server (no retries: errors show at once)."""
    async with AsyncClient(server.target, timeout=30, retries=0) as client:
        yield client


@pytest.fixture
def connect() -> Callable[..., AsyncClient]:
    """``async with connect(server) as client`` for servers made with ``make_server``."""

    def make(server: Any, **kwargs: Any) -> AsyncClient:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("retries", 0)
        return AsyncClient(server.target, **kwargs)

    return make


@pytest.fixture
async def start_runner() -> AsyncIterator[Callable[[Callable[[Executor], Any]], Awaitable[Any]]]:
    """``await start_runner(lambda executor: Runner(..., executor, ...))``: a started runner
    (engine or batcher) on the test's one device thread; all are stopped, and the thread shut
    down, when the test ends."""
    executor = ThreadPoolExecutor(1)
    started: list[Any] = []

    async def start(make: Callable[[Executor], Any]) -> Any:
        runner = make(executor)
        await runner.start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        await runner.stop()
    executor.shutdown()


@pytest.fixture
def sentiment_config() -> dict:
    """The shipped classifier's config.json (fails loudly if the model was not shipped)."""
    path = SENTIMENT_DIR / "config.json"
    assert path.is_file(), f"the shipped sentiment model is missing: {path}"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def timemachine_config() -> dict:
    return json.loads((TIMEMACHINE_DIR / "config.json").read_text(encoding="utf-8"))


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout: float = 5.0,
                     interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until true; bounded in time and in the number of polls."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if await predicate():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def poll() -> Callable[..., Awaitable[None]]:
    """``await poll(async_predicate, timeout=..., what=...)``: a bounded wait loop."""
    return wait_until



@pytest.fixture
def make_server(make_server, request):  # noqa: F811 - wraps tests/conftest.py's factory
    """tests/conftest.py's factory; /metrics is only served when the test scrapes it.

    Stopping a metrics HTTP server costs ~0.4 s (its serve loop polls every 0.5 s), which adds
    up over the dozens of servers these tests start.
    """
    wants_metrics = "metrics_of" in request.fixturenames

    async def factory(**overrides: Any):
        if not wants_metrics:
            overrides.setdefault("metrics_port", -1)
        return await make_server(**overrides)

    return factory
