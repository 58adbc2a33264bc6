"""The chain of executor calls behind a continuous-batching engine (generation, forecasting).

An engine admits work on the event loop (:meth:`ExecutorChain._enqueue`: the admission limit,
the queue, a lost device refusing everything) and runs it on the device's executor thread in
calls of up to ``max_steps_per_iteration`` steps. While there is work, each call queues the next
one itself, behind whatever else waits for the same device thread (a classifier's batches), so
the device never waits for the loop; when the work runs out the chain ends, and the next
submission starts a new one. Exactly one call is queued or running at a time (``_scheduled``,
guarded by ``_lock`` between the loop and the executor).

A subclass supplies the call itself (:meth:`_run_call`: step, then post results to the loop),
whether work is left (:meth:`_has_work`), and how to take back and fail what it holds when it
stops (:meth:`_abandon`, :meth:`_fail_left`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Executor
from typing import Generic, TypeVar

from rnnserve.server.errors import ResourceExhaustedError, RnnserveError

W = TypeVar("W")  # a queued unit of work (its outbox inside)


class ExecutorChain(Generic[W]):
    """Admission, the waiting queue, and the self-rescheduling chain of executor calls."""

    def __init__(self, name: str, executor: Executor, max_active: int, what: str,
                 rejected: object, queued: object) -> None:
        self.name = name
        self._executor = executor
        self._max_active = max_active
        self._what = what  # "generations", "forecasts": for the admission error
        self._m_rejected = rejected  # the rejected-work counter child
        self._m_queue = queued  # the queue-depth gauge child
        self._waiting: deque[W] = deque()  # appended on the loop, taken on the executor
        self._active = 0  # admitted and not yet ended (loop only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _scheduled/_closed between loop and executor
        self._scheduled = False  # a call is queued or running on the executor
        self._closed = False
        self._lost = False  # the device failed: every submission is refused

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def stop(self) -> None:
        """Refuse new work and fail what is left (queued, or held on the executor)."""
        with self._lock:
            self._closed = True  # a running call finishes and does not queue another
        left: list[W] = []
        try:  # behind any running call on the device thread, then the work is ours
            left = await asyncio.get_running_loop().run_in_executor(self._executor, self._abandon)
        except RuntimeError:  # the executor is already shut down
            pass
        while self._waiting:
            left.append(self._waiting.popleft())
        error = RnnserveError("the server is shutting down")
        for work in left:
            self._fail_left(work, error)
        self._active = 0

    @property
    def pending(self) -> int:
        """Work admitted and not finished yet (the Runner protocol's drain count)."""
        return self._active

    # --- admission (event loop) ----------------------------------------------------------------
    def _enqueue(self, work: W) -> None:
        """Admit ``work``: RESOURCE_EXHAUSTED past ``max_active``, UNAVAILABLE after the device
        was lost; starts the chain when none runs."""
        if self._loop is None or self._closed:
            raise RuntimeError("engine not started")
        if self._lost:
            raise RnnserveError(f"model {self.name!r}: the device failed; retry on another server")
        if self._active >= self._max_active:
            self._m_rejected.inc()  # type: ignore[attr-defined]
            raise ResourceExhaustedError(
                f"model {self.name!r} is running its maximum of {self._max_active} "
                f"{self._what}; retry later"
            )
        self._active += 1
        self._waiting.append(work)
        self._m_queue.set(len(self._waiting))  # type: ignore[attr-defined]
        with self._lock:
            if self._scheduled:
                return  # the running chain admits it at its next step boundary
            self._scheduled = True
        self._executor.submit(self._drive)

    # --- the chain (executor thread) -----------------------------------------------------------
    def _drive(self) -> None:
        """One executor call, then the next one queued while there is work."""
        self._run_call()
        with self._lock:
            if self._closed or not self._has_work():
                self._scheduled = False
                return
        try:
            self._executor.submit(self._drive)
        except RuntimeError:  # the executor was shut down
            with self._lock:
                self._scheduled = False

    def _post(self, deliver: object, *args: object) -> None:
        """From the executor: have the loop call ``deliver(*args)``."""
        try:
            self._loop.call_soon_threadsafe(deliver, *args)  # type: ignore[union-attr, arg-type]
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            self._closed = True

    # --- what a subclass supplies --------------------------------------------------------------
    def _run_call(self) -> None:
        raise NotImplementedError

    def _has_work(self) -> bool:
        raise NotImplementedError

    def _abandon(self) -> list[W]:
        """On the executor: take back everything held outside the waiting queue."""
        raise NotImplementedError

    def _fail_left(self, work: W, error: Exception) -> None:
        raise NotImplementedError
