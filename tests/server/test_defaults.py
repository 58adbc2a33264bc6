"""The defaults a user gets hold under ordinary load (issue 11, part 3).

- 256 concurrent unary calls on one channel, each caller sending its next call as soon as the
  last one ends (stream churn), all end OK: no REFUSED_STREAM turned UNAVAILABLE by a
  per-connection stream limit below the callers in flight.
- torch threads are chosen per step by its size (:mod:`rnnserve.server.execution.threads`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc
import pytest
import torch
from rnnserve.server.execution.threads import ROWS_PER_THREAD, StepThreads
from rnnserve.server.settings import ServerSettings
from rnnserve.v1 import classification_pb2, classification_pb2_grpc

CALLERS = 256
CALLS_EACH = 3


async def test_256_concurrent_unary_calls_on_one_channel_all_end_ok(server):
    statuses: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = classification_pb2_grpc.ClassificationServiceStub(channel)
        start = asyncio.Event()

        async def caller(i: int) -> None:
            await start.wait()  # all callers open their first stream together
            for k in range(CALLS_EACH):
                request = classification_pb2.ClassifyRequest(texts=[f"a fine film {i} {k}"])
                try:
                    await stub.Classify(request, timeout=60)
                    statuses["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    statuses[err.code().name] += 1

        tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
        await asyncio.sleep(0)
        start.set()
        await asyncio.gather(*tasks)
    assert statuses == {"OK": CALLERS * CALLS_EACH}


def test_default_stream_limit_is_well_above_the_callers_above():
    assert ServerSettings().max_concurrent_streams >= 4 * CALLERS


@pytest.mark.parametrize(("cores", "rows", "expected"), [
    (2, 1, 1), (2, 8, 1), (2, 64, 1),  # a 2-core machine keeps a core for the event loop
    (16, 1, 1), (16, 8, 1), (16, ROWS_PER_THREAD, 1), (16, ROWS_PER_THREAD + 1, 2),
    (16, 64, 2), (16, 1000, 15), (3, 64, 2), (1, 64, 1),
])
def test_threads_follow_the_step_size(cores, rows, expected):
    assert StepThreads(cores=cores).count(rows) == expected


def test_a_fixed_count_wins():
    assert StepThreads(fixed=3, cores=2).count(1) == 3


def test_apply_sets_the_count_of_the_calling_thread_only():
    threads = StepThreads(cores=16)
    seen: list[int] = []
    main_before = torch.get_num_threads()

    def device_thread() -> None:
        for rows in (64, 1, 64):
            threads.apply(rows)
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=device_thread)
    worker.start()
    worker.join()
    assert seen == [2, 1, 2]
    assert torch.get_num_threads() == main_before
